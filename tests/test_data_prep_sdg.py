"""SDG -> SFT + DPO/RPO pairs: selection rules, presets, layouts, golden files."""

import json
import os
from pathlib import Path

import pytest

from data_prep.inputs import DataPrepError
from data_prep.pairs import select_pairs
from data_prep.schemas import STEERLM_SYSTEM_PROMPT, validate_dpo_pair, validate_pairwise_rm_file, validate_sft_chat
from data_prep.sdg import PAIR_PRESETS, SDGConfig, convert_sdg

FIXTURES = Path(__file__).parent / "fixtures" / "data_prep"
RECORDS = FIXTURES / "sdg_records.jsonl"


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def record(prompt, *rewards, **extra):
    return {"prompt": prompt, "responses": [{"text": f"{prompt} answer {i}", "reward": r} for i, r in enumerate(rewards)], **extra}


def test_fixture_defaults(tmp_path):
    rep = convert_sdg(RECORDS, tmp_path)
    out = rep["outputs"]
    assert out["train_sft.jsonl"] == {"unit": "prompt", "rows_in": 6, "rows_out": 5, "lines": 5, "rejected": {"empty_text": 1}}
    assert out["train_dpo.jsonl"]["rejected"] == {"tie": 1, "empty_text": 1} and out["train_dpo.jsonl"]["rows_out"] == 4
    assert out["train_rm_pairs.jsonl"]["lines"] == 8
    sft = read(tmp_path / "train_sft.jsonl")
    assert not [p for r in sft for p in validate_sft_chat(r)]
    # p2: multi-turn conversation with its own system prompt; best answer appended as the Assistant turn.
    assert sft[1] == {"system": "You are a concise assistant.", "mask": "User", "type": "VALUE_TO_TEXT", "conversations": [
        {"from": "User", "value": "Give me a synonym for happy.", "label": None},
        {"from": "Assistant", "value": "Joyful.", "label": None},
        {"from": "User", "value": "Another one, please, and use it in a sentence.", "label": None},
        {"from": "Assistant", "value": "Content: she felt content after a long walk in the park.", "label": None}]}
    dpo = read(tmp_path / "train_dpo.jsonl")
    assert not [p for r in dpo for p in validate_dpo_pair(r)]
    assert dpo[0]["chosen_reward"] == pytest.approx(0.3 * 3.9 + 0.74 * 3.8 + 0.46 * 3.9 + 0.47 * 1.8 - 0.33 * 1.2)
    # Message-list prompts (every turn, the record's system prompt), rendered at training time in the policy's template.
    assert dpo[1]["prompt"] == [{"role": "system", "content": "You are a concise assistant."},
                                {"role": "user", "content": "Give me a synonym for happy."},
                                {"role": "assistant", "content": "Joyful."},
                                {"role": "user", "content": "Another one, please, and use it in a sentence."}]
    assert dpo[1]["chosen_response"] == {"role": "assistant",
                                         "content": "Content: she felt content after a long walk in the park."}
    assert (dpo[1]["chosen_reward"], dpo[1]["rejected_reward"]) == (6.1, 3.0)
    # Flat rows (HelpSteer2-style columns) grouped into one prompt.
    assert dpo[2]["chosen_response"] == {"role": "assistant", "content": "2, 3 and 5."}
    rm = read(tmp_path / "train_rm_pairs.jsonl")
    assert not validate_pairwise_rm_file(rm)
    assert rm[0]["text"].startswith(f"<extra_id_0>System\n{STEERLM_SYSTEM_PROMPT}\n<extra_id_1>User\nExplain why")
    assert rm[0]["text"].endswith("direction of the sky.\n<extra_id_2>")
    assert rm[2]["text"].startswith("<extra_id_0>System\nYou are a concise assistant.\n")


