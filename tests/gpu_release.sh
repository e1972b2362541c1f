#!/usr/bin/env bash
# GPU check of the paper's configuration (issue: the authors' release), one go, under 9 minutes:
#   bash tests/gpu_release.sh            (from the repository root)
# 1. the tiny twin of data/configs/paper.yaml through `lskd run --config`, captioner and VQA on cuda (critic, distill: cuda)
# 2. the BLIP-2 student at the release's size and input (random ViT-g/14 + Q-Former weights, 480 px), 200 steps of batch 32,
#    8 data-loader workers: examples/s and peak GPU memory
set -u
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
$PY -c "import torch, sys; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda'); sys.exit(0 if torch.cuda.is_available() else 1)" || exit 1
echo "== 1. tiny twin of paper.yaml on cuda"
LSKD_TEST_DEVICE=cuda timeout 300 $PY -m pytest -q -x -s tests/test_paper_config.py -p no:cacheprovider 2>&1 | grep -E "passed|failed|Error|^\| (model|base|distilled) " | head -12
echo "== 2. BLIP-2 student, release size, 480 px, 200 steps of batch 32"
timeout 240 $PY tests/bench_blip2.py --device cuda --steps 200 --batch-size 32 --num-workers 8 --image-size 480 2>&1 | grep -v -E "Loading weights|Writing model"
