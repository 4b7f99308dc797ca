"""Bad input: one exact message per case (error mode), and reconciled counts + rejects.jsonl (skip mode)."""

import json
from pathlib import Path

import pytest

from data_prep.helpsteer2 import convert_helpsteer2
from data_prep.jsonl import RowError
from data_prep.sdg import convert_sdg

FIXTURES = Path(__file__).parent / "fixtures" / "data_prep"
GOOD_HS2 = ('{"prompt": "p", "response": "r", "helpfulness": 3, "correctness": 3, "coherence": 3, '
            '"complexity": 1, "verbosity": 1}').encode()
GOOD_SDG = b'{"prompt": "p", "responses": [{"text": "a", "reward": 6}, {"text": "b", "reward": 1}]}'

HS2_CASES = {
    "truncated JSON": (b'{"prompt": "Why?", "response": "Because.", "helpfulness": 3',
                       "<line>: invalid JSON (Expecting ',' delimiter: line 1 column 60 (char 59))"),
    "invalid UTF-8": (b'{"prompt": "caf\xe9", "response": "r"}', "<line>: invalid UTF-8 at byte 15"),
    "wrong type": (GOOD_HS2.replace(b'"p"', b'["p"]'), "prompt: must be a string, got list"),
    "missing field": (GOOD_HS2.replace(b', "verbosity": 1', b""), "verbosity: missing"),
    "NaN score": (GOOD_HS2.replace(b'"helpfulness": 3', b'"helpfulness": NaN'),
                  "<line>: invalid JSON (NaN is not a finite number)"),
    "inf score": (GOOD_HS2.replace(b'"correctness": 3', b'"correctness": -Infinity'),
                  "<line>: invalid JSON (-Infinity is not a finite number)"),
    "out of range": (GOOD_HS2.replace(b'"complexity": 1', b'"complexity": 4.5'), "complexity: 4.5 is out of range [0, 4]"),
    "bool score": (GOOD_HS2.replace(b'"helpfulness": 3', b'"helpfulness": true'), "helpfulness: must be a number, got bool"),
    "not an object": (b"[1, 2, 3]", "<line>: expected a JSON object, got list"),
}

SDG_CASES = {
    "not alternating": (b'{"conversations": [{"from": "User", "value": "a"}, {"from": "User", "value": "b"}], '
                        b'"responses": [{"text": "x", "reward": 1}]}',
                        "conversations[1].from: turns must alternate, got two 'User' turns in a row"),
    "ends with Assistant": (b'{"conversations": [{"from": "User", "value": "a"}, {"from": "Assistant", "value": "b"}], '
                            b'"responses": [{"text": "x", "reward": 1}]}',
                            "conversations[1].from: the last turn must be 'User' (the prompt the responses answer)"),
    "starts with Assistant": (b'{"conversations": [{"from": "Assistant", "value": "a"}, {"from": "User", "value": "b"}], '
                              b'"responses": [{"text": "x", "reward": 1}]}',
                              "conversations[0].from: the first turn must be 'User'"),
    "bad role": (b'{"conversations": [{"from": "user", "value": "a"}], "responses": [{"text": "x", "reward": 1}]}',
                 "conversations[0].from: must be 'User' or 'Assistant', got 'user'"),
    "attribute out of range": (b'{"prompt": "p", "responses": [{"text": "x", "attributes": {"helpfulness": 7, '
                               b'"correctness": 3, "coherence": 3, "complexity": 1, "verbosity": 1}}]}',
                               "responses[0].attributes.helpfulness: 7 is out of range [-1, 5]"),
    "no score": (b'{"prompt": "p", "responses": [{"text": "x"}]}', "responses[0].reward: missing: give 'reward' or 'attributes'"),
    "weighted attribute missing": (b'{"prompt": "p", "responses": [{"text": "x", "reward": 2}, {"text": "y", "attributes": '
                                   b'{"helpfulness": 3, "coherence": 3, "complexity": 1, "verbosity": 1}}]}',
                                   "responses[1].attributes: missing 'correctness', which has weight 0.74 "
                                   "(give it, a 'reward', or other --weights)"),
    "reward not a number": (b'{"prompt": "p", "responses": [{"text": "x", "reward": "high"}]}',
                            "responses[0].reward: must be a number, got str"),
    "NaN reward": (b'{"prompt": "p", "responses": [{"text": "x", "reward": NaN}]}', "<line>: invalid JSON (NaN is not a finite number)"),
    "empty responses": (b'{"prompt": "p", "responses": []}', "responses: must be a non-empty list, got an empty list"),
    "prompt and conversations": (b'{"prompt": "p", "conversations": [{"from": "User", "value": "p"}], "responses": [{"text": "x", "reward": 1}]}',
                                 "prompt: give exactly one of 'prompt' (a string) or 'conversations' (turns ending with User)"),
    "flat row without score": (b'{"prompt": "p", "response": "x"}', "reward: missing: give 'reward' or 'attributes'"),
    "neither layout": (b'{"prompt": "p"}', "responses: missing: give 'responses' (a list) or 'response' (one per row)"),
}


