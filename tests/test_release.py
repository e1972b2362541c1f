"""`lskd convert-release` against the release's own model code (tests/lavis_ref: the release's files, unchanged)."""
import json, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
sys.path.insert(0, str(Path(__file__).parent))
from lavis_ref import tiny_blip2, runner_checkpoint, student_scores, critic_scores
from lskd.models.blip2 import bert_tokenizer, pixel_values
from lskd.data.refs import TEXT_STYLES
from lskd.data.records import QAR, Region
from lskd.stages.critic import Critic
from lskd.models.core import load_model
from lskd.models.release import convert_release, ReleaseArch, load_checkpoint

TINY = ReleaseArch(image_size=64, vision_heads=2, qformer_heads=2)

@pytest.fixture(scope='module')
def tok(): return bert_tokenizer()

def _images(n, seed=0): return [Image.fromarray(np.random.default_rng(seed + i).integers(0, 255, (40 + 9*i, 90, 3), dtype=np.uint8)) for i in range(n)]

def _texts(style, n):
    f = lambda i: {'question': f'What is [0] doing with [{i % 3 + 1}] at the table number {i}?', 'answer': 'Eating ' * i + 'lunch.',
                   'rationale': 'There is a plate in front of [0] and a fork, ' * (i % 4)}
    return [TEXT_STYLES[style](f(i)) for i in range(n)]

def _diffs(a, b): return {k: (a[k].float() - b[k].float()).abs().max().item() for k in a}

@pytest.mark.parametrize('size', [64, 96])
def test_student_matches_release(tmp_path, tok, size):
    "ITM probabilities and ITC similarities within 1e-4 of the release's Blip2ITM; at 96 px the ViT's 64 px position grid is resized as LAVIS does"
    eva64 = {k[len('visual_encoder.'):]: v for k, v in tiny_blip2('student', tok, seed=5).state_dict().items() if k.startswith('visual_encoder.')}
    ref = tiny_blip2('student', tok, seed=1, img_size=size, vision_state=eva64 if size != 64 else None)
    ck, eva = runner_checkpoint(ref, tmp_path/'release')
    if size != 64: torch.save(eva64, eva)            # the ViT file at its own size, as eva_vit_g.pth is at 224
    rep = convert_release(ck, tmp_path/'out', vision=eva, arch=ReleaseArch(size, 2, 2), tokenizer=tok)
    assert rep['unused'] == [] and rep['used'] + len(rep['dropped']) == rep['checkpoint_keys'] + rep['vision_keys']
    assert set(rep['dropped']) == {k for k in load_checkpoint(ck) if k.startswith('Qformer.cls.')} | {'Qformer.bert.embeddings.position_ids'}
    assert rep['position_grid'] == ('4 -> 4' if size == 64 else '4 -> 6')
    assert not any(k.startswith('visual_encoder.') for k in load_checkpoint(ck)), 'the runner drops the frozen ViT'
    m = load_model(tmp_path/'out'); assert m.text_style == 'release' and m.bundle.size == size
    images, texts = _images(6), _texts('release', 6)
    pix = pixel_values(m.bundle, images)
    with torch.no_grad(): img, txt = m.collate_images(list(pix)), m.encode_texts(texts); mine = {'itm': m.itm(img, txt), 'itc': m.itc(img, txt)}
    theirs = student_scores(ref, pix, texts)
    d = _diffs(mine, theirs)
    print(f'student {size}px: max |ITM diff| {d["itm"]:.2e}, max |ITC diff| {d["itc"]:.2e}; keys: {rep["checkpoint_keys"]} + {rep["vision_keys"]} in, '
          f'{rep["used"]} used, {len(rep["dropped"])} dropped, {rep["target_params"]} target tensors set')
    assert max(d.values()) <= 1e-4, d
    assert theirs['itm'].std() > 1e-3 and theirs['itc'].std() > 1e-3, 'scores vary across pairs (else the check proves little)'

