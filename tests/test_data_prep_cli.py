"""The two CLIs in a subprocess: --help, a normal run, exit code 2 with one line (never a traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "data_prep"


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, options", [
    ("data_prep.helpsteer2", ["--input", "--output-dir", "--only-helpfulness", "--epochs", "--preference", "--weights",
                              "--rm-pairs", "--on-bad-row", "--seed", "--val-fraction", "--decontaminate", "--ngram",
                              "--tokenizer", "--max-seq-length", "--dedup"]),
    ("data_prep.sdg", ["--input", "--output-dir", "--preset", "--pairing", "--min-gap", "--min-chosen-reward",
                       "--sft-min-reward", "--weights", "--on-bad-row", "--seed", "--val-fraction", "--decontaminate"]),
])
def test_help(module, options):
    r = run(module, "--help")
    assert r.returncode == 0, r.stderr
    for opt in options:
        assert opt in r.stdout


def test_helpsteer2_run(tmp_path):
    r = run("data_prep.helpsteer2", "--input", str(FIXTURES / "helpsteer2_4rows.jsonl"), "--output-dir", str(tmp_path),
            "--val-fraction", "0", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "train_dpo.jsonl: 1/2 prompt rows (1 lines; tie 1)" in r.stdout
    assert json.loads((tmp_path / "report.json").read_text())["outputs"]["train_reg_2_epoch.jsonl"]["lines"] == 8


def test_sdg_run(tmp_path):
    r = run("data_prep.sdg", "--input", str(FIXTURES / "sdg_records.jsonl"), "--output-dir", str(tmp_path),
            "--preset", "rpo", "--pairing", "all_pairs")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["config"]["pairs"] == {"mode": "all_pairs", "min_gap": 0.0, "min_chosen_reward": 4.9}


@pytest.mark.parametrize("module, args, message", [
    ("data_prep.helpsteer2", ["--input", str(FIXTURES / "helpsteer2_bad.jsonl")],
     "error: helpsteer2_bad.jsonl:2: <line>: invalid JSON (Expecting ',' delimiter: line 1 column 60 (char 59))"),
    ("data_prep.sdg", ["--input", str(FIXTURES / "sdg_bad.jsonl")],
     "error: sdg_bad.jsonl:2: conversations[1].from: turns must alternate, got two 'User' turns in a row"),
    ("data_prep.sdg", ["--input", "missing/sdg.jsonl"], "error: input not found: missing/sdg.jsonl"),
    ("data_prep.helpsteer2", ["--input", str(FIXTURES), "--weights", "1,2"],
     "error: weights need 9 finite numbers (slots quality, toxicity, humor, creativity, helpfulness, correctness, "
     "coherence, complexity, verbosity) or 5 (the HelpSteer slots), got '1,2'"),
    ("data_prep.helpsteer2", ["--input", str(FIXTURES)], f"error: {FIXTURES}: no train.jsonl[.gz] or train.parquet inside"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, module, args, message):
    r = run(module, *args, "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip() == message
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_skip_mode_exit_0_and_argparse_errors(tmp_path):
    r = run("data_prep.helpsteer2", "--input", str(FIXTURES / "helpsteer2_bad.jsonl"), "--output-dir", str(tmp_path),
            "--on-bad-row", "skip", "--val-fraction", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("12 input rows, 10 bad")
    r = run("data_prep.sdg", "--input", "x.jsonl", "--output-dir", str(tmp_path), "--on-bad-row", "maybe")
    assert r.returncode == 2 and "invalid choice: 'maybe'" in r.stderr


def test_data_prep_imports_no_heavy_packages():
    """data_prep runs in NeMo's venv too: importing it must not pull torch / transformers / datasets / pyarrow."""
    code = ("import sys, data_prep.helpsteer2, data_prep.sdg, data_prep.filters; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'datasets', 'pyarrow', 'numpy'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr
