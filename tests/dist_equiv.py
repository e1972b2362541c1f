"""One training step's loss and gradients, to check that N processes x batch B equal 1 process x batch NB (tests/test_dist.py).

    python tests/dist_equiv.py OUT --corpus C --root R --batch-size 2B [--blip2 FOLDER]                    # one process
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_equiv.py OUT ... --batch-size B   # two (gloo)

Each case builds its model with the same seed, takes the first batch of the real data path (the student's corpus
stream, the critic's epoch permutation), runs the forward and backward passes through accelerate's DDP, and the
main process saves `{case: {'loss', 'itc', 'itm', 'grads'}}` to OUT (after DDP's averaging the gradients are the
same on every process)."""
import argparse, sys
from pathlib import Path
import torch

def student(a, family, local_loss=False):
    from lskd.stages.distill import DistillConfig, make_student, StudentNet, _data
    from lskd.models.train import accelerator, seed_all
    mc = {'fused': {'encoders': ['toy-image', 'toy-text'], 'dim': 32, 'heads': 2, 'dropout': 0.0}, 'bow': {}, 'blip2': {'path': a.blip2}}[family]
    cfg = DistillConfig(model=family, model_config=mc, batch_size=a.batch_size, image_root=a.root, seed=0, device='cpu',
                        local_loss=local_loss, p_distract=0.5)
    accel = accelerator(cfg); seed_all(cfg.seed)
    model = make_student(cfg, accel.device)
    if family == 'blip2':                               # the tiny model's zero query tokens make the Q-Former's LayerNorms blow gradients up to 1e18
        with torch.no_grad(): model.model.query_tokens.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    net = accel.prepare(StudentNet(model))
    if family == 'blip2': net.eval()                    # no dropout: the Q-Former's would draw differently in 1 x 2B and 2 x B
    _, inputs = next(iter(_data(a.corpus, cfg, accel, model, a.root)([0, 0])))
    o = net(**inputs, generator=torch.Generator().manual_seed(cfg.seed + 1))
    accel.backward(o['loss'])
    return accel, model, o

def critic(a):
    from lskd.stages.critic import CriticNet, _critic_setup, _critic_data, critic_items
    from lskd.stages.critic import synthetic_negatives
    from lskd.models.core import load_model
    from lskd.models.train import accelerator, seed_all, TrainConfig
    from lskd.io.jsonl import read_jsonl
    from lskd.data.formats import as_qar
    accel = accelerator(TrainConfig(device='cpu')); seed_all(0)
    qars = list(read_jsonl(a.corpus, as_qar)); negs, labels = synthetic_negatives(qars, seed=0)
    tr_ex, tr_views, _, _ = _critic_setup(qars + negs, labels, 0.0, 0, 5, 0, 0)
    m = load_model('fused', accel.device, encoders=['toy-image', 'toy-text'], dim=32, heads=2, dropout=0.0)
    net = CriticNet(m); ddp = accel.prepare(net)
    items = critic_items(m, tr_views, a.root)
    _, inputs = next(iter(_critic_data(m, items, tr_ex, a.batch_size, 0, True, accel.process_index, accel.num_processes)([0, 0])))
    o = ddp(**inputs); accel.backward(o['loss'])
    return accel, net, o

def main():
    p = argparse.ArgumentParser()
    p.add_argument('out'); p.add_argument('--corpus'); p.add_argument('--root'); p.add_argument('--batch-size', type=int)
    p.add_argument('--blip2'); p.add_argument('--cases', nargs='+', default=['fused', 'bow', 'blip2', 'fused-local', 'critic'])
    a = p.parse_args(); torch.set_num_threads(1)
    res = {}
    for case in a.cases:
        accel, module, o = critic(a) if case == 'critic' else student(a, case.split('-')[0], case.endswith('-local'))
        grads = {k: p.grad.detach().clone() for k,p in module.named_parameters() if p.grad is not None}
        res[case] = {k: float(v.detach()) for k,v in o.items()} | {'grads': grads, 'processes': accel.num_processes}
    if accel.is_main_process: torch.save(res, a.out)
    accel.wait_for_everyone()

if __name__ == '__main__': main()
