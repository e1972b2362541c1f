"""lskd.stages.evaluate on small fixtures in the official schemas (tests/fixtures/eval, see make_fixtures.py).

The scorer is `KeywordScorer`: ITM = sigmoid(sum of the weights of the words present), ITC = how many
weighted words are present. Every expected number below is worked out by hand from the fixture texts.
"""
import re
import hashlib, json, math, subprocess, sys, types, warnings
from pathlib import Path
import pytest
from lskd.io.jsonl import read_jsonl, write_jsonl
from lskd.data.records import Region, QAR
from lskd.data.formats import lskd_row_to_qar
from lskd.stages.evaluate import *

FIX = Path(__file__).parent/'fixtures'/'eval'
IMAGES = FIX/'images'
VCR_ROOT = IMAGES/'vcr1images'

class Recorder(KeywordScorer):
    "KeywordScorer that also records every encode and score call"
    def __init__(self, weights):
        super().__init__(weights, name='recorder'); self.encoded, self.scored = [], []
    def encode_images(self, images, boxes):
        self.encoded.append((len(images), [[list(x) for x in b] for b in boxes])); return super().encode_images(images, boxes)
    def score(self, encoded, index, texts):
        self.scored.append((list(index), list(texts))); return super().score(encoded, index, texts)

VCR_W = {'sleeping': 1, 'cooking': 2, 'reading': 0, 'dancing': -1, 'pan': 3, 'stove': 1,
         'joke': 2, 'sad': -2, 'angry': -1, 'crying': 1, 'laughing': 0.5}

# ---- VCR ----
def test_vcr_metrics_by_hand():
    # Q1 q2a itm: sleeping 1, cooking 2, reading 0, dancing -1 -> 1 (right); itc counts 1,1,0,1 -> tie, first -> 0 (wrong)
    # Q1 qa2r (every text holds the right answer, 'cooking'): itm pan 5, 2, 2, stove 3 -> 0 (right); itc 2,1,1,2 -> 0 (right)
    # Q2 q2a itm: sad -2, angry -1, joke 2, 0 -> 2 (right); itc 1,1,1,0 -> 0 (wrong)
    # Q2 qa2r (all hold 'joke'): itm crying 3, 2, 2, laughing 2.5 -> 0 (wrong, label 3); itc 2,1,1,2 -> 0 (wrong)
    res = evaluate('vcr', FIX/'vcr/val.jsonl', [KeywordScorer(VCR_W)], image_root=VCR_ROOT, progress=False)
    m = res['models'][0]['metrics']
    assert m['itm'] == {'q2a': 100.0, 'qa2r': 50.0, 'q2ar': 50.0}
    assert m['itc'] == {'q2a': 0.0, 'qa2r': 50.0, 'q2ar': 0.0}
    assert res['n_questions'] == 2 and res['n_tasks'] == 4

def test_vcr_image_encoded_once_per_question_and_texts():
    for batch in (1, 8):
        s = Recorder(VCR_W)
        recs = list(score_items(s, load_vcr(FIX/'vcr/val.jsonl', VCR_ROOT), VCR_ROOT, image_batch=batch, progress=False))
        assert s.n_images == 2                                  # 2 questions, 16 candidate texts
        assert s.n_encode_calls == (2 if batch == 1 else 1)
        assert sum(len(t) for _, t in s.scored) == 16
    # Q2 mentions [1] first: drawn order [1, 0], text ids rewritten to drawing positions, boxes in drawing order
    assert recs[2]['drawn'] == [1, 0]
    index, texts = s.scored[0]
    assert index == [0]*8 + [1]*8
    assert texts[8] == 'question: why is [0] smiling at [1]? answer: [0] is sad.'
    assert texts[12] == 'question: why is [0] smiling at [1]? answer: [0] heard a joke. rationale: [1] is crying.'
    assert texts[4] == 'question: what is [0] doing? answer: [0] is cooking dinner. rationale: [0] holds a pan.'
    assert s.encoded[0][1][1] == [[34.0, 6.0, 60.0, 46.0], [2.0, 4.0, 30.0, 44.0]]

def test_vcr_without_labels_is_a_clear_error(tmp_path):
    rows = [dict(r, answer_label=None) for r in read_jsonl(FIX/'vcr/val.jsonl')]
    write_jsonl(tmp_path/'test.jsonl', rows)
    with pytest.raises(ValueError, match='test labels are hidden'): list(load_vcr(tmp_path/'test.jsonl', VCR_ROOT))