def test_critic_matches_release(tmp_path, tok):
    "P(accept) and both regression heads within 1e-4 of the release's Blip2Critic; the converted critic scores triples from disk"
    ref = tiny_blip2('critic', tok, seed=2)
    ck, eva = runner_checkpoint(ref, tmp_path/'release')
    assert not any(k.startswith('Qformer.cls.') for k in load_checkpoint(ck)), 'the critic froze its ITG head, so the runner dropped it'
    rep = convert_release(ck, tmp_path/'critic', kind='critic', vision=eva, arch=TINY, tokenizer=tok)
    assert sorted(rep['absent_in_release']) == ['text_projection.bias', 'text_projection.weight', 'vision_projection.bias', 'vision_projection.weight']
    c = Critic.load(tmp_path/'critic'); assert (c.threshold, c.text_style, c.net.head_kind) == (0.8, 'release-critic', 'release')
    m = c.net.model; texts = _texts('release-critic', 5); pix = pixel_values(m.bundle, _images(5, 10))
    with torch.no_grad():
        img = m.collate_images(list(pix)); o = c.net(img, m.encode_texts(texts))
        assert torch.isnan(m.itc(img, m.encode_texts(texts))).all(), 'no ITC without trained projections'
    mine = {'itm': o['itm'].softmax(-1)[:, 1], 'qa': o['scores'][:, 0], 'rationale': o['scores'][:, 1]}
    d = _diffs(mine, critic_scores(ref, pix, texts)); print('critic max abs diffs', d)
    assert max(d.values()) <= 1e-4, d
    # end to end through Critic.predict: a triple on an image file, drawn and worded as the release's critic reads it
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path/'a.jpg')
    q = QAR(id='t0', image=str(tmp_path/'a.jpg'), regions=[Region(0, [5, 5, 40, 50], 'person'), Region(1, [30, 10, 70, 55], 'cup')],
            question='What is [0] holding?', answer='[1].', rationale='[0] lifts [1].')
    p = c.predict([q], root=None)
    assert 0 <= p['prediction'][0] <= 1 and np.isfinite(p['qa_score'][0])

def test_conversion_fails_on_leftovers(tmp_path, tok):
    "A key with no place, or a target tensor no key sets, stops the conversion and names it"
    ref = tiny_blip2('student', tok)
    ck, eva = runner_checkpoint(ref, tmp_path/'r')
    sd = load_checkpoint(ck)
    torch.save({'model': {**sd, 'Qformer.bert.pooler.dense.weight': torch.zeros(2, 2)}}, tmp_path/'extra.pth')
    with pytest.raises(ValueError, match='no place.*pooler'): convert_release(tmp_path/'extra.pth', tmp_path/'o1', vision=eva, arch=TINY, tokenizer=tok)
    torch.save({'model': {k: v for k, v in sd.items() if k != 'itm_head.bias'}}, tmp_path/'less.pth')
    with pytest.raises(ValueError, match="missing.*itm_head.bias"): convert_release(tmp_path/'less.pth', tmp_path/'o2', vision=eva, arch=TINY, tokenizer=tok)
    with pytest.raises(ValueError, match='not divisible by 5 heads: set --vision-heads'):
        convert_release(ck, tmp_path/'o3', vision=eva, arch=ReleaseArch(64, 5, 2), tokenizer=tok)

