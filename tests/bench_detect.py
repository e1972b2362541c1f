"""Figures for the offline COCO detectors (lskd.models.detect) vs OpenCV's HOG people detector on the 20 COCO photos
of people in shared/data/coco_people (not shipped), against the hand-checked boxes in
tests/fixtures/coco_people_regions.jsonl: recall of person boxes at IoU 0.5, share of photos with at least
one region, recall of the other hand-checked boxes of COCO classes, labels found, images/s on CPU.

usage: python tests/bench_detect.py [PHOTO_DIR] [--threads N] [--reps R]
The detectors use the files of `lskd fetch-models`. Timing: one warm-up pass, then the best of R timed passes
over the 20 photos (the machine may be shared: the load average is printed beside the figures)."""
import argparse, collections, json, os, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from lskd.data.records import Region
from lskd.stages.verbalize import HogPeople
from lskd.data.geometry import select_regions
from lskd.models.detect import NanoDet, CenterNet, COCO_LABELS

ROOT = Path(__file__).resolve().parent.parent
ALIASES = {'bat': 'baseball bat'}  # hand-checked labels that name a COCO class differently


def iou(a, b):
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0: return 0.
    inter = iw*ih
    return inter/((a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - inter)


def matched(gt, pred, thr=.5):
    "How many boxes of `gt` a distinct box of `pred` covers at IoU >= thr (greedy, best pairs first)"
    pairs = sorted(((iou(g, p), i, j) for i, g in enumerate(gt) for j, p in enumerate(pred)), reverse=True)
    used_g, used_p = set(), set()
    for v, i, j in pairs:
        if v < thr: break
        if i not in used_g and j not in used_p: used_g.add(i); used_p.add(j)
    return len(used_g)


def timed(f, ims, reps):
    f(ims[:2])  # warm-up
    best = min(_once(f, ims) for _ in range(reps))
    return len(ims)/best


def _once(f, ims):
    t = time.perf_counter(); f(ims); return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('photos', nargs='?', default=str(ROOT.parent/'shared/data/coco_people'))
    ap.add_argument('--threads', type=int, default=torch.get_num_threads())
    ap.add_argument('--reps', type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    recs = [json.loads(l) for l in (ROOT/'tests/fixtures/coco_people_regions.jsonl').read_text().splitlines()]
    ims = [Image.open(Path(a.photos)/r['path']).convert('RGB') for r in recs]
    hog, nd, cn = HogPeople(), NanoDet(), CenterNet()
    dets = {'nanodet': nd(ims), 'centernet': cn(ims),
            'hog': [[dict(label=r.label, box=r.box, score=r.score) for r in hog.detect(im)] for im in ims]}
    n_person = sum(r['label'] == 'person' for rec in recs for r in rec['regions'])
    other = [(ALIASES.get(r['label'], r['label']), r['box']) for rec in recs for r in rec['regions']
             if r['label'] != 'person' and ALIASES.get(r['label'], r['label']) in COCO_LABELS]
    print(f'{len(ims)} photos, {n_person} hand-checked person boxes, {len(other)} hand-checked boxes of other COCO classes; '
          f'torch threads {a.threads}; load average before timing {os.getloadavg()[0]:.2f}')
    for name, ds in dets.items():
        hit = sum(matched([r['box'] for r in rec['regions'] if r['label'] == 'person'], [d['box'] for d in d_ if d['label'] == 'person'])
                  for rec, d_ in zip(recs, ds))
        oth = sum(matched([r['box'] for r in rec['regions'] if ALIASES.get(r['label'], r['label']) == lab],
                          [d['box'] for d in d_ if d['label'] == lab])
                  for rec, d_ in zip(recs, ds) for lab in {ALIASES.get(r['label'], r['label']) for r in rec['regions']} - {'person'})
        # what the verbalizer keeps: the offline default `select` (max 8, IoU 0.7, min area 0.2%)
        kept = [select_regions([Region(i, tuple(d['box']), d['label'], score=d['score']) for i, d in enumerate(d_)
                                if d['box'][2] - d['box'][0] >= 1 and d['box'][3] - d['box'][1] >= 1], im.size,
                               max_regions=8, order='score', iou_max=0.7, min_area=0.002) for d_, im in zip(ds, ims)]
        labels = collections.Counter(d['label'] for d_ in ds for d in d_ if d['label'] != 'person')
        print(f"\n{name}: person recall@0.5 {hit}/{n_person} = {hit/n_person:.2f}; photos with >=1 region {sum(bool(d_) for d_ in ds)}/{len(ims)} "
              f"(after select {sum(bool(k) for k in kept)}/{len(ims)}); boxes/photo {np.mean([len(d_) for d_ in ds]):.1f}; "
              f"other COCO hand boxes found (label + IoU 0.5) {oth}/{len(other)}")
        print(f"  other classes found (boxes): {dict(labels.most_common())}")
    fs = {'nanodet (batch 4)': nd, 'centernet': cn, 'hog': lambda xs: [hog.detect(x) for x in xs]}
    for name, f in fs.items():
        print(f'{name}: {timed(f, ims, a.reps):.2f} images/s (load average {os.getloadavg()[0]:.2f})')


if __name__ == '__main__': sys.exit(main())
