"""The embedded backend: run a stage in this process on HF transformers models (a CPU or a GPU), and the
training stages on several processes (GPUs, nodes) with torchrun + FSDP2 (recipes/distributed.py)."""

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
    """Run the stage here. A training stage with trainer.devices > 1 that was not started by torchrun starts
    its processes first (distributed.run_workers: they train from <run dir>/config.yaml); under torchrun every
    rank trains its share (recipes/distributed.py). Eval hooks run once, on rank 0, after training."""
    from recipes import distributed

    training = cfg.stage.name in TRAINING_STAGES
    if not training and cfg.trainer.devices > 1:
        log.warning("trainer.devices=%d applies to the training stages (%s); stage=%s runs in one process",
                    cfg.trainer.devices, ", ".join(TRAINING_STAGES), cfg.stage.name)
    if training and cfg.trainer.devices > 1 and not distributed.launched():
        distributed.run_workers(cfg, run_dir)
        from recipes.resume import final_checkpoint

        out = final_checkpoint(cfg, run_dir)
    else:
        out = run_here(cfg, run_dir)
    if training and distributed.is_main():
        # The stage wrote recipe.json (its template and LoRA choice) into the checkpoint: the hooks read it.
        from recipes.evaluate import enabled, run_hooks

        if enabled(cfg):
            run_hooks(cfg, Path(out), run_dir / "eval")
    return out


def run_here(cfg, run_dir: Path) -> Path:
    """The stage in this process (for a training stage under torchrun: this rank's part of it)."""
    return importlib.import_module(STAGES[cfg.stage.name]).run(cfg, run_dir)
