"Formats, bad input and drawing of lskd.io and lskd.data, on fixtures written from the documented schemas"
import json, os, signal, subprocess, sys, time, tracemalloc, warnings
from pathlib import Path
import pytest
from PIL import Image
from lskd.io.files import *
from lskd.io.jsonl import *
from lskd.io.progress import *
from lskd.io.config import *
from lskd.io.runs import *
from lskd.data.refs import *
from lskd.data.records import *
from lskd.data.geometry import *
from lskd.data.formats import *
from lskd.data.stats import *
from lskd.data.draw import *

FIX = Path(__file__).parent/'fixtures'

# ---- released LSKD corpus format ----
def test_lskd_release_rows_round_trip(tmp_path):
    src = FIX/'lskd/corpus_release.jsonl'
    rows = list(read_jsonl(src))
    qars = [lskd_row_to_qar(r) for r in rows]
    for q in qars: q.check()
    assert qars[0].question == 'What is the role of [4] in the game?'
    assert qars[1].region == [0, 1] and qars[1].regions[1].extra['more_boxes'] == [[95, 12, 200, 100]]
    # through lskd's own JSONL and back to the release format: nothing lost, same bytes
    write_jsonl(tmp_path/'corpus.jsonl', qars)
    back = [qar_to_lskd_row(q) for q in read_jsonl(tmp_path/'corpus.jsonl', QAR)]
    assert back == rows
    write_jsonl(tmp_path/'release.jsonl', back)
    assert (tmp_path/'release.jsonl').read_bytes() == src.read_bytes()

def test_qar_from_scratch_to_release_and_back():
    q = QAR('img.jpg', "Why is [2] holding [0] , [1]?", "[2] isn't letting go.", "[2]'s grip is tight.",
            regions=[Region(i, (i*10, 0, i*10+9, 9), 'person') for i in range(3)], source='lskd', index=5)
    row = qar_to_lskd_row(q)
    assert row['question'] == ['Why', 'is', [2], 'holding', [0, 1], '?']
    assert row['references'][0] == {'name': '0', 'boxes': [[0, 0, 9, 9]], 'obj_guess': 'person'}
    q2 = lskd_row_to_qar(row)
    assert (q2.question, q2.answer, q2.rationale, q2.region, q2.region_all) == \
           (q.question, q.answer, q.rationale, q.region, q.region_all)

# ---- VCR ----
def test_vcr_read_write_and_regions(tmp_path):
    items = list(read_vcr(FIX/'vcr/val.jsonl'))
    assert len(items) == 2
    write_jsonl(tmp_path/'val.jsonl', items)
    assert list(read_jsonl(tmp_path/'val.jsonl')) == items
    rec = vcr_image(items[0], FIX/'vcr')
    assert [r.label for r in rec.regions] == ['person', 'person', 'cup']
    assert rec.regions[0].box == (12.5, 20.0, 150.25, 230.0) and rec.regions[2].score == 0.75
    meta = json.loads((FIX/'vcr/movie_a/scene_001.json').read_text())
    assert {k: v for k, v in vcr_metadata(rec).items()} == {k: meta[k] for k in ('boxes', 'width', 'height', 'names')}
    q = vcr_to_qar(items[0], FIX/'vcr').check()
    assert (q.question, q.answer) == ('What is [0] doing?', '[0] is offering [2] to [1].')
    assert q.rationale == "[0]'s hand holds [2] toward [1]." and q.region == [0, 2, 1]
    q2 = vcr_to_qar(items[1], FIX/'vcr')
    assert q2.question == 'How do [0] , [1] know each other?'
    assert open_image(q.image, FIX/'vcr').size == (320, 240)

def test_vcr_token_lists_round_trip():
    for it in read_vcr(FIX/'vcr/val.jsonl'):
        for toks in [it['question'], *it['answer_choices'], *it['rationale_choices']]:
            assert text_to_tokens(tokens_to_text(toks)) == toks

