"""The embedded backend: run a stage in this process on HF transformers models (CPU or one GPU)."""

from __future__ import annotations

import importlib
from pathlib import Path

# stage name -> module with `run(cfg, run_dir) -> Path` (the final checkpoint or output dir)
STAGES = {
    "sft": "recipes.sft",
}


def run(cfg, run_dir: Path) -> Path:
    module = importlib.import_module(STAGES[cfg.stage.name])
    return module.run(cfg, run_dir)
