"""Accepting a training run into its run directory, and `resume=true` that checks what it resumes.

`accept(cfg, run_dir)` runs once per run, before anything is trained (launch.py, and the pipeline for
its stages). For the torch backend's training stages (sft, steerlm_sft, rm, dpo, rpo):

* `resume=true` compares the new config with the run's `config.yaml` on every key that decides the
  result: what `recipes.pipeline.read_config` hashes for the stage (stage, model, data, trainer, seed:
  model, data files, optimiser, schedule, batch sizes, losses, LoRA, ...), minus `SAFE` (where
  validation and checkpoints happen), plus the content of every local file or directory those keys name
  (`inputs.json`: blake2b, recipes.pipeline.content_hash). Logging, progress bars and eval hooks are
  not compared. A difference is refused in one line listing each key with its old and new value;
  `resume_allow_changes=[trainer.max_steps,...]` lets the listed keys (or everything under a listed
  prefix) change on purpose, e.g. to train a finished run further.
* Resuming a finished run (its final checkpoint carries recipe.json, written last) with nothing changed
  does nothing: accept() returns that checkpoint. With an allowed change the old final checkpoint is
  removed (it describes the old config) and training continues from the last `step_*` checkpoint.
  With `model.rpo.iterations > 1`, finished iterations are kept: changes apply to those not finished.
* A run without resume=true into a directory holding `step_*` checkpoints is refused: a later resume
  would continue from the earlier run's weights.
* Only then are `config.yaml` and `inputs.json` written, so a refused run leaves the directory as it was.

Other stages and backend=nemo (NeMo-Aligner resumes its own jobs) just get their config.yaml.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from data_prep.jsonl import atomic_write_text

log = logging.getLogger(__name__)

TRAINING = ("sft", "steerlm_sft", "rm", "dpo", "rpo")
INPUTS_FILE = "inputs.json"
# Read by training but never change the weights it ends with: when validation and checkpoints happen, and
# how many processes share the work and how they shard it (N processes make the same updates as one; a
# checkpoint of several processes resumes on any number > 1: recipes/distributed.py).
SAFE = ("trainer.val_check_interval", "trainer.limit_val_batches", "trainer.save_interval", "trainer.devices",
        "trainer.num_nodes", "model.fsdp")
PATH_KEYS = ("file_path", "name_or_path", "reference", "gguf_file")  # paths even when relative, without a "/"


class ResumeRefused(ValueError):
    """The new config would not continue the run it resumes (or a fresh run would mix with an old one)."""


def accept(cfg, run_dir: Path, known_hashes: dict | None = None) -> Path | None:
    """Check the run against its directory, then write config.yaml (and inputs.json). Returns the final
    checkpoint when the run is a resume of a finished one with nothing changed (nothing to do), else None.
    `known_hashes`: path -> content hash already computed (the pipeline's), so nothing is hashed twice."""
    run_dir = Path(run_dir)
    if cfg.backend.name != "torch" or cfg.stage.name not in TRAINING:
        _save(cfg, run_dir, None)
        return None
    now = compared(cfg)
    inputs = input_hashes(now, run_dir, known_hashes or {})
    if cfg.resume:
        changes = differences(run_dir, now, inputs)
        refused = [c for c in changes if not allowed(c[0], cfg.resume_allow_changes)]
        if refused:
            listing = ", ".join(f"{k} ({old} -> {new})" for k, old, new in refused)
            raise ResumeRefused(f"resume=true: {run_dir} ran with a different config: {listing}; to change "
                                f"{'it' if len(refused) == 1 else 'them'} on purpose add "
                                f"resume_allow_changes=[{','.join(dict.fromkeys(k for k, _, _ in refused))}]")
        final = final_checkpoint(cfg, run_dir)
        if (final / "recipe.json").is_file():
            if not changes or iterations(cfg) > 1:
                if changes:
                    log.warning("every iteration has finished; allowed changes apply to unfinished ones only")
                return final
            log.warning("resume with changed %s: removing the final checkpoint of the old config (%s) and "
                        "continuing from the last step_* checkpoint", ", ".join(c[0] for c in changes), final)
            shutil.rmtree(final)
    else:
        stale = sorted(run_dir.glob("checkpoints/step_*")) + sorted(run_dir.glob("iter_*/checkpoints/step_*"))
        if stale:
            raise ResumeRefused(f"{run_dir} holds {len(stale)} step_* checkpoint(s) of an earlier run "
                                f"({stale[-1].relative_to(run_dir)}): resume=true continues it; to start over "
                                "choose another exp_manager.explicit_log_dir or delete them")
    _save(cfg, run_dir, inputs)
    return None


def compared(cfg) -> dict:
    """{dotted key: value} of what decides a training run's result (the module docstring)."""
    from recipes.pipeline import read_config

    flat = _flatten(read_config(cfg.stage.name, cfg))
    return {k: v for k, v in flat.items() if not allowed(k, SAFE)}


def input_hashes(flat: dict, run_dir: Path, known: dict) -> dict:
    """{key: {"path", "hash"}} for every value of `flat` that names an existing local path outside run_dir."""
    from recipes.pipeline import content_hash

    own, cache, out = run_dir.resolve(), {}, {}
    for key, value in flat.items():
        if not isinstance(value, str) or len(value) > 4096 or (os.sep not in value and key.rsplit(".", 1)[-1]
                                                                not in PATH_KEYS):
            continue
        p = Path(value).absolute()
        if not p.exists() or own in (p.resolve(), *p.resolve().parents):
            continue
        out[key] = {"path": str(p), "hash": known.get(str(p)) or content_hash(p, cache)}
    return out


def differences(run_dir: Path, now: dict, inputs: dict) -> list[tuple[str, str, str]]:
    """(key, old, new) for every compared key that differs from the run's config.yaml / inputs.json."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        log.warning("resume=true: %s has no config.yaml to compare with; resuming unchecked", run_dir)
        return []
    before = compared(OmegaConf.load(saved))
    # A key the saved config lacks was added to the schema after the run started: not a change of the run.
    out = [(k, _show(before[k]), _show(now.get(k, "<missing>")))
           for k in before if before[k] != now.get(k, "<missing>")]
    try:
        old_inputs = json.loads((run_dir / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        old_inputs = {}
    for key, new in inputs.items():
        old = old_inputs.get(key)
        if old and old["path"] == new["path"] and old["hash"] != new["hash"]:
            out.append((key, f"content of {new['path']}: {old['hash'][:12]}", new["hash"][:12]))
    return out


def allowed(key: str, patterns) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in patterns or ())


def iterations(cfg) -> int:
    return cfg.model.rpo.iterations if cfg.stage.name in ("dpo", "rpo") else 1


def final_checkpoint(cfg, run_dir: Path) -> Path:
    n = iterations(cfg)
    return run_dir / (f"iter_{n}" if n > 1 else "") / "checkpoints" / "final"


def _save(cfg, run_dir: Path, inputs: dict | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if inputs is not None:
        atomic_write_text(run_dir / INPUTS_FILE, json.dumps(inputs, indent=1) + "\n")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(v) -> str:
    return v if isinstance(v, str) and v == "<missing>" else json.dumps(v)
