"""Data parallel = one big batch: 2 CPU processes (gloo, `torch.distributed.run`) x batch B give the loss and the gradients of
1 process x batch 2B on the same examples and seeds (tests/dist_equiv.py runs one training step of each case)."""
import subprocess, sys
from pathlib import Path
import pytest, torch
from lskd.testing import toy_corpus

HERE = Path(__file__).parent

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    from lskd.models.blip2 import build_tiny_blip2
    d = tmp_path_factory.mktemp('dist')
    args = ['--corpus', toy_corpus(d/'toy'), '--root', d/'toy', '--blip2', build_tiny_blip2(d/'blip2')]
    for out, launch, bs in (('one.pt', [], 8), ('two.pt', ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'], 4)):
        r = subprocess.run([sys.executable, *launch, HERE/'dist_equiv.py', d/out, *map(str, args), '--batch-size', str(bs)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(d/'one.pt'), torch.load(d/'two.pt')

def max_diff(a, b): return max((a[k] - b[k]).abs().max().item() for k in a)

@pytest.mark.parametrize('case', ['fused', 'bow', 'blip2', 'critic'])
def test_two_processes_equal_one_big_batch(runs, case):
    one, two = runs[0][case], runs[1][case]
    assert (one['processes'], two['processes']) == (1, 2)
    assert set(one['grads']) == set(two['grads']) and len(one['grads']) > 0
    figures = [k for k in ('loss', 'itc', 'itm') if k in one]
    print(f"{case}: " + ', '.join(f"{k} {one[k]:.6f} / {two[k]:.6f}" for k in figures) +
          f"; max |loss diff| {max(abs(one[k] - two[k]) for k in figures):.1e}, max |grad diff| {max_diff(one['grads'], two['grads']):.1e} over {len(one['grads'])} tensors")
    assert all(abs(one[k] - two[k]) <= 1e-5 for k in figures)
    assert max_diff(one['grads'], two['grads']) <= 1e-5

def test_local_loss_is_each_process_own_batch(runs):
    "`local_loss`: in-batch ITC and negatives per process, as open_clip's --local-loss: another loss, another gradient"
    one, two = runs[0]['fused'], runs[1]['fused-local']
    assert abs(one['itc'] - two['itc']) > 1e-3 and max_diff(one['grads'], two['grads']) > 1e-4
