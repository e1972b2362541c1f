"Distillation (lskd.stages.distill): examples, streaming, training, exact resume, BLIP-2 step, CLI"
import json, os, random, shutil, subprocess, sys, tracemalloc
from dataclasses import replace
from pathlib import Path
import pytest, torch
from lskd.data.records import QAR, Region
from lskd.data.refs import RegionMap
from lskd.io.jsonl import read_jsonl, write_jsonl
from lskd.data.formats import lskd_row_to_qar
from lskd.stages.distill import make_example, example_rng, student_text, CorpusStream, DistillConfig, distill, make_student, StudentNet, student_inputs, Prepare, main
from lskd.models.train import latest_checkpoint, trainable
from lskd.models.core import load_model
from lskd.testing import toy_corpus

FIX = Path(__file__).parent/'fixtures'
DEVICE = os.environ.get('LSKD_TEST_DEVICE', 'cpu')   # tests/gpu_check.sh runs the BLIP-2 tests on cuda
TOY = dict(model_config={'encoders': ['toy-image', 'toy-text'], 'dim': 32, 'heads': 2}, lr=3e-3, warmup_steps=2, log_every=1, seed=0)

@pytest.fixture(autouse=True)
def _threads(): torch.set_num_threads(1)

@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp('toy')
    return toy_corpus(d), d

def qar():
    regs = [Region(i, (10*i, 5, 10*i + 8, 40), 'person') for i in (1, 3, 5, 8)]
    return QAR('x.jpg', 'Why is [3] Looking at [5]?', '[3] Wants [5] to pass the ball.', 'The ball is near [5] and [3] waves.',
               region=[3, 5], region_all=[1, 3, 5, 8], regions=regs, id='q0')

# ---------------------------------------------------------------- examples
def test_examples_shuffle_distract_remap_lowercase_drop_rationale():
    q = qar()
    exs = [make_example(q, example_rng(7, 0, i)) for i in range(400)]
    plain = [e for e in exs if not e.distractors]
    assert {tuple(e.order) for e in plain} == {(3, 5), (5, 3)}                # shuffled drawing order
    assert all(sorted(e.order) == [1, 3, 5, 8] for e in exs if e.distractors)  # all shown regions drawn
    assert {tuple(e.order) for e in exs if e.distractors} > {(1, 3, 5, 8)}     # ... in many orders
    assert 150 < len(plain) < 250 and 150 < sum(e.rationale for e in exs) < 250
    for e in exs:
        i3, i5 = e.order.index(3), e.order.index(5)
        assert e.text.startswith(f'question: why is [{i3}] looking at [{i5}]? answer: [{i3}] wants [{i5}] to pass the ball.')
        assert ('rationale: the ball is near' in e.text) == e.rationale
        assert e.text == e.text.lower()
        assert e.text == student_text(q, RegionMap(e.order), e.rationale)
        assert [r.id for r in e.regions] == e.order
    assert [make_example(q, example_rng(7, 0, i)) for i in range(400)] == exs   # seeded: repeatable
    assert [make_example(q, example_rng(8, 0, i)).order for i in range(50)] != [e.order for e in exs[:50]]
    ev = make_example(q, train=False)
    assert ev.order == [3, 5] and ev.rationale and 'rationale:' in ev.text     # evaluation view: fixed

def test_release_rows_build_examples(tmp_path):
    rows = list(read_jsonl(FIX/'lskd'/'corpus_release.jsonl'))
    for i, row in enumerate(rows):
        e = make_example(row, example_rng(0, 0, i))
        q = lskd_row_to_qar(row)
        assert set(q.region) <= set(e.order) <= set(q.region_all)
        assert e.text == e.text.lower() and e.text.startswith('question: ')

def test_unknown_region_is_a_clear_error():
    q = replace(qar(), answer='[9] runs.', region=[])
    with pytest.raises(Exception, match=r'refers to region \[9\], which does not exist'): make_example(q, example_rng(0, 0, 0))

# ---------------------------------------------------------------- streaming
def _big_corpus(path, n):
    q = qar().to_dict()
    with open(path, 'w') as f:
        for i in range(n): f.write(json.dumps({**q, 'id': f'q{i}', 'question': f'Why is [3] looking at [5] ({i})?'}) + '\n')
    return path

def _peak(f):
    tracemalloc.start(); out = f(); peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    return out, peak

