"""One run per run directory and per pipeline directory: a real second process is refused in one line naming
the holder, a killed holder frees the lock, a pipeline's in-process stages pass, a stage run inside a running
pipeline does not."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from recipes import run_lock
from recipes.run_lock import DirectoryInUse
from tests.conftest import REPO

HOLDER = """
import sys, time
from recipes import run_lock
with run_lock.hold(sys.argv[1], "pipeline"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a process that holds a directory's lock; yields a function (dir -> Popen) and kills them after."""
    procs = []

    def start(directory):
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_second_process_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path, holder):
    p = holder(tmp_path / "run")
    info = json.loads((tmp_path / "run" / ".lock").read_text())
    assert info["pid"] == p.pid and info["started"] and "-c" in info["command"]
    with pytest.raises(DirectoryInUse) as err:
        with run_lock.hold(tmp_path / "run"):
            pass
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'run'} is in use by another run: PID {p.pid}, started {info['started']}")
    assert "\n" not in msg
    os.kill(p.pid, signal.SIGKILL)  # a crash: the kernel frees the lock
    p.wait()
    with run_lock.hold(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()


def test_stage_run_inside_a_held_pipeline_directory_is_refused(tmp_path, holder):
    p = holder(tmp_path / "pipe")
    with pytest.raises(DirectoryInUse, match=rf"{tmp_path / 'pipe' / 'sft'} is inside {tmp_path / 'pipe'}, which is "
                                             rf"in use by another run: PID {p.pid}"):
        with run_lock.hold(tmp_path / "pipe" / "sft"):
            pass
    assert not (tmp_path / "pipe" / "sft").exists()  # refused before anything was created there


def test_pipeline_refuses_to_touch_a_stage_directory_a_standalone_run_holds(tmp_path, holder):
    from recipes import pipeline

    p = holder(tmp_path / "pipe" / "sft")
    (tmp_path / "pipe" / "sft" / "metrics.jsonl").write_text("{}\n")
    job = pipeline.Job("sft", "sft", tmp_path / "pipe" / "sft", {}, [])
    with pytest.raises(DirectoryInUse, match=rf"PID {p.pid}"):
        pipeline.run_one(job, "run", "config changed", {}, {"stages": {}}, tmp_path / "pipe")
    assert (tmp_path / "pipe" / "sft" / "metrics.jsonl").is_file()  # not wiped


def test_in_process_nesting_does_not_deadlock(tmp_path):
    with run_lock.hold(tmp_path / "pipe", "pipeline"):
        with run_lock.hold(tmp_path / "pipe" / "sft"):  # a stage inside its own pipeline
            with run_lock.hold(tmp_path / "pipe"):  # re-entrant
                pass
        run_lock.check_free(tmp_path / "pipe")  # our own lock does not refuse us


def test_launch_refuses_a_second_run_and_a_dry_run_takes_no_lock(tmp_path, holder):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    p = holder(tmp_path / "run")
    t0 = time.time()
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "stage=sft", "model=tiny", "data=none",
                        f"model.data.train_ds.file_path={REPO / 'tests' / 'fixtures' / 'sft_tiny.jsonl'}",
                        f"exp_manager.explicit_log_dir={tmp_path / 'run'}", "logger.wandb.enabled=false"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert lines == [f"error: {tmp_path / 'run'} is in use by another run: PID {p.pid}, started "
                     f"{json.loads((tmp_path / 'run' / '.lock').read_text())['started']} (-c {tmp_path / 'run'}); "
                     "wait for it to finish or choose another directory"], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "config.yaml").exists()
    assert time.time() - t0 < 120
    # A pipeline dry run in a held pipeline directory plans, and takes nothing.
    p2 = holder(tmp_path / "pipe")
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "pipeline=demo", "model=tiny", "dry_run=true",
                        f"pipeline.dir={tmp_path / 'pipe'}", f"pipeline.base={tmp_path}"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "plan (dry_run: nothing runs)" in r.stdout, r.stderr[-2000:]
    assert json.loads((tmp_path / "pipe" / ".lock").read_text())["pid"] == p2.pid
