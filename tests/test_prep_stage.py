"""Data prep through launch.py (stage=prep_helpsteer2 / prep_sdg): same outputs as the CLI, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from data_prep.sdg import convert_sdg
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "data_prep"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


def launch(*args):
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=300)


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_prep_helpsteer2_stage_equals_the_cli(tmp_path):
    r = launch("stage=prep_helpsteer2", f"prep.input={FIX / 'helpsteer2_4rows.jsonl'}", "prep.epochs=2",
               f"exp_manager.explicit_log_dir={tmp_path / 'stage'}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("data_prep.helpsteer2", "--input", str(FIX / "helpsteer2_4rows.jsonl"), "--output-dir",
            str(tmp_path / "cli"), "--epochs", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    produced = sorted(p.name for p in (tmp_path / "cli").glob("*.jsonl"))
    assert produced and "report.json" in {p.name for p in (tmp_path / "stage").iterdir()}
    for name in produced:
        assert read(tmp_path / "stage" / name) == read(tmp_path / "cli" / name), name


def test_prep_sdg_stage_writes_pairs_and_report(tmp_path):
    r = launch("stage=prep_sdg", f"prep.input={FIX / 'sdg_records.jsonl'}", "prep.preset=rpo",
               f"exp_manager.explicit_log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["config"]["preset"] == "rpo"
    assert any(p.name.startswith(("train_dpo", "train_pref", "train_rpo")) or "pairs" in p.name
               for p in tmp_path.glob("*.jsonl")), sorted(p.name for p in tmp_path.iterdir())


def test_prep_sdg_thresholds_reach_the_converter(tmp_path):
    r = launch("stage=prep_sdg", f"prep.input={FIX / 'sdg_records.jsonl'}", "prep.preset=dpo", "prep.min_gap=0.25",
               "prep.min_chosen_reward=-100", "prep.sft_min_reward=-100", "prep.pair_mode=all_pairs",
               f"exp_manager.explicit_log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads((tmp_path / "report.json").read_text())["config"]
    assert config["pairs"] == {"mode": "all_pairs", "min_gap": 0.25, "min_chosen_reward": -100}
    assert config["sft"] == {"min_reward": -100}


def test_prep_bad_input_is_one_line(tmp_path):
    r = launch("stage=prep_sdg", f"prep.input={FIX / 'sdg_bad.jsonl'}", f"exp_manager.explicit_log_dir={tmp_path}")
    assert r.returncode == 1
    assert "sdg_bad.jsonl:" in r.stderr and "Traceback" not in r.stderr
    r = launch("stage=prep_sdg", f"exp_manager.explicit_log_dir={tmp_path}")
    assert r.returncode == 1 and "needs prep.input" in r.stderr


def low_scored(path):
    """SDG records scored by a small reward model: every reward far below the presets' 4.9 thresholds."""
    rows = [{"prompt": f"question {i}", "responses": [{"text": f"good {i}", "reward": 2.0 + i / 10},
                                                       {"text": f"bad {i}", "reward": 1.0}]} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_filters_that_remove_everything_fail_in_one_line(tmp_path):
    src = low_scored(tmp_path / "scored.jsonl")
    r = launch("stage=prep_sdg", f"prep.input={src}", "prep.preset=rpo", f"exp_manager.explicit_log_dir={tmp_path / 'a'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "train_sft.jsonl: all 5 prompt rows removed by below_min_reward 5" in line and "prep.sft_min_reward" in line
    assert "train_dpo.jsonl: all 5 prompt rows removed by chosen_below_min_reward 5" in line
    assert "prep.min_chosen_reward" in line and "prep.allow_empty=true" in line
    assert not list((tmp_path / "a").glob("*.jsonl"))  # nothing half-written
    # prep.allow_empty=true (the stage passes it to the converter): the empty files are written.
    from recipes import prep
    from tests.conftest import compose_cfg

    prep.run(compose_cfg("stage=prep_sdg", f"prep.input={src}", "prep.preset=rpo", "prep.allow_empty=true"), tmp_path / "b")
    assert (tmp_path / "b" / "train_dpo.jsonl").read_text() == ""
    # The CLI: the same message and exit code 2; --allow-empty writes the empty files.
    r = cli("data_prep.sdg", "--input", str(src), "--output-dir", str(tmp_path / "c"), "--preset", "rpo")
    assert r.returncode == 2 and "all 5 prompt rows removed by chosen_below_min_reward 5" in r.stderr
    r = cli("data_prep.sdg", "--input", str(src), "--output-dir", str(tmp_path / "c"), "--preset", "rpo", "--allow-empty")
    assert r.returncode == 0, r.stderr


def test_null_turns_a_threshold_off_and_default_keeps_the_presets(tmp_path):
    from data_prep.sdg import main
    from recipes.prep import _overrides
    from tests.conftest import compose_cfg

    assert "pairs" not in _overrides(compose_cfg("stage=prep_sdg")) and "sft" not in _overrides(compose_cfg("stage=prep_sdg"))
    off = _overrides(compose_cfg("stage=prep_sdg", "prep.min_chosen_reward=null", "prep.sft_min_reward=null",
                                 "prep.min_gap=null"))
    assert off["pairs"] == {"min_gap": None, "min_chosen_reward": None} and off["sft"] == {"min_reward": None}
    with pytest.raises(ValueError, match=r"prep.min_gap='big': give a number, null \(no threshold\) or default"):
        _overrides(compose_cfg("stage=prep_sdg", "prep.min_gap=big"))
    # End to end on the low-scored records: with the thresholds off, every prompt gives SFT rows and pairs.
    tmp = tmp_path
    src = low_scored(tmp / "scored.jsonl")
    rep = convert_sdg(str(src), tmp / "o", preset="rpo", **{k: v for k, v in off.items() if k in ("sft", "pairs")})
    assert rep["outputs"]["train_sft.jsonl"]["rows_out"] == 5 and rep["outputs"]["train_dpo.jsonl"]["rows_out"] == 5
    assert rep["config"]["pairs"]["min_chosen_reward"] is None and rep["config"]["pairs"]["min_gap"] == 0.0
    rep = main(["--input", str(src), "--output-dir", str(tmp / "cli"), "--preset", "rpo", "--min-chosen-reward", "none",
                "--sft-min-reward", "none"])
    assert rep["outputs"]["train_dpo.jsonl"]["rows_out"] == 5 and rep["config"]["sft"]["min_reward"] is None
