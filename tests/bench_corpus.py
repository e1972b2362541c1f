"""The corpus as a dataset at 10k / 100k / 1M rows: conversion, rows/s delivered to a training loop against a raw read of the
Arrow table, resume to the first batch, peak memory per process.

    python tests/bench_corpus.py [--sizes 10000 100000 1000000] [--rows 20000] [--batch-size 64] [--dir /tmp/lskd-bench-corpus]

Each size: a generated release-format corpus (the released rows' fields, VG/VCR-like image names, 1-4 people each).
Every measurement runs in a fresh process (its peak memory is its own, read from /proc/self/status):
  convert  `corpus_table` on a cold cache: JSONL -> checked triples -> Arrow (once per corpus)
  raw      the limit: the same rows as the loop, in the epoch's permuted order, `batch-size` at a time, read from the memory-mapped
           table and decoded to `QAR`s (`CorpusTable.qars`: what any reader of the table must do to hand triples to Python)
  loop     `CorpusStream` (one process, no workers) feeding a toy model (`toy_loss`: hashed byte-bigram counts, a linear layer, in-batch
           contrastive loss), backward and an SGD step; rows/s of examples through the loss
  resume   a new `CorpusStream` started at the batch of row 90% (of the epoch's order), to its first batch
Peak memory: VmHWM (all resident pages, including the page cache pages of the mapped table the process touched) and the peak of
RssAnon (the process's own memory, sampled every 10 ms)."""
import argparse, json, os, random, subprocess, sys, threading, time, zlib
from pathlib import Path

def status(key):
    for l in open('/proc/self/status'):
        if l.startswith(key + ':'): return int(l.split()[1]) / 1024   # MiB
    return float('nan')

class AnonPeak:
    "The peak of RssAnon, sampled in a thread"
    def __init__(self): self.peak, self.stop = 0.0, threading.Event(); self.t = threading.Thread(target=self.run, daemon=True); self.t.start()
    def run(self):
        while not self.stop.is_set(): self.peak = max(self.peak, status('RssAnon')); time.sleep(0.01)
    def done(self): self.stop.set(); self.t.join(); self.peak = max(self.peak, status('RssAnon')); return self.peak

WORDS = 'man woman person people dog car table chair street wall window cup shirt hat bag phone door sign tree sky'.split()
VERBS = 'looking holding standing sitting walking talking smiling wearing reading waiting'.split()

def release_row(i, rng):
    n = rng.randint(1, 4); ids = list(range(n))
    refs = [{'name': str(k), 'boxes': [[10.0*k, 20, 10.0*k + 80, 200]], 'obj_guess': 'person'} for k in ids]
    a, b = rng.choice(ids), rng.choice(ids)
    q = ['Why', 'is', [a], rng.choice(VERBS), 'at', 'the', rng.choice(WORDS), '?']
    ans = [[a], 'is', rng.choice(VERBS), 'because', [b], 'is', 'near', 'the', rng.choice(WORDS), '.']
    rat = [[b], 'is', rng.choice(VERBS), 'next', 'to', 'a', rng.choice(WORDS), 'and', [a], 'turns', 'to', 'see', 'it', '.']
    img = f'VG_100K/{2300000 + i // 4}.jpg' if i % 3 else f'vcr1images/movie_{i // 400}/scene_{i // 4}.jpg'
    return {'image': img, 'source': 'vg' if i % 3 else 'vcr', 'split': 'train', 'index': i, 'region': sorted({a, b}), 'region_all': ids,
            'references': refs, 'question': q, 'answer': ans, 'rationale': rat, 'prediction': round(rng.random(), 4)}

def make_corpus(path, n):
    if path.exists() and sum(1 for _ in open(path)) == n: return
    rng = random.Random(n); path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as f:
        for i in range(n): f.write(json.dumps(release_row(i, rng)) + '\n')

def toy_loss(buckets=1024):
    "A toy model that costs little beside the data: counts of hashed byte bigrams of each text (made in torch), a linear layer, in-batch contrastive loss"
    import torch, torch.nn as nn, torch.nn.functional as F
    lin = nn.Linear(buckets, 32); opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    def step(texts):
        bs = [t.encode() for t in texts]; x = torch.frombuffer(bytearray(b''.join(bs)), dtype=torch.uint8).long()
        ids = torch.cat([x[:-1] * 256 + x[1:], x[-1:]]) % buckets            # hashed byte bigrams (one crosses into the next text: a toy)
        row = torch.repeat_interleave(torch.arange(len(bs)), torch.tensor([len(b) for b in bs]))
        h = torch.zeros(len(bs), buckets).index_put_((row, ids), torch.ones(len(ids)), accumulate=True)
        z = F.normalize(lin(h), dim=-1)
        loss = F.cross_entropy(z @ z.T / 0.1, torch.arange(len(texts)))
        opt.zero_grad(); loss.backward(); opt.step(); return loss.item()
    return step

