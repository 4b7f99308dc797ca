#!/usr/bin/env python
"""Entry point: `python launch.py stage=<stage> model=<model> key=value ...`.

Hydra composes conf/ over the structured configs in recipes/config.py, then the
chosen backend runs the stage. `--help` lists the config groups, `--cfg job`
prints the resolved config. Outputs go to one run directory, `exp_manager.explicit_log_dir`, or
`runs/<stage>/<timestamp>/`: config.yaml, launch.log (everything logged at INFO and above), the stage's
files. Nothing is written outside it, and `dry_run=true` writes nothing (backend=nemo: the command files).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from recipes import runlog  # noqa: E402
from recipes.config import check_overrides, register_configs, validate  # noqa: E402
from recipes.run_lock import DirectoryInUse  # noqa: E402

register_configs()
# peft asks transformers 5 for a deprecated property on every LoRA stage: a warning per stage the user can do
# nothing about (peft's to fix), so the demo's output shows it no more.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
# What a user can cause and fix (bad data or settings, a busy directory, a missing or unreadable file, a full
# disk): reported in one line. OSError covers files the loaders cannot read and writes that fail.
USER_ERRORS = (ValueError, OSError, DirectoryInUse)
# Where a model, tokenizer or checkpoint is read: an error raised inside them (a RuntimeError on mismatched
# weights, safetensors' own error on a damaged file) comes from what the user pointed us at.
LOADERS = ("from_pretrained", "load_file", "safe_open", "load_state_dict", "load_checkpoint", "load_tokenizer",
           "load_model", "load_reference", "load_reward_model")


def run_dir_for(cfg: DictConfig) -> Path:
    if cfg.exp_manager.explicit_log_dir:
        return Path(cfg.exp_manager.explicit_log_dir).resolve()
    return (Path("runs") / cfg.stage.name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()


def run_pipeline(cfg: DictConfig, overrides: list[str]) -> None:
    """pipeline=<name>: every stage in <pipeline dir>/<stage>/, then report.md (recipes/pipeline.py)."""
    from recipes import pipeline

    try:
        pipeline.run(cfg, overrides)  # it prints the summary and where everything is
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        if not user_error(err):
            raise
        fail(err)


def user_error(err: BaseException) -> bool:
    if isinstance(err, USER_ERRORS):
        return True
    from recipes.distributed import is_comm_error

    if is_comm_error(err):  # a rank died or timed out: a line, not a traceback (distributed.speaks)
        return True
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in LOADERS:
            return isinstance(err, Exception)
        tb = tb.tb_next
    return False


def fail(err: BaseException, cfg: DictConfig | None = None) -> None:
    """Bad input, a busy directory, a full disk: one line on stderr, not a traceback (HYDRA_FULL_ERROR=1 shows
    it). Under torchrun the line comes once, from the rank that has the cause (distributed.speaks)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    message = " ".join(str(err).split())[:600] or type(err).__name__
    if not isinstance(err, USER_ERRORS):
        message = f"{type(err).__name__}: {message}"
    message += demo_data_hint(cfg, message) if cfg is not None else ""
    from recipes import distributed

    runlog.to_files(message, logging.ERROR)  # the run's log keeps it too
    # A library's log handler that fails on the way out (wandb's own log file on a full disk) must not bury the
    # line under "--- Logging error ---" tracebacks: logging then drops such records quietly.
    logging.raiseExceptions = False
    if distributed.launched():
        distributed.exit_now(message if distributed.speaks(message, distributed.is_comm_error(err)) else None)
    sys.exit(f"error: {message}")


def demo_data_hint(cfg: DictConfig, message: str) -> str:
    """`data=demo` (the default) names the SFT chat sample for every stage: when a stage that reads other rows
    (dpo, rpo, rm) fails on one of its files, say where that file came from and what to give instead."""
    files = [cfg.model.data.train_ds.file_path, cfg.model.data.validation_ds.file_path]
    demo = [Path(f).name for f in files if f and Path(f).parent == REPO / "data" / "demo"]
    named = any(message.startswith(name) or f"/{name}" in message for name in demo)
    if cfg.stage.name not in ("rm", "dpo", "rpo") or not named:
        return ""
    return (f" ({', '.join(demo)}: the SFT chat sample that data=demo, the default, gives every stage; for "
            f"stage={cfg.stage.name} add data=none and name your own model.data.train_ds.file_path)")


def run_stage(cfg: DictConfig, run_dir: Path) -> Path:
    """The backend runs the stage; bad data or settings end in one clear line, not a traceback."""
    if cfg.backend.name == "torch":
        from recipes.backends import torch_backend as backend
    elif cfg.backend.name == "nemo":
        from recipes.backends import nemo_backend as backend
    else:  # validate() only lets known backends through
        raise AssertionError(cfg.backend.name)
    try:
        return backend.run(cfg, run_dir)
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        if not user_error(err):
            raise
        fail(err, cfg)


