"Tests of lskd.stages.verbalize: inputs, cache/resume, error files, proposals, geometry, transformers backends, CLI"
import json, os, shutil, warnings
from pathlib import Path
import pytest, yaml
from lskd.testing import tiny_tokenizer, build_tiny_vl
from PIL import Image
from lskd.data.records import Region, ImageRecord, Verbalization, open_image
from lskd.io.jsonl import read_jsonl, write_jsonl
from lskd.stages import verbalize as V
from lskd.stages.verbalize import verbalize, Verbalizer, main, load_annotations, resolve_ref, HogPeople, VerbalizeConfig, summary, save_grid
from lskd.data.geometry import geometry_phrase, select_regions

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT/'data/sample/regions.jsonl'
VCR = ROOT/'tests/fixtures/vcr'
COCO_PEOPLE = ROOT.parent/'shared/data/coco_people'


@pytest.fixture(autouse=True)
def _one_thread():
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def photos(d, names=('coffee.png', 'chelsea.png')):
    "A folder with small real photos from scikit-image"
    d = Path(d); d.mkdir(parents=True, exist_ok=True)
    for n in names: shutil.copy(resolve_ref(f'pkg:skimage/data/{n}'), d/n)
    return d


# a cheap config: geometry only, no model (the ImageNet tagger is exercised by the sample-data tests)
CHEAP = {'proposals': [{'name': 'given'}], 'global': [], 'region': [{'name': 'geometry'}], 'qa': None}


class Counting(Verbalizer):
    "A Verbalizer that counts the images it describes"
    def __init__(self, *a, **kw): super().__init__(*a, **kw); self.seen = []
    def __call__(self, images, recs):
        self.seen += [r.path for r in recs]
        return super().__call__(images, recs)


# ---------- inputs ----------

def test_sample_regions_are_well_formed():
    recs = [ImageRecord.from_dict(d) for d in read_jsonl(SAMPLE)]
    assert len(recs) == 8
    for r in recs:
        assert r.path.startswith('pkg:')
        with Image.open(resolve_ref(r.path)) as im: assert im.size == (r.width, r.height), r.path
        assert r.regions and all(x.label and x.description for x in r.regions)
        assert r.meta['license'] and r.meta['source']
    assert sum(x.label == 'person' for r in recs for x in r.regions) >= 3


def test_shipped_yaml_is_the_offline_default():
    assert VerbalizeConfig.load(ROOT/'data/configs/verbalize_offline.yaml') == VerbalizeConfig()


def test_sample_end_to_end_offline_default(tmp_path):
    r = verbalize(SAMPLE, tmp_path, progress=False)
    assert (r.written, r.errors) == (8, 0)
    vs = list(read_jsonl(tmp_path/'verbalizations.jsonl', Verbalization))
    run = json.loads((tmp_path/'verbalize_run.json').read_text())
    assert Path(run['root']) == (tmp_path/'images').resolve()
    for v in vs:
        assert (Path(run['root'])/v.image.path).exists()                 # pkg: images were copied into the run
        assert v.absent == ['global_caption', 'region_caption', 'qa']     # said plainly, not invented
        assert v.globals and all(d.model == 'efficientnet-lite0 imagenet-1k' and d.kind == 'tags' for d in v.globals)
        assert set(v.regions) == {x.id for x in v.image.regions}
        kinds = {d.kind for ds in v.regions.values() for d in ds}
        assert kinds == {'geometry', 'tags'}
        assert v.meta['regions_from'] == 'annotation' and v.meta['key'] and 'proposals' in v.meta['seconds']
    coffee = next(v for v in vs if v.image.path == 'coffee.png')
    assert 'espresso' in coffee.globals[0].text                          # a real pretrained tagger on a real photo
    s = summary(vs)
    assert s['images'] == 8 and s['regions per image'] > 3 and 'region:tags' in s['seconds per image']
    png = save_grid(vs, run['root'], tmp_path/'grid.png', n=4)
    with Image.open(png) as im: assert im.size[0] > 500


