"""Data prep through launch.py (stage=prep_helpsteer2 / prep_sdg): same outputs as the CLI, one-line errors."""

import json
import os
import subprocess
import sys

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
