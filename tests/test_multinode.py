"""Two "nodes" on 127.0.0.1 (two `torch.distributed.run` agents, c10d rendezvous, one CPU process each, gloo) train the student;
one rank killed with SIGKILL ends the job without a hang, and resuming reaches the weights of the run that was not killed."""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path
import psutil, pytest
from lskd.testing import toy_corpus

ARGS = ['--model-config', 'encoders=[toy-image, toy-text]', '--model-config', 'dim=32', '--model-config', 'heads=2',
        '--steps', '8', '--save-every', '2', '--batch-size', '4', '--log-every', '1', '--device', 'cpu', '--quiet']

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def nodes(corpus, root, out, job):
    "Start the two node agents of one job; their Popen objects"
    port = free_port()
    def node(rank):
        return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc_per_node', '1', '--node_rank', str(rank),
                                 '--rdzv_backend', 'c10d', '--rdzv_endpoint', f'127.0.0.1:{port}', '--rdzv_id', job, '--max_restarts', '0',
                                 '-m', 'lskd.app.cli', 'distill', str(corpus), str(out), '--image-root', str(root), *ARGS],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return [node(0), node(1)]

def finish(procs, timeout):
    "Wait for every agent (kill what is left after `timeout` s); `(return codes, outputs, seconds)`"
    t0, outs = time.time(), []
    for p in procs:
        try: outs.append(p.communicate(timeout=max(1, timeout - (time.time() - t0)))[0])
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); outs.append(p.communicate()[0])
    return [p.returncode for p in procs], outs, time.time() - t0

def weights(out):
    from safetensors.torch import load_file
    return load_file(str(Path(out)/'model.safetensors'))

@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp('toy'); return toy_corpus(d), d

@pytest.mark.slow                      # ~45 s: three 2-node jobs (pytest --slow)
def test_two_nodes_kill_and_resume(toy, tmp_path):
    corpus, root = toy
    rc, outs, _ = finish(nodes(corpus, root, tmp_path/'ref', 'ref'), 300)         # the run that is not killed
    assert rc == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    s = json.loads([l for l in outs[0].splitlines() if l.startswith('{')][-1])
    assert s['processes'] == 2 and s['steps'] == 8

    procs = nodes(corpus, root, tmp_path/'run', 'run')                              # the same job, rank 1 killed after the step-4 checkpoint
    t0 = time.time()
    while not (tmp_path/'run'/'checkpoints'/'step-000004').exists():
        assert time.time() - t0 < 300 and all(p.poll() is None for p in procs), 'the run ended before its step-4 checkpoint'
        time.sleep(0.05)
    worker = psutil.Process(procs[1].pid).children(recursive=True)[0]
    worker.send_signal(signal.SIGKILL)
    rc, outs, waited = finish(procs, 120)
    print(f'rank 1 killed after the step-4 checkpoint: both nodes ended in {waited:.1f} s, exit codes {rc}')
    assert waited < 120 and all(c != 0 for c in rc)                                 # the job ends, no hang, and says it failed
    assert not (tmp_path/'run'/'model.safetensors').exists()

    rc, outs, _ = finish(nodes(corpus, root, tmp_path/'run', 'resume'), 300)         # resumed from the newest checkpoint
    assert rc == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    hist = [json.loads(l) for l in open(tmp_path/'run'/'history.jsonl')]
    assert [h['step'] for h in hist] == list(range(1, 9))
    a, b = weights(tmp_path/'ref'), weights(tmp_path/'run')
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-6 for k in a)
    ref = [json.loads(l)['loss'] for l in open(tmp_path/'ref'/'history.jsonl')]
    assert [h['loss'] for h in hist] == pytest.approx(ref, abs=1e-6)
