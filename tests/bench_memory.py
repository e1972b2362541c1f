"""Peak memory of critic scoring, distillation and evaluation against corpus size (issue: memory flat at scale).

    python tests/bench_memory.py [--rows 1000 10000 100000] [--work /tmp/lskd-mem] [--stages score distill evaluate]

Builds synthetic corpora over lskd's 8 sample photos (data/sample/regions.jsonl, their given regions): row i is a
templated triple about two regions of image i % 8 whose words carry i, so no two rows share a text. A small critic
(2 epochs on 400 rows) and a student (30 steps) are trained once. Then each (stage, rows) runs in a fresh Python
process and reports its peak RSS (ru_maxrss, the process alone; torch and both encoders included):

- score:    `lskd.stages.critic.score_corpus` of all rows (scored.jsonl + filtered.jsonl)
- distill:  `lskd.stages.distill.distill`, 30 steps of batch 16 over the whole corpus (it scans and shuffles every row)
- evaluate: `lskd.stages.evaluate.evaluate('mc', corpus, heldout=0.25)`: q2a questions from every held-out row, 4 candidates

Peak RSS is the child's VmHWM (/proc/self/status), which starts afresh at exec (ru_maxrss does not: Linux carries the
parent's high-water mark over a fork + exec). `--toy` trains both models on lskd.testing's toy encoders instead of
EfficientNet-Lite0 + MiniLM: the data path is the same, the baseline smaller (so growth shows more), and 100k rows take
minutes instead of hours. Prints one JSON line per (stage, rows) and a table with each stage's growth from the smallest
to the largest size. Peak RSS does not depend on CPU contention, so this may run beside other work; its wall times may not.
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

WORDS = 'alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa'.split()

def words(i): "`i` as distinct words, e.g. 'bravo alpha kilo'"; return ' '.join(WORDS[int(d)] for d in str(i))

def make_corpus(path, n, recs):
    "Write `n` synthetic triples over the image records `recs` to `path`"
    from lskd.io.jsonl import JsonlWriter
    from lskd.data.records import QAR
    with JsonlWriter(path) as w:
        for i in range(n):
            r = recs[i % len(recs)]; regs = r.regions[:3]; a, b = regs[0].id, regs[-1].id; w_ = words(i)
            w.write(QAR(r.path, f'Why is [{a}] near [{b}] in scene {w_}?', f'[{a}] is waiting for [{b}] to finish {w_}.',
                        f'[{a}] looks at [{b}] and the {w_} sign is behind them.', regions=regs, source='bench', id=f'b{i}', index=i))
    return path

def vm_hwm():
    "This process's peak RSS in MiB (VmHWM)"
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))/1024

def setup(work, toy=False):
    "Stage the sample photos, train the small critic and student once; returns (image root, critic folder, student folder)"
    from lskd.stages.verbalize import load_annotations, stage_images
    from lskd.io.files import data_path
    root = work/'images'; done = work/'setup.json'
    if done.exists(): return json.loads(done.read_text())
    recs = stage_images(list(load_annotations(data_path('sample/regions.jsonl')).values()), root)
    (work/'recs.json').write_text(json.dumps([r.to_dict() for r in recs]))
    small = make_corpus(work/'small.jsonl', 400, recs)
    from lskd.stages.critic import write_synthetic, train_critic
    syn = write_synthetic(small, work/'critic_data')
    mc = {'encoders': ['toy-image', 'toy-text']} if toy else None
    train_critic([small, syn['synthetic']], syn['labels'], work/'critic', model_config=mc, epochs=2, image_root=str(root), progress=False)
    from lskd.stages.distill import distill
    distill(small, work/'student', dict(steps=30, batch_size=16, image_root=str(root), save_every=30, **({'model_config': mc} if toy else {})), progress=False)
    s = dict(root=str(root), critic=str(work/'critic'), student=str(work/'student'), toy=toy)
    done.write_text(json.dumps(s)); return s

def child(stage, corpus, out, s):
    "Run one stage in this process; its figures"
    t = time.time()
    if stage == 'score':
        from lskd.stages.critic import Critic, score_corpus
        score_corpus(Critic.load(s['critic']), corpus, out, image_root=s['root'], resume=False, progress=False)
    elif stage == 'distill':
        from lskd.stages.distill import distill
        mc = {'model_config': {'encoders': ['toy-image', 'toy-text']}} if s['toy'] else {}
        distill(corpus, out, dict(steps=30, batch_size=16, image_root=s['root'], save_every=30, **mc), progress=False)
    elif stage == 'evaluate':
        from lskd.stages.evaluate import evaluate
        r = evaluate('mc', corpus, [f"student={s['student']}"], image_root=s['root'], out=out, heldout=0.25, progress=False)
    return dict(wall_s=round(time.time() - t, 1), peak_rss_mib=round(vm_hwm(), 1))

def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, nargs='+', default=[1000, 10000, 100000])
    ap.add_argument('--stages', nargs='+', default=['score', 'distill', 'evaluate'])
    ap.add_argument('--work', default='/tmp/lskd-mem')
    ap.add_argument('--toy', action='store_true', help='toy encoders (see above)')
    ap.add_argument('--setup', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--child', nargs=3, metavar=('STAGE', 'CORPUS', 'OUT'), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    if a.child: print(json.dumps(child(*a.child, json.loads((work/'setup.json').read_text())))); return
    if a.setup: setup(work, a.toy); return
    if not (work/'setup.json').exists():   # in a child, so that this process stays small
        subprocess.run([sys.executable, __file__, '--work', str(work), '--setup'] + (['--toy'] if a.toy else []), check=True)
    elif json.loads((work/'setup.json').read_text())['toy'] != a.toy: sys.exit(f'{work} was set up with toy={not a.toy}: use another --work')
    recs = None
    res = {}
    for n in a.rows:
        corpus = work/f'corpus_{n}.jsonl'
        if not corpus.exists():
            from lskd.data.records import ImageRecord
            recs = recs or [ImageRecord.from_dict(r) for r in json.loads((work/'recs.json').read_text())]
            make_corpus(corpus, n, recs)
        for st in a.stages:
            p = subprocess.run([sys.executable, __file__, '--work', str(work), '--child', st, str(corpus), str(work/f'{st}_{n}')],
                               capture_output=True, text=True)
            if p.returncode: sys.exit(f'{st} on {n} rows failed:\n{p.stderr[-3000:]}')
            r = json.loads(p.stdout.strip().splitlines()[-1]); r.update(stage=st, rows=n); res[st, n] = r
            print(json.dumps(r), flush=True)
    print(f"\n| stage | {' | '.join(f'{n:,} rows' for n in a.rows)} | growth |\n|---|{'---|'*len(a.rows)}---|")
    for st in a.stages:
        ms = [res[st, n]['peak_rss_mib'] for n in a.rows]
        cells = ' | '.join('%.0f MiB (%.0f s)' % (m, res[st, n]['wall_s']) for m, n in zip(ms, a.rows))
        print(f"| {st} | {cells} | {100*(ms[-1]/ms[0] - 1):+.1f}% |")

if __name__ == '__main__': main()