def test_coco_regions(tmp_path):
    d = photos(tmp_path/'imgs')
    coco = {'images': [{'id': 1, 'file_name': 'coffee.png', 'width': 600, 'height': 400},
                       {'id': 2, 'file_name': 'chelsea.png', 'width': 451, 'height': 300}],
            'annotations': [{'id': 10, 'image_id': 1, 'bbox': [172, 18, 240, 287], 'category_id': 47, 'iscrowd': 0},
                            {'id': 11, 'image_id': 1, 'bbox': [320, 60, 105, 265], 'category_id': 50, 'iscrowd': 0},
                            {'id': 12, 'image_id': 2, 'bbox': [0, 0, 451, 300], 'category_id': 17, 'iscrowd': 0}],
            'categories': [{'id': 47, 'name': 'cup'}, {'id': 50, 'name': 'spoon'}, {'id': 17, 'name': 'cat'}]}
    (tmp_path/'instances.json').write_text(json.dumps(coco))
    r = verbalize(d, tmp_path/'out', CHEAP, regions=tmp_path/'instances.json', progress=False)
    assert (r.written, r.errors) == (2, 0)
    vs = {v.image.path: v for v in read_jsonl(tmp_path/'out/verbalizations.jsonl', Verbalization)}
    c = vs['coffee.png'].image
    assert [(x.label, x.box) for x in c.regions] == [('cup', (172, 18, 412, 305)), ('spoon', (320, 60, 425, 325))]
    assert c.regions[0].extra['coco_id'] == 10
    assert vs['coffee.png'].regions[1][0].text == 'spoon in the centre, overlapping region [0]'
    assert [x.label for x in vs['chelsea.png'].image.regions] == ['cat']


def test_vcr_annotations_as_images(tmp_path):
    r = verbalize(VCR/'val.jsonl', tmp_path, CHEAP, progress=False)
    assert (r.written, r.errors) == (1, 0)
    v, = read_jsonl(tmp_path/'verbalizations.jsonl', Verbalization)
    assert v.image.path == 'movie_a/scene_001.jpg'
    assert [x.label for x in v.image.regions] == ['person', 'person', 'cup']
    assert v.image.regions[0].score == 0.998
    assert v.regions[2][0].text == 'cup at the bottom left, small, inside region [0]'


def test_vcr_metadata_json(tmp_path):
    recs = load_annotations(VCR/'movie_a/scene_001.json')
    assert list(recs) == ['scene_001.jpg']
    r = verbalize(VCR/'movie_a', tmp_path, CHEAP, regions=VCR/'movie_a/scene_001.json', progress=False)
    v, = read_jsonl(tmp_path/'verbalizations.jsonl', Verbalization)
    assert r.written == 1 and len(v.image.regions) == 3 and v.meta['regions_from'] == 'annotation'


def test_regions_size_mismatch_is_an_error(tmp_path):
    d = photos(tmp_path/'imgs', ('coffee.png',))
    write_jsonl(tmp_path/'regions.jsonl', [ImageRecord('coffee.png', 100, 100, [Region(0, (0, 0, 10, 10), 'x')])])
    r = verbalize(d, tmp_path/'out', CHEAP, regions=tmp_path/'regions.jsonl', progress=False)
    e, = read_jsonl(tmp_path/'out/verbalize_errors.jsonl')
    assert r.errors == 1 and 'annotations say 100x100 but the image is 600x400' in e['reason']


# ---------- cache, resume, errors ----------

