"""One run at a time per run directory and per pipeline directory.

A run holds an OS file lock (`fcntl.flock`) on `<dir>/.lock` for as long as it runs; the kernel frees it
when the process ends in any way (a crash or `kill -9` included), so a stale lock never blocks anyone.
The holder writes its PID, start time and command line into the file, and a second run into the same
directory stops at once with one line naming them.

Nesting: a pipeline holds its directory and runs its stages in-process in `<pipeline dir>/<stage>/`
without taking their locks (one lock per pipeline). So that a standalone `stage=` run cannot work
inside a running pipeline, taking a lock also checks every parent directory: one whose `.lock` another
process holds refuses the run. The check comes after the lock is taken, so of two runs that start at
the same moment (a pipeline and a stage run inside it) at least one sees the other. Locks this process
holds itself never refuse it, which is how a pipeline's in-process stages pass.
Dry runs take no lock (launch.py, recipes/pipeline.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = ".lock"
_HELD: dict[Path, int] = {}  # directories this process holds -> the locked file descriptor


class DirectoryInUse(RuntimeError):
    """Another process holds the directory (or one above it): one line, naming the holder."""


def holder(directory: Path) -> str:
    """`PID 123, started 2026-11-23T21:00:00+00:00 (python launch.py stage=sft ...)`, as the holder wrote it."""
    try:
        info = json.loads((directory / LOCK_FILE).read_text())
        return f"PID {info['pid']}, started {info['started']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "PID unknown (it has not written the lock file yet)"


@contextlib.contextmanager
def hold(directory: str | os.PathLike, what: str = "run"):
    """Hold `<directory>/.lock` for the `with` block; DirectoryInUse when another process holds it or a
    directory above it. Re-entrant in one process (a held directory is simply held on)."""
    d = Path(directory).resolve()
    if d in _HELD:
        yield d
        return
    for parent in d.parents:  # before creating anything here (checked again once the lock is ours)
        check_free(parent, f"{d} is inside {parent}, which")
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryInUse(f"{d} is in use by another {what}: {holder(d)}; wait for it to finish "
                             "or choose another directory") from None
    info = {"pid": os.getpid(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _HELD[d] = fd
    try:
        for parent in d.parents:
            check_free(parent, f"{d} is inside {parent}, which")
        yield d
    finally:
        del _HELD[d]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_free(directory: str | os.PathLike, subject: str | None = None) -> None:
    """DirectoryInUse if another process holds `directory`'s lock (nothing is held afterwards)."""
    d = Path(directory).resolve()
    path = d / LOCK_FILE
    if d in _HELD or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not readable by us: not ours to check
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        subject = subject or str(d)
        raise DirectoryInUse(f"{subject} is in use by another run: {holder(d)}; wait for it to finish "
                             "or choose another directory") from None
    finally:
        os.close(fd)
