#!/usr/bin/env bash
# One-GPU check: bf16 SFT with packing and DPO steps on a random ~1B Llama with a 128k vocabulary,
# printing tokens/s, MFU and peak GPU memory (bench/gpu_check.py; docs/scaling.md).
#   bash bench/gpu_check.sh [--steps 8] [--seq-len 4096] [--micro-batch 4] [--peak-tflops 989]
#   bash bench/gpu_check.sh --cpu --tiny     # seconds on a CPU: checks the script itself
# Runs offline: the model is random and the tokenizer is trained on generated text.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
