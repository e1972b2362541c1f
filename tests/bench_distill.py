"""Benchmark of the offline (fused) student: examples/s, peak memory, held-out retrieval before/after.

    python tests/bench_distill.py [--corpus C --images ROOT --val-corpus V | --heldout F] [--steps 300] [--device cpu|cuda] [--toy] [--threads N]

Without --corpus it trains on a generated toy corpus (coloured images). Prints one JSON line.
"""
import argparse, json, os, resource, sys, tempfile, time
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--corpus'); ap.add_argument('--images'); ap.add_argument('--val-corpus')
    ap.add_argument('--heldout', type=float, default=0.0, help='images of the corpus held out (lskd.data.stats.heldout_image) for retrieval accuracy')
    ap.add_argument('--steps', type=int, default=300); ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--device', default='cpu'); ap.add_argument('--toy', action='store_true', help='toy encoders')
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--out'); ap.add_argument('--lr', type=float)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from lskd.stages.distill import DistillConfig, distill
    from lskd.testing import toy_corpus
    tmp = Path(tempfile.mkdtemp(prefix='lskd-bench-'))
    corpus, images = a.corpus, a.images
    if corpus is None: corpus, images = toy_corpus(tmp/'toy', n_per_image=64), str(tmp/'toy')
    kw = dict(model_config={'encoders': ['toy-image', 'toy-text']}) if a.toy else {}
    if a.lr: kw['lr'] = a.lr
    cfg = DistillConfig(steps=a.steps, batch_size=a.batch_size, image_root=images, device=a.device, val_corpus=a.val_corpus, heldout=a.heldout,
                        save_every=a.steps, log_every=max(1, a.steps//20), seed=a.seed, **kw)
    if a.device.startswith('cuda'): torch.cuda.reset_peak_memory_stats()
    t = time.time()
    s = distill(corpus, a.out or tmp/'run', cfg, progress=False)
    s.update(wall_s=round(time.time() - t, 1), threads=a.threads, peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1),
             encoders='toy' if a.toy else 'efficientnet-lite0 + all-MiniLM-L6-v2', batch_size=a.batch_size)
    if a.device.startswith('cuda'): s['peak_cuda_mb'] = round(torch.cuda.max_memory_allocated()/2**20, 1)
    print(json.dumps(s))

if __name__ == '__main__': main()