def test_second_run_does_no_work(tmp_path):
    d = photos(tmp_path/'imgs')
    vz = Counting(CHEAP)
    r1 = verbalize(d, tmp_path/'out', verbalizer=vz, progress=False)
    assert r1.written == 2 and sorted(vz.seen) == ['chelsea.png', 'coffee.png']
    vz.seen.clear()
    r2 = verbalize(d, tmp_path/'out', verbalizer=vz, progress=False)
    assert (r2.written, r2.skipped, vz.seen) == (0, 2, [])
    assert len(list(read_jsonl(tmp_path/'out/verbalizations.jsonl'))) == 2


def test_changes_invalidate_the_cache(tmp_path):
    d = photos(tmp_path/'imgs')
    verbalize(d, tmp_path/'out', CHEAP, progress=False)
    Image.open(d/'coffee.png').rotate(90, expand=True).save(d/'coffee.png')    # edited content
    vz = Counting(CHEAP)
    assert verbalize(d, tmp_path/'out', verbalizer=vz, progress=False).written == 1 and vz.seen == ['coffee.png']
    vz = Counting({**CHEAP, 'select': {'max_regions': 3}})                      # another config
    assert verbalize(d, tmp_path/'out', verbalizer=vz, progress=False).written == 2


def test_resume_after_a_kill(tmp_path):
    d = photos(tmp_path/'imgs', ('coffee.png', 'chelsea.png', 'rocket.jpg', 'astronaut.png'))
    verbalize(d, tmp_path/'out', CHEAP, max_images=2, progress=False)        # 2 finished ...
    with open(tmp_path/'out/verbalizations.jsonl', 'ab') as f: f.write(b'{"image": {"path": "coff')   # ... and one torn
    vz = Counting(CHEAP)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        r = verbalize(d, tmp_path/'out', verbalizer=vz, progress=False)
    assert (r.written, r.skipped) == (2, 2) and sorted(vz.seen) == ['coffee.png', 'rocket.jpg']
    vs = list(read_jsonl(tmp_path/'out/verbalizations.jsonl', Verbalization, strict=True))
    assert sorted(v.image.path for v in vs) == ['astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg']


def test_no_resume_starts_over(tmp_path):
    d = photos(tmp_path/'imgs')
    verbalize(d, tmp_path/'out', CHEAP, progress=False)
    r = verbalize(d, tmp_path/'out', CHEAP, resume=False, progress=False)
    assert r.written == 2 and len(list(read_jsonl(tmp_path/'out/verbalizations.jsonl'))) == 2


def test_bad_files_go_to_the_errors_file(tmp_path):
    d = photos(tmp_path/'imgs', ('coffee.png',))
    (d/'notes.png').write_text('this is not an image')
    (d/'cut.jpg').write_bytes(resolve_ref('pkg:skimage/data/rocket.jpg').read_bytes()[:4000])
    (d/'empty.jpg').write_bytes(b'')
    r = verbalize(d, tmp_path/'out', CHEAP, progress=False)
    assert (r.written, r.errors) == (1, 3)
    errs = {e['path']: e for e in read_jsonl(tmp_path/'out/verbalize_errors.jsonl')}
    assert set(errs) == {'notes.png', 'cut.jpg', 'empty.jpg'}
    assert all(e['stage'] == 'read' and str(d/e['path']) in e['reason'] for e in errs.values())
    assert 'truncated' in errs['cut.jpg']['reason'] or 'broken' in errs['cut.jpg']['reason']
    # a missing file named in a list
    (tmp_path/'list.txt').write_text('coffee.png\nmissing.jpg\n')
    r = verbalize(tmp_path/'list.txt', tmp_path/'out2', CHEAP, image_root=d, progress=False)
    e, = read_jsonl(tmp_path/'out2/verbalize_errors.jsonl')
    assert r.written == 1 and e['path'] == 'missing.jpg' and e['error'] == 'FileNotFoundError'


