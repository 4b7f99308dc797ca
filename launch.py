#!/usr/bin/env python
"""Entry point: `python launch.py stage=<stage> model=<model> key=value ...`.

Hydra composes conf/ over the structured configs in recipes/config.py, then the
chosen backend runs the stage. `--help` lists the config groups, `--cfg job`
prints the resolved config. Outputs go to one run directory:
`exp_manager.explicit_log_dir`, or Hydra's `runs/<stage>/<timestamp>/`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from recipes.config import check_overrides, register_configs, validate  # noqa: E402
from recipes.run_lock import DirectoryInUse  # noqa: E402

log = logging.getLogger("launch")
register_configs()
# What a user can cause and fix (bad data or settings, a busy directory, a missing or unreadable file, a full
# disk): reported in one line. OSError covers files the loaders cannot read and writes that fail.
USER_ERRORS = (ValueError, OSError, DirectoryInUse)


def run_dir_for(cfg: DictConfig) -> Path:
    if cfg.exp_manager.explicit_log_dir:
        return Path(cfg.exp_manager.explicit_log_dir).resolve()
    return Path(HydraConfig.get().runtime.output_dir).resolve()


def run_pipeline(cfg: DictConfig, overrides: list[str]) -> None:
    """pipeline=<name>: every stage in <pipeline dir>/<stage>/, then report.md (recipes/pipeline.py)."""
    from recipes import pipeline

    try:
        report = pipeline.run(cfg, overrides)
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        if not user_error(err):
            raise
        fail(err)
    if not cfg.dry_run:
        print(f"\nDone: pipeline {cfg.pipeline.name} finished.\n  report: {report}")


# Where a model, tokenizer or checkpoint is read: an error raised inside them (a RuntimeError on mismatched
# weights, safetensors' own error on a damaged file) comes from what the user pointed us at.
LOADERS = ("from_pretrained", "load_file", "safe_open", "load_state_dict", "load_checkpoint", "load_tokenizer",
           "load_model", "load_reference", "load_reward_model")


def user_error(err: BaseException) -> bool:
    if isinstance(err, USER_ERRORS):
        return True
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in LOADERS:
            return isinstance(err, Exception)
        tb = tb.tb_next
    return False


def fail(err: BaseException) -> None:
    """Bad input, a busy directory, a full disk: one line, not a traceback (HYDRA_FULL_ERROR=1 shows it)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    line = " ".join(str(err).split())[:600] or type(err).__name__
    if not isinstance(err, USER_ERRORS):
        line = f"{type(err).__name__}: {line}"
    log.error("%s", line)
    sys.exit(f"error: {line}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    problems = validate(cfg)
    if problems:  # one line per problem
        sys.exit("\n".join(f"config error: {p}" for p in problems))
    from recipes import pipeline

    overrides = list(HydraConfig.get().overrides.task)
    if cfg.pipeline.name and not pipeline.picks_stage(overrides):  # `stage=`/`experiment=` run one stage
        return run_pipeline(cfg, overrides)
    run_dir = run_dir_for(cfg)
    if cfg.resume and not cfg.exp_manager.explicit_log_dir:
        sys.exit("config error: resume=true needs exp_manager.explicit_log_dir=<the run directory to resume>")
    if cfg.backend.name == "torch":
        from recipes.backends import torch_backend as backend
    elif cfg.backend.name == "nemo":
        from recipes.backends import nemo_backend as backend
    else:  # validate() only lets known backends through
        raise AssertionError(cfg.backend.name)
    from recipes import resume, run_lock

    try:
        # One run per directory (a NeMo dry run, which only prints, takes no lock); config.yaml is written
        # once the run is accepted (recipes/resume.py).
        dry = cfg.dry_run and cfg.backend.name == "nemo"
        with contextlib.nullcontext() if dry else run_lock.hold(run_dir):
            finished = resume.accept(cfg, run_dir)
            if finished is not None:
                print(f"\nNothing to do: {cfg.stage.name} in {run_dir} has finished (final checkpoint {finished}); "
                      "resume_allow_changes=[...] with a changed setting (e.g. trainer.max_steps) trains on.")
                return
            out = backend.run(cfg, run_dir)
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        if not user_error(err):
            raise
        fail(err)
    if cfg.backend.name == "nemo" and (cfg.dry_run or cfg.executor.name != "local"):
        # Printed or submitted, not finished: nemo_backend said what it wrote and where the output will be.
        print(f"\n{cfg.stage.name}: run directory {run_dir}; final checkpoint (when done): {out}")
        return
    print(f"\nDone: {cfg.stage.name} finished.\n  run directory: {run_dir}\n  checkpoint:    {out}")
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        print(f"  metrics:       {metrics} (and metrics.jsonl)")


if __name__ == "__main__":
    error = check_overrides(sys.argv[1:], REPO / "conf")
    if error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    if ("--cfg" in sys.argv or "-c" in sys.argv) and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")  # show the values a run would use, not ${...} interpolations
    main()
