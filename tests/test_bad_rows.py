"""Bad rows, the remaining gaps: an empty answer or reward-model text is a row error, unknown fields are
counted (data prep: per file in report.json; training: data.unknown_fields), and a clean re-run clears
its directory's stale rejects.jsonl."""

import json
import logging

import pytest

from data_prep.helpsteer2 import convert_helpsteer2
from data_prep.jsonl import Rejects, RowError
from data_prep.schemas import validate_dpo_pair, validate_pairwise_rm, validate_regression_rm, validate_sft_chat
from data_prep.sdg import convert_sdg
from recipes import sft
from recipes.data import load_sft
from recipes.preference_data import load_pairs
from tests.conftest import REPO, TINY, compose_cfg

FIX = REPO / "tests" / "fixtures"
SFT = json.loads((FIX / "sft_tiny.jsonl").read_text().splitlines()[0])
LABEL = [-100] * 4 + [3, 3, 3, 1, 1]


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, problem", [
    ({"prompt": "<extra_id_1>User\nq\n<extra_id_1>Assistant\n", "chosen_response": "  ",
      "rejected_response": "no\n<extra_id_1>"}, ("chosen_response", "is empty (the pair would train on no answer)")),
    ({"prompt": "q", "chosen_response": "yes\n<extra_id_1>", "rejected_response": "\n<extra_id_1>"},
     ("rejected_response", "is empty (the pair would train on no answer)")),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen_response": {"role": "assistant", "content": ""},
      "rejected_response": {"role": "assistant", "content": "no"}},
     ("chosen_response.content", "is empty (the pair would train on no answer)")),
])
def test_empty_dpo_response_is_a_row_error(row, problem):
    assert validate_dpo_pair(row) == [problem]


def test_empty_sft_answer_and_rm_text_are_row_errors():
    empty_answer = json.loads(json.dumps(SFT))
    empty_answer["conversations"][1]["value"] = " \n"
    assert validate_sft_chat(empty_answer) == [("conversations[1].value", "the Assistant answer is empty")]
    assert validate_regression_rm({"text": "", "label": LABEL}) == [("text", "is empty")]
    assert validate_pairwise_rm({"text": " "}) == [("text", "is empty")]


def test_empty_response_stops_a_dpo_run_in_error_mode_and_is_counted_in_skip_mode(tmp_path):
    good = json.loads((FIX / "dpo_tiny.jsonl").read_text().splitlines()[0])
    path = write(tmp_path / "pairs.jsonl", [good, {**good, "chosen_response": ""}])
    cfg = compose_cfg(*TINY, "stage=dpo")
    with pytest.raises(RowError, match=r"pairs.jsonl:2: chosen_response: is empty"):
        load_pairs(str(path), cfg.data, Rejects(), False, "dpo")
    rejects = Rejects()
    rows = load_pairs(str(path), compose_cfg(*TINY, "stage=dpo", "data.on_bad_row=skip").data, rejects, False, "dpo")
    assert [line for line, _ in rows] == [1] and [r["line"] for r in rejects.records] == [2]


def test_unknown_fields_in_training_reads_follow_data_unknown_fields(tmp_path, caplog):
    path = write(tmp_path / "train.jsonl", [{**SFT, "source": "web"}, {**SFT, "source": "web", "lang": "en"}, SFT])
    with caplog.at_level(logging.WARNING, logger="recipes.data"):
        assert len(load_sft(str(path), compose_cfg(*TINY).data, Rejects())) == 3
    (warning,) = [r.getMessage() for r in caplog.records]  # once per file
    assert warning.startswith("train.jsonl: fields a sft_chat row does not define, ignored: source (2 rows), lang (1 row)")
    with pytest.raises(RowError, match=r"train.jsonl:1: source: unknown field"):
        load_sft(str(path), compose_cfg(*TINY, "data.unknown_fields=error").data, Rejects())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recipes.data"):
        load_sft(str(path), compose_cfg(*TINY, "data.unknown_fields=ignore").data, Rejects())
    assert not caplog.records


def test_data_prep_counts_unknown_fields_per_file(tmp_path):
    rows = [json.loads(x) for x in (FIX / "data_prep" / "helpsteer2_4rows.jsonl").read_text().splitlines()]
    src = write(tmp_path / "hs2.jsonl", [{**rows[0], "annotator": "a"}, *rows[1:]])
    report = convert_helpsteer2(str(src), tmp_path / "out", val_fraction=0.0)
    assert report["unknown_fields"] == {str(src): {"annotator": 1}}
    assert json.loads((tmp_path / "out" / "report.json").read_text())["unknown_fields"] == report["unknown_fields"]
    rec = json.loads((FIX / "data_prep" / "sdg_records.jsonl").read_text().splitlines()[0])
    rec["responses"][0]["latency_ms"] = 12
    report = convert_sdg(str(write(tmp_path / "sdg.jsonl", [rec])), tmp_path / "sdg")
    assert report["unknown_fields"] == {str(tmp_path / "sdg.jsonl"): {"responses[].latency_ms": 1}}


def test_clean_rerun_clears_the_stale_rejects_file(tmp_path):
    lines = (FIX / "sft_tiny.jsonl").read_text().splitlines()
    bad = write(tmp_path / "bad.jsonl", [*lines[:3], "not json", *lines[3:]])
    run_dir = tmp_path / "run"
    base = (*TINY, "trainer.max_steps=1", f"exp_manager.explicit_log_dir={run_dir}")
    sft.run(compose_cfg(*base, f"model.data.train_ds.file_path={bad}", "data.on_bad_row=skip"), run_dir)
    assert (run_dir / "rejects.jsonl").is_file()
    sft.run(compose_cfg(*base, f"model.data.train_ds.file_path={FIX / 'sft_tiny.jsonl'}"), run_dir)
    assert not (run_dir / "rejects.jsonl").exists()