def test_vcr_bad_input(tmp_path):
    write_jsonl(tmp_path/'x.jsonl', [{'annot_id': 'a1', 'question': ['Hi']}])
    with pytest.raises(ValueError, match=r"a1 is not a VCR item: missing \['objects', 'img_fn', 'metadata_fn'\]"):
        list(read_vcr(tmp_path/'x.jsonl'))
    item = next(read_vcr(FIX/'vcr/val.jsonl'))
    with pytest.raises(FileNotFoundError, match='VCR metadata not found'): vcr_image(item, tmp_path)
    with pytest.raises(ValueError, match='3 boxes but the item names 2 objects'):
        vcr_image({**item, 'objects': ['person', 'person']}, FIX/'vcr')

# ---- references and ids ----
def test_reference_to_missing_region_names_id_and_existing():
    q = QAR('a.jpg', 'What is [3] doing?', '[3] runs.', 'Legs move.', regions=[Region(0, (0, 0, 5, 5)), Region(1, (5, 5, 9, 9))])
    with pytest.raises(RegionRefError, match=r"\[3\], which does not exist; regions are \[0, 1\]"): q.check()
    with pytest.raises(RegionRefError, match=r'regions are \[4, 0\]'): RegionMap([4, 0]).to_draw('[1] and [4]')

def test_region_map_round_trip():
    m = RegionMap([7, 3, 5])
    t = 'Is [5] taller than [7] , [3]?'
    assert m.to_draw(t) == 'Is [2] taller than [0] , [1]?'
    assert m.from_draw(m.to_draw(t)) == t
    with pytest.raises(ValueError, match='repeated'): RegionMap([1, 1])

# ---- bad boxes ----
@pytest.mark.parametrize('box,msg', [([5, 5, 1, 9], 'x2<x1'), ([1, 9, 5, 5], 'x2<x1 or y2<y1'), ([1, 1, 1, 9], 'zero area'),
                                     ([0, float('nan'), 3, 3], 'NaN'), (['a', 0, 1, 1], 'not 4 numbers'),
                                     ([0, 0, 1], 'expected 4')])
def test_bad_boxes(box, msg):
    with pytest.raises(BadBoxError, match=msg): Region(2, box)

def test_boxes_clipped_to_image_with_warning():
    with pytest.warns(BoxClippedWarning, match='region 1'):
        rec = ImageRecord('a.jpg', 100, 50, [Region(1, (-10, 5, 120, 40))])
    assert rec.regions[0].box == (0, 5, 100, 40)
    with pytest.raises(BadBoxError, match='wholly outside'): ImageRecord('a.jpg', 100, 50, [Region(1, (200, 5, 220, 40))])

# ---- JSONL: streaming, append-safe, torn lines ----
def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    p = tmp_path/'a.jsonl'
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match=r'a.jsonl:2: not valid JSON'): list(read_jsonl(p))

def test_complete_last_line_without_newline_is_kept(tmp_path):
    p = tmp_path/'a.jsonl'; p.write_text('{"a": 1}\n{"a": 2}')
    assert [d['a'] for d in read_jsonl(p, strict=True)] == [1, 2]
    with JsonlWriter(p) as w: w.write({'a': 3})
    assert [d['a'] for d in read_jsonl(p, strict=True)] == [1, 2, 3]

WRITER = '''
import sys
from lskd.io.jsonl import JsonlWriter
with JsonlWriter(sys.argv[1]) as w:
    i = 0
    while True:
        w.write({"i": i, "pad": "x" * 5000}); i += 1
'''

def test_killed_writer_never_corrupts_earlier_lines(tmp_path):
    p = tmp_path/'stage.jsonl'
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(p)])
    t0 = time.time()
    while (not p.exists() or p.stat().st_size < 2_000_000) and time.time() - t0 < 60: time.sleep(0.01)
    proc.send_signal(signal.SIGKILL); proc.wait()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', TornLineWarning)
        got = [d['i'] for d in read_jsonl(p)]
    assert len(got) > 100 and got == list(range(len(got)))       # every complete line intact, in order
    with warnings.catch_warnings():                                # resuming repairs the tail, then appends
        warnings.simplefilter('ignore', TornLineWarning)
        with JsonlWriter(p) as w: w.write({'i': len(got)})
    assert [d['i'] for d in read_jsonl(p, strict=True)] == list(range(len(got) + 1))

