"""The Ray executor (issue: many GPUs and machines on Ray Data): critic scoring on Ray writes what the local executor writes; a worker
SIGKILLed mid-stage is retried and every task is in the output once; a stage killed mid-way resumes without redoing finished tasks;
a 2-node Ray cluster on 127.0.0.1 shares the scoring. Skipped where Ray is not installed (`pip install 'lskd[ray]'`)."""
import json, os, random, signal, subprocess, sys, time
from functools import partial
from pathlib import Path
import pytest, torch
from PIL import Image, ImageDraw

ray = pytest.importorskip('ray')
from lskd.data.records import QAR, Region
from lskd.io.jsonl import write_jsonl
from lskd.io.executor import ExecutorConfig, run_tasks
from lskd.stages.critic import Critic, score_corpus, train_critic, write_synthetic

torch.set_num_threads(1)
SMALL = dict(dim=32, heads=2, layers=1, encoders=('toy-image', 'toy-text'))
COLOURS = {'red': (220, 40, 40), 'blue': (40, 70, 220), 'green': (40, 180, 60)}
FILES = ('scored.jsonl', 'filtered.jsonl')


@pytest.fixture(scope='module')
def scoring(tmp_path_factory):
    "A corpus of 60 triples about 12 images of coloured squares, a critic trained on it (1 epoch), and the local executor's output"
    d = tmp_path_factory.mktemp('ray'); rng = random.Random(3); qs = []
    for n in range(12):
        im = Image.new('RGB', (150, 100), 'white'); dr = ImageDraw.Draw(im); regs = []
        for i, c in enumerate(rng.sample(list(COLOURS), 2)):
            b = (10 + 70*i, 20, 60 + 70*i, 80); dr.rectangle(b, fill=COLOURS[c]); regs.append(Region(i, b, c))
        im.save(d/f'im{n}.png')
        for k in range(5):
            i = rng.randrange(2); c = regs[i].label if k % 2 == 0 else rng.choice(list(COLOURS))
            qs.append(QAR(f'im{n}.png', f'What colour is [{i}]?', f'[{i}] is {c}.', f'[{i}] is painted {c}.', regions=regs, source=f's{k % 2}', id=f'q{n}.{k}'))
    write_jsonl(d/'corpus.jsonl', qs)
    write_synthetic(d/'corpus.jsonl', d/'labels')
    train_critic([d/'corpus.jsonl', d/'labels'/'synthetic.jsonl'], d/'labels'/'labels.jsonl', d/'critic', epochs=1, image_root=d, model_config=SMALL,
                 heldout=0.3, progress=False)
    local = score_corpus(Critic.load(d/'critic'), d/'corpus.jsonl', d/'local', threshold=0.5, image_root=d, executor={'batch_size': 8}, progress=False)
    return d, local


def same_output(a, b):
    "Byte-identical scored and filtered files (the same rows, the same order, the same scores)"
    return all((Path(a)/f).read_bytes() == (Path(b)/f).read_bytes() for f in FILES)


@pytest.fixture(scope='module')
def local_ray():
    "One Ray on this machine (2 CPUs) for the tests that do not start their own"
    ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level='warning')
    yield
    ray.shutdown()


def test_ray_scoring_writes_what_local_writes(scoring, local_ray):
    d, local = scoring
    rep = score_corpus(Critic.load(d/'critic'), d/'corpus.jsonl', d/'ray', threshold=0.5, image_root=d,
                       executor={'executor': 'ray', 'num_workers': 2, 'batch_size': 8}, progress=False)
    assert same_output(d/'local', d/'ray')
    assert (rep['n'], rep['kept'], rep['sources']) == (local['n'], local['kept'], local['sources']) and rep['n'] == 60
    assert rep['executor']['tasks'] == 8 and rep['executor']['workers'] == 2     # 60 lines in tasks of 8, over both workers


