"""Row schemas: the exact problems each validator reports, the builders, the template helpers."""

import pytest

from data_prep.jsonl import RowError, read_jsonl
from data_prep.schemas import (
    InvalidRow,
    dpo_row,
    nemotron_prompt,
    nemotron_response,
    pairwise_rm_rows,
    regression_label,
    regression_row,
    regression_text,
    sft_chat_row,
    steerlm_label,
    validate_dpo_pair,
    validate_helpsteer2_preference_row,
    validate_pairwise_rm_file,
    validate_regression_rm,
    validate_sdg_row,
    weighted_reward,
)

M = -100


@pytest.mark.parametrize("label, problems", [
    ([M, M, M, M, 3, 4, 4, 2, 1], []),
    ([2.5, M, M, M, M, M, M, M, M], []),  # HelpSteer2-Preference strength in slot 0
    ([-3, M, M, M, M, M, M, M, M], []),
    ([M, M, M, M, 3, 4, 4, 2], [("label", "must have 9 values, got 8")]),
    ([M, M, M, M, 5, 4, 4, 2, 1], [("label[4]", "5 is out of range [0, 4]")]),
    ([M, M, M, M, -0.5, 4, 4, 2, 1], [("label[4]", "-0.5 is out of range [0, 4]")]),
    ([-3.5, M, M, M, 1, 4, 4, 2, 1], [("label[0]", "-3.5 is out of range [-3, 4]")]),
    ([M, M, M, M, float("nan"), 4, 4, 2, 1], [("label[4]", "must be finite, got nan")]),
    ([M, M, M, M, float("inf"), 4, 4, 2, 1], [("label[4]", "must be finite, got inf")]),
    ([M, M, M, M, "3", 4, 4, 2, 1], [("label[4]", "must be a number, got str")]),
    ([M, M, M, M, True, 4, 4, 2, 1], [("label[4]", "must be a number, got bool")]),
    ([M] * 9, [("label", "every value is -100 (missing); at least one attribute must be given")]),
    ("helpfulness:3", [("label", "must be a list of numbers, got str")]),
])
def test_regression_rm(label, problems):
    assert validate_regression_rm({"text": "t", "label": label}) == problems


def test_regression_rm_other_widths_and_text():
    assert validate_regression_rm({"text": "t", "label": [7.0, -2.0, 9.5]}, num_attributes=3) == []
    assert validate_regression_rm({"label": [M, M, M, M, 3, 4, 4, 2, 1]}) == [("text", "missing")]
    assert validate_regression_rm({"text": 1, "label": [M, M, M, M, 3, 4, 4, 2, 1]}) == [("text", "must be a string, got int")]


def test_pairwise_file():
    assert validate_pairwise_rm_file([{"text": "a"}, {"text": "b"}]) == []
    assert validate_pairwise_rm_file([{"text": "a"}, {"text": "b"}, {"text": "c"}]) == [
        ("<file>", "has 3 lines; pairs need an even number (chosen, rejected, ...)")]
    assert validate_pairwise_rm_file([{"text": "a"}, {"text": "a"}]) == [("<lines 1-2>", "chosen and rejected texts are identical")]
    assert validate_pairwise_rm_file([{"text": None}, {"text": "a"}]) == [("text", "must be a string, got null")]


@pytest.mark.parametrize("row, problems", [
    ({"prompt": "p", "chosen_response": "a", "rejected_response": "b"}, []),
    ({"prompt": "p", "chosen_response": "a", "rejected_response": "b", "chosen_reward": 4.1, "rejected_reward": -2}, []),
    ({"prompt": [{"role": "system", "content": ""}, {"role": "user", "content": "q"}],
      "chosen_response": {"role": "assistant", "content": "a"}, "rejected_response": {"role": "assistant", "content": "b"}}, []),
    ({"chosen_response": "a", "rejected_response": "b"}, [("prompt", "missing")]),
    ({"prompt": "p", "chosen_response": "a"}, [("rejected_response", "missing")]),
    ({"prompt": "p", "chosen_response": "a", "rejected_response": "a"},
     [("rejected_response", "is identical to chosen_response (the pair teaches nothing)")]),
    ({"prompt": "p", "chosen_response": {"role": "assistant", "content": "a"}, "rejected_response": "b"},
     [("chosen_response", "must be a string (the prompt is a string), got dict")]),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen_response": "a", "rejected_response": {"role": "assistant", "content": "b"}},
     [("chosen_response", "must be an assistant message (the prompt is a message list), got str")]),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
      "chosen_response": {"role": "assistant", "content": "a"}, "rejected_response": {"role": "assistant", "content": "b"}},
     [("prompt[1].role", "the last prompt message must be 'user'")]),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
      "chosen_response": {"role": "assistant", "content": "a"}, "rejected_response": {"role": "assistant", "content": "b"}},
     [("prompt", "at most one system message, and it must come first")]),
    ({"prompt": 3, "chosen_response": "a", "rejected_response": "b"}, [("prompt", "must be a string or a list of messages, got int")]),
    ({"prompt": "p", "chosen_response": "a", "rejected_response": "b", "chosen_reward": float("nan")},
     [("chosen_reward", "must be finite, got nan")]),
    ({"prompt": "p", "chosen_response": "a", "rejected_response": "b", "rejected_reward": "0"},
     [("rejected_reward", "must be a number, got str")]),
])
def test_dpo_pair(row, problems):
    assert validate_dpo_pair(row) == problems


