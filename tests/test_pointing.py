"The pointing test (`lskd evaluate --benchmark pointing`) end to end: a student that learns to point, the ablations that cannot, any localized file, bad input"
import json
import pytest
from lskd.data.records import QAR, Region
from lskd.io.jsonl import read_jsonl, write_jsonl
from lskd.data.stats import split_heldout
from lskd.stages.distill import DistillConfig, distill, make_student
from lskd.stages.evaluate import evaluate, main as evaluate_main, load_pointing
from lskd.testing import toy_pointing_corpus

TOY = {'encoders': ['toy-image', 'toy-text'], 'dim': 32, 'heads': 2, 'regions_from': 'crop'}


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "A student trained with pointing negatives on toy images of three coloured patches, and its untrained base"
    d = tmp_path_factory.mktemp('pointing')
    train, held = split_heldout(read_jsonl(toy_pointing_corpus(d/'img', n_images=40), QAR), 0.25, 0)
    write_jsonl(d/'train.jsonl', train); write_jsonl(d/'held.jsonl', held)
    cfg = DistillConfig(steps=300, batch_size=16, lr=1e-3, model_config=TOY, image_root=str(d/'img'), seed=0, save_every=10**6)
    make_student(cfg).save(d/'base')
    distill(d/'train.jsonl', d/'student', cfg, progress=False)
    return d


def _itm(res, name):
    m = next(m for m in res['models'] if m['name'] == name)
    return m['metrics']['itm'], m['intervals']['itm'], m['n']


def test_student_learns_to_point_on_new_images(toy):
    res = evaluate('pointing', toy/'held.jsonl', [f'base={toy/"base"}', f'student={toy/"student"}'], image_root=toy/'img', progress=False)
    m, iv, n = _itm(res, 'student')
    # re-pointed texts are told apart; swaps need word order, which the toy text encoder (a bag of tokens) does not have
    assert n >= 60 and m['repoint'] >= 75 and iv['repoint'][0] > 50 and iv['accuracy'][0] > 50, (m, iv, n)
    c = next(c for c in res['comparisons'] if (c['kind'], c['metric']) == ('itm', 'accuracy'))
    assert c['a'] == 'student' and c['b'] == 'base' and c['separable'] and c['diff'] > 0, c


def test_without_boxes_the_student_cannot_point(toy):
    res = evaluate('pointing', toy/'held.jsonl', [f'student={toy/"student"}'], image_root=toy/'img', draw=False, progress=False)
    m, iv, _ = _itm(res, 'student')
    assert iv['accuracy'][0] <= 50 <= iv['accuracy'][1], (m, iv)


def test_pairs_point_elsewhere_on_the_same_drawing(toy):
    items = list(load_pointing(toy/'held.jsonl', seed=0))
    for it in items:
        for t in it.tasks:
            right, wrong = t.candidates[t.label], t.candidates[1 - t.label]
            assert right != wrong and right['question'].split()[0] == wrong['question'].split()[0]
            assert set(it.draw) >= {int(x) for c in t.candidates for f in c.values() for x in __import__('re').findall(r'\[(\d+)\]', f)}
    orders = {tuple(it.draw) for it in items}
    assert len(orders) > 1, 'the drawing order must vary, or "the first mention is [0]" gives the answer away'


def test_cli_pointing_on_vcr_and_mc_files(tmp_path, capsys):
    from pathlib import Path
    fx = Path(__file__).parent/'fixtures'
    assert evaluate_main(['--benchmark', 'pointing', '--annotations', str(fx/'eval'/'vcr'/'val.jsonl'), '--image-root', str(fx/'eval'/'images'/'vcr1images'),
                          '--model', 'overlap', '--out', str(tmp_path/'vcr'), '--quiet']) == 0
    res = json.loads((tmp_path/'vcr'/'results.json').read_text())
    m = res['models'][0]
    assert res['benchmark'] == 'pointing' and m['n'] == res['n_tasks'] > 0 and set(m['intervals']['itm']) == set(m['metrics']['itm'])
    assert m['metrics']['itm']['accuracy'] == 50.0          # word overlap cannot see where a text points
    assert '| n |' in (tmp_path/'vcr'/'results.md').read_text()
    mc = next((fx/'eval'/'mc').glob('*.jsonl'))
    assert evaluate_main(['--benchmark', 'pointing', '--annotations', str(mc), '--image-root', str(fx/'eval'/'images'/'vcr1images'),
                          '--model', 'chance', '--out', str(tmp_path/'mc'), '--quiet']) == 0


def test_nothing_to_point_at_is_an_error(tmp_path, capsys):
    one = [QAR('a.jpg', 'Why is [0] here?', '[0] waits.', '[0] stands still.', regions=[Region(0, (0, 0, 5, 5), 'person')])]
    p = write_jsonl(tmp_path/'one.jsonl', one)
    assert evaluate_main(['--benchmark', 'pointing', '--annotations', str(p), '--model', 'chance', '--out', str(tmp_path/'o')]) == 2
    assert 'no questions to evaluate' in capsys.readouterr().err
