"""resume=true that checks what it resumes: a changed setting or data file is refused in one line and
config.yaml stays as it was; resume_allow_changes extends a run on purpose; metrics hold every step once;
a finished run is not re-trained; a fresh run never mixes with an older run's checkpoints."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes import loop, resume, sft
from recipes.resume import ResumeRefused
from tests.conftest import REPO, TINY, compose_cfg, crash_on_call

FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"
COMMON = ("trainer.max_steps=6", "trainer.save_interval=3", "model.global_batch_size=4", "model.micro_batch_size=2")


def cfg_for(run_dir: Path, *overrides: str, data: Path = FIXTURE):
    return compose_cfg(*TINY, "stage=sft", f"model.data.train_ds.file_path={data}",
                       f"exp_manager.explicit_log_dir={run_dir}", *COMMON, *overrides)


def start(cfg, run_dir):
    """What launch.py does: accept, then train unless there is nothing to do."""
    return resume.accept(cfg, run_dir) or sft.run(cfg, run_dir)


def steps(run_dir: Path) -> tuple[list[int], list[int]]:
    jsonl = [m["step"] for m in loop.read_metrics(run_dir)]
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(None not in r.values() for r in rows)  # no torn row
    return jsonl, [int(r["step"]) for r in rows]


@pytest.fixture
def crashed(tmp_path, monkeypatch):
    """A run killed in step 5 of 6, after its step_000003 checkpoint: steps 1-4 logged."""
    run_dir = tmp_path / "run"
    with crash_on_call(monkeypatch, sft, "train_step", 5):
        start(cfg_for(run_dir), run_dir)
    assert steps(run_dir)[0] == [1, 2, 3, 4]
    return run_dir


def test_resume_logs_every_step_once(crashed):
    start(cfg_for(crashed, "resume=true"), crashed)
    assert steps(crashed) == ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6])


def test_changed_settings_are_refused_in_one_line_and_config_yaml_kept(crashed):
    before = (crashed / "config.yaml").read_bytes()
    with pytest.raises(ResumeRefused) as err:
        start(cfg_for(crashed, "resume=true", "model.optim.lr=1e-3", "trainer.max_steps=8"), crashed)
    assert str(err.value) == (f"resume=true: {crashed} ran with a different config: model.optim.lr (0.003 -> 0.001), "
                              "trainer.max_steps (6 -> 8); to change them on purpose add "
                              "resume_allow_changes=[model.optim.lr,trainer.max_steps]")
    assert (crashed / "config.yaml").read_bytes() == before
    # Logging, validation and checkpoint intervals do not change the result: accepted.
    assert resume.accept(cfg_for(crashed, "resume=true", "trainer.val_check_interval=2", "logger.progress_bar=true"),
                         crashed) is None


def test_changed_data_file_content_is_refused(crashed, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(FIXTURE.read_bytes())
    run_dir = tmp_path / "run2"
    resume.accept(cfg_for(run_dir, data=data), run_dir)
    data.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:-1]))  # one row less
    with pytest.raises(ResumeRefused, match=r"model.data.train_ds.file_path \(content of .*train.jsonl: [0-9a-f]{12} "
                                            r"-> [0-9a-f]{12}\)"):
        resume.accept(cfg_for(run_dir, "resume=true", data=data), run_dir)


def test_allowed_change_extends_a_finished_run_and_a_finished_run_does_nothing(crashed):
    start(cfg_for(crashed, "resume=true"), crashed)
    final = crashed / "checkpoints" / "final"
    (final / "recipe.json").write_text("{}")  # what the torch backend writes last
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert resume.accept(cfg_for(crashed, "resume=true"), crashed) == final  # nothing to do
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
    # Trained on to 8 steps on purpose: the final checkpoint of 6 goes, steps 4-8 run from step_000003.
    cfg = cfg_for(crashed, "resume=true", "trainer.max_steps=8", "resume_allow_changes=[trainer.max_steps]")
    assert resume.accept(cfg, crashed) is None and not final.exists()
    sft.run(cfg, crashed)
    assert steps(crashed)[0] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert "max_steps: 8" in (crashed / "config.yaml").read_text()


def test_fresh_run_into_a_directory_with_checkpoints_is_refused(crashed):
    with pytest.raises(ResumeRefused, match=r"holds 1 step_\* checkpoint\(s\) of an earlier run "
                                            r"\(checkpoints/step_000003\): resume=true continues it"):
        resume.accept(cfg_for(crashed), crashed)


def test_wandb_continues_the_same_run_rewound_to_the_checkpoint(tmp_path, monkeypatch):
    import wandb

    calls = []

    class Run:
        def log(self, *a, **k):
            pass

        def finish(self):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or Run())
    run_dir = tmp_path / "run"
    cfg = compose_cfg("model=tiny", "logger.wandb.enabled=true", "logger.wandb.mode=online")
    loop.MetricsLogger(run_dir, cfg, resume=False).close()
    (run_dir / "checkpoints" / "step_000003").mkdir(parents=True)
    for s in range(1, 6):
        (run_dir / "metrics.jsonl").open("a").write(json.dumps({"step": s, "loss": 1.0}) + "\n")
    loop.MetricsLogger(run_dir, cfg, resume=True).close()
    first, again = calls
    assert first["id"] and first["resume"] == "allow"
    assert again["resume_from"] == f"{first['id']}?_step=3" and "id" not in again
    assert [m["step"] for m in loop.read_metrics(run_dir)] == [1, 2, 3]


def test_launch_refuses_a_changed_resume_and_says_when_there_is_nothing_to_do(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    run_dir = tmp_path / "run"
    base = [sys.executable, str(REPO / "launch.py"), *TINY, "stage=sft", f"model.data.train_ds.file_path={FIXTURE}",
            "trainer.max_steps=2", f"exp_manager.explicit_log_dir={run_dir}"]
    from recipes.backends import torch_backend

    cfg = compose_cfg(*base[2:])  # the first run in-process, as launch.py runs it (cheaper than a subprocess)
    assert resume.accept(cfg, run_dir) is None
    torch_backend.run(cfg, run_dir)
    config = (run_dir / "config.yaml").read_bytes()
    r = subprocess.run([*base, "resume=true", "model.optim.lr=0.001"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: resume=true: {run_dir} ran with a different config: model.optim.lr (0.003 -> 0.001); to change it "
        "on purpose add resume_allow_changes=[model.optim.lr]")
    assert (run_dir / "config.yaml").read_bytes() == config
    r = subprocess.run([*base, "resume=true"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Nothing to do: sft in {run_dir} has finished" in r.stdout
    assert len(loop.read_metrics(run_dir)) == 2