def test_helpsteer2_preference_row():
    good = {"prompt": "p", "response_1": "a", "response_2": "b", "preference_strength": -2, "split": "train"}
    assert validate_helpsteer2_preference_row(good) == []
    assert validate_helpsteer2_preference_row({**good, "preference_strength": 4}) == [
        ("preference_strength", "4 is out of range [-3, 3]")]
    assert validate_helpsteer2_preference_row({**good, "split": "test"}) == [("split", "must be 'train' or 'validation', got 'test'")]


def test_sdg_row_layouts():
    assert validate_sdg_row({"prompt": "p", "system": "s", "id": 3, "category": "qa",
                             "responses": [{"text": "a", "reward": 1, "model": "m", "judge": "j"}]}) == []
    assert validate_sdg_row({"prompt": "p", "response": "a", "helpfulness": 3, "correctness": 2}) == []
    assert validate_sdg_row({"prompt": "p", "response": "a", "attributes": {"verbosity": 4.4}}) == []
    assert validate_sdg_row({"prompt": "p", "responses": [{"text": "a", "reward": 1, "model": 7}]}) == [
        ("responses[0].model", "must be a string, got int")]
    assert validate_sdg_row({"prompt": "p", "responses": [{"text": "a", "attributes": {}}]}) == [
        ("responses[0].attributes", "must be a non-empty object of name -> number, got an empty object")]
    assert validate_sdg_row({"conversations": [], "responses": [{"text": "a", "reward": 1}]}) == [
        ("conversations", "must be a non-empty list of turns, got an empty list")]


def test_read_jsonl_turns_problems_into_file_line_field(tmp_path):
    path = tmp_path / "rm.jsonl"
    path.write_text('{"text": "t", "label": [-100, -100, -100, -100, 3, 4, 4, 2, 1]}\n\n{"text": "t", "label": [1]}\n')
    with pytest.raises(RowError) as e:
        list(read_jsonl(path, validate_regression_rm))
    assert str(e.value) == "rm.jsonl:3: label: must have 9 values, got 1"


def test_templates():
    turns = [("User", "q1"), ("Assistant", "a1"), ("User", "q2")]
    assert nemotron_prompt("", turns) == ("<extra_id_0>System\n\n<extra_id_1>User\nq1\n<extra_id_1>Assistant\na1\n"
                                          "<extra_id_1>User\nq2\n<extra_id_1>Assistant\n")
    assert nemotron_response("a2") == "a2\n<extra_id_1>"
    assert regression_text("S", [("User", "q"), ("Assistant", "a")]) == "<extra_id_0>System\nS\n<extra_id_1>User\nq\n<extra_id_1>Assistant\na\n<extra_id_2>"
    attrs = {"helpfulness": 3, "correctness": 4.0, "coherence": 4, "complexity": 2, "verbosity": 1, "prompt": "x"}
    assert steerlm_label(attrs) == "helpfulness:3,correctness:4.0,coherence:4,complexity:2,verbosity:1"
    assert steerlm_label(attrs, only=("helpfulness",)) == "helpfulness:3"
    assert regression_label(attrs) == [M, M, M, M, 3.0, 4.0, 4.0, 2.0, 1.0]
    assert regression_label(attrs, only=("helpfulness",)) == [M, M, M, M, 3.0, M, M, M, M]
    w = (0, 0, 0, 0, 0.3, 0.74, 0.46, 0.47, -0.33)
    assert weighted_reward(attrs, w) == pytest.approx(0.9 + 2.96 + 1.84 + 0.94 - 0.33)
    with pytest.raises(ValueError, match="attribute 'correctness' is missing but has weight 0.74"):
        weighted_reward({"helpfulness": 3}, w)


def test_builders_refuse_rows_nemo_would_reject():
    assert sft_chat_row("", [("User", "q")], "a", "helpfulness:3")["conversations"][1]["label"] == "helpfulness:3"
    with pytest.raises(InvalidRow, match="turns must alternate, got two 'Assistant' turns in a row"):
        sft_chat_row("", [("User", "q"), ("Assistant", "a")], "a2")
    with pytest.raises(InvalidRow, match=r"label\[4\]: 9 is out of range \[0, 4\]"):
        regression_row("t", [M, M, M, M, 9, 1, 1, 1, 1])
    with pytest.raises(InvalidRow, match="identical"):
        pairwise_rm_rows("same", "same")
    with pytest.raises(InvalidRow, match="chosen_reward: must be finite"):
        dpo_row("p", "a", "b", float("inf"), 0.0)
    assert dpo_row("p", "a", "b") == {"prompt": "p", "chosen_response": "a", "rejected_response": "b"}
