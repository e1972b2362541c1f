"""Benchmark of the BLIP-2 student at the release's size: examples/s and peak memory of `lskd.stages.distill` training
a randomly initialised `Blip2ForImageTextRetrieval` shaped like Salesforce/blip2-itm-vit-g (ViT-g/14 frozen, 12-layer
Q-Former trained, ITC + ITM). No checkpoint exists offline, so the weights are random: the speed and memory are the
real model's, the losses are not.

    python tests/bench_blip2.py [--device cuda] [--steps 30] [--batch-size 32] [--vision-layers 39] [--num-workers 0] [--image-size 480]

Prints one JSON line (run on a GPU: tests/gpu_check.sh says how).
"""
import argparse, json, resource, tempfile, time
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--device', default='cuda'); ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--batch-size', type=int, default=32); ap.add_argument('--vision-layers', type=int, default=39)
    ap.add_argument('--qformer-layers', type=int, default=12); ap.add_argument('--mixed-precision', default='auto')
    ap.add_argument('--num-workers', type=int, default=0, help='data-loader workers drawing and normalising images')
    ap.add_argument('--image-size', type=int, default=224, help="input side; 480 is the release's (the 224 px position grid resized, as LAVIS does)")
    a = ap.parse_args(argv)
    import torch
    from lskd.models.blip2 import tiny_blip2_config, bert_tokenizer, build_tiny_blip2
    from lskd.stages.distill import DistillConfig, distill
    from lskd.testing import toy_corpus
    tmp = Path(tempfile.mkdtemp(prefix='lskd-bench-blip2-'))
    tok = bert_tokenizer()
    cfg = tiny_blip2_config(vocab_size=len(tok), num_query_tokens=32, image_text_hidden_size=256,
        vision=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=a.vision_layers, num_attention_heads=16,
                    image_size=224, patch_size=14),
        qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=a.qformer_layers, num_attention_heads=12,
                     encoder_hidden_size=1408, cross_attention_frequency=2))
    t = time.time()
    path = build_tiny_blip2(tmp/'blip2-itm-vit-g-random', tokenizer=tok, config=cfg)
    build_s = time.time() - t
    corpus = toy_corpus(tmp/'toy', n_per_image=64)
    dc = DistillConfig(model='blip2', model_config={'path': str(path), 'image_size': a.image_size}, steps=a.steps, batch_size=a.batch_size, image_root=str(tmp/'toy'),
                       device=a.device, save_every=a.steps, log_every=max(1, a.steps//10), lr=1e-5,
                       mixed_precision=a.mixed_precision, num_workers=a.num_workers)
    if a.device.startswith('cuda'): torch.cuda.reset_peak_memory_stats()
    t = time.time()
    s = distill(corpus, tmp/'run', dc, progress=False)
    s.update(wall_s=round(time.time() - t, 1), build_s=round(build_s, 1), batch_size=a.batch_size, num_workers=a.num_workers,
             vision_layers=a.vision_layers, qformer_layers=a.qformer_layers, image_size=a.image_size,
             peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1))
    if a.device.startswith('cuda'): s['peak_cuda_mb'] = round(torch.cuda.max_memory_allocated()/2**20, 1)
    print(json.dumps(s))

if __name__ == '__main__': main()
