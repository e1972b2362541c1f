"""Fuzz the input readers: a valid row of each format, mutated at random (wrong types, NaN/inf, huge and negative
numbers, unicode, empty strings, missing keys, duplicate ids, truncated text), between two valid rows.
Never a traceback: each case reads, or fails with a `BadRowError` naming file:line (for COCO json: file and
image/annotation), and in record mode it never fails and the errors file has the bad line."""
import copy, json, math, random
from pathlib import Path
import pytest
from lskd.io.jsonl import BadRowError, BadRows, read_jsonl
from lskd.data.formats import as_qar
from lskd.data.records import QAR, Region
from lskd.stages.verbalize import load_annotations
from lskd.stages.evaluate import load_vcr
from lskd.stages.critic import Label, read_labels

FIX = Path(__file__).parent/'fixtures'
ROOT = FIX/'eval'/'images'/'vcr1images'
N = 150                                   # cases per format
VALUES = [None, '', 'üñí 🙂', -1, -1e308, 1e308, 10**30, float('nan'), float('inf'), -float('inf'), 0, True, [], {}, [1, 2], '12', 3.5]

def _paths(o, p=()):
    "Every path into the nested dicts/lists of `o`"
    yield p
    if isinstance(o, dict):
        for k, v in o.items(): yield from _paths(v, p + (k,))
    elif isinstance(o, list):
        for i, v in enumerate(o): yield from _paths(v, p + (i,))

def _set(o, p, v):
    for k in p[:-1]: o = o[k]
    if v is _DEL: del o[p[-1]]
    else: o[p[-1]] = v
_DEL = object()

def mutate(row, rng):
    "A mutated copy of `row`, or its JSON text cut short (a str)"
    r = copy.deepcopy(row); ps = [p for p in _paths(r) if p]
    kind = rng.random()
    if kind < 0.1: t = json.dumps(r); return t[:rng.randrange(1, len(t))]
    for _ in range(rng.randint(1, 3)):
        ps = [p for p in _paths(r) if p]
        if not ps: break
        p = rng.choice(ps)
        try: _set(r, p, _DEL if rng.random() < 0.2 else copy.deepcopy(rng.choice(VALUES)))
        except (KeyError, IndexError, TypeError): pass
    if rng.random() < 0.1:                                       # duplicate ids: copy the first region-like item
        for k in ('regions', 'references'):
            if isinstance(r.get(k), list) and r[k]: r[k].append(copy.deepcopy(r[k][0]))
    return r

def _write_lines(p, rows):
    p.write_text(''.join((x if isinstance(x, str) else json.dumps(x)) + '\n' for x in rows))

REGION_ROW = dict(path='img1.jpg', width=64, height=48, id='a', regions=[dict(id=0, box=[2, 4, 30, 44], label='person', description='a man'),
                                                                       dict(id=1, box=[34, 6, 60, 46], label='person', score=0.9)])
QAR_ROW = QAR('img1.jpg', 'Why is [0] next to [1]?', '[0] waits for [1].', '[1] looks at [0].',
              regions=[Region(0, (2, 4, 30, 44), 'person'), Region(1, (34, 6, 60, 46), 'person')], id='q1').to_dict()
RELEASE_ROW = json.loads((FIX/'lskd'/'corpus_release.jsonl').read_text().splitlines()[0])
VCR_ROW = json.loads((FIX/'eval'/'vcr'/'val.jsonl').read_text().splitlines()[0])
LABEL_ROW = dict(key='abc', accept=True, qa=4, rationale=5, annotator='ann', time=1.0)

READERS = {   # format: (valid row, reader(path, on_bad))
    'regions': (REGION_ROW, lambda p, b: load_annotations(p, on_bad=b)),
    'lskd corpus': (QAR_ROW, lambda p, b: list(read_jsonl(p, as_qar, on_bad=b))),
    'release rows': (RELEASE_ROW, lambda p, b: list(read_jsonl(p, as_qar, on_bad=b))),
    'vcr (verbalize)': (VCR_ROW, lambda p, b: load_annotations(p, ROOT, on_bad=b)),
    'vcr (evaluate)': (VCR_ROW, lambda p, b: list(load_vcr(p, ROOT, on_bad=b))),
    'labels': (LABEL_ROW, lambda p, b: read_labels(p, on_bad=b)),
}

@pytest.mark.parametrize('fmt', list(READERS))
def test_fuzz_jsonl_formats(fmt, tmp_path):
    row, read = READERS[fmt]
    rng, outcomes = random.Random(f'fuzz|{fmt}'), {'read': 0, 'named error': 0}
    read(_write(tmp_path/'ok.jsonl', [row, row, row]), None)             # the valid row reads
    for case in range(N):
        p = _write(tmp_path/f'case{case}.jsonl', [row, mutate(row, rng), row])
        try: read(p, None); failed = False; outcomes['read'] += 1
        except BadRowError as e:
            assert str(e).startswith(f'{p}:2: '), (case, str(e)); failed = True; outcomes['named error'] += 1
        except Exception as e: pytest.fail(f'{fmt} case {case}: {type(e).__name__}: {e}\n{p.read_text().splitlines()[1][:500]}')
        bad = BadRows('record', tmp_path/f'errors{case}.jsonl')
        read(p, bad)                                                        # record mode never raises
        recorded = [e['line'] for e in read_jsonl(bad.errors)] if bad.errors.exists() else []
        assert recorded == ([2] if failed else []), (case, recorded)
    print(f'\nfuzz {fmt}: {N} cases: {outcomes}')
    assert outcomes['named error'] > N // 10                                  # the mutations do break rows

def _write(p, rows): _write_lines(p, rows); return p

COCO = {'images': [{'id': 1, 'file_name': 'img1.jpg', 'width': 64, 'height': 48}, {'id': 2, 'file_name': 'img2.jpg', 'width': 72, 'height': 48}],
        'annotations': [{'id': 7, 'image_id': 1, 'bbox': [2, 4, 28, 40], 'category_id': 1, 'iscrowd': 0},
                        {'id': 8, 'image_id': 2, 'bbox': [1, 1, 19, 39], 'category_id': 1}],
        'categories': [{'id': 1, 'name': 'person'}]}

def test_fuzz_coco(tmp_path):
    rng, outcomes = random.Random('fuzz|coco'), {'read': 0, 'named error': 0}
    for case in range(N):
        d = mutate(COCO, rng); p = tmp_path/f'coco{case}.json'
        p.write_text(d if isinstance(d, str) else json.dumps(d))
        try: load_annotations(p); outcomes['read'] += 1
        except (BadRowError, ValueError) as e:
            assert str(e).startswith(str(p)), (case, str(e)); outcomes['named error'] += 1
        except Exception as e: pytest.fail(f'coco case {case}: {type(e).__name__}: {e}\n{p.read_text()[:800]}')
    print(f'\nfuzz coco: {N} cases: {outcomes}')
    assert outcomes['named error'] > N // 4