def print_done(cfg: DictConfig, run_dir: Path, out: Path) -> None:
    """Where everything is, and the eval results when the stage ran benchmarks."""
    from recipes.backends.torch_backend import TRAINING_STAGES

    if cfg.backend.name == "nemo" and (cfg.dry_run or cfg.executor.name != "local"):
        # Printed or submitted, not finished: nemo_backend said what it wrote and where the output will be.
        runlog.say(f"\n{cfg.stage.name}: run directory {run_dir}; final checkpoint (when done): {out}")
        return
    results = run_dir / "eval" / "results.md"
    if results.is_file():
        runlog.say(f"\n{results.read_text().rstrip()}")
    rows = [("run directory", run_dir), ("checkpoint" if cfg.stage.name in TRAINING_STAGES else "output", out)]
    if (run_dir / "metrics.csv").exists():
        rows.append(("metrics", f"{run_dir / 'metrics.csv'} (and metrics.jsonl)"))
    if results.is_file():
        rows.append(("eval results", f"{results} (and results.json)"))
    if (run_dir / "launch.log").exists():
        rows.append(("log", run_dir / "launch.log"))
    runlog.say(f"\nDone: {cfg.stage.name} finished.\n" + "\n".join(f"  {k + ':':<15}{v}" for k, v in rows))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    problems = validate(cfg)
    if problems:  # one line per problem
        sys.exit("\n".join(f"config error: {p}" for p in problems))
    from recipes import distributed, pipeline

    overrides = list(HydraConfig.get().overrides.task)
    one_stage = not cfg.pipeline.name or pipeline.picks_stage(overrides)  # `stage=`/`experiment=` run one stage
    problem = distributed.launch_problem(cfg, one_stage)
    if problem:
        sys.exit(f"config error: {problem}")
    if not one_stage:
        return run_pipeline(cfg, overrides)
    run_dir = run_dir_for(cfg)
    if cfg.resume and not cfg.exp_manager.explicit_log_dir:
        sys.exit("config error: resume=true needs exp_manager.explicit_log_dir=<the run directory to resume>")
    if cfg.dry_run and cfg.backend.name == "torch":
        runlog.say(f"dry run: stage {cfg.stage.name} would run on backend torch in {run_dir}; nothing was run or "
                   "written (`--cfg job` prints the resolved config)")
        return
    if distributed.wants_slurm(cfg):  # backend=torch executor=slurm: an sbatch that runs torchrun per node
        return submit_slurm(cfg, overrides, run_dir)
    from recipes import run_lock

    # One run per directory, the lock taken before anything is written there (so a refused run never writes
    # into the holder's log); a NeMo dry run, which only writes its command files, takes none. config.yaml is
    # written once the run is accepted (recipes/resume.py). Under torchrun rank 0 does all of it; the others
    # take no lock, write nothing and learn rank 0's decision (distributed.from_main).
    try:
        distributed.init(cfg.trainer)
        writes = not cfg.dry_run and distributed.is_main()
        lock = run_lock.hold(run_dir) if writes else contextlib.nullcontext()
        with lock, runlog.log_file(run_dir / "launch.log") if writes else contextlib.nullcontext():
            finished = distributed.from_main(lambda: accept(cfg, run_dir))
            if finished is not None:
                runlog.say(f"\nNothing to do: {cfg.stage.name} in {run_dir} has finished (final checkpoint "
                           f"{finished}); resume_allow_changes=[...] with a changed setting (e.g. "
                           "trainer.max_steps) trains on.")
                return
            runlog.say(f"=== {cfg.stage.name} (backend {cfg.backend.name}): run directory {run_dir}")
            out = run_stage(cfg, run_dir)
            if distributed.is_main():
                print_done(cfg, run_dir, Path(out))
    except Exception as err:  # noqa: BLE001 - a busy directory, a refused resume: one line
        if not user_error(err):
            raise
        fail(err, cfg)
    finally:
        distributed.close()


def accept(cfg: DictConfig, run_dir: Path) -> Path | None:
    from recipes import resume

    run_dir.mkdir(parents=True, exist_ok=True)
    return resume.accept(cfg, run_dir)


def submit_slurm(cfg: DictConfig, overrides: list[str], run_dir: Path) -> None:
    """Write <run dir>/<stage>.sbatch (torchrun per node) and submit it (executor.submit=true) or say how."""
    from data_prep.jsonl import atomic_write_text
    from recipes import distributed
    from recipes.executors import submit_scripts

    path = run_dir / f"{cfg.stage.name}.sbatch"
    atomic_write_text(path, distributed.sbatch_script(cfg, overrides, run_dir))
    runlog.say(f"# {path}\n{path.read_text()}")
    submit_scripts([path], submit=cfg.executor.submit)


if __name__ == "__main__":
    error = check_overrides(sys.argv[1:], REPO / "conf")
    if error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    if ("--cfg" in sys.argv or "-c" in sys.argv) and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")  # show the values a run would use, not ${...} interpolations
    main()