def test_a_failing_descriptor_is_isolated(tmp_path):
    d = photos(tmp_path/'imgs', ('coffee.png', 'chelsea.png', 'rocket.jpg'))
    vz = Verbalizer(CHEAP)
    class Boom:
        name, model, kind = 'boom', 'boom', 'tags'
        def describe(self, images):
            if any(im.size == (451, 300) for im in images): raise RuntimeError('model crashed on the cat')
            return [[] for _ in images]
    vz.globals.append(Boom())
    r = verbalize(d, tmp_path/'out', verbalizer=vz, progress=False)
    assert (r.written, r.errors) == (2, 1)
    e, = read_jsonl(tmp_path/'out/verbalize_errors.jsonl')
    assert e == {'path': 'chelsea.png', 'stage': 'describe', 'error': 'RuntimeError', 'reason': 'model crashed on the cat'}


# ---------- regions ----------

def test_geometry_phrases_on_hand_made_boxes():
    W = (400, 300)
    rs = [Region(0, (10, 10, 190, 290), 'person'), Region(1, (150, 100, 250, 200), 'table'),
          Region(2, (50, 30, 110, 90), 'face'), Region(3, (380, 280, 395, 295), 'ball'), Region(4, (210, 0, 400, 150), 'window')]
    assert [geometry_phrase(r, rs, W) for r in rs] == [
        'person on the left, large, containing region [2], overlapping region [1]',
        'table in the centre, overlapping regions [0] , [4]',
        'face at the top left, small, inside region [0]',
        'ball at the bottom right, very small',
        'window at the top right, large, overlapping region [1]']


def test_select_regions_limits_orders_and_dedups():
    rs = [Region(i, (i*10, 0, i*10+50, 50), 'person', score=s) for i, s in enumerate([.5, .9, .8, .1])]
    out = select_regions(rs, (200, 100), max_regions=2, iou_max=0.5)
    assert [r.id for r in out] == [1, 3]                       # 2 overlaps 1 too much (IoU 0.67); 3 is next
    out = select_regions(rs, (200, 100), max_regions=3, iou_max=0.9, order='score', renumber=True)
    assert [(r.id, r.score) for r in out] == [(0, .9), (1, .8), (2, .5)]


def test_hog_proposals_on_real_photos(tmp_path):
    hog = HogPeople()
    im = open_image(resolve_ref('pkg:skimage/data/astronaut.png'))
    rs = hog.detect(im)
    assert [r.id for r in rs] == list(range(len(rs)))
    for r in rs:
        assert r.label == 'person' and r.score >= 0.3
        assert 0 <= r.box[0] < r.box[2] <= im.width and 0 <= r.box[1] < r.box[3] <= im.height
    assert hog.detect(Image.new('RGB', (320, 240), 'white')) == []
    # through the verbalizer: no given boxes, so HOG answers
    d = photos(tmp_path/'imgs', ('astronaut.png',))
    verbalize(d, tmp_path/'out', {**CHEAP, 'proposals': [{'name': 'given'}, {'name': 'hog'}]}, progress=False)
    v, = read_jsonl(tmp_path/'out/verbalizations.jsonl', Verbalization)
    assert v.meta['regions_from'] == 'opencv-hog-people' and len(v.image.regions) == len(rs)


@pytest.mark.skipif(not COCO_PEOPLE.exists(), reason='shared/data/coco_people not available')
def test_hog_finds_a_standing_person_in_a_coco_photo():
    im = open_image(COCO_PEOPLE/'COCO_val2014_000000000569.jpg')      # one person walking on a plaza
    rs = HogPeople().detect(im)
    assert len(rs) >= 1 and rs[0].score > 1
    x1, y1, x2, y2 = rs[0].box
    assert (y2-y1) > 1.5*(x2-x1)                                       # an upright, person-shaped box


# ---------- transformers backends: tiny random models through from_pretrained ----------

@pytest.fixture(scope='module')
def tiny(tmp_path_factory): return build_tiny_vl(tmp_path_factory.mktemp('tiny'))


