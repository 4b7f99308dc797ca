"""A data-prep run's files committed as one set: readers see the old set or the new one, never a mix.

Every file of a run (the JSONL outputs, rejects.jsonl, report.json) is first written into a staging
directory inside the output directory, `<out>/.staging-<pid>-<random>/`. Nothing in `<out>` changes
while the run reads, filters, builds and writes, so a kill, a full disk or a bad row at any point up to
then leaves the previous set exactly as it was (the staging directory is removed on an error, and a
killed run's is removed by the next run). Then `commit()`, holding an flock on `<out>` itself so two
commits into one directory take turns:

1. removes the old `report.json`: from here on the directory holds no finished set;
2. removes the files the old report listed that the new set does not have (a `val_*.jsonl` of an
   earlier run with a validation split must not sit next to a set without one);
3. renames each new file into `<out>` (same file system: a rename each, no copy);
4. renames the new `report.json` in last. report.json is the marker of a finished set (the pipeline
   reads it), so a reader that finds it sees the whole new set.

Per-file renames, not a swap of the directory, because the output directory is often a run directory
that holds other files (config.yaml, .lock, logs): those are never touched. A kill inside commit()
(a few renames) leaves no report.json, i.e. an unfinished set, which the next run replaces.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from data_prep.jsonl import WriteError, write_error

MARKER = "report.json"
STAGING_PREFIX = ".staging-"


class OutputSet:
    """`with OutputSet(out) as staged: <write into staged.dir>; staged.commit()`; an exception discards it."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.out)
            self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.out))
        except OSError as err:
            raise write_error(self.out, err) from None
        self.committed = False

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)
        if isinstance(exc, WriteError) and str(self.dir) in str(exc):  # name the file the user asked for
            raise WriteError(exc.errno, str(exc).replace(str(self.dir), str(self.out))) from None

    def commit(self) -> None:
        new = sorted(p.name for p in self.dir.iterdir())
        if MARKER not in new:
            raise RuntimeError(f"{self.dir}: no {MARKER} to commit (a bug in the data step)")
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one commit at a time per directory
            old = listed_files(self.out / MARKER)
            (self.out / MARKER).unlink(missing_ok=True)
            for name in old - set(new):
                (self.out / name).unlink(missing_ok=True)
            for name in new:
                if name != MARKER:
                    os.replace(self.dir / name, self.out / name)
            os.replace(self.dir / MARKER, self.out / MARKER)
            self.committed = True
        finally:
            os.close(fd)
        self.dir.rmdir()


def listed_files(report: Path) -> set[str]:
    """The files a committed set consists of, as its report.json names them (plain names only)."""
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    names = set(data.get("outputs", {})) | ({data["rejects_file"]} if data.get("rejects_file") else set())
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..", MARKER)}


def remove_stale_staging(out: Path) -> None:
    """Staging directories of runs that died (their process is gone); a live run's are left alone."""
    for p in out.glob(f"{STAGING_PREFIX}*"):
        pid = p.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