def test_no_draw_passes_no_boxes_and_keeps_pixels():
    s = Recorder(VCR_W)
    list(score_items(s, load_vcr(FIX/'vcr/val.jsonl', VCR_ROOT), VCR_ROOT, draw=False, progress=False))
    assert s.encoded[0][1] == [[], []]

# ---- Sherlock ----
SH_W = {'raining': 2, 'wedding': -1, 'sunny': 0, 'cooking': 2, 'nobody': -2}

def test_sherlock_metric_by_hand():
    # instance i0: ratings annot1 [3,2,1], annot2 [3,3,1]
    #   itm scores s(2) > s(0) > s(-1) for candidates 0, 2, 1: annot1 -> 2 of 3 pairs -> 1/3; annot2 -> (0,1) tie skipped, 1 of 2 -> 0
    #   itc counts 1,1,1: all tied; the official tiebreak (numpy seed 1: .417, .720, .0001 x1e-9) orders 1 > 0 > 2:
    #   annot1 -> (0,1) wrong, (0,2), (1,2) right -> 1/3; annot2 -> (0,2), (1,2) right -> 1
    # instance i3: annot1 [3,1], annot2 [2,2] (no pair: 0)
    #   itm s(2) > s(-2): annot1 right -> 1, annot2 0 -> 1/2;  itc tie broken 1 > 0: annot1 wrong -> -1, annot2 0 -> -1/2
    # itm: (1/6 + 1/2)/2 = 1/3 -> 33.33; itc: ((1/3 + 1)/2 - 1/2)/2 = 1/12 -> 8.33
    res = evaluate('sherlock', FIX/'sherlock/comparison.json', [KeywordScorer(SH_W)], image_root=IMAGES,
                   instances=FIX/'sherlock/instances.json', progress=False)
    m = res['models'][0]['metrics']
    assert m['itm']['comparison'] == pytest.approx(100/3)
    assert m['itc']['comparison'] == pytest.approx(100/12)
    # human agreement: i0 (annot1 vs annot2: 1; annot2 vs annot1 with tiebreak: 1/3) -> 2/3; i3 (0; -1) -> -1/2
    assert res['human_agreement'] == pytest.approx(100*(2/3 - 1/2)/2)
    assert len(res['data']) == 2 and res['data'][1]['sha256'] == hashlib.sha256((FIX/'sherlock/instances.json').read_bytes()).hexdigest()

def test_sherlock_loader_boxes_images_and_errors():
    items = list(load_sherlock(FIX/'sherlock/comparison.json', IMAGES, FIX/'sherlock/instances.json'))
    assert [i.image for i in items] == ['VG_100K/10.jpg', 'vcr1images/movie_x/img2.jpg']
    assert items[0].regions[0].box == (5, 5, 25, 35) and items[0].draw == [0] and items[1].draw == [0, 1]
    assert [c['answer'] for c in items[1].tasks[0].candidates] == ['someone is cooking', 'nobody is home']
    assert items[0].tasks[0].meta['ratings'] == {'annot1': [3.0, 2.0, 1.0], 'annot2': [3.0, 3.0, 1.0]}
    with pytest.raises(KeyError, match='--instances'): list(load_sherlock(FIX/'sherlock/comparison.json', IMAGES))

# ---- VisualCOMET, the official ranking (scripts/run_rank.py --rank_mode random_50, dataloaders/vcg_rank.py) ----
# val_rank.json flattened (utils/file_utils.py _encode_finetune_records): event 0: 0 feed 2, 1 impress 2 (intent),
# 2 buy groceries (before), 3 eat dinner with 2, 4 wash the dishes (after); event 1: 5 get fit, 6 put on shoes, 7 stretch,
# 8 take a shower; event 2 (event 0 again): 9 make 2 happy (intent); event 3: 10 rest, 11 walk a long way, 12 fall asleep.
RANK_W = {'feed': 5, 'impress': 1, 'happy': 4, 'groceries': 2, 'dinner': 3, 'dishes': -1, 'fit': 6, 'shoes': 0.5,
          'stretch': 2.5, 'shower': -2, 'rest': 1.5, 'walk': 0, 'asleep': -3}     # no weighted word is in an event or question

