"""The Ray executor against the local one: critic scoring of 20k triples and evaluation of 5k MC questions with the fused model.

    python tests/bench_ray.py [--triples 20000] [--questions 5000] [--encoders real|toy] [--batch-size 64] [--dir /tmp/lskd-bench-ray] [--configs local ray1 ray2]

Configurations, each in a fresh process, nothing else running:
  local   the local executor: this process, torch on 1 thread
  ray1    `executor: ray`, 1 worker x 1 CPU (1 torch thread)
  ray2    `executor: ray`, 2 workers x 1 CPU each
The Ray configurations start a local Ray (2 CPUs) first, its start timed apart (a cluster would be running already); the
stage then runs on it. Items/s = items / the stage's wall time (`score_corpus`, `evaluate`), reading
and writing included. Targets (issue 36): ray1 >= 0.85 x local; ray2 >= 1.7 x ray1.
Data: generated images (320 x 240, 2-4 coloured boxes each) and a corpus of triples about them (lskd format); the fused
model (real offline encoders: EfficientNet-Lite0 and MiniLM, or `--encoders toy`), untrained (the speed does not depend on it)."""
import argparse, json, random, subprocess, sys, time
from pathlib import Path

COLOURS = ['red', 'blue', 'green', 'yellow', 'purple', 'orange']
RGB = {'red': (220, 40, 40), 'blue': (40, 70, 220), 'green': (40, 180, 60), 'yellow': (230, 210, 40), 'purple': (140, 50, 170), 'orange': (240, 140, 30)}


def make_data(d, n_triples, per_image=20):
    "Images and corpus.jsonl (once per size)"
    from PIL import Image, ImageDraw
    from lskd.data.records import QAR, Region
    from lskd.io.jsonl import write_jsonl
    corpus = d/f'corpus_{n_triples}.jsonl'
    if corpus.exists(): return corpus
    (d/'images').mkdir(parents=True, exist_ok=True); rng = random.Random(0); qs = []
    for n in range((n_triples + per_image - 1)//per_image):
        p = d/'images'/f'im{n}.png'; regs = []
        im = Image.new('RGB', (320, 240), (rng.randrange(256), rng.randrange(256), rng.randrange(256))); dr = ImageDraw.Draw(im)
        for i in range(rng.randint(2, 4)):
            x, y = rng.randrange(0, 240), rng.randrange(0, 160); c = rng.choice(COLOURS)
            dr.rectangle((x, y, x + 70, y + 70), fill=RGB[c]); regs.append(Region(i, (x, y, x + 70, y + 70), c))
        if not p.exists(): im.save(p)
        for k in range(per_image):
            if len(qs) == n_triples: break
            a, b = rng.sample(range(len(regs)), 2)
            qs.append(QAR(p.name, f'Why is [{a}] beside [{b}]?', f'[{a}] is {regs[a].label} and waits for [{b}].', f'[{b}] is {regs[b].label} and close to [{a}].',
                          regions=regs, source='bench', id=f'b{n}.{k}'))
    write_jsonl(corpus, qs)
    return corpus


def build_models(d, encoders):
    "The fused model (saved) and an untrained critic on it"
    import torch
    from lskd.models.core import build_model
    from lskd.stages.critic import CriticNet, save_critic
    folder = d/f'model-{encoders}'
    if not (folder/'model'/'model.json').exists():
        torch.manual_seed(0)
        cfg = {'encoders': ['toy-image', 'toy-text']} if encoders == 'toy' else {}
        m = build_model('fused', **cfg); m.save(folder/'model')
        save_critic(CriticNet(m), folder/'critic', {'threshold': 0.5, 'max_regions': 5})
    return folder


def child(what, config, d, corpus, folder, n_questions, bs):
    import torch; torch.set_num_threads(1)
    from lskd.stages.critic import Critic, score_corpus
    from lskd.stages.evaluate import evaluate
    ex, out = {'executor': 'local', 'batch_size': bs}, {}
    if config != 'local':
        import ray
        t0 = time.perf_counter(); ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level='warning')
        out['ray_start_s'] = time.perf_counter() - t0
        ex = {'executor': 'ray', 'num_workers': int(config[3:]), 'cpus_per_worker': 1, 'batch_size': bs}
    o = d/'out'/f'{what}-{config}'
    import shutil; shutil.rmtree(o, ignore_errors=True)
    t0 = time.perf_counter()
    if what == 'score':
        rep = score_corpus(Critic.load(folder/'critic'), corpus, o, image_root=d/'images', executor=ex, resume=False, progress=False)
        out['items'] = rep['n']
    else:
        res = evaluate('mc', corpus, [f"fused={folder/'model'}"], o, image_root=d/'images', progress=False, executor=ex, limit=n_questions)
        out['items'] = res['n_questions']
    out['seconds'] = time.perf_counter() - t0; out['per_s'] = out['items']/out['seconds']
    print(json.dumps(out))


def main():
    if sys.argv[1:2] == ['_child']:
        w, c, d, corpus, folder, nq, bs = sys.argv[2:9]; return child(w, c, Path(d), Path(corpus), Path(folder), int(nq), int(bs))
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--triples', type=int, default=20_000); p.add_argument('--questions', type=int, default=5_000)
    p.add_argument('--encoders', choices=['real', 'toy'], default='real'); p.add_argument('--dir', default='/tmp/lskd-bench-ray')
    p.add_argument('--batch-size', type=int, default=64, help="items per task (the executor's batch_size)")
    p.add_argument('--configs', nargs='+', default=['local', 'ray1', 'ray2']); p.add_argument('--what', nargs='+', default=['score', 'evaluate'])
    a = p.parse_args(); d = Path(a.dir); d.mkdir(parents=True, exist_ok=True)
    corpus = make_data(d, max(a.triples, a.questions)); folder = build_models(d, a.encoders)
    res = {}
    for w in a.what:
        for c in a.configs:
            r = subprocess.run([sys.executable, __file__, '_child', w, c, str(d), str(corpus), str(folder), str(a.questions), str(a.batch_size)], capture_output=True, text=True)
            if r.returncode: sys.exit(f'{w} {c} failed:\n{r.stderr[-3000:]}')
            res[w, c] = json.loads(r.stdout.strip().splitlines()[-1]); print(w, c, res[w, c], flush=True)
    print(f"\n| stage | items | {' | '.join(f'{c} items/s' for c in a.configs)} | ray1 / local | ray2 / ray1 | Ray start s |")
    print('|---|---|' + '---|' * (len(a.configs) + 3))
    for w in a.what:
        r = {c: res[w, c] for c in a.configs}; ps = {c: r[c]['per_s'] for c in r}
        ratio = lambda x, y: f'{ps[x]/ps[y]:.2f}' if x in ps and y in ps else '-'
        starts = ', '.join(f"{r[c]['ray_start_s']:.1f}" for c in r if 'ray_start_s' in r[c]) or '-'
        print(f"| {w} | {r[a.configs[0]]['items']:,} | {' | '.join(f'{ps[c]:.1f}' for c in a.configs)} | {ratio('ray1', 'local')} | {ratio('ray2', 'ray1')} | {starts} |")


if __name__ == '__main__': main()
