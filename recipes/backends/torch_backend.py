"""The embedded backend: run a stage in this process on HF transformers models (CPU or one GPU)."""

from __future__ import annotations

import importlib
from pathlib import Path

# stage name -> module with `run(cfg, run_dir) -> Path` (the final checkpoint or output dir)
STAGES = {
    "sft": "recipes.sft",
    "rm": "recipes.rm",
    "rm_annotate": "recipes.rm_annotate",
    "dpo": "recipes.dpo",
    "rpo": "recipes.dpo",  # RPO is the DPO stage with an RPO loss and rewards required
}


def run(cfg, run_dir: Path) -> Path:
    module = importlib.import_module(STAGES[cfg.stage.name])
    return module.run(cfg, run_dir)