def _inside(v):
    return all(0 <= r.box[0] < r.box[2] <= v.image.width and 0 <= r.box[1] < r.box[3] <= v.image.height for r in v.image.regions)


def test_tiny_detr_detector(tiny, tmp_path):
    d = photos(tmp_path/'imgs', ('coffee.png', 'chelsea.png', 'rocket.jpg'))
    cfg = {**CHEAP, 'proposals': [{'name': 'detector', 'model': str(tiny['detr']), 'threshold': 0.0, 'batch_size': 2}],
           'select': {'max_regions': 4, 'iou_max': 0.95}}
    verbalize(d, tmp_path/'out', cfg, progress=False)
    vs = list(read_jsonl(tmp_path/'out/verbalizations.jsonl', Verbalization))
    assert len(vs) == 3
    for v in vs:
        assert v.meta['regions_from'] == str(tiny['detr'])
        assert 1 <= len(v.image.regions) <= 4 and _inside(v)
        assert [r.id for r in v.image.regions] == list(range(len(v.image.regions)))
        assert {r.label for r in v.image.regions} <= {'person', 'cup'} and all(r.score is not None for r in v.image.regions)
        assert set(v.regions) == {r.id for r in v.image.regions}


def test_tiny_owlv2_open_vocabulary_detector(tiny, tmp_path):
    d = photos(tmp_path/'imgs', ('coffee.png', 'chelsea.png'))
    cfg = {**CHEAP, 'proposals': [{'name': 'detector', 'model': str(tiny['owlv2']), 'labels': ['a person', 'a cup'], 'threshold': 0.0}],
           'select': {'max_regions': 5, 'iou_max': 0.99}}
    verbalize(d, tmp_path/'out', cfg, progress=False)
    for v in read_jsonl(tmp_path/'out/verbalizations.jsonl', Verbalization):
        assert 1 <= len(v.image.regions) <= 5 and _inside(v)
        assert {r.label for r in v.image.regions} <= {'person', 'cup'}          # the queries, article removed


def test_tiny_blip_captioner_global_and_regions(tiny, tmp_path):
    cfg = {'proposals': [{'name': 'given'}], 'global': [{'name': 'caption', 'model': str(tiny['blip']), 'max_new_tokens': 5}],
           'region': [{'name': 'caption', 'model': str(tiny['blip']), 'max_new_tokens': 4, 'prompt': 'a'}], 'qa': None, 'batch_size': 3}
    vz = Verbalizer(cfg)
    assert len(vz.pool.models) == 1                                  # one model shared by both descriptors
    r = verbalize(SAMPLE, tmp_path, verbalizer=vz, max_images=3, progress=False)
    assert (r.written, r.errors) == (3, 0)
    for v in read_jsonl(tmp_path/'verbalizations.jsonl', Verbalization):
        assert v.absent == ['qa']
        assert [(d.model, d.kind) for d in v.globals] == [(str(tiny['blip']), 'caption')]
        assert set(v.regions) == {x.id for x in v.image.regions}
        assert all(len(ds) == 1 and ds[0].kind == 'caption' and isinstance(ds[0].text, str) for ds in v.regions.values())


def _asker_cfg(tiny, url, rounds=2, **asker):
    "CHEAP with dynamic QA: the tiny BLIP-2 answers, an LLM asker at `url` (a FakeTeacher) asks"
    return {**CHEAP, 'qa': {'asker': {'name': 'openai', 'base_url': url, 'model': 'teacher', **asker},
                            'answerer': str(tiny['blip2']), 'rounds': rounds, 'max_new_tokens': 4}}


