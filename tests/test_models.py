"lskd.models.core: one interface, one checkpoint format, a registry; a family added in one class trains as critic and as student and evaluates"
import json, pytest, torch
from pathlib import Path
from PIL import Image
from lskd.data.records import QAR, Region
from lskd.io.jsonl import write_jsonl, read_jsonl
from lskd.models.core import ImageTextModel, FAMILIES, build_model, load_model, register_family, family_class
from lskd.testing import toy_corpus

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp('toy')
    return toy_corpus(d, n_per_image=6), d

def test_every_family_speaks_the_interface(tmp_path):
    "bow and fused (toy encoders) through the same calls: encode, ITM in 0..1, ITC, save/load by folder gives the same scores"
    ims = [Image.new('RGB', (64, 48), c) for c in ('red', 'blue')]
    for m in (build_model('bow', dim=8), build_model('fused', encoders=['toy-image', 'toy-text'], dim=32, heads=2)):
        enc = m.encode_images(ims, [[(2, 2, 30, 40)], [(2, 2, 30, 40)]])
        s = m.score(enc, [0, 1, 1], ['[0] is red', '[0] is blue', 'a dog'])
        assert ((s['itm'] > 0) & (s['itm'] < 1)).all() and s['itc'].shape == (3,)
        m.save(tmp_path/m.family)
        meta = json.loads((tmp_path/m.family/'model.json').read_text())
        assert meta['family'] == m.family and set(meta['config']) == set(m.config.__dataclass_fields__)
        again = load_model(tmp_path/m.family)
        assert torch.allclose(again.score(enc, [0, 1, 1], ['[0] is red', '[0] is blue', 'a dog'])['itm'], s['itm'], atol=1e-6)

def test_registry_names_families_and_refuses_non_models():
    assert family_class('bow').family == 'bow' and family_class('fused').family == 'fused'
    with pytest.raises(ValueError, match="unknown model family 'clip'; the families are: blip2, bow, fused"): family_class('clip')
    with pytest.raises(TypeError, match='ImageTextModel subclass'): register_family(int)
    with pytest.raises(ValueError, match="bow: unknown key 'width'"): build_model('bow', width=3)

def test_a_new_family_trains_as_critic_and_as_student_and_evaluates(toy, tmp_path):
    "The bow family: critic (train, load, score), student (distill, held-out retrieval above chance), `lskd evaluate` by folder"
    from lskd.stages.critic import train_critic, write_synthetic, Critic
    from lskd.stages.distill import distill, DistillConfig
    from lskd.stages.evaluate import evaluate
    corpus, root = toy
    write_synthetic(corpus, tmp_path/'syn')
    rep = train_critic([corpus, tmp_path/'syn'/'synthetic.jsonl'], tmp_path/'syn'/'labels.jsonl', tmp_path/'critic', model='bow',
                       epochs=3, image_root=root, heldout=0.5, progress=False)
    assert rep['model']['family'] == 'bow' and len(rep['history']) == 3
    p = Critic.load(tmp_path/'critic').predict(list(read_jsonl(corpus, QAR))[:4], root=root)['prediction']
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()
    s = distill(corpus, tmp_path/'student', DistillConfig(model='bow', steps=60, batch_size=8, lr=3e-3, image_root=str(root), val_corpus=str(corpus),
                                                           log_every=10, save_every=30), progress=False)
    assert s['model'] == 'bow' and s['heldout']['after']['itc'] > s['heldout']['after']['chance'], s['heldout']
    res = evaluate('mc', corpus, ['base=bow', f"student={tmp_path/'student'}"], image_root=root, heldout=0.99, progress=False)
    assert [m['name'] for m in res['models']] == ['base', 'student'] and res['n_questions'] == 24