def test_golden_files(tmp_path):
    """Regenerate with UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    convert_sdg(RECORDS, tmp_path, preset="rpo", pairs={"mode": "all_pairs"})
    gold = FIXTURES / "golden" / "sdg_records_rpo_all_pairs"
    for name in ("train_sft.jsonl", "train_dpo.jsonl", "train_rm_pairs.jsonl"):
        if os.environ.get("UPDATE_GOLDEN"):
            gold.mkdir(parents=True, exist_ok=True)
            (gold / name).write_bytes((tmp_path / name).read_bytes())
        assert read(tmp_path / name) == read(gold / name), name


def test_presets_dpo_is_harsher_than_rpo(tmp_path):
    rows = [record("clear win", 6.5, 2.0),      # both presets keep
            record("good enough", 5.2, 3.0),    # chosen 5.2: rpo (>= 4.9) keeps, dpo (>= 5.7) drops
            record("small gap", 6.0, 5.8),      # gap 0.2: rpo keeps, dpo (>= 0.5) drops
            record("weak", 4.0, 1.0)]           # both drop
    src = write(tmp_path / "in.jsonl", rows)
    dpo = convert_sdg(src, tmp_path / "dpo", preset="dpo")["outputs"]["train_dpo.jsonl"]
    rpo = convert_sdg(src, tmp_path / "rpo", preset="rpo")["outputs"]["train_dpo.jsonl"]
    assert (dpo["rows_out"], dpo["rejected"]) == (1, {"chosen_below_min_reward": 2, "gap_below_min": 1})
    assert (rpo["rows_out"], rpo["rejected"]) == (3, {"chosen_below_min_reward": 1})
    assert PAIR_PRESETS["dpo"].min_chosen_reward > PAIR_PRESETS["rpo"].min_chosen_reward
    # Explicit values override the preset, field by field.
    over = convert_sdg(src, tmp_path / "o", preset="dpo", pairs={"min_chosen_reward": 5.0})
    assert over["config"]["pairs"] == {"mode": "best_vs_worst", "min_gap": 0.5, "min_chosen_reward": 5.0}
    assert over["outputs"]["train_dpo.jsonl"]["rows_out"] == 2


def test_all_pairs_and_best_vs_worst():
    rewards = [6.0, 5.0, 5.0, 2.0]
    assert select_pairs(rewards, "best_vs_worst") == ([(0, 3)], None)
    assert select_pairs(rewards, "all_pairs", min_gap=0.5) == ([(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)], None)
    assert select_pairs(rewards, "all_pairs", min_gap=1.5) == ([(0, 3), (1, 3), (2, 3)], None)
    assert select_pairs(rewards, "all_pairs", min_chosen_reward=5.5) == ([(0, 1), (0, 2), (0, 3)], None)
    assert select_pairs([3.0, 3.0], "best_vs_worst") == ([], "tie")
    assert select_pairs([3.0], "all_pairs") == ([], "fewer_than_2_responses")
    assert select_pairs([4.0, 3.0], "best_vs_worst", min_gap=2) == ([], "gap_below_min")
    assert select_pairs([4.0, 3.0], "best_vs_worst", texts=["same", "same"]) == ([], "identical_responses")
    # best_vs_worst: the first of equal bests / worsts.
    assert select_pairs([5.0, 1.0, 5.0, 1.0], "best_vs_worst") == ([(0, 1)], None)


def test_all_pairs_file_counts(tmp_path):
    src = write(tmp_path / "in.jsonl", [record("four", 6.0, 5.0, 5.0, 2.0)])
    rep = convert_sdg(src, tmp_path / "o", preset="rpo", pairs={"mode": "all_pairs", "min_gap": 0.5})
    c = rep["outputs"]["train_dpo.jsonl"]
    assert (c["rows_in"], c["rows_out"], c["lines"]) == (1, 1, 5)  # unit: prompt; 5 pairs from it
    assert rep["outputs"]["train_rm_pairs.jsonl"]["lines"] == 10


def test_sft_min_reward_and_reward_precedence(tmp_path):
    rows = [record("low", 4.0, 3.0),
            {"prompt": "both given", "responses": [
                {"text": "a", "reward": 1.0, "attributes": {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 4, "verbosity": 0}},
                {"text": "b", "reward": 6.0}]}]
    rep = convert_sdg(write(tmp_path / "in.jsonl", rows), tmp_path / "o", sft={"min_reward": 4.5})
    assert rep["outputs"]["train_sft.jsonl"]["rejected"] == {"below_min_reward": 1}
    (sft,) = read(tmp_path / "o" / "train_sft.jsonl")
    assert sft["conversations"][-1]["value"] == "b"  # `reward` wins over attributes


def test_flat_rows_grouping_dedup_and_dropped_responses(tmp_path):
    a = write(tmp_path / "a.jsonl", [
        {"prompt": "Q1", "response": "good", "reward": 6.0}, {"prompt": "Q2", "response": "x", "reward": 6.0},
        {"prompt": "Q1", "response": "bad", "reward": 1.0}, {"prompt": "Q1", "response": "   ", "reward": 9.0},
        {"prompt": "Q2", "response": "y", "reward": 1.0}])
    b = write(tmp_path / "b.jsonl", [{"prompt": "  q1 ", "response": "again", "reward": 7.0},
                                     {"prompt": "  q1 ", "response": "again 2", "reward": 1.0}])
    rep = convert_sdg([a, b], tmp_path / "o")
    assert rep["input"]["rows_in"] == 7
    assert rep["outputs"]["train_dpo.jsonl"] == {"unit": "prompt", "rows_in": 3, "rows_out": 2, "lines": 2,
                                                 "rejected": {"duplicate_prompt": 1}}
    assert rep["responses_dropped"] == {"empty_text": 1}
    pairs = read(tmp_path / "o" / "train_dpo.jsonl")
    assert [p["chosen_response"]["content"] for p in pairs] == ["good", "x"]
    recs = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["file"], r["lines"], r["reason"]) for r in recs] == [
        ("response", a, [4], "empty_text"), ("filter", b, [1, 2], "duplicate_prompt")]
    # Without dedup the normalised duplicates stay.
    rep = convert_sdg([a, b], tmp_path / "o2", filters={"dedup": False})
    assert rep["outputs"]["train_dpo.jsonl"]["rows_out"] == 3


def test_validation_split_is_seeded_and_by_prompt(tmp_path):
    src = write(tmp_path / "in.jsonl", [record(f"prompt {i}", 6.5, 1.0) for i in range(200)])
    r1 = convert_sdg(src, tmp_path / "a", val_fraction=0.25, seed=1)
    r2 = convert_sdg(src, tmp_path / "b", val_fraction=0.25, seed=1)
    assert (tmp_path / "a" / "val_dpo.jsonl").read_bytes() == (tmp_path / "b" / "val_dpo.jsonl").read_bytes()
    n_val = r1["outputs"]["val_dpo.jsonl"]["rows_in"]
    assert 30 < n_val < 70 and r1["outputs"]["train_dpo.jsonl"]["rows_in"] == 200 - n_val
    assert r1 == r2
    assert "val_sft.jsonl" not in convert_sdg(src, tmp_path / "c")["outputs"]  # no val files at val_fraction 0


def test_config_errors(tmp_path):
    with pytest.raises(DataPrepError, match="preset must be one of dpo, rpo, got 'ppo'"):
        convert_sdg(RECORDS, tmp_path, preset="ppo")
    with pytest.raises(DataPrepError, match="unknown SDG option\\(s\\): min_gap"):
        convert_sdg(RECORDS, tmp_path, min_gap=1)
    with pytest.raises(DataPrepError, match="pairs.mode must be 'best_vs_worst' or 'all_pairs', got 'random'"):
        convert_sdg(RECORDS, tmp_path, pairs={"mode": "random"})
    cfg = SDGConfig(preset="rpo", val_fraction=0.5)
    assert convert_sdg(RECORDS, tmp_path / "ok", config=cfg, seed=9)["config"]["val_fraction"] == 0.5
    with pytest.raises(DataPrepError, match="unknown SDG.filters option\\(s\\): ngrams"):
        convert_sdg(RECORDS, tmp_path, filters={"ngrams": 5})


def test_hydra_style_options(tmp_path):
    """The lead's Hydra stage passes DictConfig / ListConfig values; they must behave like dicts and lists."""
    from omegaconf import OmegaConf

    opts = OmegaConf.create({"preset": "rpo", "pairs": {"mode": "all_pairs"}, "weights": [0.3, 0.74, 0.46, 0.47, -0.33],
                             "filters": {"dedup": False, "decontaminate": []}, "sft": {"min_reward": 5.0}})
    rep = convert_sdg(str(RECORDS), tmp_path, **opts)
    assert rep["config"]["pairs"]["mode"] == "all_pairs" and rep["config"]["filters"]["dedup"] is False
    assert json.loads((tmp_path / "report.json").read_text())["config"]["weights"][4] == 0.3

