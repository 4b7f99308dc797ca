#!/usr/bin/env bash
# Build the NeMo-Aligner peer-validation venv (CPU only): a format validator, not a trainer.
#
# It is a SEPARATE venv because NeMo 2.2 pins transformers<=4.48.3, numpy<2 and hydra-core<=1.3.2,
# which clash with the main .venv. tests_nemo/ runs only with this venv's python:
#
#   scripts/setup_nemo_venv.sh && .venv-nemo/bin/python -m pytest tests_nemo -q
#
# Env: NEMO_VENV (default <repo>/.venv-nemo), PYTHON (default python3.11).
# Idempotent: does nothing when the venv already imports nemo_aligner.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
V="${NEMO_VENV:-$REPO/.venv-nemo}"
PY="${PYTHON:-python3.11}"

if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import nemo_aligner" >/dev/null 2>&1; then
    echo "setup_nemo_venv: $V already imports nemo_aligner; nothing to do"
    exit 0
fi

start=$(date +%s)
"$PY" -m venv "$V"
"$V/bin/pip" install --quiet --upgrade pip
# Pins from docs/data_prep.md (measured): nemo-toolkit 2.2.1 + megatron-core 0.11.0 is the newest pair that
# still has the NLP collection and runs on Python 3.11; torch 2.13.0 matches the main venv's CPU wheel.
"$V/bin/pip" install --quiet torch==2.13.0 "nemo-toolkit[nlp]==2.2.1" megatron-core==0.11.0 nemo-aligner==0.7.0 \
    "pangu==4.0.6.1" "pyarrow<26" pytest
# torchvision from the resolver does not match torch 2.13 and breaks `import nemo`; NeMo's NLP code does not need it.
"$V/bin/pip" uninstall --quiet -y torchvision || true

"$V/bin/python" -c "import nemo_aligner, nemo.collections.nlp" >/dev/null
echo "setup_nemo_venv: built $V in $(( $(date +%s) - start )) s"