def test_tiny_blip2_vqa_with_an_llm_asker(tiny, tmp_path):
    "The asker goes through the teacher's client: its report counts requests, tokens and cost; a rerun asks from the cache"
    from lskd.teacher.fake import FakeTeacher
    price = {'teacher': {'prompt': 0.15, 'completion': 0.6}}
    with FakeTeacher() as ft:
        cfg = _asker_cfg(tiny, ft.base_url, concurrency=4, prices=price)
        r = verbalize(SAMPLE, tmp_path, cfg, max_images=2, progress=False)
        assert len(ft.requests) == 4 and (r.written, r.errors) == (2, 0)
        first = [(v.image.path, [(q.question, q.answer) for q in v.qa]) for v in read_jsonl(tmp_path/'verbalizations.jsonl', Verbalization)]
        r2 = verbalize(SAMPLE, tmp_path, cfg, max_images=2, progress=False, resume=False)
        assert len(ft.requests) == 4                                        # nothing sent again
    vs = list(read_jsonl(tmp_path/'verbalizations.jsonl', Verbalization))
    assert [(v.image.path, [(q.question, q.answer) for q in v.qa]) for v in vs] == first
    for v in vs:
        assert 'qa' not in v.absent and len(v.qa) == 2
        assert all(q.model == str(tiny['blip2']) and q.asker == 'openai:teacher' and q.question.startswith('in round')
                   and q.question.endswith('?') and isinstance(q.answer, str) for q in v.qa)
    assert {b['model'] for b in ft.requests} == {'teacher'}
    assert any('smiling woman' in b['messages'][1]['content'] for b in ft.requests)     # the asker sees the region descriptions
    assert any('Q: in round 1' in b['messages'][1]['content'] for b in ft.requests)       # and the round before
    a1, a2 = r.asker, r2.asker
    assert (a1['requests_sent'], a1['requests_cached'], a2['requests_sent'], a2['requests_cached']) == (4, 0, 0, 4)
    usage = [ft.completion(b)['usage'] for b in ft.requests]
    assert a1['prompt_tokens'] == sum(u['prompt_tokens'] for u in usage) and a1['completion_tokens'] == sum(u['completion_tokens'] for u in usage)
    assert a1['cost_usd'] == round((0.15*a1['prompt_tokens'] + 0.6*a1['completion_tokens'])/1e6, 6) > 0
    run = json.loads((tmp_path/'verbalize_run.json').read_text())
    assert run['asker'] == a2 and [x['asker']['requests_sent'] for x in read_jsonl(tmp_path/'attempts.jsonl')] == [4, 0]
    assert '0 requests sent, 4 from the cache' in repr(r2)
    assert json.loads((tmp_path/'progress.json').read_text())['from cache'] == 4


def test_llm_asker_retries_and_keeps_the_rate_limit(tiny, tmp_path):
    from lskd.teacher.fake import FakeTeacher
    with FakeTeacher(rpm=300, burst=0.2) as ft:
        ft.fail(2, 503, retry_after=0.05)
        r = verbalize(SAMPLE, tmp_path, _asker_cfg(tiny, ft.base_url, rounds=2, rpm=300, concurrency=4), max_images=4, progress=False)
    assert (r.written, r.errors, r.asker['retries'], r.asker['requests_sent']) == (4, 0, 2, 8)
    assert ft.limited == 0 and ft.ok == 8                  # 8 questions at 5 a second: none refused for the limit


def test_llm_asker_budget_stops_the_run_and_a_rerun_goes_on(tiny, tmp_path):
    from lskd.teacher.fake import FakeTeacher
    with FakeTeacher() as ft:
        cfg = _asker_cfg(tiny, ft.base_url, rounds=1, budget_tokens=1)
        r = verbalize(SAMPLE, tmp_path, cfg, max_images=3, batch_size=1, progress=False)
        assert (r.written, r.errors, len(ft.requests)) == (1, 0, 1) and 'budget' in r.stopped
        cfg['qa']['asker'].pop('budget_tokens')              # how requests are sent: the images' keys stay the same
        r2 = verbalize(SAMPLE, tmp_path, cfg, max_images=3, batch_size=1, progress=False)
    assert (r2.written, r2.skipped, r2.stopped, len(ft.requests)) == (2, 1, None, 3)


