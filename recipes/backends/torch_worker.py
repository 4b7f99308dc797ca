"""One process of a multi-process training stage started by `trainer.devices=N` (distributed.run_workers).

    python -m torch.distributed.run --standalone --nproc-per-node=N -m recipes.backends.torch_worker <run dir>

The launching process has taken the run directory's lock and written its resolved `config.yaml`; each
worker reads that config, joins the process group and trains its share. Rank 0 logs (console and
launch.log) and writes; an error ends this rank with its one line left for the launcher to print
(distributed.record_error), and torchrun stops the other ranks.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf


def load_config(run_dir: Path):
    """The run's config.yaml: the launcher's config, resolved and checked (struct: a missing key fails)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    OmegaConf.set_struct(cfg, True)
    return cfg


def main(run_dir: Path) -> None:
    import launch  # the entry point's error rules: one line for what the user can fix
    from recipes import distributed, runlog
    from recipes.backends import torch_backend

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="[%(asctime)s][%(levelname)s] %(message)s")
    end_with_launcher()
    try:
        cfg = load_config(run_dir)
        distributed.init(cfg.trainer)
        log_file = runlog.log_file(run_dir / "launch.log") if distributed.is_main() else _nothing()
        with log_file:
            torch_backend.run_here(cfg, run_dir)
    except Exception as err:  # noqa: BLE001 - reported once, by the launcher
        message = " ".join(str(err).split())[:600] or type(err).__name__
        if not launch.user_error(err):  # a bug: its traceback, then the line
            logging.getLogger(__name__).exception("rank %d failed", distributed.rank())
            message = f"{type(err).__name__}: {message} (traceback above)"
        if distributed.speaks(message, distributed.is_comm_error(err)):
            print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        distributed.close()


def end_with_launcher() -> None:
    """Linux: die with the launching process. torchrun starts each worker in a session of its own, so a
    launcher killed with SIGKILL (which cannot forward it) would otherwise leave the ranks training on."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def _nothing():
    return contextlib.nullcontext()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
