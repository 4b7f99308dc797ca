"""HelpSteer2 converter: equality with NeMo-Aligner's scripts, golden files, pairing, inputs, options."""

import gzip
import json
import os
import random
import sys
import types
from pathlib import Path

import pytest

from data_prep.helpsteer2 import convert_helpsteer2
from data_prep.inputs import DataPrepError
from data_prep.schemas import validate_dpo_pair, validate_pairwise_rm_file, validate_regression_rm, validate_sft_chat
from tests.conftest import FIXTURES as ALL_FIXTURES

FIXTURES = Path(__file__).parent / "fixtures" / "data_prep"
GOLDEN = FIXTURES / "golden"
# 236 real nvidia/HelpSteer rows (70 whole prompts; tests/fixtures/helpsteer/README.md)
SAMPLE = ALL_FIXTURES / "helpsteer" / "helpsteer_v1_sample.jsonl"
N_SAMPLE = 236
ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- An independent re-implementation of what NeMo-Aligner's two scripts do -------------------------------
# Written from reading examples/nlp/data/steerlm/{common,preprocess_helpsteer2_data,process_to_regression_format}.py
# (NeMo-Aligner v0.7): the test oracle, deliberately not sharing any code with data_prep.

NEMO_SYS = ("A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.")
NEMO_ATTRS = ["quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def nemo_sft(rows, only_helpfulness=False):
    out = []
    for dp in rows:
        parts = [f"{a}:{dp[a]}" for a in NEMO_ATTRS if a in dp and not (only_helpfulness and a != "helpfulness")]
        out.append({"conversations": [{"value": dp["prompt"], "from": "User", "label": None},
                                      {"value": dp["response"], "from": "Assistant", "label": ",".join(parts)}],
                    "system": NEMO_SYS, "mask": "User", "type": "VALUE_TO_TEXT"})
    return out


def nemo_regression(chat_rows):
    out = []
    for line in chat_rows:
        text = "<extra_id_0>System\n" + NEMO_SYS + "\n"
        for turn in line["conversations"]:
            who = "User" if turn["from"] == line["mask"] else "Assistant"
            text += f"<extra_id_1>{who}\n{turn['value']}\n"
            if turn.get("label"):
                given = {p.split(":")[0]: p.split(":")[1] for p in turn["label"].split(",")}
                out.append({"text": text + "<extra_id_2>", "label": [float(given.get(a, -100)) for a in NEMO_ATTRS]})
    return out


def nemo_preference_rows(pref_rows):
    """download_helpsteer2_preference(): each row -> two rows labelled `quality` = strength, split by `split`."""
    train, val = [], []
    for dp in pref_rows:
        pair = [{"prompt": dp["prompt"], "response": dp[k], "quality": dp["preference_strength"]} for k in ("response_1", "response_2")]
        (train if dp["split"] == "train" else val).extend(pair)
    return train, val


def through_json(rows):
    """What a reader of NeMo's files sees (they are written with json.dumps(ensure_ascii=False))."""
    return [json.loads(json.dumps(r, ensure_ascii=False)) for r in rows]


# --- Equality -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("only_helpfulness", [False, True])
def test_sft_and_regression_equal_nemo_aligner_on_real_rows(tmp_path, only_helpfulness):
    rows = read(SAMPLE)
    rep = convert_helpsteer2(str(SAMPLE), tmp_path, val_fraction=0.0, only_helpfulness=only_helpfulness)
    expected_sft = through_json(nemo_sft(rows, only_helpfulness))
    assert read(tmp_path / "train.jsonl") == expected_sft
    assert read(tmp_path / "train_reg.jsonl") == through_json(nemo_regression(expected_sft))
    assert rep["outputs"]["train.jsonl"] == {"unit": "response", "rows_in": N_SAMPLE, "rows_out": N_SAMPLE, "lines": N_SAMPLE,
                                             "rejected": {}}


def test_split_directory_and_epochs_equal_nemo_recipe(tmp_path):
    """A directory with train/validation files (the hub repo's layout); --epochs 2 = `cat train_reg train_reg`."""
    rows = read(SAMPLE)
    src = tmp_path / "hs2"
    src.mkdir()
    with gzip.open(src / "train.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:190])
    write(src / "validation.jsonl", rows[190:])
    out = tmp_path / "out"
    convert_helpsteer2(str(src), out, epochs=2)
    for name, part in (("train", rows[:190]), ("val", rows[190:])):
        sft = through_json(nemo_sft(part))
        assert read(out / f"{name}.jsonl") == sft
        assert read(out / f"{name}_reg.jsonl") == through_json(nemo_regression(sft))
    assert (out / "train_reg_2_epoch.jsonl").read_text() == (out / "train_reg.jsonl").read_text() * 2


def test_preference_equals_nemo_aligner(tmp_path):
    """HelpSteer2-Preference rows (built from real prompts/responses) -> adjacent rows, label [strength, -100 x 8]."""
    rows = read(SAMPLE)
    rng = random.Random(0)
    pref = [{"split": "validation" if i % 10 == 0 else "train", "prompt": rows[i]["prompt"], "response_1": rows[i]["response"],
             "response_2": rows[i + 1]["response"], "preference_strength": rng.randint(-3, 3),
             "preference_statement": "@Response 1 is better.", "preference_elaboration": "..."}
            for i in range(0, 200, 2)]
    src = write(tmp_path / "preference.jsonl", pref)
    convert_helpsteer2(str(src), tmp_path / "out", preference=True)
    nemo_train, nemo_val = nemo_preference_rows(pref)
    train = read(tmp_path / "out" / "train_reg.jsonl")
    assert train == through_json(nemo_regression(nemo_sft(nemo_train)))
    assert read(tmp_path / "out" / "val_reg.jsonl") == through_json(nemo_regression(nemo_sft(nemo_val)))
    assert train[0]["label"] == [float(pref[1]["preference_strength"])] + [-100.0] * 8
    assert sorted(os.listdir(tmp_path / "out")) == ["rejects.jsonl", "report.json", "train_reg.jsonl", "val_reg.jsonl"]


# --- Golden files (hand-written 4-row input) ---------------------------------------------------------------

GOLDEN_FILES = ["train.jsonl", "train_reg.jsonl", "train_dpo.jsonl", "train_rm_pairs.jsonl", "train_reg_2_epoch.jsonl"]


def test_golden_files(tmp_path):
    """Regenerate with UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    rep = convert_helpsteer2(str(FIXTURES / "helpsteer2_4rows.jsonl"), tmp_path, val_fraction=0.0, epochs=2, rm_pairs=True)
    gold = GOLDEN / "helpsteer2_4rows"
    for name in GOLDEN_FILES:
        if os.environ.get("UPDATE_GOLDEN"):
            gold.mkdir(parents=True, exist_ok=True)
            (gold / name).write_bytes((tmp_path / name).read_bytes())
        assert read(tmp_path / name) == read(gold / name), name
    # The SFT/regression golden files are also NeMo-Aligner's output for this input.
    rows = read(FIXTURES / "helpsteer2_4rows.jsonl")
    assert read(gold / "train.jsonl") == through_json(nemo_sft(rows))
    assert read(gold / "train_reg.jsonl") == through_json(nemo_regression(nemo_sft(rows)))
    # Hand-checked: prompt 1 -> one pair, weighted 340B rewards; prompt 2 (the multi-turn haiku) is a tie.
    # DPO prompts are message lists (rendered at training time in the policy's template).
    (pair,) = read(gold / "train_dpo.jsonl")
    assert pair["prompt"] == [{"role": "system", "content": ""},
                              {"role": "user", "content": "What is the boiling point of water at sea level?"}]
    assert pair["chosen_response"] == {"role": "assistant", "content": "Water boils at 100 °C (212 °F) at sea level."}
    assert pair["rejected_response"] == {"role": "assistant", "content": "It boils when it gets hot enough."}
    assert pair["chosen_reward"] == pytest.approx(0.3 * 4 + 0.74 * 4 + 0.46 * 4 + 0.47 * 1 - 0.33 * 1)
    assert pair["rejected_reward"] == pytest.approx(0.3 * 1 + 0.74 * 2 + 0.46 * 3)
    assert rep["outputs"]["train_dpo.jsonl"]["rejected"] == {"tie": 1}
    # Every golden file satisfies its schema.
    assert not [p for r in read(gold / "train.jsonl") for p in validate_sft_chat(r)]
    assert not [p for r in read(gold / "train_reg.jsonl") for p in validate_regression_rm(r)]
    assert not [p for r in read(gold / "train_dpo.jsonl") for p in validate_dpo_pair(r)]
    assert not validate_pairwise_rm_file(read(gold / "train_rm_pairs.jsonl"))


# --- Pairing ------------------------------------------------------------------------------------------------


def _row(prompt, response, h):
    return {"prompt": prompt, "response": response, "helpfulness": h, "correctness": 2, "coherence": 3,
            "complexity": 1, "verbosity": 2}


def test_7221_pairs_with_ties_dropped_on_a_helpsteer2_sized_split(tmp_path):
    """The full train split has 10,162 prompts x 2 responses; 2,941 tie on helpfulness -> 7,221 pairs.
    Rows are shuffled so that pairs are not adjacent: grouping must be by prompt text, not by row parity."""
    rng = random.Random(7)
    rows = []
    for i in range(10162):
        h1 = rng.randint(0, 4)
        h2 = h1 if i < 2941 else rng.choice([h for h in range(5) if h != h1])
        rows += [_row(f"prompt {i}", f"answer {i}a", h1), _row(f"prompt {i}", f"answer {i}b", h2)]
    rng.shuffle(rows)
    src = write(tmp_path / "train.jsonl", rows)
    rep = convert_helpsteer2(str(src), tmp_path / "out", val_fraction=0.0)
    dpo = rep["outputs"]["train_dpo.jsonl"]
    assert (dpo["rows_in"], dpo["rows_out"], dpo["lines"], dpo["rejected"]) == (10162, 7221, 7221, {"tie": 2941})
    by_prompt = {r["prompt"]: r for r in rows if r["response"].endswith("a")}
    for pair in read(tmp_path / "out" / "train_dpo.jsonl")[:200]:
        prompt = pair["prompt"][1]["content"]
        a = by_prompt[prompt]
        b = next(r for r in rows if r["prompt"] == prompt and r is not a)
        best = max((a, b), key=lambda r: r["helpfulness"])
        assert pair["chosen_response"] == {"role": "assistant", "content": best["response"]}


def test_group_sizes_other_than_two(tmp_path):
    """One response: no pair. Four: best vs worst helpfulness (first of equals). A bad row skipped in the
    middle does not shift the pairing of the rows after it."""
    rows = [_row("solo", "only answer", 3),
            _row("four", "r1", 2), _row("four", "r2", 4), _row("four", "r3", 4), _row("four", "r4", 0),
            _row("next", "n1", 1), _row("next", "n2", 3)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(5, '{"prompt": "broken", "response": 3}')  # skipped bad row between two groups
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(lines) + "\n")
    rep = convert_helpsteer2(str(src), tmp_path / "out", val_fraction=0.0, on_bad_row="skip")
    pairs = read(tmp_path / "out" / "train_dpo.jsonl")
    assert [(p["chosen_response"]["content"], p["rejected_response"]["content"]) for p in pairs] == [
        ("r2", "r4"), ("n2", "n1")]
    assert rep["outputs"]["train_dpo.jsonl"]["rejected"] == {"fewer_than_2_responses": 1}
    assert rep["input"] == {"rows_in": 8, "rows_ok": 7, "rejected": {"bad row (response)": 1}}


def test_weights_option_and_reversed_reward_note(tmp_path):
    rows = [_row("p", "verbose but helpful", 4) | {"verbosity": 4, "correctness": 1},
            _row("p", "short", 3) | {"verbosity": 0, "correctness": 4}]
    src = write(tmp_path / "rows.jsonl", rows)
    rep = convert_helpsteer2(str(src), tmp_path / "a", val_fraction=0.0)
    (pair,) = read(tmp_path / "a" / "train_dpo.jsonl")
    assert pair["chosen_reward"] < pair["rejected_reward"]
    assert any("1 pairs have chosen_reward < rejected_reward" in n for n in rep["notes"])
    convert_helpsteer2(str(src), tmp_path / "b", val_fraction=0.0, weights="1,0,0,0,0")
    (pair,) = read(tmp_path / "b" / "train_dpo.jsonl")
    assert (pair["chosen_reward"], pair["rejected_reward"]) == (4.0, 3.0)
    with pytest.raises(DataPrepError, match="their weights \\(the first 4\\) must be 0"):
        convert_helpsteer2(str(src), tmp_path / "c", weights=[1, 0, 0, 0, 0, 0, 0, 0, 0])


# --- Inputs -------------------------------------------------------------------------------------------------


def test_parquet_input_and_seeded_split(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = read(SAMPLE)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hs.parquet")
    a = convert_helpsteer2(str(tmp_path / "hs.parquet"), tmp_path / "a", val_fraction=0.2, seed=3)
    b = convert_helpsteer2(str(tmp_path / "hs.parquet"), tmp_path / "b", val_fraction=0.2, seed=3)
    c = convert_helpsteer2(str(tmp_path / "hs.parquet"), tmp_path / "c", val_fraction=0.2, seed=4)
    assert (tmp_path / "a" / "val.jsonl").read_bytes() == (tmp_path / "b" / "val.jsonl").read_bytes()
    assert (tmp_path / "a" / "val.jsonl").read_bytes() != (tmp_path / "c" / "val.jsonl").read_bytes()
    n_train, n_val = a["outputs"]["train.jsonl"]["rows_in"], a["outputs"]["val.jsonl"]["rows_in"]
    assert n_train + n_val == N_SAMPLE and 0.1 * N_SAMPLE < n_val < 0.3 * N_SAMPLE
    # Both responses of a prompt land in the same split.
    val_prompts = {r["conversations"][0]["value"] for r in read(tmp_path / "a" / "val.jsonl")}
    assert not val_prompts & {r["conversations"][0]["value"] for r in read(tmp_path / "a" / "train.jsonl")}
    assert c["config"]["seed"] == 4


def test_hub_input_calls_load_dataset_like_nemo_aligner(tmp_path, monkeypatch):
    """The hub branch, with `datasets` replaced by a fake (tests never reach the hub)."""
    rows = read(FIXTURES / "helpsteer2_4rows.jsonl")
    calls = []

    class FakeSplit(list):
        def to_list(self):
            return list(self)

    def load_dataset(name, data_dir=None):
        calls.append((name, data_dir))
        return {"train": FakeSplit(rows[:2]), "validation": FakeSplit(rows[2:])}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rep = convert_helpsteer2("nvidia/HelpSteer2", tmp_path, allow_empty=True)  # val_dpo: its one prompt is a tie
    assert calls == [("nvidia/HelpSteer2", None)]
    assert rep["outputs"]["train.jsonl"]["rows_out"] == 2 and rep["outputs"]["val.jsonl"]["rows_out"] == 2
    assert read(tmp_path / "val.jsonl") == through_json(nemo_sft(rows[2:]))


def test_unknown_option_and_bad_values(tmp_path):
    src = str(FIXTURES / "helpsteer2_4rows.jsonl")
    with pytest.raises(DataPrepError, match="unknown HelpSteer2 option\\(s\\): epoch "):
        convert_helpsteer2(src, tmp_path, epoch=2)
    with pytest.raises(DataPrepError, match="epochs must be >= 1, got 0"):
        convert_helpsteer2(src, tmp_path, epochs=0)
    with pytest.raises(DataPrepError, match="--only-helpfulness does not apply to --preference"):
        convert_helpsteer2(src, tmp_path, preference=True, only_helpfulness=True)
    with pytest.raises(DataPrepError, match="weights need 9 finite numbers"):
        convert_helpsteer2(src, tmp_path, weights="1,2,3")
    assert not list(tmp_path.iterdir())  # nothing written by a run that failed


def test_parallel_writer_writes_the_same_files(tmp_path, monkeypatch):
    """Big runs build and write half of the files in a forked child; the files must not change."""
    import data_prep.report as report

    sample = str(SAMPLE)
    a = convert_helpsteer2(sample, tmp_path / "seq", val_fraction=0.2, epochs=2, rm_pairs=True)
    monkeypatch.setattr(report, "PARALLEL_MIN_BYTES", 0)
    b = convert_helpsteer2(sample, tmp_path / "par", val_fraction=0.2, epochs=2, rm_pairs=True)
    assert a == b
    for name in a["outputs"]:
        assert (tmp_path / "seq" / name).read_bytes() == (tmp_path / "par" / name).read_bytes(), name


def test_parallel_writer_failure_is_reported(tmp_path):
    from data_prep.report import Output, write_outputs

    def broken():
        raise ValueError("boom")

    outputs = {"big.jsonl": Output(lambda: [{"a": 1}] * 10, 100), "bad.jsonl": Output(broken, 10)}
    with pytest.raises(OSError, match="writing bad.jsonl failed"):
        write_outputs(tmp_path, outputs, parallel_min_bytes=0)
    assert (tmp_path / "big.jsonl").read_text().count("\n") == 10 and not (tmp_path / "bad.jsonl").exists()