def test_stream_memory_stays_flat(tmp_path):
    from lskd.data.table import corpus_table
    small, big = _big_corpus(tmp_path/'s.jsonl', 2000), _big_corpus(tmp_path/'b.jsonl', 8000)
    (_, c1), (_, c2) = _peak(lambda: corpus_table(small)), _peak(lambda: corpus_table(big))      # the conversion to Arrow, once
    n1, p1 = _peak(lambda: sum(len(b) for _, _, b in CorpusStream(small, batch_size=16, epochs=1)))
    n2, p2 = _peak(lambda: sum(len(b) for _, _, b in CorpusStream(big, batch_size=16, epochs=1)))
    assert (n1, n2) == (2000, 8000)
    size = big.stat().st_size
    print(f'peak traced memory: converting {c1/1e6:.2f} / {c2/1e6:.2f} MB, streaming {p1/1e6:.2f} / {p2/1e6:.2f} MB for 2000 / 8000 rows ({size/1e6:.1f} MB file)')
    assert p2 < size / 4                       # the 4x larger corpus is never held in memory
    assert p2 < 1.5 * p1 + 200_000             # ... and the peak does not grow with it
    assert c2 < 1.5 * c1 + 200_000             # the conversion holds one record batch at a time

def test_stream_is_seeded_resumable_and_sharded(toy):
    corpus, _ = toy
    texts = lambda **kw: [(ep, b, [e.text for e in bt]) for ep, b, bt in CorpusStream(corpus, batch_size=4, seed=3, epochs=2, **kw)]
    full = texts()
    assert full == texts()
    assert texts(start=(1, 2)) == full[6:]
    assert [t for _, _, t in full[:4]] != [t for _, _, t in full[4:]]       # a new order (and new views) each epoch
    parts = [texts(rank=r, world_size=2) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 4

# ---------------------------------------------------------------- training
def _weights(out):
    from safetensors.torch import load_file
    return load_file(str(Path(out)/'model.safetensors'))

def test_loss_decreases_with_toy_encoders(toy, tmp_path):
    corpus, root = toy
    s = distill(corpus, tmp_path/'run', DistillConfig(steps=40, batch_size=8, image_root=str(root), save_every=1000, **TOY), progress=False)
    h = list(read_jsonl(tmp_path/'run'/'history.jsonl'))
    first, last = sum(r['loss'] for r in h[:5])/5, sum(r['loss'] for r in h[-5:])/5
    assert last < 0.7 * first, (first, last)
    assert (tmp_path/'run'/'loss.png').stat().st_size > 1000
    assert s['steps'] == 40 and s['examples_per_s'] > 0

def test_exact_resume_equals_straight_run(toy, tmp_path):
    corpus, root = toy
    cfg = DistillConfig(steps=8, batch_size=4, grad_accum=2, image_root=str(root), save_every=4, keep_checkpoints=5, **TOY)
    distill(corpus, tmp_path/'straight', cfg, progress=False)
    # an interrupted run: only the step-4 checkpoint exists; resuming must reproduce the straight run exactly
    (tmp_path/'resumed'/'checkpoints').mkdir(parents=True)
    shutil.copytree(tmp_path/'straight'/'checkpoints'/'step-000004', tmp_path/'resumed'/'checkpoints'/'step-000004')
    assert latest_checkpoint(tmp_path/'resumed').name == 'step-000004'
    distill(corpus, tmp_path/'resumed', cfg, resume=True, progress=False)
    a, b = _weights(tmp_path/'straight'), _weights(tmp_path/'resumed')
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    la = [r['loss'] for r in read_jsonl(tmp_path/'straight'/'history.jsonl')]
    lb = [r['loss'] for r in read_jsonl(tmp_path/'resumed'/'history.jsonl')]
    assert la == lb
    # and a resumed run really starts from the checkpoint: a fresh run with another seed differs
    distill(corpus, tmp_path/'other', replace(cfg, seed=1), progress=False)
    assert any(not torch.equal(a[k], v) for k, v in _weights(tmp_path/'other').items())

def test_data_loader_workers_change_nothing(toy, tmp_path):
    "num_workers only moves example drawing to other processes: same batches, same weights, also when resumed"
    corpus, root = toy
    cfg = DistillConfig(steps=6, batch_size=4, grad_accum=2, image_root=str(root), save_every=3, keep_checkpoints=5, **TOY)
    distill(corpus, tmp_path/'w0', cfg, progress=False)
    distill(corpus, tmp_path/'w2', replace(cfg, num_workers=2), progress=False)
    (tmp_path/'r2'/'checkpoints').mkdir(parents=True)
    shutil.copytree(tmp_path/'w0'/'checkpoints'/'step-000003', tmp_path/'r2'/'checkpoints'/'step-000003')
    distill(corpus, tmp_path/'r2', replace(cfg, num_workers=1), resume=True, progress=False)
    # one batch a step, resumed after 3 of the epoch's 4 batches: the workers' turns start mid-epoch and cross its end
    one = replace(cfg, grad_accum=1)
    distill(corpus, tmp_path/'o0', one, progress=False)
    (tmp_path/'o2'/'checkpoints').mkdir(parents=True)
    shutil.copytree(tmp_path/'o0'/'checkpoints'/'step-000003', tmp_path/'o2'/'checkpoints'/'step-000003')
    distill(corpus, tmp_path/'o2', replace(one, num_workers=2), resume=True, progress=False)
    b = _weights(tmp_path/'o0')
    assert all(torch.equal(b[k], v) for k, v in _weights(tmp_path/'o2').items()), 'o2'
    a = _weights(tmp_path/'w0')
    for run in ('w2', 'r2'):
        b = _weights(tmp_path/run)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run

def test_resume_from_other_settings_is_refused(toy, tmp_path):
    corpus, root = toy
    distill(corpus, tmp_path/'r', DistillConfig(steps=2, batch_size=4, image_root=str(root), save_every=2, **TOY), progress=False)
    cfg = DistillConfig(steps=4, batch_size=4, image_root=str(root), **{**TOY, 'model_config': {**TOY['model_config'], 'dim': 16}})
    with pytest.raises(ValueError, match='does not fit this model'): distill(corpus, tmp_path/'r', cfg, resume=True, progress=False)

def test_trained_student_loads_for_evaluation(toy, tmp_path):
    from lskd.stages.evaluate import load_scorer
    corpus, root = toy
    distill(corpus, tmp_path/'run', DistillConfig(steps=3, batch_size=4, image_root=str(root), **TOY), progress=False)
    for spec in (f'fused:{tmp_path/"run"}', str(tmp_path/'run')):
        sc = load_scorer(spec)
        e = make_example(next(read_jsonl(corpus, QAR)), train=False)
        im, boxes = e.draw(root)
        out = sc.score(sc.encode_images([im], [boxes]), [0, 0], [e.text, 'question: what is this?'])
        assert out['itm'].shape == (2,) and ((out['itm'] >= 0) & (out['itm'] <= 1)).all()

# ---------------------------------------------------------------- BLIP-2
@pytest.fixture(scope='module')
def tiny_blip2(tmp_path_factory):
    from lskd.models.blip2 import build_tiny_blip2
    return build_tiny_blip2(tmp_path_factory.mktemp('blip2')/'tiny')

def test_blip2_one_step_changes_qformer_not_vision(toy, tiny_blip2):
    corpus, root = toy
    net = StudentNet(make_student(DistillConfig(model='blip2', model_config={'path': str(tiny_blip2)}, batch_size=4), DEVICE))
    exs = next(iter(CorpusStream(corpus, batch_size=4, epochs=1)))[2]
    model = net.model.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(trainable(net).values(), lr=1e-3)
    net.train()
    assert not model.vision_model.training                         # frozen tower stays in eval mode
    out = net(**student_inputs(net.model, exs, root), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out['loss']) and out['itc'] > 0 and out['itm'] > 0
    out['loss'].backward(); opt.step()
    after = model.state_dict()
    vis = [k for k in before if k.startswith('vision_model.')]
    assert vis and all(torch.equal(before[k], after[k]) for k in vis)
    assert all('vision_model.' not in k for k in trainable(net))
    changed = [k for k in before if k.startswith('qformer.') and not torch.equal(before[k], after[k])]
    assert changed and not torch.equal(before['query_tokens'], after['query_tokens'])

def test_blip2_distill_saves_a_loadable_student(toy, tiny_blip2, tmp_path):
    corpus, root = toy
    cfg = DistillConfig(model='blip2', model_config={'path': str(tiny_blip2)}, steps=2, batch_size=4, image_root=str(root), save_every=1,
                        device=DEVICE, lr=1e-4)
    s = distill(corpus, tmp_path/'b', cfg, progress=False)
    assert s['model'] == 'blip2' and (tmp_path/'b'/'hf'/'config.json').exists()      # a plain save_pretrained folder too
    if DEVICE.startswith('cuda'): assert s['mixed_precision'] in ('bf16', 'fp16')   # 'auto' picks one on a GPU
    sc = load_model(tmp_path/'b', DEVICE)
    e = make_example(next(read_jsonl(corpus, QAR)), train=False)
    im, boxes = e.draw(root)
    assert sc.score(sc.encode_images([im], [boxes]), [0], [e.text])['itm'].shape == (1,)

def test_blip2_with_data_loader_workers(toy, tiny_blip2, tmp_path):
    "workers draw and normalise the images (the family's item_maker); the batches reach the model as (examples, pixels)"
    corpus, root = toy
    cfg = DistillConfig(model='blip2', model_config={'path': str(tiny_blip2)}, steps=2, batch_size=4, image_root=str(root), save_every=2,
                        device=DEVICE, lr=1e-4, seed=0)
    distill(corpus, tmp_path/'w0', cfg, progress=False)
    s2 = distill(corpus, tmp_path/'w2', replace(cfg, num_workers=2), progress=False)
    assert s2['steps'] == 2
    l0 = [r['loss'] for r in read_jsonl(tmp_path/'w0'/'history.jsonl')]
    l2 = [r['loss'] for r in read_jsonl(tmp_path/'w2'/'history.jsonl')]
    assert l0 == pytest.approx(l2, rel=1e-4)

# ---------------------------------------------------------------- CLI
def lskd(*args):
    exe = shutil.which('lskd') or str(Path(sys.executable).parent/'lskd')
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)