def test_cli(tmp_path, tok):
    "`lskd convert-release` as a user types it, then `lskd evaluate` reads the folder"
    ck, eva = runner_checkpoint(tiny_blip2('student', tok), tmp_path/'r')
    r = subprocess.run([sys.executable, '-m', 'lskd.app.cli', 'convert-release', str(ck), str(tmp_path/'student'), '--vision', str(eva),
                        '--image-size', '64', '--vision-heads', '2', '--qformer-heads', '2'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '0 unused, 0 missing' in r.stdout
    meta = json.loads((tmp_path/'student'/'model.json').read_text())
    assert meta['family'] == 'blip2' and meta['config']['text_style'] == 'release'
    r = subprocess.run([sys.executable, '-m', 'lskd.app.cli', 'convert-release', str(ck), str(tmp_path/'x')], capture_output=True, text=True)
    assert r.returncode == 2 and 'pass --vision eva_vit_g.pth' in r.stderr

def test_release_text_protocol_in_evaluation(tmp_path, tok):
    "A converted student reads VCR as the release built its input: `question: ` + lower-cased `{q} answer: {a} [rationale: {r}]`, <= 70 words"
    from lskd.stages.evaluate import evaluate
    ck, eva = runner_checkpoint(tiny_blip2('student', tok), tmp_path/'r')
    convert_release(ck, tmp_path/'student', vision=eva, arch=TINY, tokenizer=tok)
    m = load_model(tmp_path/'student'); seen = []
    score = m.score
    m.score = lambda enc, index, texts, **k: (seen.extend(texts), score(enc, index, texts, **k))[1]
    fix = Path(__file__).parent/'fixtures'/'eval'
    res = evaluate('vcr', fix/'vcr'/'val.jsonl', [m], image_root=fix/'images'/'vcr1images', limit=2)
    assert seen and all(t.startswith('question: ') and t == t.lower() and len(t.split(' ')) <= 71 for t in seen)
    assert any(' answer: ' in t and ' rationale: ' in t for t in seen) and any(' answer: ' in t and ' rationale: ' not in t for t in seen)
    assert res['n_questions'] == 2

@pytest.mark.slow   # ~1.6 min in CI: out of the default run to keep CI under 30 min (test_cli runs the same commands' parts)
def test_readme_release_commands(tmp_path, tok):
    "The README's commands for the release, as written, with tiny stand-ins for the checkpoints and the fixtures for the data"
    import re, shlex
    readme = (Path(__file__).parents[1]/'README.md').read_text()
    block = readme.split("### The authors' release (GPU users)")[1].split('```bash')[1].split('```')[0]
    cmds = [shlex.split(re.sub(r'#.*', '', c)) for c in block.replace('\\\n', ' ').strip().splitlines()]
    assert [c[:2] for c in cmds] == ([['lskd', 'convert-release']]*2 + [['lskd', 'evaluate']]*2 + [['lskd', 'critic'], ['lskd', 'evaluate'], ['lskd', 'distill'],
                                     ['accelerate', 'launch'], ['lskd', 'run']])
    cmds = cmds[:-1]                                # the paper pipeline: tests/test_paper_config.py runs its tiny twin
    from lskd.models.blip2 import build_tiny_blip2
    fix = Path(__file__).parent/'fixtures'
    for row in map(json.loads, open(fix/'lskd/corpus_release.jsonl')):     # the release rows' VG/VCR images, under one root
        (tmp_path/'images'/row['image']).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 600, 3), dtype=np.uint8)).save(tmp_path/'images'/row['image'])
    rows = [json.loads(l) for l in open(fix/'lskd/corpus_release.jsonl')]
    with open(tmp_path/'corpus_1M.jsonl', 'w') as f:                    # the 1M corpus: its rows, four times over
        for k in range(4): f.writelines(json.dumps({**r, 'index': 100*k + r['index']}) + '\n' for r in rows)
    stand = {}
    for kind, seed in (('student', 0), ('critic', 1)):
        ck, eva = runner_checkpoint(tiny_blip2(kind, tok, seed=seed), tmp_path/f'release_{kind}')
        stand[kind] = ck; stand['eva_vit_g.pth'] = eva
    subs = {'Unified_qa_chatgpt_pretrain1_v2/boxes_480_contrastive_1M/checkpoint_best.pth': stand['student'],
            'unified_vqa_critic_v2/checkpoint_best.pth': stand['critic'], 'eva_vit_g.pth': stand['eva_vit_g.pth'],
            'vcr1annots/val.jsonl': fix/'eval/vcr/val.jsonl', 'vcr1images': fix/'eval/images/vcr1images',
            'visualcomet/val_annots.json': fix/'eval/visualcomet/val_annots.json', 'corpus.jsonl': fix/'lskd/corpus_release.jsonl',
            'images': tmp_path/'images', 'cuda': 'cpu', 'sherlock/val_comparison.json': fix/'eval/sherlock/comparison.json',
            'sherlock/val_instances.json': fix/'eval/sherlock/instances.json', 'sherlock/images': fix/'eval/images', 'chatgpt_qar_filtered_threshold_0.8_1M.jsonl': tmp_path/'corpus_1M.jsonl',
            'path=blip2-itm-vit-g': f"path={build_tiny_blip2(tmp_path/'blip2-itm-vit-g', tokenizer=tok)}", 'image_size=480': 'image_size=96'}
    def sub(a):
        name, eq, rest = a.rpartition('=')
        if eq and a not in subs: return f'{name}={sub(rest)}'
        return str(subs.get(a, tmp_path/a if a.startswith(('release/', 'results/', 'scored', 'runs/')) else a))
    for c in cmds:
        if c[0] == 'accelerate':     # 8 GPUs -> 2 CPU processes (gloo), the same launcher underneath
            c = ['lskd', *c[c.index('lskd.app.cli') + 1:], '--device', 'cpu']; launch = ['-m', 'torch.distributed.run', '--nproc_per_node', '2', '-m', 'lskd.app.cli']
        else: launch = ['-m', 'lskd.app.cli']
        argv = [sub(a) for a in c[1:]]
        if c[1] == 'convert-release': argv += ['--image-size', '64', '--vision-heads', '2', '--qformer-heads', '2']   # the tiny stand-ins
        if c[1] == 'evaluate': argv += ['--limit', '2', '--quiet']
        if c[1] == 'distill': argv += ['--steps', '2', '--batch-size', '2', '--quiet']
        r = subprocess.run([sys.executable, *launch, *argv], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (c, r.stderr[-2000:])
        if c[1] == 'distill': summaries = [json.loads(l) for l in r.stdout.splitlines() if l.startswith('{')]; assert len(summaries) == 1, r.stdout
    assert summaries[0]['processes'] == 2                                     # the last: the two-process run, reported once
    assert json.loads((tmp_path/'results/vcr/results.json').read_text())['n_questions'] == 2
    assert (tmp_path/'results/visualcomet/results.json').exists()
    for o in ('blip2_1M', 'blip2_1M_8gpu'):                                 # the trained students, model folders at 96 px
        assert load_model(tmp_path/'runs'/o).bundle.size == 96
    assert sum(1 for _ in open(tmp_path/'scored'/'scored.jsonl')) == sum(1 for _ in open(fix/'lskd/corpus_release.jsonl'))

def test_transformers_pitfalls(tmp_path, tok):
    """The pitfalls users report for `Blip2ForImageTextRetrieval`: its own forward (`use_image_text_matching_head` True: ITM,
    False: ITC) on a converted model agrees with the release; loaded in fp16 (the ViT in half, the Q-Former kept in fp32 by
    transformers) it stays close to fp32, so a converted model is not the "0.5 for everything" of the fp16 report"""
    from lskd.models.blip2 import load_blip2, tokenize
    ref = tiny_blip2('student', tok, seed=4)
    ck, eva = runner_checkpoint(ref, tmp_path/'r')
    convert_release(ck, tmp_path/'s', vision=eva, arch=TINY, tokenizer=tok)
    texts = _texts('release', 4); b = load_blip2(tmp_path/'s'/'hf'); pix = pixel_values(b, _images(4, 20))
    ids, mask = tokenize(b, texts)
    with torch.no_grad():
        itm = torch.stack([b.model(pixel_values=pix[i:i+1], input_ids=ids[i:i+1], attention_mask=mask[i:i+1], use_image_text_matching_head=True)
                           .logits_per_image.softmax(-1)[0, 1] for i in range(4)])
        itc = b.model(pixel_values=pix, input_ids=ids, attention_mask=mask).logits_per_image.diagonal()
    theirs = student_scores(ref, pix, texts)
    d = _diffs({'itm': itm, 'itc': itc}, theirs); print('transformers forward vs release', d)
    assert max(d.values()) <= 1e-4, d
    h = load_blip2(tmp_path/'s'/'hf', dtype=torch.float16)
    assert h.model.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16 and h.model.qformer.layernorm.weight.dtype == torch.float32
    try:
        with torch.no_grad(): itm16 = torch.stack([h.model(pixel_values=pix[i:i+1].half(), input_ids=ids[i:i+1], attention_mask=mask[i:i+1],
                                                           use_image_text_matching_head=True).logits_per_image.softmax(-1)[0, 1] for i in range(4)])
    except RuntimeError as e: pytest.skip(f'fp16 does not run on this CPU: {e}')
    print('fp16 vs release, max |ITM diff|', (itm16.float() - theirs['itm']).abs().max().item())
    assert (itm16.float() - theirs['itm']).abs().max() <= 1e-2
