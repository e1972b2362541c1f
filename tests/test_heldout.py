"One held-out split by image (lskd.data.stats.heldout_image) for the critic, `lskd distill` and `lskd evaluate`"
import json, subprocess, sys
from pathlib import Path
import pytest
from PIL import Image
from lskd.data.records import QAR, Region
from lskd.io.jsonl import write_jsonl, read_jsonl
from lskd.data.stats import heldout_image

N_IMAGES, FRAC = 40, 0.25

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "40 small images (two boxes each) with two templated triples each"
    d = tmp_path_factory.mktemp('heldout')
    rows = []
    for k in range(N_IMAGES):
        name = f'photos/{k:03}.png'; (d/'photos').mkdir(exist_ok=True)
        Image.new('RGB', (64, 48), (6*k, 255 - 6*k, 128)).save(d/name)
        regs = [Region(0, (2, 2, 30, 46), 'panel'), Region(1, (34, 4, 62, 44), 'patch')]
        for j in range(2):
            rows.append(QAR(name, f'What is [1] next to{"?" if j else " here?"}', f'[1] is next to [0] in photo {k}.',
                            f'[0] and [1] touch in photo {k}.', region=[1], region_all=[0, 1], regions=regs, id=f'{k}-{j}'))
    return write_jsonl(d/'corpus.jsonl', rows), d

def run(*args):
    r = subprocess.run([sys.executable, '-m', 'lskd.app.cli', *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

def test_distill_and_evaluate_hold_out_exactly_the_same_images(corpus, tmp_path):
    path, root = corpus
    images = sorted({q['image'] for q in read_jsonl(path)})
    expected = {i for i in images if heldout_image(i, FRAC)}
    assert 4 <= len(expected) <= 16                                   # the fixture holds out a real share
    run('distill', path, tmp_path/'s', '--model-config', 'encoders=[toy-image,toy-text]', '--steps', '2', '--batch-size', '8', '--image-root', root,
        '--heldout', FRAC, '--quiet')
    summary = json.loads((tmp_path/'s'/'model.json').read_text())['summary']
    assert set(summary['heldout']['images']) == expected
    run('evaluate', '--benchmark', 'mc', '--annotations', path, '--heldout', FRAC, '--image-root', root,
        '--model', 'student=' + str(tmp_path/'s'), '--out', tmp_path/'e', '--quiet')
    evaluated = {r['image'] for r in read_jsonl(tmp_path/'e'/'predictions_student.jsonl')}
    assert evaluated == expected

def test_distill_trains_on_none_of_the_heldout_images(corpus):
    from lskd.stages.distill import CorpusStream
    path, _ = corpus
    seen = {q.image for _,q in CorpusStream(path, batch_size=4, heldout=FRAC).rows(0)}
    assert seen and not any(heldout_image(i, FRAC) for i in seen)
    assert len(seen) + sum(heldout_image(f'photos/{k:03}.png', FRAC) for k in range(N_IMAGES)) == N_IMAGES

def test_critic_validates_on_the_same_heldout_images(corpus, tmp_path):
    from lskd.stages.critic import train_critic, write_synthetic, qar_key
    path, root = corpus
    write_synthetic(path, tmp_path)
    rep = train_critic([path, tmp_path/'synthetic.jsonl'], tmp_path/'labels.jsonl', tmp_path/'c', epochs=1, image_root=root,
                       heldout=FRAC, model='bow', progress=False)
    qars = {qar_key(q): q.image for q in read_jsonl(path, QAR)}
    val_images = {qars[k] for k in rep['val_keys'] if k in qars}
    assert val_images == {i for i in qars.values() if heldout_image(i, FRAC)}
