"""launch.py as a user runs it: one-line config errors, --help, --cfg job, an SFT run end to end that
leaves nothing outside its run directory, dry runs that write nothing, where the defaults come from."""

import os
import subprocess
import sys

from tests.conftest import REPO, compose_cfg

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
               "logger.wandb.mode=offline", f"exp_manager.explicit_log_dir={run_dir}", "eval=[ifeval]",
               f"eval.ifeval.prompts={REPO / 'data' / 'demo' / 'ifeval_prompts.jsonl'}", "eval.ifeval.limit=2",
               "eval.ifeval.max_new_tokens=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    final = run_dir / "checkpoints" / "final"
    assert f"checkpoint:    {final}" in r.stdout
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert (run_dir / "config.yaml").is_file() and "max_steps: 4" in (run_dir / "config.yaml").read_text()
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,loss") and "val_loss" in metrics[0]
    assert len(metrics) == 1 + 4 + 1  # header, 4 train steps (2 with validation), final validation
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run directory"
    # The eval results at the end, as stage=eval prints them, and where they are.
    assert "| ifeval | n_prompts | 2 |" in r.stdout and "| ifeval | prompt_level_strict |" in r.stdout
    assert f"eval results:  {run_dir / 'eval' / 'results.md'}" in r.stdout
    # Nothing outside the run directory (no runs/<stage>/<timestamp>/.hydra/, no launch.log beside it);
    # its log holds what was logged at INFO.
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and not list(run_dir.rglob(".hydra"))
    log = (run_dir / "launch.log").read_text()
    assert "][recipes.sft][INFO] train: {'rows': 8" in log and f"log:           {run_dir / 'launch.log'}" in r.stdout


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
    assert "[ERROR] train.jsonl:3: conversations[0].from" in (tmp_path / "run" / "launch.log").read_text()


def test_dry_run_and_config_errors_write_nothing(tmp_path):
    r = launch("stage=sft", "model=tiny", "dry_run=true", cwd=tmp_path)  # backend=torch: nothing to run
    assert r.returncode == 0 and "dry run: stage sft would run on backend torch in " in r.stdout
    r = launch("stage=sft", "model=tiny", "resume=true", "logger.wandb.enabled=false", cwd=tmp_path)
    assert r.returncode == 1 and "resume=true needs exp_manager.explicit_log_dir" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_sequence_length_comes_from_the_model_preset():
    """data=none keeps the model preset's data.max_seq_length (SmolLM2 on CPU: 512, not the 4096 default);
    experiment presets and the command line override it (recipes/config.py DataConfig)."""
    length = lambda *o: compose_cfg(*o).data.max_seq_length  # noqa: E731
    assert length("stage=rm", "data=none") == length("stage=rm") == 512  # model=smollm2_135m, the default
    assert length("stage=rm", "model=tiny", "data=none") == 2048 and length("stage=rm", "model=hf") == 4096
    assert length("experiment=nemotron4_340b/rm") == 4096  # the paper's
    assert length("stage=rm", "data=none", "data.max_seq_length=300") == 300


def test_a_stage_failing_on_the_default_demo_sample_says_where_it_came_from():
    """stage=dpo without data=none reads data=demo's SFT chat sample: the error names that, and the fix."""
    sys.path.insert(0, str(REPO))
    from launch import demo_data_hint

    dpo = compose_cfg("stage=dpo", "model=tiny", "model.data.train_ds.file_path=/data/pairs.jsonl")
    hint = demo_data_hint(dpo, "sft_val.jsonl:1: prompt: missing")
    assert hint == (" (sft_val.jsonl: the SFT chat sample that data=demo, the default, gives every stage; for "
                    "stage=dpo add data=none and name your own model.data.train_ds.file_path)")
    assert demo_data_hint(dpo, "pairs.jsonl:3: prompt: missing") == ""  # the user's own file
    assert demo_data_hint(compose_cfg("stage=sft"), "sft_val.jsonl:1: conversations: missing") == ""  # it fits SFT


def test_damaged_model_checkpoint_is_one_line(tmp_path, capsys):
    """An error raised while loading what the user pointed at (here safetensors' own) becomes one line."""
    import pytest

    sys.path.insert(0, str(REPO))
    import launch
    from recipes.models import load_model
    from tests.conftest import compose_cfg
    from tests.test_sdg_generate import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    cfg = compose_cfg("model=hf", f"model.name_or_path={model}")
    with pytest.raises(Exception) as err:
        load_model(cfg.model, None, 0)
    assert not isinstance(err.value, launch.USER_ERRORS) and launch.user_error(err.value)
    assert not launch.user_error(RuntimeError("a bug of ours"))  # elsewhere a traceback stays a traceback
    with pytest.raises(SystemExit) as done:
        launch.fail(err.value)
    assert str(done.value).startswith("error: SafetensorError: Error while deserializing header")
    assert "\n" not in str(done.value)
