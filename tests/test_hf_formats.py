"""Hugging Face-format data: TRL's `messages` and `prompt`/`chosen`/`rejected` rows, and dataset
directories / hub ids read with `datasets` (a local folder here: the tests never reach the hub)."""

import json

import pytest

from data_prep.inputs import DataPrepError
from data_prep.jsonl import Rejects, RowError
from data_prep.schemas import to_dpo_pair, to_sft_chat, validate_preference_row, validate_sft_row
from recipes import dpo, sft
from recipes.data import encode_sft_rows, load_sft
from recipes.models import train_tiny_tokenizer
from recipes.preference_data import encode_pairs, load_pairs, pair_texts
from tests.conftest import REPO, TINY, compose_cfg

SFT = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"
DPO = REPO / "tests" / "fixtures" / "dpo_tiny.jsonl"


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def as_messages(row):
    """A NeMo chat row the way TRL writes it."""
    msgs = [{"role": "system", "content": row["system"]}] if row["system"] else []
    return {"messages": msgs + [{"role": t["from"].lower(), "content": t["value"]} for t in row["conversations"]]}


def as_trl_pair(row, implicit=False):
    """A NeMo DPO row the way TRL writes it: conversational for message lists, standard for strings."""
    if isinstance(row["prompt"], str):
        out = {"prompt": row["prompt"], "chosen": row["chosen_response"], "rejected": row["rejected_response"]}
    elif implicit:
        out = {"chosen": [*row["prompt"], row["chosen_response"]], "rejected": [*row["prompt"], row["rejected_response"]]}
    else:
        out = {"prompt": row["prompt"], "chosen": [row["chosen_response"]], "rejected": [row["rejected_response"]]}
    if "chosen_reward" in row:
        out.update(score_chosen=row["chosen_reward"], score_rejected=row["rejected_reward"])
    return out


def test_trl_messages_rows_train_exactly_like_nemo_rows(tmp_path):
    cfg = compose_cfg(*TINY)
    nemo = [(n, r) for n, r in load_sft(str(SFT), cfg.data, Rejects()) if r["type"] is None]  # TRL has no SteerLM labels
    trl = load_sft(str(write(tmp_path / "trl.jsonl", [as_messages(r) for _, r in nemo])), cfg.data, Rejects())
    tok = train_tiny_tokenizer([m for _, r in nemo for m in (r["system"], *(t["value"] for t in r["conversations"]))], 300)
    for template in ("nemotron", "hf"):
        data = compose_cfg(*TINY, f"data.prompt_template={template}").data
        a, _ = encode_sft_rows(nemo, str(SFT), tok, data, Rejects())
        b, _ = encode_sft_rows(trl, "trl.jsonl", tok, data, Rejects())
        assert [(e.input_ids, e.labels) for e in a] == [(e.input_ids, e.labels) for e in b]


def test_trl_preference_rows_train_exactly_like_nemo_rows(tmp_path):
    cfg = compose_cfg(*TINY, "stage=dpo")
    nemo = load_pairs(str(DPO), cfg.data, Rejects(), True, "rpo_bwd_kl")
    tok = train_tiny_tokenizer(pair_texts(nemo), 300)
    want, _ = encode_pairs(nemo, str(DPO), tok, cfg.data, cfg.model.data, Rejects())
    for implicit in (False, True):
        path = write(tmp_path / f"trl_{implicit}.jsonl", [as_trl_pair(r, implicit) for _, r in nemo])
        trl = load_pairs(str(path), cfg.data, Rejects(), True, "rpo_bwd_kl")
        got, _ = encode_pairs(trl, str(path), tok, cfg.data, cfg.model.data, Rejects())
        assert [(p.chosen.input_ids, p.rejected.labels, p.chosen_reward, p.rejected_reward) for p in got] == \
               [(p.chosen.input_ids, p.rejected.labels, p.chosen_reward, p.rejected_reward) for p in want]


