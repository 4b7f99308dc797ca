"""Data-prep outputs committed as one set: a kill -9 (forked writer included), a full disk or a later run
never leaves a mix of two runs' files, and a forked writer dies with its parent."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import report as report_mod
from data_prep.helpsteer2 import convert_helpsteer2
from data_prep.jsonl import WriteError
from data_prep.output_set import STAGING_PREFIX
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "data_prep"
ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def hs2_rows(path: Path, n_prompts: int, tag: str) -> Path:
    rows = [{"prompt": f"{tag} question {i}?", "response": f"{tag} answer {i}.{k}", **{a: (3 + k) % 5 for a in ATTRS}}
            for i in range(n_prompts) for k in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# A second run, in its own process, whose writes wait (2 s) before each output file: the parent and the
# forked child (forced with PARALLEL_MIN_BYTES=0) both announce their PIDs, so the test can kill -9 the
# parent while both are mid-run.
SLOW_RUN = """
import os, sys, time
from pathlib import Path
from data_prep import report
from data_prep.helpsteer2 import convert_helpsteer2
report.PARALLEL_MIN_BYTES = 0
real = report.write_jsonl
def slow(path, rows, **kw):
    Path(sys.argv[3], f"writer-{os.getpid()}").write_text("")
    time.sleep(2)
    return real(path, rows, **kw)
report.write_jsonl = slow
convert_helpsteer2(sys.argv[1], sys.argv[2], val_fraction=0.0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_leaves_the_old_set_and_the_forked_writer_dies_with_its_parent(tmp_path):
    out, marks = tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    convert_helpsteer2(str(hs2_rows(tmp_path / "a.jsonl", 3, "old")), out, val_fraction=0.0)
    (out / "config.yaml").write_text("a run directory's own file\n")
    before = snapshot(out)

    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(hs2_rows(tmp_path / "b.jsonl", 40, "new")), str(out),
                             str(marks)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while len(list(marks.iterdir())) < 2 and time.time() < deadline:  # parent and child both writing
        time.sleep(0.05)
    pids = {int(p.name.split("-")[1]) for p in marks.iterdir()}
    assert proc.pid in pids and len(pids) == 2, pids
    (child,) = pids - {proc.pid}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 1.5  # well inside the child's 2 s wait: it is killed, not finishing late
    while alive(child) and time.time() < deadline:
        time.sleep(0.02)
    assert not alive(child), "the forked writer outlived its killed parent"
    assert snapshot(out) == before  # the old set, untouched (config.yaml too)
    assert [p.name for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]  # the dead run's staging dir

    # The next run removes the dead run's staging directory and commits its own set whole.
    rep = convert_helpsteer2(str(hs2_rows(tmp_path / "c.jsonl", 2, "next")), out, val_fraction=0.0)
    time.sleep(0.5)
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == rep["outputs"]["train.jsonl"]["lines"] == 4
    assert all("next" in r["conversations"][0]["value"] for r in train)
    assert (out / "config.yaml").read_text() == "a run directory's own file\n"


def test_full_disk_mid_write_keeps_the_old_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert_helpsteer2(str(hs2_rows(tmp_path / "a.jsonl", 3, "old")), out, val_fraction=0.0)
    before = snapshot(out)
    real_write, calls = os.write, {"n": 0}

    def full_after_two_files(fd, data):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_two_files)
    with pytest.raises(WriteError) as err:
        convert_helpsteer2(str(hs2_rows(tmp_path / "b.jsonl", 5, "new")), out, val_fraction=0.0)
    monkeypatch.undo()
    msg = str(err.value)  # names the output file, not the staging directory it was written in
    assert "\n" not in msg and msg.startswith(f"cannot write {out}/train") and ": No space left on device (" in msg
    assert f" free on {out})" in msg and STAGING_PREFIX not in msg
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]  # removed on the error


def test_a_new_set_replaces_the_old_one_whole_and_keeps_foreign_files(tmp_path):
    from data_prep.sdg import convert_sdg

    out, src = tmp_path / "out", str(FIX / "sdg_records.jsonl")
    convert_sdg(src, out, val_fraction=0.5)
    assert (out / "val_sft.jsonl").is_file() and (out / "val_dpo.jsonl").is_file()
    (out / "config.yaml").write_text("x\n")
    (out / "notes.txt").write_text("y\n")
    convert_sdg(src, out)  # no validation split this time
    report = json.loads((out / "report.json").read_text())
    names = {p.name for p in out.iterdir()}
    # The old validation files were part of the old set only: gone; files no report lists stay.
    assert names == {*report["outputs"], "rejects.jsonl", "report.json", "config.yaml", "notes.txt"}
    assert not any(n.startswith("val_") for n in names)


def test_forked_writer_writes_the_same_files(tmp_path, monkeypatch):
    src = str(hs2_rows(tmp_path / "a.jsonl", 30, "x"))
    convert_helpsteer2(src, tmp_path / "one", val_fraction=0.2)
    monkeypatch.setattr(report_mod, "PARALLEL_MIN_BYTES", 0)
    convert_helpsteer2(src, tmp_path / "two", val_fraction=0.2)
    a, b = snapshot(tmp_path / "one"), snapshot(tmp_path / "two")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "report.json")


def test_pipeline_concat_is_committed_whole(tmp_path, monkeypatch):
    from recipes import pipeline

    parts = []
    for i in range(2):
        parts.append(tmp_path / f"in{i}.jsonl")
        parts[-1].write_text("".join(json.dumps({"i": i, "k": k}) + "\n" for k in range(50)))
    job = pipeline.Job("blend", "concat", tmp_path / "blend", {}, [], args={"inputs": [str(p) for p in parts],
                                                                           "output": "sft_blend.jsonl"})
    job.outputs = {"output": job.dir / "sft_blend.jsonl"}
    pipeline.run_data_step(job)
    before = snapshot(job.dir)
    assert len((job.dir / "sft_blend.jsonl").read_text().splitlines()) == 100
    real_write, calls = os.write, {"n": 0}

    def full_on_second_input(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_on_second_input)
    with pytest.raises(WriteError, match=r"cannot write .*sft_blend.jsonl: No space left on device \("):
        pipeline.run_data_step(job)
    monkeypatch.undo()
    assert snapshot(job.dir) == before