def test_visualcomet_official_problems_and_pools():
    items = list(load_visualcomet(FIX/'visualcomet/val_rank.json', VCR_ROOT))
    # one problem per unique (image, event, relation); the event split over records 0 and 2 is one item
    assert [(it.id, [t.name for t in it.tasks]) for it in items] == [
        ('0:movie_x/img1.jpg', ['intent', 'before', 'after']), ('1:movie_x/img2.jpg', ['intent', 'before', 'after']),
        ('3:movie_x/img2.jpg', ['intent', 'before', 'after'])]
    golds = [sorted(t.candidates[g]['answer'] for g in t.meta['golds']) for it in items for t in it.tasks]
    assert golds == [['feed [1]', 'impress [1]', 'make [1] happy'], ['buy groceries'], ['eat dinner with [1]', 'wash the dishes'],
                     ['get fit'], ['put on shoes', 'stretch'], ['take a shower'], ['rest'], ['walk a long way'], ['fall asleep']]
    # 13 records < 50: every pool is the whole file, each candidate asked with its own relation and this event
    t = items[0].tasks[0]
    assert all(len(t.candidates) == 13 for it in items for t in it.tasks)
    qs = {c['answer']: c['question'] for c in t.candidates}
    assert qs['feed [1]'] == '[0] is cooking for [1] in a kitchen. What does [0] intend to do?'
    assert qs['wash the dishes'] == '[0] is cooking for [1] in a kitchen. What will [0] most likely do next?'
    assert qs['rest'] == '[0] is cooking for [1] in a kitchen. What does [0] intend to do?'       # another image's intent
    # 5 candidates: the ground truths plus seeded random records; a limited run asks the same problems
    few = list(load_visualcomet(FIX/'visualcomet/val_rank.json', VCR_ROOT, n_candidates=5))
    assert all(len(t.candidates) == 5 and len(t.meta['golds']) == len(g) for t, g in zip([t for it in few for t in it.tasks], golds))
    lim = list(load_visualcomet(FIX/'visualcomet/val_rank.json', VCR_ROOT, n_candidates=5, limit=1))
    assert len(lim) == 1 and [t.candidates for t in lim[0].tasks] == [t.candidates for t in few[0].tasks]
    again = list(load_visualcomet(FIX/'visualcomet/val_rank.json', VCR_ROOT, n_candidates=5))
    assert [t.candidates for it in again for t in it.tasks] == [t.candidates for it in few for t in it.tasks]

def test_visualcomet_official_recall_by_hand():
    # every pool holds all 13 texts, so the ranking is the same everywhere:
    # fit 6, feed 5, happy 4, dinner 3, stretch 2.5, groceries 2, rest 1.5, impress 1, shoes .5, walk 0, dishes -1, shower -2, asleep -3
    # intent of event 0: 3 ground truths (feed, impress, happy), top 3 = fit, feed, happy -> 2/3
    # intent of event 1: get fit, top 1 = fit -> 1; every other problem's top num_gt (fit / fit, feed) holds none of its truths -> 0
    with pytest.warns(UserWarning, match='fewer than 50 candidates'):
        res = evaluate('visualcomet', FIX/'visualcomet/val_rank.json', [KeywordScorer(RANK_W)], image_root=VCR_ROOT, progress=False)
    m = res['models'][0]['metrics']['itm']
    assert m == pytest.approx({'recall@50': 100*(2/3 + 1)/9, 'intent': 100*(2/3 + 1)/3, 'before': 0.0, 'after': 0.0})
    assert res['chance']['recall@50'] == pytest.approx(100*(3+1+2+1+2+1+1+1+1)/13/9)    # num_gt / pool size, averaged
    assert res['n_tasks'] == 9 and res['n_questions'] == 3 and res['description'].startswith('VisualCOMET, official ranking')

