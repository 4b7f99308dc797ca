"""Run logs: everything logged at INFO and above goes to a file inside the run directory.

launch.py writes `<run dir>/launch.log`; a pipeline writes `<pipeline dir>/pipeline.log` (all of it) and
each stage's own `<stage dir>/launch.log`. Hydra writes no log and no `.hydra/` folder (conf/config.yaml),
so a run leaves nothing outside its directory, and a dry run leaves nothing at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"


@contextlib.contextmanager
def log_file(path: Path):
    """Copy every record logged at INFO and above to `path` (appended: a resumed run adds to its log)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT))
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:  # outside launch.py (no Hydra logging config): still INFO
        root.setLevel(logging.INFO)
    try:
        yield path
    except BaseException as err:  # a crash or Ctrl-C: logged with its traceback (once, in every log open)
        if not isinstance(err, SystemExit) and not getattr(err, "_in_run_log", False):
            to_files(f"{type(err).__name__}: {err}", logging.ERROR, exc_info=(type(err), err, err.__traceback__))
            with contextlib.suppress(AttributeError):
                err._in_run_log = True
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def say(message: str) -> None:
    """A line for the person at the terminal: printed as it is (no log prefix), and kept in the run logs
    that are open (the headers and summaries of a pipeline land in pipeline.log too). Under torchrun only
    rank 0 says it."""
    if os.environ.get("RANK", "0") != "0":
        return
    print(message, flush=True)
    to_files(message)


def to_files(message: str, level: int = logging.INFO, exc_info=None) -> None:
    """Write `message` to the open run logs only (e.g. the error that launch.py prints once, on stderr)."""
    record = logging.getLogger("launch").makeRecord("launch", level, __file__, 0, message.strip("\n"), None,
                                                    exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
