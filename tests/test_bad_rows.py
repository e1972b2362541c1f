"""Bad input rows: every error names the file, the line, the image (and the region); `--on-bad-row record`
writes the row to the stage's errors file and goes on. Regions JSONL, COCO, VCR, lskd and release corpus rows."""
import json, shutil
from pathlib import Path
import pytest
from lskd.data.records import QAR, Region
from lskd.io.jsonl import write_jsonl, read_jsonl
from test_pipeline import lskd

EVAL = Path(__file__).parent/'fixtures'/'eval'
MOVIE = EVAL/'images'/'vcr1images'/'movie_x'          # img1.jpg 64x48 (3 boxes), img2.jpg 72x48 (2 boxes)

def _append(p, *lines):
    with open(p, 'a') as f: f.write(''.join(l + '\n' for l in lines))

def test_regions_file_bad_box_is_named_then_recorded(tmp_path):
    imgs = tmp_path/'imgs'; imgs.mkdir()
    for f in ('img1.jpg', 'img2.jpg'): shutil.copy(MOVIE/f, imgs/f)
    regs = tmp_path/'regions.jsonl'
    _append(regs, json.dumps(dict(path='img1.jpg', width=64, height=48, regions=[dict(id=0, box=[2, 4, 30, 44], label='person')])),
            json.dumps(dict(path='img2.jpg', width=72, height=48, regions=[dict(id=0, box=[50, 2, 10, 40], label='person')])))
    r = lskd('verbalize', imgs, tmp_path/'out', '--regions', regs, '-q')
    assert r.returncode == 2 and f'{regs}:2: image img2.jpg: region 0: [50, 2, 10, 40] has x2<x1' in r.stderr, r.stderr
    r = lskd('verbalize', imgs, tmp_path/'out', '--regions', regs, '-q', '--on-bad-row', 'record')
    assert r.returncode == 0, r.stderr
    verbs = list(read_jsonl(tmp_path/'out'/'verbalizations.jsonl'))
    assert [v['image']['path'] for v in verbs] == ['img1.jpg']           # the image of the bad row is left out with it
    errs = [e for e in read_jsonl(tmp_path/'out'/'verbalize_errors.jsonl') if 'line' in e]
    assert [(e['file'], e['line'], e['image']) for e in errs] == [(str(regs), 2, 'img2.jpg')] and 'x2<x1' in errs[0]['error']
    assert json.loads(errs[0]['row'])['path'] == 'img2.jpg'                # the raw row, to fix by hand

def test_coco_bad_annotation_is_named(tmp_path):
    coco = {'images': [{'id': 1, 'file_name': 'img1.jpg', 'width': 64, 'height': 48}],
            'annotations': [{'id': 7, 'image_id': 1, 'bbox': [2, 4, 'wide', 40], 'category_id': 1}], 'categories': [{'id': 1, 'name': 'person'}]}
    (tmp_path/'coco.json').write_text(json.dumps(coco))
    r = lskd('verbalize', MOVIE, tmp_path/'out', '--regions', tmp_path/'coco.json', '-q')
    assert r.returncode == 2 and f"{tmp_path/'coco.json'} (images[0], annotation id 7): image img1.jpg:" in r.stderr, r.stderr

def _corpus(p):
    "6 good lskd rows on the two fixture images, then: a reference to a missing region, broken JSON, a release row with a NaN box"
    regs1 = [Region(0, (2, 4, 30, 44), 'person'), Region(1, (34, 6, 60, 46), 'person')]
    regs2 = [Region(0, (1, 1, 20, 40), 'person'), Region(1, (40, 2, 70, 44), 'person')]
    qs = [QAR(f'img{k}.jpg', f'Why is [0] next to [1] ({i})?', f'[0] waits for [1] ({i}).', f'[1] looks at [0] ({i}).', regions=regs1 if k == 1 else regs2)
          for k in (1, 2) for i in range(3)]
    write_jsonl(p, qs)
    bad = qs[0].to_dict(); bad['question'] = 'Why is [7] here?'
    rel = {'image': 'img2.jpg', 'references': [{'name': '0', 'boxes': [[1, 1, float('nan'), 40]], 'obj_guess': 'person'}],
           'question': ['Why', 'is', [0], 'here', '?'], 'answer': [[0], 'waits', '.'], 'rationale': [[0], 'sits', '.']}
    _append(p, json.dumps(bad), '{"image": "img1.jpg", "question": ', json.dumps(rel))
    return p

def test_corpus_rows_in_evaluate_are_named_then_recorded(tmp_path):
    c = _corpus(tmp_path/'corpus.jsonl')
    r = lskd('evaluate', '--benchmark', 'mc', '--annotations', c, '--image-root', MOVIE, '--model', 'chance', '--out', tmp_path/'o', '--quiet')
    assert r.returncode == 2 and f'{c}:7: image img1.jpg:' in r.stderr and '[7]' in r.stderr, r.stderr
    r = lskd('evaluate', '--benchmark', 'mc', '--annotations', c, '--image-root', MOVIE, '--model', 'chance', '--out', tmp_path/'o', '--quiet',
             '--on-bad-row', 'record')
    assert r.returncode == 0, r.stderr
    errs = list(read_jsonl(tmp_path/'o'/'evaluate_errors.jsonl'))
    assert [(e['line'], e['image']) for e in errs] == [(7, 'img1.jpg'), (8, None), (9, 'img2.jpg')]
    assert 'not valid JSON' in errs[1]['error'] and 'NaN' in errs[2]['error']
    assert json.loads((tmp_path/'o'/'results.json').read_text())['n_questions'] == 6

def test_vcr_bad_item_is_named(tmp_path):
    src = [json.loads(l) for l in (EVAL/'vcr'/'val.jsonl').read_text().splitlines() if l.strip()]
    bad = {k: v for k, v in src[0].items() if k != 'question'}
    write_jsonl(tmp_path/'val.jsonl', [src[0], bad])
    r = lskd('evaluate', '--benchmark', 'vcr', '--annotations', tmp_path/'val.jsonl', '--image-root', EVAL/'images'/'vcr1images',
             '--model', 'chance', '--out', tmp_path/'o', '--quiet')
    assert r.returncode == 2 and f"{tmp_path/'val.jsonl'}:2: image {src[0]['img_fn']}: item " in r.stderr and "missing ['question']" in r.stderr, r.stderr

def test_distill_records_each_bad_row_once(tmp_path):
    c = _corpus(tmp_path/'corpus.jsonl')
    r = lskd('distill', c, tmp_path/'s', '--model', 'bow', '--image-root', MOVIE, '--steps', '6', '--batch-size', '4', '--quiet')
    assert r.returncode == 2 and f'{c}:7: image img1.jpg:' in r.stderr, r.stderr[-2000:]      # bad input: 2, as in every command
    r = lskd('distill', c, tmp_path/'s2', '--model', 'bow', '--image-root', MOVIE, '--steps', '6', '--batch-size', '4', '--quiet', '--on-bad-row', 'record')
    assert r.returncode == 0, r.stderr[-2000:]
    assert [e['line'] for e in read_jsonl(tmp_path/'s2'/'distill_errors.jsonl')] == [7, 8, 9]     # 6 steps of 4 = 4 epochs, recorded once