def _random_vc(path, n_events=40, seed=1):
    "A random VisualCOMET file over the fixture images: letter-only unique inferences, some events split over two records"
    import random
    rng, k, recs = random.Random(seed), 0, []
    def word():
        nonlocal k; k += 1; return 'inf' + ''.join(chr(97 + (k // 26**i) % 26) for i in range(3))
    for e in range(n_events):
        img = rng.choice(['img1', 'img2'])
        r = {'img_fn': f'movie_x/{img}.jpg', 'metadata_fn': f'movie_x/{img}.json', 'place': rng.choice(['', 'in a room']),
             'event': f"1 is doing thing {'abcdefghijklmnopqrstuvwxyz'[e % 26]}{e // 26}"}
        for rel in ('intent', 'before', 'after'):
            if rng.random() < 0.9: r[rel] = [word() for _ in range(rng.randint(1, 4))]
        recs.append(r)
        if rng.random() < 0.2:                       # the same event again, with other inferences
            recs.append({**{k: r[k] for k in ('img_fn', 'metadata_fn', 'place', 'event')}, 'intent': [word()], 'after': [word(), word()]})
    rng.shuffle(recs)
    path.write_text(json.dumps(recs)); return recs

def test_visualcomet_official_matches_a_naive_computation(tmp_path):
    recs = _random_vc(tmp_path/'vc.json')
    truths = {}                                      # (image, event, relation) -> its ground truths, by a plain scan
    for r in recs:
        for rel in ('intent', 'before', 'after'): truths.setdefault((r['img_fn'], r['event'], rel), []).extend(r.get(rel, []))
    truths = {k: v for k, v in truths.items() if v}
    n_flat = sum(len(v) for v in truths.values())
    assert n_flat > 50
    res = evaluate('visualcomet', tmp_path/'vc.json', ['chance'], image_root=VCR_ROOT, out=tmp_path/'out', progress=False)
    items = list(load_visualcomet(tmp_path/'vc.json', VCR_ROOT))
    preds = list(read_jsonl(tmp_path/'out'/'predictions_chance.jsonl'))
    tasks = [(it, t) for it in items for t in it.tasks]
    assert len(tasks) == len(preds) == len(truths)
    recalls, other_rel, other_img = {'itm': [], 'itc': []}, 0, 0
    for (it, t), p in zip(tasks, preds):
        event = recs[int(it.id.split(':')[0])]['event']                      # an item is named by its event's first record
        gts = set(truths[it.image, event, t.name])
        texts = [c['answer'] for c in t.candidates]
        assert len(texts) == 50 and gts <= set(texts)                         # all ground truths, random others, 50 in all
        other_rel += any(VC_QUESTIONS[t.name].split()[1] not in c['question'] for c in t.candidates)
        here = {x for (img, _, _), v in truths.items() if img == it.image for x in v}
        other_img += any(x not in here for x in texts)
        for kind in ('itm', 'itc'):
            ranked = sorted(zip(p['scores'][kind], texts), reverse=True)     # sort the pool, count truths in the top num_gt
            recalls[kind].append(sum(x in gts for _, x in ranked[:len(gts)]) / len(gts))
    assert other_rel > 0 and other_img > 0                                   # negatives of any relation, of any image
    for kind in ('itm', 'itc'):
        assert res['models'][0]['metrics'][kind]['recall@50'] == 100*sum(recalls[kind])/len(recalls[kind])

# ---- VisualCOMET, the visualcomet-single ablation ----
VC_W = {'feed': 2, 'fit': 1, 'rest': 3, 'groceries': 1, 'shoes': -1, 'walk': 0.5, 'dinner': 1, 'shower': 2, 'asleep': -2}

def test_visualcomet_single_acc_by_hand():
    # candidates = the right inference + those of the same relation from events of other images:
    # intent: E0 (img1; negatives from img2: 'get fit', 'rest') feed 2 vs fit 1, rest 3 -> wrong;
    #   E1 (img2; negative from img1: 'feed 2') fit 1 vs feed 2 -> wrong; E2 rest 3 vs feed 2 -> right
    # before: E0 groceries 1 vs shoes -1, walk .5 -> right; E1 shoes -1 vs groceries 1 -> wrong; E2 walk .5 vs groceries 1 -> wrong
    # after: E0 dinner 1 vs shower 2, asleep -2 -> wrong; E1 shower 2 vs dinner 1 -> right; E2 asleep -2 vs dinner 1 -> wrong
    with pytest.warns(UserWarning, match='fewer than 50 candidates'):
        res = evaluate('visualcomet-single', FIX/'visualcomet/val_annots.json', [KeywordScorer(VC_W)], image_root=VCR_ROOT, progress=False)
    m = res['models'][0]['metrics']['itm']
    assert m['acc@50'] == pytest.approx(100*3/9)
    assert (m['intent'], m['before'], m['after']) == pytest.approx((100/3, 100/3, 100/3))
    assert res['candidates'] == {'min': 2, 'max': 3}

def test_visualcomet_candidates_and_person_numbers():
    items = list(load_visualcomet_single(FIX/'visualcomet/val_annots.json', VCR_ROOT))
    t = items[0].tasks[0]
    assert t.name == 'intent' and t.candidates[t.label]['answer'] == 'feed [1]'
    assert sorted(c['answer'] for c in t.candidates) == ['feed [1]', 'get fit', 'rest']
    assert t.candidates[0]['question'] == '[0] is cooking for [1] in a kitchen. What does [0] intend to do?'
    assert items[2].tasks[0].candidates[0]['question'].startswith('[1] is sitting on a bench. What does [1]')
    assert item_order(items[0]) == [0, 1]
    # seeded: the same seed gives the same items, another seed may reorder but not change the question set
    again = list(load_visualcomet_single(FIX/'visualcomet/val_annots.json', VCR_ROOT))
    assert [(x.tasks[0].candidates, x.tasks[0].label) for x in again] == [(x.tasks[0].candidates, x.tasks[0].label) for x in items]
    other = list(load_visualcomet_single(FIX/'visualcomet/val_annots.json', VCR_ROOT, seed=7))
    assert [sorted(c['answer'] for c in x.tasks[0].candidates) for x in other] == [sorted(c['answer'] for c in x.tasks[0].candidates) for x in items]
    # --limit keeps the negatives drawn from the whole file
    lim = list(load_visualcomet_single(FIX/'visualcomet/val_annots.json', VCR_ROOT, limit=1))
    assert len(lim) == 1 and lim[0].tasks[0].candidates == t.candidates

# ---- generic MC, and MC built from a corpus ----
MC_W = {'drink': 1, 'throw': -1, 'sing': 0.5, 'waiting': 1, 'lost': 2, 'door': 1, 'full': 0, 'rain': -1}

def test_mc_by_hand():
    # mc-0: drink 1, throw -1, sing .5 -> 0 right; mc-1: lost 2, waiting 1, 0 -> 0 wrong (label 1);
    # mc-2 (QA->R, 'waiting' in every text): door 2, full 1, rain 0 -> 0 right
    res = evaluate('mc', FIX/'mc/mc.jsonl', [KeywordScorer(MC_W)], image_root=VCR_ROOT, progress=False)
    m = res['models'][0]['metrics']['itm']
    assert m == pytest.approx({'accuracy': 200/3, 'mc': 50.0, 'qa2r': 100.0})

def test_mc_from_release_corpus():
    src = Path(__file__).parent/'fixtures/lskd/corpus_release.jsonl'
    items = list(load_mc(src, seed=3))
    assert len(items) == 3
    qars = [lskd_row_to_qar(r) for r in read_jsonl(src)]
    for it, q in zip(items, qars):
        t = it.tasks[0]
        assert len(t.candidates) == 3                        # 2 other triples, so 3 candidates (warned by evaluate)
        assert t.candidates[t.label]['answer'] == q.answer
        item_order(it)                                       # every transplanted reference names a region of this image
    # distractor of row 0 is row 1's answer, and row 2's answer with [1] -> [4] (row 0's referenced region)
    assert sorted(c['answer'] for c in items[0].tasks[0].candidates) == sorted(
        [q.answer for q in qars[:2]] + ['[4] will walk [0].'])
    assert [[c['answer'] for c in i.tasks[0].candidates] for i in load_mc(src, seed=3)] == \
           [[c['answer'] for c in i.tasks[0].candidates] for i in items]

# ---- models ----
def test_load_scorer_families_folders_baselines_and_functions(tmp_path):
    from lskd.models.core import build_model
    m = build_model('bow'); m.save(tmp_path/'m')
    for spec in (tmp_path/'m', f"bow:{tmp_path/'m'}", 'bow'): assert load_scorer(str(spec)).family == 'bow'
    assert type(load_scorer('chance')).__name__ == 'ChanceScorer' and type(load_scorer('overlap')).__name__ == 'OverlapScorer'
    assert type(load_scorer('lskd.stages.evaluate:ChanceScorer')).__name__ == 'ChanceScorer'
    with pytest.raises(ValueError, match='unknown model'): load_scorer('definitely-not-a-model')
    with pytest.raises(ValueError, match='not a model folder'): load_scorer(str(tmp_path))
    assert split_model('base=chance') == ('base', 'chance') and split_model('chance') == ('chance', 'chance')

def test_bad_scorer_output_is_named():
    class Short(KeywordScorer):
        def score(self, e, i, t): return {'itm': super().score(e, i, t)['itm'][:-1]}
    with pytest.raises(ValueError, match='returned 7 scores for 8 texts'):
        evaluate('vcr', FIX/'vcr/val.jsonl', [Short({})], image_root=VCR_ROOT, progress=False, image_batch=1)

# ---- determinism, report, CLI ----
def test_deterministic_outputs(tmp_path):
    for d in ('a', 'b'):
        evaluate('visualcomet', FIX/'visualcomet/val_rank.json', ['chance', KeywordScorer(RANK_W)], image_root=VCR_ROOT,
                 out=tmp_path/d, progress=False, n_candidates=3)
    for f in ('predictions_chance.jsonl', 'predictions_keyword.jsonl'):
        assert (tmp_path/'a'/f).read_bytes() == (tmp_path/'b'/f).read_bytes()
    ra, rb = load_results(tmp_path/'a', tmp_path/'b')
    assert [m['metrics'] for m in ra['models']] == [m['metrics'] for m in rb['models']]
    assert 'recall@3' in ra['models'][0]['metrics']['itm']

def test_report_table_and_chart(tmp_path):
    res = evaluate('vcr', FIX/'vcr/val.jsonl', ['base=chance', KeywordScorer(VCR_W)], image_root=VCR_ROOT, out=tmp_path, progress=False)
    t = results_table(res)
    md = t.to_markdown()
    assert md.splitlines()[0] == '| model | n | q2a (itm) | qa2r (itm) | q2ar (itm) | q2a (itc) | qa2r (itc) | q2ar (itc) |'
    kw = next(l for l in md.splitlines() if l.startswith('| keyword |'))          # each rate with its 95% interval, and n
    assert re.match(r'\| keyword \| \d+ \| 100\.0 \[100\.0, 100\.0\] \| 50\.0 \[\d+\.\d, \d+\.\d\] \|', kw), kw
    assert '| chance | - | 25.0 | 25.0 | 6.2 | 25.0 | 25.0 | 6.2 |' in md and 'paper: + LSKD | - | 59.0' in md
    c = [c for c in res['comparisons'] if (c['kind'], c['metric']) == ('itm', 'q2a')][0]
    assert (c['a'], c['b'], c['n']) == ('keyword', 'base', res['models'][0]['n']) and c['ci'][0] <= c['diff'] <= c['ci'][1]
    assert '<table>' in t._repr_html_()
    png = (tmp_path/'results.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and results_chart(res)._repr_png_()[:4] == b'\x89PNG'

def test_cli_end_to_end(tmp_path):
    ann = FIX/'vcr/val.jsonl'
    r = subprocess.run([sys.executable, '-c', 'import sys; from lskd.app.cli import main; sys.exit(main(sys.argv[1:]))', 'evaluate',
                        '--benchmark', 'vcr', '--annotations', str(ann), '--image-root', str(VCR_ROOT), '--model', 'chance',
                        '--model', 'text=overlap', '--out', str(tmp_path/'run'), '--limit', '1', '--quiet'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path/'run/results.json').read_text())
    assert res['data'][0] == {'path': str(ann), 'sha256': hashlib.sha256(ann.read_bytes()).hexdigest()}
    assert res['n_questions'] == 1 and [m['name'] for m in res['models']] == ['chance', 'text']
    assert {'q2a', 'qa2r', 'q2ar'} == set(res['models'][0]['metrics']['itm'])
    for f in ('results.png', 'results.md', 'predictions_chance.jsonl', 'predictions_text.jsonl'): assert (tmp_path/'run'/f).exists()
    assert '| chance |' in r.stdout
    # in process, with a scorer made by a module.path:function: the hand-computed numbers come out of the CLI too
    assert main(['--benchmark', 'vcr', '--annotations', str(ann), '--image-root', str(VCR_ROOT), '--model', 'kw-test=test_evaluate:vcr_keyword_scorer',
                 '--out', str(tmp_path/'kw'), '--quiet']) == 0
    assert load_results(tmp_path/'kw')[0]['models'][0]['metrics']['itm']['q2ar'] == 50.0
    # merge two runs into one table
    assert main(['--compare', str(tmp_path/'run'), str(tmp_path/'kw'), '--out', str(tmp_path/'cmp')]) == 0
    assert '| kw-test |' in (tmp_path/'cmp/results.md').read_text() and (tmp_path/'cmp/results.png').exists()

def vcr_keyword_scorer(): return KeywordScorer(VCR_W)

def test_cli_errors(tmp_path, capsys):
    assert main(['--benchmark', 'vcr', '--annotations', str(tmp_path/'nope.jsonl'), '--model', 'chance', '--out', str(tmp_path)]) == 2
    assert 'annotation file not found' in capsys.readouterr().err
    with pytest.raises(SystemExit): main(['--benchmark', 'vcr', '--out', str(tmp_path)])
    assert 'at least one --model' in capsys.readouterr().err
    assert main(['--benchmark', 'mc', '--annotations', str(FIX/'mc/mc.jsonl'), '--image-root', str(VCR_ROOT),
                 '--model', 'chance', '--model', 'chance', '--out', str(tmp_path), '--quiet']) == 2
    assert 'two models are named' in capsys.readouterr().err
    assert main(['--benchmark', 'mc', '--annotations', str(FIX/'mc/mc.jsonl'), '--image-root', str(tmp_path),
                 '--model', 'chance', '--out', str(tmp_path), '--quiet']) == 2
    assert 'question mc-0: image not found' in capsys.readouterr().err

def _official_file(path, recs, seed=42, n=50):
    "A candidate file as run_rank.py --rank_mode random_50 writes it: per (image, event, relation), its ground truths then random others"
    import random
    rng, flat = random.Random(seed), vc_flat(recs)
    rows = [dict(img_fn=img, event=ev, inference_relation=rel, num_gt=len(golds),
                 inference_candidate_indices=golds + rng.sample([j for j in range(len(flat)) if j not in golds], n - len(golds)))
            for (img, ev, rel), golds in vc_problems(recs, flat).items()]
    path.write_text(json.dumps({'mean_recall': 0.0, 'results': rows})); return rows

def test_visualcomet_official_candidate_file(tmp_path):
    "Given run_rank.py's candidate file, exactly its candidates are ranked (the ground truths first in it), and the results say so"
    recs = _random_vc(tmp_path/'vc.json'); rows = _official_file(tmp_path/'val_rank_random_50.json', recs)
    flat = vc_flat(recs)
    items = list(load_visualcomet(tmp_path/'vc.json', VCR_ROOT, candidates=tmp_path/'val_rank_random_50.json'))
    tasks = [t for it in items for t in it.tasks]
    by_key = {(r['img_fn'], r['event'], r['inference_relation']): r for r in rows}
    assert len(tasks) == len(rows)
    for it in items:
        for t in it.tasks:
            r = by_key[it.image, recs[int(it.id.split(':')[0])]['event'], t.name]
            assert [c['answer'] for c in t.candidates] == [flat[j][2] for j in r['inference_candidate_indices']]
            assert t.meta['golds'] == list(range(r['num_gt']))
    seeded = [t for it in load_visualcomet(tmp_path/'vc.json', VCR_ROOT) for t in it.tasks]
    assert any({c['answer'] for c in a.candidates} != {c['answer'] for c in b.candidates} for a, b in zip(tasks, seeded))   # not lskd's own draw
    res = evaluate('visualcomet', tmp_path/'vc.json', ['chance'], image_root=VCR_ROOT, candidates=tmp_path/'val_rank_random_50.json', progress=False)
    assert res['settings']['candidates'] == 'official' and res['data'][1]['path'].endswith('val_rank_random_50.json')
    rows[0]['inference_candidate_indices'] = rows[0]['inference_candidate_indices'][::-1]           # not this file's: its truths are not first
    (tmp_path/'bad.json').write_text(json.dumps(rows))
    with pytest.raises(ValueError, match='are not its ground truths'): list(load_visualcomet(tmp_path/'vc.json', VCR_ROOT, candidates=tmp_path/'bad.json'))
