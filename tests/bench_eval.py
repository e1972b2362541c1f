"""The evaluation at VCR-val size on one machine: a synthetic VCR-format set of 26.5k questions, `evaluate('vcr', ...)` with the
fused student, the wall time split into the model's calls and the rest.

    python tests/bench_eval.py [--questions 26534] [--encoders real|toy] [--dir /tmp/lskd-bench-eval]

Data: generated images (320 x 240, 2-5 boxes each, 10 questions per image as VCR val has ~2.7) with VCR metadata files and a
val.jsonl in VCR's format (4 answer and 4 rationale choices, tokens with region lists). Model: the fused family (real offline
encoders, or `--encoders toy`), untrained. Measured in one process, torch on 1 thread, nothing else running:
  model    the scorer's own calls (`encode_images`, `score`), timed around each call
  images   opening each image and drawing its regions (`_prepare`, the model's input)
  metrics  `metric_intervals` (the metrics and their 1,000-sample bootstrap)
  rest     everything else: reading the file (twice: counting, then scoring), building the questions, writing the predictions
Target (issue 36): everything but the model <= 20% of the total."""
import argparse, json, random, time
from pathlib import Path

WORDS = 'man woman person dog car table chair street wall window cup shirt hat bag phone door sign tree'.split()
VERBS = 'looking holding standing sitting walking talking smiling wearing reading waiting'.split()


def make_vcr(d, n, per_image=10):
    "images, metadata and val.jsonl (once per size)"
    from PIL import Image, ImageDraw
    ann = d/f'val_{n}.jsonl'
    if ann.exists(): return ann
    rng = random.Random(0); (d/'vcr1images'/'movie').mkdir(parents=True, exist_ok=True)
    with open(ann, 'w') as f:
        for q in range(n):
            k = q // per_image; img, meta = f'movie/img{k}.jpg', f'movie/img{k}.json'
            rng_i = random.Random(k); nb = rng_i.randint(2, 5)
            boxes = [[x := rng_i.randrange(0, 240), y := rng_i.randrange(0, 160), x + 70.0, y + 70.0, 0.9] for _ in range(nb)]
            if q % per_image == 0 and not (d/'vcr1images'/img).exists():
                im = Image.new('RGB', (320, 240), (rng_i.randrange(256),) * 3); dr = ImageDraw.Draw(im)
                for b in boxes: dr.rectangle(b[:4], fill=(rng_i.randrange(256), 80, 80))
                im.save(d/'vcr1images'/img, quality=90)
                (d/'vcr1images'/meta).write_text(json.dumps({'boxes': boxes, 'width': 320, 'height': 240, 'names': ['person'] * nb}))
            r = lambda: [rng.randrange(nb)]
            sent = lambda: [r(), rng.choice(VERBS), 'the', rng.choice(WORDS), 'near', r(), '.']
            f.write(json.dumps({'movie': 'movie', 'objects': ['person'] * nb, 'img_fn': img, 'metadata_fn': meta,
                                'question': ['Why', 'is', r(), rng.choice(VERBS), '?'], 'answer_choices': [sent() for _ in range(4)],
                                'answer_label': rng.randrange(4), 'rationale_choices': [sent() for _ in range(4)], 'rationale_label': rng.randrange(4),
                                'img_id': f'val-{k}', 'question_number': q % per_image, 'annot_id': f'val-{q}'}) + '\n')
    return ann


class Timed:
    "A scorer that times its model's calls"
    def __init__(self, scorer): self.s, self.seconds = scorer, 0.0
    def __getattr__(self, k): return getattr(self.s, k)
    def _t(self, f, *a):
        t = time.perf_counter(); r = f(*a); self.seconds += time.perf_counter() - t; return r
    def encode_images(self, *a): return self._t(self.s.encode_images, *a)
    def score(self, *a): return self._t(self.s.score, *a)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--questions', type=int, default=26_534); p.add_argument('--encoders', choices=['real', 'toy'], default='real')
    p.add_argument('--dir', default='/tmp/lskd-bench-eval')
    a = p.parse_args(); d = Path(a.dir); d.mkdir(parents=True, exist_ok=True)
    import torch; torch.set_num_threads(1)
    import lskd.stages.evaluate as E
    from lskd.models.core import build_model
    ann = make_vcr(d, a.questions)
    folder = d/f'model-{a.encoders}'
    if not (folder/'model.json').exists():
        torch.manual_seed(0); build_model('fused', **({'encoders': ['toy-image', 'toy-text']} if a.encoders == 'toy' else {})).save(folder)
    spent = {'images': 0.0, 'metrics': 0.0}
    def timed(name, f):
        def g(*x, **k):
            t = time.perf_counter(); r = f(*x, **k); spent[name] += time.perf_counter() - t; return r
        return g
    E._prepare, E.metric_intervals = timed('images', E._prepare), timed('metrics', E.metric_intervals)
    scorer = Timed(E.load_scorer(str(folder)))
    t0 = time.perf_counter()
    res = E.evaluate('vcr', ann, [scorer], d/'out', image_root=d/'vcr1images', progress=False)
    total = time.perf_counter() - t0
    rest = total - scorer.seconds - spent['images'] - spent['metrics']
    m = res['models'][0]
    print(json.dumps({'questions': res['n_questions'], 'tasks': res['n_tasks'], 'total_s': total, 'model_s': scorer.seconds, **{f'{k}_s': v for k,v in spent.items()},
                      'rest_s': rest, 'metrics': m['metrics']}))
    print("\n| questions | total s | model s | images (open + draw) s | metrics + bootstrap s | rest (read, build, write) s | not model / total |")
    print('|---|---|---|---|---|---|---|')
    print(f"| {res['n_questions']:,} | {total:.0f} | {scorer.seconds:.0f} | {spent['images']:.0f} | {spent['metrics']:.0f} | {rest:.0f} | {(total - scorer.seconds)/total:.2f} |")


if __name__ == '__main__': main()