def test_read_jsonl_streams(tmp_path):
    p = tmp_path/'big.jsonl'
    write_jsonl(p, ({'i': i, 'text': 'y' * 200} for i in range(50_000)))     # ~11 MB
    assert p.stat().st_size > 10_000_000
    tracemalloc.start()
    n = sum(1 for _ in read_jsonl(p))
    peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    assert n == 50_000 and peak < 1_000_000, peak

def test_write_jsonl_replaces_whole(tmp_path):
    p = tmp_path/'a.jsonl'
    write_jsonl(p, [{'a': 1}])
    def boom():
        yield {'a': 2}; raise RuntimeError('crash while producing records')
    with pytest.raises(RuntimeError): write_jsonl(p, boom())
    assert list(read_jsonl(p)) == [{'a': 1}]     # the old file is untouched by the failed rewrite

# ---- drawing ----
def _edges(b):
    x1, y1, x2, y2 = b
    return [(x1, (y1+y2)//2), (x2-1, (y1+y2)//2), ((x1+x2)//2, y1), ((x1+x2)//2, y2-1)]

def test_draw_regions_outline_colours_where_they_belong():
    img = Image.new('RGB', (400, 200), (255, 255, 255))
    boxes = [(10 + 55*i, 20, 10 + 55*i + 45, 180) for i in range(7)]
    out = draw_regions(img, boxes)
    for i, b in enumerate(boxes):
        for xy in _edges(b): assert out.getpixel(xy) == region_color(i), (i, xy)
        cx, cy = (b[0]+b[2])//2, (b[1]+b[3])//2
        fill = out.getpixel((cx, cy))
        assert fill != (255, 255, 255) and fill != region_color(i)      # faint fill, not solid
        # the fill is the white background moved towards the box colour
        assert all(abs(f - (255 + 0.15*(c-255))) <= 2 for f, c in zip(fill, region_color(i)))
    assert [region_color(i) for i in range(5)] == [(5, 255, 55), (153, 204, 255), (204, 153, 255), (245, 173, 66), (245, 93, 66)]
    assert len({region_color(i) for i in range(5, 40)}) == 35

def test_draw_regions_deterministic_and_scaled():
    img = Image.new('RGB', (1920, 1080), (0, 0, 0))
    a = draw_regions(img, [(100, 100, 900, 900)])
    assert a.tobytes() == draw_regions(img, [(100, 100, 900, 900)]).tobytes()
    w = outline_width(img.size); assert w == 6
    assert a.getpixel((100 + w - 1, 500)) == region_color(0) and a.getpixel((100 + w + 1, 500)) != region_color(0)
    lab = draw_regions(img, [(100, 100, 900, 900)], labels=True)
    diff = [(x, y) for x in range(0, 1000, 4) for y in range(0, 1000, 4) if lab.getpixel((x, y)) != a.getpixel((x, y))]
    assert diff and all(x < 300 and y < 200 for x, y in diff)        # the label sits at the box's top-left

def test_visual_prompt_draws_in_order_and_remaps():
    regions = [Region(4, (0, 0, 50, 50)), Region(9, (60, 0, 110, 50))]
    img, rm = visual_prompt(Image.new('RGB', (120, 60)), regions, order=[9, 4])
    assert img.getpixel((60, 25)) == region_color(0) and img.getpixel((0, 25)) == region_color(1)
    assert rm.to_draw('[4] sees [9]') == '[1] sees [0]'

def test_records_display_html():
    q = lskd_row_to_qar(next(read_jsonl(FIX/'lskd/corpus_release.jsonl')))
    h = show(q, root=FIX)._repr_html_()
    assert 'image not found' in h and 'background:#f5ad42' not in h and 'background:#cc99ff' in h   # [4] is drawn 3rd
    rec = vcr_image(next(read_vcr(FIX/'vcr/val.jsonl')), FIX/'vcr')
    h = show(rec, root=FIX/'vcr')._repr_html_()
    assert 'data:image/png;base64' in h and 'cup' in h