def test_cli_end_to_end(toy, tmp_path):
    corpus, root = toy
    (tmp_path/'c.yaml').write_text('batch_size: 4\nlog_every: 1\nmodel_config: {dim: 32, heads: 2, encoders: [toy-image, toy-text]}\n')
    r = lskd('distill', corpus, tmp_path/'out', '--config', tmp_path/'c.yaml', '--image-root', root,
             '--steps', 3, '--save-every', 2, '--quiet')
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s['steps'] == 3 and s['model'] == 'fused'
    out = tmp_path/'out'
    for f in ('model.json', 'model.safetensors', 'history.jsonl', 'loss.png', 'config.json'): assert (out/f).exists(), f
    assert json.loads((out/'config.json').read_text())['batch_size'] == 4
    r = lskd('distill', corpus, tmp_path/'o2', '--config', tmp_path/'c.yaml', '--image-root', root, '--steps', 1, '--no-pointing', '--grounding', '--quiet')
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path/'o2'/'config.json').read_text()); assert (c['pointing'], c['grounding']) == (False, True)
    r = lskd('distill', corpus, tmp_path/'out', '--image-root', root, '--batch-size', 4, '--steps', 5,
             '--config', tmp_path/'c.yaml', '--quiet')                          # continues from OUT's newest checkpoint (--no-resume: starts over)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])['steps'] == 5
    assert latest_checkpoint(out).name == 'step-000005'

def test_cli_errors(toy, tmp_path):
    corpus, root = toy
    r = lskd('distill', tmp_path/'none.jsonl', tmp_path/'o', '--model', 'bow')
    assert r.returncode == 2 and 'corpus not found' in r.stderr and 'Traceback' not in r.stderr
    r = lskd('distill', corpus, tmp_path/'o', '--model', 'blip2')
    assert r.returncode == 2 and 'build_tiny_blip2' in r.stderr
    r = lskd('distill', corpus, tmp_path/'o', '--model', 'clip')
    assert r.returncode == 2 and "unknown model family 'clip'; the families are: blip2, bow, fused" in r.stderr
    r = lskd('distill', corpus, tmp_path/'o', '--image-root', tmp_path/'nowhere', '--model', 'bow')
    assert r.returncode == 2 and 'image root not found' in r.stderr
    (tmp_path/'bad.yaml').write_text('stepz: 3\n')
    r = lskd('distill', corpus, tmp_path/'o', '--config', tmp_path/'bad.yaml')
    assert r.returncode == 2 and "distill: unknown key 'stepz'" in r.stderr
