"""Released synthetic sets as they are published: nvidia/Daring-Anteater conversations -> SFT rows, HelpSteer2's
preference subset -> DPO/RPO pairs, with the validation and reject reporting of every data-prep script."""

import json

import pytest

from data_prep.daring_anteater import convert_daring_anteater
from data_prep.daring_anteater import main as da_main
from data_prep.helpsteer2_preference import convert_helpsteer2_preference
from data_prep.inputs import DataPrepError
from data_prep.jsonl import RowError
from data_prep.schemas import validate_dpo_pair, validate_sft_chat
from tests.conftest import REPO

DA = REPO / "tests" / "fixtures" / "daring_anteater" / "train.jsonl"
PREF = REPO / "tests" / "fixtures" / "helpsteer2_preference" / "preference.jsonl"


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_daring_anteater_rows_become_sft_rows_with_counts(tmp_path):
    rep = convert_daring_anteater(str(DA), tmp_path, on_bad_row="skip")
    # An empty answer is a bad row of the SFT schema itself (data_prep/schemas.py), before any filter.
    assert rep["input"] == {"rows_in": 8, "rows_ok": 4, "rejected": {
        "bad row (conversations[].value)": 1, "bad row (conversations[].from)": 2, "bad row (mask)": 1}}
    c = rep["outputs"]["train.jsonl"]
    assert (c["rows_in"], c["rows_out"], c["rejected"]) == (4, 3, {"duplicate_prompt": 1})
    rows = lines(tmp_path / "train.jsonl")
    assert all(validate_sft_chat(r) == [] for r in rows) and len(rows) == 3
    assert rows[0]["conversations"][3] == {"from": "Assistant", "label": None,
                                            "value": "No. One season is weather; warming is a trend in the long-term averages."}
    assert rows[1]["system"] == "You are a careful math tutor."
    assert "kept per source dataset: open_platypus_commercial 1, synthetic_conv 1, synthetic_math 1" in rep["notes"]
    rejects = {r["line"]: r["reason"] for r in lines(tmp_path / "rejects.jsonl")}
    assert rejects == {6: "the last turn must be 'Assistant'", 7: "must be 'User' or 'Assistant', got 'user'",
                       8: "must be 'User' (the turns not trained on), got 'Assistant'", 4: "duplicate_prompt",
                       5: "the Assistant answer is empty"}


def test_daring_anteater_bad_row_stops_with_file_line_field(tmp_path, capsys):
    with pytest.raises(RowError, match=r"train.jsonl:5: conversations\[1\].value"):
        convert_daring_anteater(str(DA), tmp_path)
    assert da_main(["--input", str(DA), "--output-dir", str(tmp_path / "cli"), "--on-bad-row", "skip",
                    "--val-fraction", "0.5"])["outputs"]["val.jsonl"]["rows_in"] >= 0
    assert "input rows" in capsys.readouterr().out


def test_helpsteer2_preference_rows_become_pairs(tmp_path):
    rep = convert_helpsteer2_preference(str(PREF), tmp_path, on_bad_row="skip")
    assert rep["input"]["rows_in"] == 5 and rep["input"]["rejected"] == {"bad row (preference_strength)": 1}
    tr, va = rep["outputs"]["train_dpo.jsonl"], rep["outputs"]["val_dpo.jsonl"]
    assert (tr["rows_in"], tr["rows_out"], tr["rejected"]) == (3, 2, {"tie": 1})
    assert (va["rows_in"], va["rows_out"]) == (1, 1)
    pairs = lines(tmp_path / "train_dpo.jsonl")
    assert all(validate_dpo_pair(p) == [] for p in pairs)
    haiku, pct = pairs
    # Message lists, as every pair writer of ours (docs/data_prep.md): training renders them in the policy's template.
    assert haiku["chosen_response"]["content"].startswith("Leaves drift") and haiku["chosen_reward"] == 3.0  # -3
    assert pct["chosen_response"] == {"role": "assistant", "content": "15% of 80 is 12."}
    assert pct["rejected_reward"] == 0.0
    assert pct["prompt"] == [{"role": "system", "content": ""}, {"role": "user", "content": "What is 15% of 80?"}]
    val = lines(tmp_path / "val_dpo.jsonl")[0]  # HelpSteer2's embedded turns become messages (schemas.split_turns)
    assert val["prompt"] == [{"role": "system", "content": ""}, {"role": "user", "content": "User: Hi"},
                             {"role": "assistant", "content": "Hello! How can I help?"},
                             {"role": "user", "content": "Tell me a joke."}]
    assert not any("<extra_id_" in json.dumps(p) for p in pairs + [val])
    with pytest.raises(DataPrepError, match=r"val_dpo.jsonl: all 1 pair rows removed by weak_preference 1 "
                                            r"\(change min_strength: --min-strength"):  # no silent empties
        convert_helpsteer2_preference(str(PREF), tmp_path / "strong", min_strength=3, on_bad_row="skip")
    assert not (tmp_path / "strong" / "report.json").exists()  # refused before anything is written
    strong = convert_helpsteer2_preference(str(PREF), tmp_path / "strong", min_strength=3, on_bad_row="skip",
                                           allow_empty=True)
    assert strong["outputs"]["train_dpo.jsonl"]["rejected"] == {"tie": 1, "weak_preference": 1}
