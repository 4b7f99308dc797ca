"""Peer validation: NeMo-Aligner 0.7 / NeMo 2.2 load every file type our data-prep scripts write (CPU only).

Run ONLY with the separate NeMo venv (scripts/setup_nemo_venv.sh), never the main one:

    .venv-nemo/bin/python -m pytest tests_nemo -q

Our converters run here too (data_prep needs only the standard library on this path). Each output is loaded
with the dataset class NeMo-Aligner trains from, through the same builders its train_*.py scripts use, with a
tokenizer built offline (a byte-level BPE with the <extra_id_0..2> special tokens, saved with save_pretrained).
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

nemo_aligner = pytest.importorskip("nemo_aligner", reason="run with the NeMo venv: scripts/setup_nemo_venv.sh")

from omegaconf import OmegaConf  # noqa: E402

from data_prep.helpsteer2 import convert_helpsteer2  # noqa: E402
from data_prep.schemas import validate_dpo_pair  # noqa: E402
from data_prep.sdg import convert_sdg  # noqa: E402

# 236 real nvidia/HelpSteer rows shipped with the repo (tests/fixtures/helpsteer/README.md)
SAMPLE = REPO / "tests" / "fixtures" / "helpsteer" / "helpsteer_v1_sample.jsonl"
SDG_FIXTURE = REPO / "tests" / "fixtures" / "data_prep" / "sdg_records.jsonl"
NEMOTRON_TOKENS = {"system_turn_start": "<extra_id_0>", "turn_start": "<extra_id_1>", "label_start": "<extra_id_2>",
                   "end_of_turn": "\n", "end_of_name": "\n"}
ITEMS_PER_RM_FILE = 6  # RM items build a seq_length^2 attention mask each (~0.1 s): check a spread, not all


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """Every file type our scripts write, from real HelpSteer rows and the SDG fixture."""
    root = tmp_path_factory.mktemp("generated")
    convert_helpsteer2(str(SAMPLE), root / "hs2", val_fraction=0.2, epochs=2, rm_pairs=True)
    convert_helpsteer2(str(SAMPLE), root / "hs2_oh", val_fraction=0.2, only_helpfulness=True)
    rows, rng = read(SAMPLE), random.Random(0)
    pref = [{"split": "validation" if i % 10 == 0 else "train", "prompt": rows[i]["prompt"], "response_1": rows[i]["response"],
             "response_2": rows[i + 1]["response"], "preference_strength": rng.randint(-3, 3)} for i in range(0, 200, 2)]
    (root / "pref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pref))
    convert_helpsteer2(str(root / "pref.jsonl"), root / "hs2_pref", preference=True)
    convert_sdg(str(SDG_FIXTURE), root / "sdg", preset="rpo", pairs={"mode": "all_pairs"})
    # A DPO row in the OpenAI-messages shape our schema also accepts.
    msg = {"prompt": [{"role": "system", "content": ""}, {"role": "user", "content": "Name a prime number."}],
           "chosen_response": {"role": "assistant", "content": "7"}, "rejected_response": {"role": "assistant", "content": "8"},
           "chosen_reward": 6.0, "rejected_reward": 1.0}
    assert validate_dpo_pair(msg) == []
    (root / "messages_dpo.jsonl").write_text(json.dumps(msg) + "\n")
    return root


@pytest.fixture(scope="module")
def tokenizer(out, tmp_path_factory):
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [line for p in sorted(out.rglob("*.jsonl")) for line in p.read_text().splitlines()]
    special = ["<unk>", "<s>", "</s>", "<pad>", "<extra_id_0>", "<extra_id_1>", "<extra_id_2>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            additional_special_tokens=special[4:]).save_pretrained(path)
    nemo_tok = AutoTokenizer(str(path))
    assert nemo_tok.text_to_ids("<extra_id_1>User\n")[0] == nemo_tok.tokens_to_ids(["<extra_id_1>"])[0]
    return nemo_tok


def _seq_length(tokenizer, paths) -> int:
    longest = max(len(tokenizer.text_to_ids(r.get("text", ""))) for p in paths for r in read(p))
    return max(256, 1 << (longest - 1).bit_length())


def _build(cls, path, tokenizer, seq_length, **data):
    from nemo_aligner.data.nlp.builders import build_dataset_generic

    cfg = OmegaConf.create({"data": {"data_impl": "jsonl", **data}})
    return build_dataset_generic(cls, cfg, [str(path)], "jsonl", None, seq_length, 1234, tokenizer, "train")


def _spread(n: int, k: int) -> list[int]:
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(min(n, k))})


REG_FILES = ["hs2/train_reg.jsonl", "hs2/val_reg.jsonl", "hs2/train_reg_2_epoch.jsonl", "hs2_oh/train_reg.jsonl",
             "hs2_pref/train_reg.jsonl", "hs2_pref/val_reg.jsonl"]


@pytest.mark.parametrize("name", REG_FILES)
def test_regression_reward_model_dataset(out, tokenizer, name):
    from nemo_aligner.data.nlp.datasets import RegressionRewardModelDataset

    rows = read(out / name)
    ds = _build(RegressionRewardModelDataset, out / name, tokenizer, _seq_length(tokenizer, [out / name]))
    assert len(ds) == len(rows) > 0
    for i in _spread(len(rows), ITEMS_PER_RM_FILE):
        item = ds[i]
        assert item["labels"].tolist() == rows[i]["label"]  # every row fits: no substitution happened
        assert int(item["lengths"]) == len(tokenizer.text_to_ids(rows[i]["text"]))


@pytest.mark.parametrize("name", ["hs2/train_rm_pairs.jsonl", "hs2/val_rm_pairs.jsonl", "sdg/train_rm_pairs.jsonl"])
def test_pairwise_reward_model_dataset(out, tokenizer, name):
    from nemo_aligner.data.nlp.datasets import RewardModelDataset

    rows = read(out / name)
    ds = _build(RewardModelDataset, out / name, tokenizer, _seq_length(tokenizer, [out / name]))
    assert len(ds) == len(rows) // 2 > 0 and len(rows) % 2 == 0
    for i in _spread(len(ds), ITEMS_PER_RM_FILE):
        item = ds[i]
        assert item["chosen_length"] > 0 and item["rejected_length"] > 0


@pytest.mark.parametrize("name", ["hs2/train_dpo.jsonl", "hs2/val_dpo.jsonl", "hs2_oh/train_dpo.jsonl", "sdg/train_dpo.jsonl"])
def test_dpo_dataset(out, tokenizer, name):
    from nemo_aligner.data.nlp.datasets import DPOModelDataset

    rows = read(out / name)
    # Our preference files hold message-list prompts: NeMo renders them with the model's chat_prompt_tokens.
    ds = _build(DPOModelDataset, out / name, tokenizer, 8192, chat_prompt_tokens=NEMOTRON_TOKENS)
    assert len(ds) == len(rows) > 0 and all(isinstance(r["prompt"], list) for r in rows)
    rewards = {(r["chosen_reward"], r["rejected_reward"]) for r in rows}
    for i in range(len(ds)):  # no mask is built here: every item is cheap, check them all
        item = ds[i]  # asserts that the prompt's tokens are a prefix of prompt + response
        assert not item["ignore_example"]
        assert (item["chosen_reward"], item["rejected_reward"]) in rewards
        assert (item["chosen_labels"] != -100).sum() > 0 and (item["rejected_labels"] != -100).sum() > 0


def test_dpo_dataset_messages_shape(out, tokenizer):
    from nemo_aligner.data.nlp.datasets import DPOModelDataset

    ds = _build(DPOModelDataset, out / "messages_dpo.jsonl", tokenizer, 256, chat_prompt_tokens=NEMOTRON_TOKENS)
    item = ds[0]
    # NeMo renders the messages with the Nemotron tokens (ids_to_text drops the special tokens themselves).
    assert tokenizer.ids_to_text(item["chosen"].tolist()) == "System\n\nUser\nName a prime number.\nAssistant\n7\n"
    assert (item["chosen_reward"], item["rejected_reward"]) == (6.0, 1.0)
    # NeMo scores the assistant header as part of the response; our torch backend renders (and scores) the
    # same tokens: recipes.chat.render_prompt_response.
    from recipes.chat import render_prompt_response

    row = read(out / "messages_dpo.jsonl")[0]
    for key, labels in (("chosen_response", "chosen_labels"), ("rejected_response", "rejected_labels")):
        _, response = render_prompt_response(row["prompt"], row[key], "nemotron", None)
        assert [t for t in item[labels].tolist() if t != -100] == tokenizer.text_to_ids(response)


@pytest.mark.parametrize("name", ["hs2/train.jsonl", "hs2/val.jsonl", "hs2_oh/train.jsonl", "sdg/train_sft.jsonl"])
def test_gpt_sft_chat_dataset(out, tokenizer, tmp_path, name):
    from nemo.collections.nlp.data.language_modeling.megatron.gpt_sft_chat_dataset import GPTSFTChatDataset

    rows = read(out / name)
    # The arguments NeMo-Aligner's build_sft_dataset passes for model.data.chat=True (steerlm.rst: add_eos=False).
    ds = GPTSFTChatDataset(file_path=str(out / name), tokenizer=tokenizer, max_seq_length=8192, min_seq_length=1,
                           add_bos=False, add_eos=False, add_sep=False, seed=1234, label_key="output",
                           answer_only_loss=True, truncation_field="input", index_mapping_dir=str(tmp_path),
                           prompt_template="{input} {output}", special_tokens=NEMOTRON_TOKENS, memmap_workers=1)
    assert len(ds) == len(rows) > 0
    items = [ds[i] for i in range(len(ds))]  # preprocess() asserts a non-empty loss mask for every row
    batch = ds.collate_fn(items[:4])
    assert batch["tokens"].shape[0] == min(4, len(items)) and batch["loss_mask"].sum() > 0
    # Only the answer is trained; a SteerLM label is conditioning, never a target.
    answer = rows[0]["conversations"][-1]
    trained = tokenizer.ids_to_text([t for t, m in zip(items[0]["input_ids"], items[0]["mask"]) if m])
    assert trained.startswith(answer["value"][:40])
    if answer["label"]:
        assert answer["label"] in tokenizer.ids_to_text(items[0]["input_ids"]) and answer["label"] not in trained


def test_data_prep_imports_only_light_modules():
    code = ("import sys, data_prep.helpsteer2, data_prep.sdg; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'datasets', 'pyarrow', 'nemo', 'numpy'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr
