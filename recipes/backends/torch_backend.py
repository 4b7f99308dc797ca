"""The embedded backend: run a stage in this process on HF transformers models (CPU or one GPU)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# stage name -> module with `run(cfg, run_dir) -> Path` (the final checkpoint or output dir)
STAGES = {
    "sft": "recipes.sft",
    "rm": "recipes.rm",
    "rm_annotate": "recipes.rm_annotate",
    "dpo": "recipes.dpo",
    "rpo": "recipes.dpo",  # RPO is the DPO stage with an RPO loss and rewards required
    "eval": "recipes.evaluate",
    "prep_helpsteer2": "recipes.prep",
    "prep_sdg": "recipes.prep",
    "sdg_generate": "recipes.sdg_generate",  # N responses per prompt -> SDG records for rm_annotate
    "sdg_prompts": "recipes.sdg_prompts",  # synthetic prompts from topics, documents and keywords
    "sdg_dialogue": "recipes.sdg_dialogue",  # role-played multi-turn dialogues, RM-filtered -> SFT rows
    "rm_serve": "recipes.rm_serve",  # a reward model over Nemotron-4-340B-Reward's HTTP API
    "steerlm_sft": "recipes.steerlm",  # SFT on SteerLM-labelled rows + steerlm.json in the checkpoint
    "generate": "recipes.generate",  # steerable generation (stage=generate steer.verbosity=...)
    "steerlm": "recipes.steerlm",  # experiment=steerlm: annotate -> steerlm_sft -> generate -> report
}
TRAINING_STAGES = ("sft", "rm", "dpo", "rpo", "steerlm_sft")


def run(cfg, run_dir: Path) -> Path:
    if cfg.trainer.devices > 1 or cfg.trainer.num_nodes > 1:
        log.warning("backend=torch trains on one device; trainer.devices=%d and trainer.num_nodes=%d apply to "
                    "backend=nemo only", cfg.trainer.devices, cfg.trainer.num_nodes)
    module = importlib.import_module(STAGES[cfg.stage.name])
    out = module.run(cfg, run_dir)
    if cfg.stage.name in TRAINING_STAGES:
        # The stage wrote recipe.json (its template and LoRA choice) into the checkpoint: the hooks read it.
        from recipes.evaluate import enabled, run_hooks

        if enabled(cfg):
            run_hooks(cfg, Path(out), run_dir / "eval")
    return out