def child(what, corpus, tables, n, rows, bs):
    import numpy as np, torch
    torch.set_num_threads(1)
    from lskd.data.table import corpus_table, CorpusTable
    from lskd.stages.distill import CorpusStream, epoch_order
    anon = AnonPeak(); out = {}
    if what == 'convert':
        t0 = time.perf_counter(); t = corpus_table(corpus, cache_dir=tables); out['seconds'] = time.perf_counter() - t0; out['rows'] = len(t)
        out['arrow_mb'] = t.path.stat().st_size / 2**20
    elif what == 'raw':
        t = corpus_table(corpus, cache_dir=tables); t0 = time.perf_counter(); order, k = epoch_order(len(t), 0, 0), 0
        for s in range(0, (rows // bs) * bs, bs): k += len(t.qars(order[s:s + bs]))
        out['seconds'] = time.perf_counter() - t0; out['rows'] = k
    elif what.startswith('loop'):
        W = int(what[5:] or 0)                         # loop-W: W data-loader workers make the batches
        step, k, t0 = toy_loss(), 0, time.perf_counter()
        stream = CorpusStream(corpus, batch_size=bs, epochs=1, table_dir=tables)
        it = stream if not W else torch.utils.data.DataLoader(stream, batch_size=None, num_workers=W, collate_fn=lambda b: b)
        for _, _, batch in it:
            step([e.text for e in batch]); k += len(batch)
            if k >= (rows // bs) * bs: break
        out['seconds'] = time.perf_counter() - t0; out['rows'] = k
    elif what == 'resume':
        b = int(0.9 * n) // bs                         # the batch that holds row 90% of the epoch's order
        t0 = time.perf_counter(); ep, got, batch = next(iter(CorpusStream(corpus, batch_size=bs, epochs=1, table_dir=tables, start=(0, b))))
        out['seconds'] = time.perf_counter() - t0; out['batch'] = got; out['row'] = got * bs
    out['vmhwm_mib'], out['anon_peak_mib'] = status('VmHWM'), anon.done()
    print(json.dumps(out))

def run(what, corpus, tables, n, a):
    r = subprocess.run([sys.executable, __file__, '_child', what, str(corpus), str(tables), str(n), str(a.rows), str(a.batch_size)],
                       capture_output=True, text=True)
    if r.returncode: sys.exit(f'{what} failed:\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    if sys.argv[1:2] == ['_child']: w, c, t, n, r, b = sys.argv[2:8]; return child(w, Path(c), Path(t), int(n), int(r), int(b))
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000, 1_000_000]); p.add_argument('--rows', type=int, default=20_000)
    p.add_argument('--batch-size', type=int, default=64); p.add_argument('--dir', default='/tmp/lskd-bench-corpus')
    p.add_argument('--keep-tables', action='store_true', help='use the tables of an earlier run (the conversion is not measured again)')
    a = p.parse_args(); res = {}
    for n in a.sizes:
        d = Path(a.dir)/str(n); corpus = d/'corpus.jsonl'; make_corpus(corpus, n)
        tables = d/'tables'; keep = a.keep_tables and any(tables.glob('*.arrow'))
        if not keep:
            for f in tables.glob('*'): f.unlink()
        res[n] = {w: run(w, corpus, tables, n, a) for w in ('convert', 'raw', 'loop', 'loop-1', 'loop-2', 'resume') if not (keep and w == 'convert')}
        if keep: res[n]['convert'] = {'seconds': float('nan'), 'rows': n, 'arrow_mb': sum(f.stat().st_size for f in tables.glob('*.arrow'))/2**20}
        r = res[n]; print(json.dumps({'rows': n, **r}), flush=True)
    print(f"\n| corpus rows | JSONL MB | convert s (rows/s) | Arrow MB | raw read rows/s | loop rows/s (0 / 1 / 2 workers) | loop / raw (0 / 1 / 2 workers) | resume at row -> first batch s | peak VmHWM MiB (raw / loop / resume) | peak RssAnon MiB (raw / loop) |")
    print('|---|---|---|---|---|---|---|---|---|---|')
    for n, r in res.items():
        c, raw, loop, rs = r['convert'], r['raw'], r['loop'], r['resume']
        rr = raw['rows']/raw['seconds']; lr = [r[w]['rows']/r[w]['seconds'] for w in ('loop', 'loop-1', 'loop-2')]
        print(f"| {n:,} | {(Path(a.dir)/str(n)/'corpus.jsonl').stat().st_size/2**20:.0f} | {c['seconds']:.1f} ({c['rows']/c['seconds']:,.0f}) | {c['arrow_mb']:.0f} | "
              f"{rr:,.0f} | {' / '.join(f'{x:,.0f}' for x in lr)} | {' / '.join(f'{x/rr:.2f}' for x in lr)} | {rs['row']:,} -> {rs['seconds']:.2f} | "
              f"{raw['vmhwm_mib']:.0f} / {loop['vmhwm_mib']:.0f} / {rs['vmhwm_mib']:.0f} | {raw['anon_peak_mib']:.0f} / {loop['anon_peak_mib']:.0f} |")

if __name__ == '__main__': main()