def _killer(marker, k, shared):
    "A task function that SIGKILLs its own worker process the first time it meets task `k` (the marker file remembers it did)"
    def fn(t):
        if t == k and not os.path.exists(marker): Path(marker).touch(); os.kill(os.getpid(), signal.SIGKILL)
        return [t, t * t]
    return fn


def test_killed_worker_is_retried_and_every_task_is_there_once(tmp_path, local_ray):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])     # the workers cannot import this test module: `_killer` goes by value
    st = {}
    out = list(run_tasks(partial(_killer, str(tmp_path/'killed'), 5), list(range(12)), ExecutorConfig('ray', num_workers=2, batch_size=1), stats=st))
    assert (tmp_path/'killed').exists()                          # a worker did die, on task 5
    assert out == [[t, t * t] for t in range(12)] and st['tasks'] == 12


@pytest.mark.slow      # ~100 s: two Ray starts in subprocesses (pytest --slow)
def test_killed_stage_resumes_without_redoing_tasks(scoring, tmp_path):
    d, local = scoring
    cmd = [sys.executable, '-m', 'lskd.app.cli', 'critic', 'score', '--critic', str(d/'critic'), '--corpus', str(d/'corpus.jsonl'),
           '--out', str(tmp_path), '--image-root', str(d), '--threshold', '0.5', '--executor', 'ray', '--batch-size', '4']
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pos, t0 = tmp_path/'scored.progress.json', time.time()
    while time.time() - t0 < 240 and p.poll() is None:
        try: done = json.loads(pos.read_text())['rows']
        except (OSError, ValueError): done = 0
        if done >= 8: break
        time.sleep(0.05)
    assert p.poll() is None, f"the stage ended before it could be killed: {p.stderr.read().decode()[-2000:]}"
    os.killpg(p.pid, signal.SIGKILL); p.wait()                   # the driver, its Ray and its workers
    at_kill = json.loads(pos.read_text())['rows']
    assert 8 <= at_kill < 60
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path/'filter_report.json').read_text())
    assert rep['scored_now'] == 60 - at_kill                      # the finished tasks were not scored again
    assert same_output(d/'local', tmp_path)


@pytest.mark.slow      # ~35 s: a 2-node cluster's start (pytest --slow); keeps CI under its 30 minutes
def test_two_node_cluster_scores_on_both_nodes(scoring):
    from ray.cluster_utils import Cluster
    d, local = scoring
    if ray.is_initialized(): ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={'num_cpus': 1, 'include_dashboard': False})
    try:
        cluster.add_node(num_cpus=1); cluster.wait_for_nodes()
        rep = score_corpus(Critic.load(d/'critic'), d/'corpus.jsonl', d/'cluster', threshold=0.5, image_root=d,
                           executor={'executor': 'ray', 'ray_address': cluster.address, 'num_workers': 2, 'batch_size': 8}, progress=False)
    finally:
        if ray.is_initialized(): ray.shutdown()
        cluster.shutdown()
    assert len(rep['executor']['tasks_per_node']) == 2, rep['executor']      # one worker on each node, each scored tasks
    assert sum(rep['executor']['tasks_per_node'].values()) == 8
    assert same_output(d/'local', d/'cluster')


def test_ray_evaluation_predicts_what_local_predicts(scoring, local_ray):
    from lskd.stages.evaluate import evaluate
    d, _ = scoring
    model = f"fused={d/'critic'/'model'}"                      # the critic's image-text model: a fused model on toy encoders
    res = {ex: evaluate('mc', d/'corpus.jsonl', [model], d/f'eval-{ex}', image_root=d, progress=False,
                        executor={'executor': ex, 'num_workers': 2, 'batch_size': 16}) for ex in ('local', 'ray')}
    assert (d/'eval-local'/'predictions_fused.jsonl').read_bytes() == (d/'eval-ray'/'predictions_fused.jsonl').read_bytes()
    keep = lambda m: {k: m[k] for k in ('metrics', 'n', 'units', 'intervals')}
    assert keep(res['ray']['models'][0]) == keep(res['local']['models'][0]) and res['ray']['n_questions'] == 60