def _file(tmp_path, good: bytes, bad: bytes) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good + b"\n" + bad + b"\n" + good + b"\n")
    return path


@pytest.mark.parametrize("case", HS2_CASES)
def test_helpsteer2_bad_row_message(tmp_path, case):
    raw, problem = HS2_CASES[case]
    with pytest.raises(RowError) as e:
        convert_helpsteer2(str(_file(tmp_path, GOOD_HS2, raw)), tmp_path / "out")
    assert str(e.value) == f"bad.jsonl:2: {problem}"
    assert not (tmp_path / "out").exists()  # error mode writes nothing


@pytest.mark.parametrize("case", SDG_CASES)
def test_sdg_bad_row_message(tmp_path, case):
    raw, problem = SDG_CASES[case]
    with pytest.raises(RowError) as e:
        convert_sdg(str(_file(tmp_path, GOOD_SDG, raw)), tmp_path / "out")
    assert str(e.value) == f"bad.jsonl:2: {problem}"


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_helpsteer2_skip_mode_reconciles(tmp_path):
    src = FIXTURES / "helpsteer2_bad.jsonl"
    rep = convert_helpsteer2(str(src), tmp_path, on_bad_row="skip", val_fraction=0.0)
    assert rep["input"] == {"rows_in": 12, "rows_ok": 2, "rejected": {
        "bad row (<line>)": 5, "bad row (prompt)": 1, "bad row (verbosity)": 2, "bad row (complexity)": 1,
        "bad row (helpfulness)": 1}}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["input"] == rep["input"] and saved["rejected_total"] == 10
    for c in saved["outputs"].values():
        assert c["rows_in"] == c["rows_out"] + sum(c["rejected"].values())
    assert saved["outputs"]["train.jsonl"]["rows_out"] == 2 and saved["outputs"]["train_dpo.jsonl"]["rows_out"] == 1
    got = [(r["stage"], r["file"], r["line"], r["field"], r["reason"]) for r in _rejects(tmp_path)]
    assert got == [
        ("input", str(src), 2, "<line>", "invalid JSON (Expecting ',' delimiter: line 1 column 60 (char 59))"),
        ("input", str(src), 3, "<line>", "invalid UTF-8 at byte 15"),
        ("input", str(src), 4, "prompt", "must be a string, got list"),
        ("input", str(src), 5, "verbosity", "missing"),
        ("input", str(src), 6, "<line>", "invalid JSON (NaN is not a finite number)"),
        ("input", str(src), 7, "<line>", "invalid JSON (Infinity is not a finite number)"),
        ("input", str(src), 8, "complexity", "5 is out of range [0, 4]"),
        ("input", str(src), 9, "verbosity", "-1 is out of range [0, 4]"),
        ("input", str(src), 10, "helpfulness", "must be a number, got bool"),
        ("input", str(src), 11, "<line>", "expected a JSON object, got list"),
    ]
    assert _rejects(tmp_path)[1]["raw"].startswith('{"prompt": "caf\ufffd"')  # the bad line, kept for inspection


def test_sdg_skip_mode_reconciles(tmp_path):
    src = FIXTURES / "sdg_bad.jsonl"
    rep = convert_sdg(str(src), tmp_path, on_bad_row="skip")
    assert rep["input"]["rows_in"] == 16 and rep["input"]["rows_ok"] == 3
    assert sum(rep["input"]["rejected"].values()) == 13
    assert rep["input"]["rejected"]["bad row (responses[].reward)"] == 2
    # Good rows: record "ok" and the flat prompt "Name a colour." (lines 14 and 16, a bad line between).
    assert rep["outputs"]["train_sft.jsonl"] == {"unit": "prompt", "rows_in": 2, "rows_out": 2, "lines": 2, "rejected": {}}
    assert rep["outputs"]["train_dpo.jsonl"]["rejected"] == {"chosen_below_min_reward": 1}
    recs = _rejects(tmp_path)
    assert [r["line"] for r in recs if r["stage"] == "input"] == list(range(2, 14)) + [15]
    (flt,) = [r for r in recs if r["stage"] == "filter"]
    assert (flt["lines"], flt["reason"], flt["outputs"]) == ([14, 16], "chosen_below_min_reward",
                                                             ["train_dpo.jsonl", "train_rm_pairs.jsonl"])
    assert flt["detail"] == "best reward 5.5 < pairs.min_chosen_reward 5.7"


def test_parquet_nan_and_missing_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(GOOD_HS2), {**json.loads(GOOD_HS2), "helpfulness": float("nan")}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    with pytest.raises(RowError, match=r"^x\.parquet:2: helpfulness: must be finite, got nan$"):
        convert_helpsteer2(str(tmp_path / "x.parquet"), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="input not found: .*nope.jsonl"):
        convert_helpsteer2(str(tmp_path / "nope.jsonl"), tmp_path / "out")
