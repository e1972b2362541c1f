"""Probe of the tag prior's bridge (lskd.models.fusion.Tagger) before any training: can EfficientNet-Lite0's ImageNet head,
read through MiniLM, tell which region a hand-written description is about?

    python tests/bench_tags.py [REGIONS.jsonl [IMAGE_ROOT]]     # default: lskd's sample regions (data/sample/regions.jsonl)
    python tests/bench_tags.py tests/fixtures/coco_people_regions.jsonl ../shared/data/coco_people

For each region i with a description and each other region j of its image: does cos(MiniLM(description i), tags(i))
beat cos(MiniLM(description i), tags(j))? tags = the probability-weighted MiniLM embedding of the top-k ImageNet
classes of the region's crop (`crop`) or of the 7x7 map pooled inside its box (`pool`). Also with the region's label
("a photo of a person") instead of its description. Prints the share of pairs won (ties: half), split by whether i
and j share a label. Pairs share regions, so they are not independent draws: a probe, not an interval.
"""
import itertools, sys, torch
from lskd.models.backbones import ImageEncoder, TextEncoder
from lskd.data.records import open_image
from lskd.models.fusion import Tagger, crop_features, sentence_embeddings
from lskd.io.files import data_path
from lskd.stages.verbalize import load_annotations, resolve_ref

def main(regfile=None, root=None):
    torch.set_num_threads(2)
    recs = load_annotations(regfile or data_path('sample/regions.jsonl')).values()
    ie, te = ImageEncoder(), TextEncoder()
    taggers = {k: Tagger(ie, te, k) for k in (1, 5, 20)}
    res = {}
    for r in recs:
        regs = r.regions
        if len(regs) < 2 or not all(g.description for g in regs): continue
        img = open_image(resolve_ref(r.path, root)); boxes = [list(g.box) for g in regs]
        with torch.no_grad():
            fmap, sizes = ie.encode([img])
            feats = {'crop': crop_features(ie, img, boxes), 'pool': ie.region_features(fmap, [boxes], sizes)[0]}
        d = sentence_embeddings(te, [g.description for g in regs]); lab = sentence_embeddings(te, [f'a photo of a {g.label}' for g in regs])
        for (mode, f), (k, tg) in itertools.product(feats.items(), taggers.items()):
            t = torch.nn.functional.normalize(tg(f), dim=-1)
            for what, m in (('description', d @ t.T), ('label', lab @ t.T)):
                for i, j in itertools.permutations(range(len(regs)), 2):
                    a = res.setdefault((mode, k, what, 'same label' if regs[i].label == regs[j].label else 'other label'), [0, 0])
                    a[0] += float(m[i, i] > m[i, j]) + 0.5*float(m[i, i] == m[i, j]); a[1] += 1
    print('| regions from | top-k | text | pairs | won % | n pairs |\n|---|---|---|---|---|---|')
    for (mode, k, what, same), (w, n) in sorted(res.items()): print(f'| {mode} | {k} | {what} | {same} | {100*w/n:.1f} | {n} |')

if __name__ == '__main__': main(*sys.argv[1:3])