def test_llm_asker_refused_key_stops_the_run(tiny, tmp_path):
    from lskd.teacher.fake import FakeTeacher
    from lskd.teacher.client import Aborted
    with FakeTeacher() as ft:
        ft.fail(1, 401)
        with pytest.raises(Aborted, match='AuthenticationError'):
            verbalize(SAMPLE, tmp_path, _asker_cfg(tiny, ft.base_url, rounds=1, concurrency=1), max_images=3, progress=False)
    assert len(ft.requests) == 1


def test_llm_asker_dry_run_sends_nothing(tiny, tmp_path, capsys):
    from lskd.teacher.fake import FakeTeacher
    with FakeTeacher() as ft:
        cfg = _asker_cfg(tiny, ft.base_url, rounds=3, prices={'teacher': {'prompt': 0.15, 'completion': 0.6}})
        (tmp_path/'c.yaml').write_text(yaml.safe_dump(cfg))
        assert main([str(SAMPLE), str(tmp_path/'out'), '--config', str(tmp_path/'c.yaml'), '--dry-run']) == 0
    e = json.loads((tmp_path/'out/estimate.json').read_text())
    assert (e['images'], e['requests'], e['completion_tokens_max'], e['model']) == (8, 24, 24*48, 'teacher') and e['cost_usd'] > 0
    assert ft.requests == [] and not (tmp_path/'out/verbalizations.jsonl').exists() and 'requests: 24' in capsys.readouterr().out


def test_tiny_blip2_vqa_with_fixed_questions(tiny, tmp_path):
    cfg = {**CHEAP, 'qa': {'asker': {'name': 'fixed', 'questions': ['Who is there?']}, 'answerer': str(tiny['blip2']), 'rounds': 1}}
    verbalize(photos(tmp_path/'imgs'), tmp_path/'out', cfg, progress=False)
    for v in read_jsonl(tmp_path/'out/verbalizations.jsonl', Verbalization):
        assert [(q.question, q.asker) for q in v.qa] == [('Who is there?', 'fixed-questions')]


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match='cannot load the model'):
        Verbalizer({'global': [{'name': 'caption', 'model': str(tmp_path/'nope')}]})
    with pytest.raises(ValueError, match='needs `model`'):
        Verbalizer({'global': [{'name': 'caption'}]})


# ---------- CLI ----------

def test_cli(tmp_path, capsys):
    cfg = tmp_path/'cheap.yaml'; cfg.write_text(yaml.safe_dump(CHEAP))
    assert main([str(SAMPLE), str(tmp_path/'out'), '--config', str(cfg), '--max-images', '3', '-q', '--grid']) == 0
    out = capsys.readouterr().out
    assert '3 written' in out and (tmp_path/'out/verbalizations.png').exists()
    assert main([str(SAMPLE), str(tmp_path/'out'), '--config', str(cfg), '--max-images', '3', '-q']) == 0
    assert '3 already done' in capsys.readouterr().out
    assert main(['no/such/dir', str(tmp_path/'x'), '-q']) == 2
    assert 'images not found' in capsys.readouterr().err
    bad = tmp_path/'bad.yaml'; bad.write_text('global: [{name: clip}]')
    assert main([str(SAMPLE), str(tmp_path/'y'), '--config', str(bad)]) == 2
    assert "unknown descriptor 'clip'" in capsys.readouterr().err


def test_cli_dispatch(tmp_path):
    from lskd.app.cli import main as lskd
    d = photos(tmp_path/'imgs', ('coffee.png',))
    cfg = tmp_path/'cheap.yaml'; cfg.write_text(yaml.safe_dump(CHEAP))
    assert lskd(['verbalize', str(d), str(tmp_path/'out'), '--config', str(cfg), '-q']) == 0
    assert len(list(read_jsonl(tmp_path/'out/verbalizations.jsonl'))) == 1