def test_trl_rows_are_validated_in_schemas_with_their_own_field_names(tmp_path):
    user, bot = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    assert validate_sft_row({"messages": [bot]}) == [
        ("messages[0].role", "must be 'user': after an optional first system message, turns alternate user, "
                             "assistant, ... (got 'assistant')")]
    assert validate_sft_row({"messages": [user]})[0][0] == "messages[0].role"
    assert to_sft_chat({"messages": [{"role": "system", "content": "S"}, user, bot]}) == {
        "system": "S", "mask": "User", "type": None,
        "conversations": [{"from": "User", "value": "q", "label": None}, {"from": "Assistant", "value": "a", "label": None}]}
    assert validate_preference_row({"prompt": "p", "chosen": "a", "rejected": "a"}) == [
        ("rejected", "is identical to chosen_response (the pair teaches nothing)")]
    assert validate_preference_row({"prompt": "p", "chosen": [bot], "rejected": "b"})[0][0] == "chosen"
    assert validate_preference_row({"prompt": [user], "chosen": [bot, bot], "rejected": [bot]}) == [
        ("chosen", "chosen and rejected must each hold exactly one assistant message after the prompt")]
    assert validate_preference_row({"prompt": [user], "chosen": [bot], "rejected": [{"role": "assistant", "content": "b"}],
                                    "score_chosen": "high"}) == [("score_chosen", "must be a number, got str")]
    assert to_dpo_pair({"prompt": [user], "chosen": [bot], "rejected": [{"role": "assistant", "content": "b"}],
                        "score_chosen": 2.0, "score_rejected": 1.0}) == {
        "prompt": [user], "chosen_response": bot, "rejected_response": {"role": "assistant", "content": "b"},
        "chosen_reward": 2.0, "rejected_reward": 1.0}
    # A bad TRL row in a file: file:line: field: problem.
    with pytest.raises(RowError, match=r"x.jsonl:1: messages\[0\].role"):
        load_sft(str(write(tmp_path / "x.jsonl", [{"messages": [bot]}])), compose_cfg(*TINY).data, Rejects())


def dataset_dir(root, name, splits: dict):
    """A dataset folder laid out like a hub repo (`<split>.jsonl` files), loaded by `datasets.load_dataset`."""
    for split, rows in splits.items():
        write(root / name / f"{split}.jsonl", rows)
    return root / name


def test_dataset_directories_are_read_with_datasets_and_split_keys(tmp_path):
    pytest.importorskip("datasets")
    rows = [as_messages(r) for r in read(SFT)]
    folder = dataset_dir(tmp_path, "chat", {"train": rows[:6], "test": rows[6:]})
    cfg = compose_cfg(*TINY, "trainer.max_steps=1", f"model.data.train_ds.file_path={folder}",
                      f"model.data.validation_ds.file_path={folder}", f"exp_manager.explicit_log_dir={tmp_path / 'run'}")
    assert [r for _, r in load_sft(str(folder), cfg.data, Rejects())] == [to_sft_chat(r) for r in rows[:6]]
    # validation_ds with split null reads `validation`, else `test`.
    assert len(load_sft(str(folder), cfg.data, Rejects(), which="validation_ds")) == 2
    assert len(load_sft(str(folder), cfg.data, Rejects(), split="test")) == 2
    with pytest.raises(DataPrepError, match=r"has no split 'dev' \(splits: train, test\); set model.data.train_ds.split"):
        load_sft(str(folder), cfg.data, Rejects(), split="dev")
    assert (sft.run(cfg, tmp_path / "run") / "recipe.json").is_file()  # stage=sft end to end on the folder
    # DPO/RPO from a folder of TRL rows, with an explicit split key.
    trl = [as_trl_pair(r) for r in read(DPO)]
    pairs = dataset_dir(tmp_path, "prefs", {"train": trl[:2], "test": trl})
    cfg = compose_cfg(*TINY, "stage=rpo", "trainer.max_steps=1", f"model.data.train_ds.file_path={pairs}",
                      "model.data.train_ds.split=test", f"exp_manager.explicit_log_dir={tmp_path / 'rpo'}")
    assert (dpo.run(cfg, tmp_path / "rpo") / "recipe.json").is_file()


def test_a_missing_source_or_unknown_hub_id_is_one_line(tmp_path):
    cfg = compose_cfg(*TINY)
    with pytest.raises(FileNotFoundError, match="data file not found: /no/such.jsonl"):
        load_sft("/no/such.jsonl", cfg.data, Rejects())
    pytest.importorskip("datasets")
    with pytest.raises(DataPrepError, match=r"cannot load dataset 'nobody-xyz/no-such-set'"):
        load_sft("nobody-xyz/no-such-set", cfg.data, Rejects())
