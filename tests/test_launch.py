"""launch.py as a user runs it: one-line config errors, --help, --cfg job, an SFT run end to end."""

import os
import subprocess
import sys

from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


def launch(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


def test_mistyped_key_is_one_line_naming_the_closest_key():
    r = launch("trainer.max_step=5")
    assert r.returncode == 2
    assert r.stderr.strip() == "config error: unknown key 'trainer.max_step'; did you mean 'trainer.max_steps'?"
    assert "Traceback" not in r.stderr


def test_unknown_group_option_lists_the_choices():
    r = launch("model=tinyy")
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "model/tinyy" in line and "hf, smollm2_135m, tiny" in line


def test_wrong_type_and_bad_choice_are_one_line():
    r = launch("trainer.max_steps=many")
    assert r.returncode == 2 and r.stderr.strip().startswith("config error: trainer.max_steps:")
    r = launch("model=tiny", "data.prompt_template=chatml", "--cfg", "job")
    # --cfg only prints; the value check happens when the stage would run.
    assert r.returncode == 0
    r = launch("model=tiny", "data=none", "data.prompt_template=chatml", f"model.data.train_ds.file_path={FIXTURE}")
    assert r.returncode != 0 and "data.prompt_template='chatml' is not one of auto, nemotron, hf" in r.stderr


def test_help_lists_groups_and_cfg_job_prints_resolved_config():
    r = launch("--help")
    assert r.returncode == 0
    for group in ("stage:", "model:", "data:", "backend:"):
        assert group in r.stdout
    r = launch("model=tiny", "trainer.max_steps=7", "--cfg", "job")
    assert r.returncode == 0
    assert "max_steps: 7" in r.stdout and "source: tiny" in r.stdout
    assert "${" not in r.stdout.split("model:")[1].split("dpo:")[0]  # repo paths resolved


def test_sft_end_to_end_in_a_subprocess(tmp_path):
    run_dir = tmp_path / "run"
    r = launch("stage=sft", "model=tiny", "data=none", f"model.data.train_ds.file_path={FIXTURE}",
               f"model.data.validation_ds.file_path={FIXTURE}", "trainer.max_steps=4", "trainer.val_check_interval=2",
               "logger.wandb.mode=offline", f"exp_manager.explicit_log_dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    final = run_dir / "checkpoints" / "final"
    assert f"checkpoint:    {final}" in r.stdout
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert (run_dir / "config.yaml").is_file() and "max_steps: 4" in (run_dir / "config.yaml").read_text()
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,loss") and "val_loss" in metrics[0]
    assert len(metrics) == 1 + 4 + 1  # header, 4 train steps (2 with validation), final validation
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run directory"


def test_bad_row_fails_with_file_line_field(tmp_path):
    bad = tmp_path / "train.jsonl"
    lines = FIXTURE.read_text().splitlines()
    lines[2] = lines[2].replace('"from": "User"', '"from": "user"')
    bad.write_text("\n".join(lines) + "\n")
    r = launch("stage=sft", "model=tiny", "data=none", f"model.data.train_ds.file_path={bad}",
               f"exp_manager.explicit_log_dir={tmp_path / 'run'}", "logger.wandb.enabled=false")
    assert r.returncode == 1
    assert "train.jsonl:3: conversations[0].from: must be 'User' or 'Assistant', got 'user'" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_needs_an_explicit_run_dir():
    r = launch("stage=sft", "model=tiny", "resume=true", "logger.wandb.enabled=false")
    assert r.returncode == 1 and "resume=true needs exp_manager.explicit_log_dir" in r.stderr
