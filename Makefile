# The two commands of the README. Both create/update .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

.PHONY: demo test test-nemo

# Set up, then run the embedded default (python launch.py with no arguments).
demo:
	VENV=$(VENV) scripts/setup.sh
	$(OFFLINE) $(PY) launch.py

# Set up with test extras, then run the whole test suite.
test:
	VENV=$(VENV) scripts/setup.sh --test
	$(OFFLINE) $(PY) -m pytest -q

# NeMo-Aligner peer validation of our data files, in its own virtualenv (a few minutes).
test-nemo:
	scripts/setup_nemo_venv.sh
	$(OFFLINE) .venv-nemo/bin/python -m pytest -q tests_nemo
