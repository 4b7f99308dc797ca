"""stage=rm: the reward model (head, last-token read), its losses in the training path, learning,
resume, checkpoints, LoRA, and the launch.py command line."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.jsonl import Rejects, RowError
from recipes import loop, rm
from recipes.losses import bt_loss
from recipes.models import load_tokenizer
from recipes.reward_model import (
    RM_CONFIG_FILE,
    RM_HEAD_FILE,
    build_reward_model,
    last_token_index,
    load_reward_model,
    rm_text,
    save_rm_checkpoint,
    score_texts,
)
from tests.conftest import FIXTURES, REPO, TINY, compose_cfg, crash_on_call

FIXTURE = REPO / "tests" / "fixtures" / "rm_tiny.jsonl"  # 8 rows; rows 2, 5, 7 lack some attributes
PREF = REPO / "tests" / "fixtures" / "rm_pref_tiny.jsonl"  # 4 HelpSteer2-Preference pairs


def cfg_for(tmp_path: Path, *overrides: str, train=FIXTURE):
    return compose_cfg(*TINY, "stage=rm", f"model.data.train_ds.file_path={train}",
                       f"exp_manager.explicit_log_dir={tmp_path}", *overrides)


def setup(cfg, path=FIXTURE):
    """Tokenizer, fresh reward model and examples, as rm.run builds them."""
    tok = load_tokenizer(cfg.model, rm.texts_for_tokenizer(str(path), cfg))
    model = build_reward_model(cfg.model, tok, cfg.seed)
    examples, _ = rm.load_examples(str(path), tok, cfg, Rejects())
    return tok, model, examples


def train_losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in loop.read_metrics(run_dir) if "loss" in m]


def test_head_shape_and_last_token_with_left_and_right_padding(tmp_path):
    cfg = cfg_for(tmp_path)
    tok, model, examples = setup(cfg)
    model.eval()
    seqs = [e.input_ids for e in examples[:3]]
    assert len({len(s) for s in seqs}) > 1  # different lengths, so padding matters
    width, pad = max(map(len, seqs)), tok.pad_token_id
    right = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    left = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask_r = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    mask_l = mask_r.flip(-1)
    assert last_token_index(mask_r).tolist() == [len(s) - 1 for s in seqs]
    assert last_token_index(mask_l).tolist() == [width - 1] * 3
    with torch.no_grad():
        out_r, out_l = model(right, mask_r), model(left, mask_l)
        alone = torch.cat([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])
    assert out_r.shape == (3, 9) and out_r.dtype == torch.float32
    torch.testing.assert_close(out_r, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_l, alone, atol=1e-5, rtol=0)
    # The score is read at the final <extra_id_2>, the last token of every row.
    assert all(s[-1] == tok.convert_tokens_to_ids("<extra_id_2>") for s in seqs)


def test_masked_mse_in_training_path_equals_hand_computation(tmp_path):
    # global batch 8 = 4 micro-batches of 2; rows carry 5, 1, 5, 5, 2, 5, 4, 5 labels.
    cfg = cfg_for(tmp_path, "model.global_batch_size=8", "model.micro_batch_size=2", "model.optim.lr=0.0")
    tok, model, examples = setup(cfg)
    with torch.no_grad():
        outs = [model(torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids), dtype=torch.long))[0].tolist()
                for e in examples]
    sq = [(o - y) ** 2 for out, e in zip(outs, examples) for o, y in zip(out, e.label) if y != -100]
    assert len(sq) == 32
    hand = sum(sq) / len(sq)  # pooled over the global batch, not a mean of micro-batch means
    opt = loop.build_optimizer(model, cfg.model.optim)
    m = rm.train_step(model, opt, examples, list(range(8)), cfg, tok.pad_token_id, torch.device("cpu"))
    assert m["loss"] == pytest.approx(hand, rel=1e-5)
    per_mb = [sum((o - y) ** 2 for out, e in zip(outs[i:i + 2], examples[i:i + 2]) for o, y in zip(out, e.label)
                  if y != -100) / sum(y != -100 for e in examples[i:i + 2] for y in e.label) for i in range(0, 8, 2)]
    assert abs(sum(per_mb) / 4 - hand) > 1e-3  # the fixture tells the two rules apart


def test_accumulation_equals_one_big_batch(tmp_path):
    common = ("trainer.max_steps=3", "model.global_batch_size=8", "model.optim.sched.name=constant")
    a, b = tmp_path / "a", tmp_path / "b"
    rm.run(cfg_for(a, *common, "model.micro_batch_size=1"), a)
    rm.run(cfg_for(b, *common, "model.micro_batch_size=8"), b)
    for x, y in zip(train_losses(a), train_losses(b)):
        assert x == pytest.approx(y, abs=1e-5)
    ra, _, _ = load_reward_model(a / "checkpoints" / "final")
    rb, _, _ = load_reward_model(b / "checkpoints" / "final")
    torch.testing.assert_close(ra.head.weight, rb.head.weight, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["regular_bt", "margin_bt", "scaled_bt"])
def test_bt_losses_used_by_the_stage(tmp_path, kind):
    cfg = cfg_for(tmp_path, f"model.regression.loss_func={kind}", "model.global_batch_size=8",
                  "model.micro_batch_size=2", "model.optim.lr=0.0", train=PREF)
    tok, model, examples = setup(cfg, PREF)
    with torch.no_grad():
        r = [model(torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids), dtype=torch.long))[0, 4].item()
             for e in examples]
    hand = []
    for p in range(4):
        s = examples[2 * p].label[0]
        rc, rr = (r[2 * p], r[2 * p + 1]) if s < 0 else (r[2 * p + 1], r[2 * p])
        m = abs(s)
        logsig = -math.log1p(math.exp(-(rc - rr - (m if kind == "margin_bt" else 0))))
        hand.append(-logsig * (m if kind == "scaled_bt" else 1))
    opt = loop.build_optimizer(model, cfg.model.optim)
    metrics = rm.train_step(model, opt, examples, list(range(8)), cfg, tok.pad_token_id, torch.device("cpu"))
    assert metrics["loss"] == pytest.approx(sum(hand) / 4, rel=1e-5)
    out = torch.tensor([[0.0] * 4 + [x] + [0.0] * 4 for x in r]).view(4, 2, 9)
    strength = torch.tensor([examples[2 * p].label[0] for p in range(4)])
    assert metrics["loss"] == pytest.approx(float(bt_loss(out, strength, kind).mean()), rel=1e-5)


def test_bt_training_ranks_the_pairs(tmp_path):
    cfg = cfg_for(tmp_path, "model.regression.loss_func=scaled_bt", "model.global_batch_size=8",
                  "model.micro_batch_size=2", "trainer.max_steps=25", "model.optim.sched.name=constant",
                  f"model.data.validation_ds.file_path={PREF}", train=PREF)
    final = rm.run(cfg, tmp_path)
    metrics = loop.read_metrics(tmp_path)
    assert metrics[-1]["val_acc"] == 1.0 and metrics[-1]["val_loss"] < metrics[0]["loss"]
    meta = json.loads((final / RM_CONFIG_FILE).read_text())
    assert meta["trained_attributes"] == ["helpfulness"] and meta["loss_func"] == "scaled_bt"


def test_bt_pairs_are_checked(tmp_path):
    rows = PREF.read_text().splitlines()
    odd = tmp_path / "odd.jsonl"
    odd.write_text("\n".join(rows[:3]) + "\n")
    with pytest.raises(ValueError, match="even number"):
        rm.run(cfg_for(tmp_path, "model.regression.loss_func=regular_bt", "model.micro_batch_size=2", train=odd), tmp_path)
    mixed = tmp_path / "mixed.jsonl"
    second = json.loads(rows[1])
    second["label"][0] = 1
    mixed.write_text("\n".join([rows[0], json.dumps(second), *rows[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"mixed.jsonl:2: label\[0\]"):
        rm.run(cfg_for(tmp_path, "model.regression.loss_func=regular_bt", "model.micro_batch_size=2", train=mixed), tmp_path)
    with pytest.raises(ValueError, match="must be even"):
        rm.run(cfg_for(tmp_path, "model.regression.loss_func=regular_bt", "model.micro_batch_size=1", train=PREF), tmp_path)


def test_bad_row_names_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = FIXTURE.read_text().splitlines()
    row = json.loads(rows[1])
    row["label"] = row["label"][4:]
    bad.write_text("\n".join([rows[0], json.dumps(row)]) + "\n")
    with pytest.raises(RowError, match="bad.jsonl:2: label: must have 9 values, got 5"):
        rm.run(cfg_for(tmp_path, train=bad), tmp_path)


def test_learns_helpsteer_better_than_the_training_mean(tmp_path):
    from data_prep.helpsteer2 import convert_helpsteer2

    convert_helpsteer2(str(FIXTURES / "helpsteer" / "helpsteer_v1_sample.jsonl"), tmp_path / "data", val_fraction=0.2)
    train_file, val_file = tmp_path / "data" / "train_reg.jsonl", tmp_path / "data" / "val_reg.jsonl"
    train = [json.loads(x)["label"] for x in train_file.read_text().splitlines()]
    val = [json.loads(x)["label"] for x in val_file.read_text().splitlines()]
    assert len(val) >= 40
    mean = [sum(r[i] for r in train) / len(train) for i in range(9) if train[0][i] != -100]
    baseline = sum((r[4 + i] - mean[i]) ** 2 for r in val for i in range(5)) / (5 * len(val))
    run_dir = tmp_path / "run"
    # ~5 epochs of 188 rows; the last 256 tokens of each row (the response end and <extra_id_2>).
    rm.run(cfg_for(run_dir, f"model.data.validation_ds.file_path={val_file}", "trainer.max_steps=60",
                   "data.max_seq_length=256", "model.global_batch_size=16", "model.micro_batch_size=16",
                   train=train_file), run_dir)
    last = loop.read_metrics(run_dir)[-1]
    assert last["val_loss"] < baseline, (last, baseline)
    assert set(k for k in last if k.startswith("val_mse_")) == {f"val_mse_{n}" for n in
                                                                ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    common = ("trainer.max_steps=6", "trainer.save_interval=3", "model.global_batch_size=4", "model.micro_batch_size=2")
    full, cut = tmp_path / "full", tmp_path / "cut"
    rm.run(cfg_for(full, *common), full)

    with crash_on_call(monkeypatch, rm, "train_step", 5):
        rm.run(cfg_for(cut, *common), cut)
    assert (cut / "checkpoints" / "step_000003" / RM_HEAD_FILE).is_file()
    assert not (cut / "checkpoints" / "final").exists()

    rm.run(cfg_for(cut, *common, "resume=true"), cut)
    by_step = {m["step"]: m["loss"] for m in loop.read_metrics(cut) if "loss" in m}
    assert sorted(by_step) == [1, 2, 3, 4, 5, 6]
    assert [by_step[s] for s in range(1, 7)] == train_losses(full)
    a, _, _ = load_reward_model(full / "checkpoints" / "final")
    b, _, _ = load_reward_model(cut / "checkpoints" / "final")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_checkpoint_reload_gives_identical_scores(tmp_path):
    from transformers import AutoModel

    cfg = cfg_for(tmp_path, "model.optim.lr=1e-2")
    tok, model, examples = setup(cfg)
    opt = loop.build_optimizer(model, cfg.model.optim)
    for _ in range(2):
        rm.train_step(model, opt, examples, list(range(8)), cfg, tok.pad_token_id, torch.device("cpu"))
    meta = rm.rm_meta(cfg, examples)
    ckpt = save_rm_checkpoint(tmp_path, "final", model, tok, meta)
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json", RM_HEAD_FILE, RM_CONFIG_FILE}
    assert not list(ckpt.glob("*.bin")) and not list(ckpt.glob("*.pt"))
    assert not (tmp_path / "checkpoints" / ".staging").exists()
    assert type(AutoModel.from_pretrained(ckpt)).__name__ == "LlamaModel"  # the backbone is plain HF
    assert meta["trained_attributes"] == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]

    texts = [rm_text([("User", "Hi")], "Hello there!"), rm_text([("User", "2+2?")], "4")]
    before = score_texts(model, tok, texts, 2, 4096, "cpu")
    loaded, loaded_tok, loaded_meta = load_reward_model(ckpt)
    assert loaded_meta == meta
    assert torch.equal(score_texts(loaded, loaded_tok, texts, 2, 4096, "cpu"), before)


def test_lora_trains_adapter_and_full_head(tmp_path):
    cfg = cfg_for(tmp_path, "trainer.max_steps=3", "model.peft.peft_scheme=lora", "model.optim.lr=1e-2")
    final = rm.run(cfg, tmp_path)
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    assert (final / "model.safetensors").is_file()  # merged backbone, loadable without peft
    _, fresh, _ = setup(cfg_for(tmp_path))  # the same seed without LoRA: the initial weights
    loaded, _, _ = load_reward_model(final)
    assert not torch.allclose(loaded.head.weight, fresh.head.weight)  # the head is trained in full
    init = fresh.backbone.state_dict()
    diff = [k for k, v in loaded.backbone.state_dict().items() if not torch.allclose(v, init[k])]
    assert diff and all("q_proj" in k or "v_proj" in k for k in diff)  # LoRA moved only its targets


def test_launch_end_to_end(tmp_path):
    cmd = [sys.executable, str(REPO / "launch.py"), "stage=rm", "model=tiny", "data=none", "logger.wandb.enabled=false",
           f"model.data.train_ds.file_path={FIXTURE}", f"model.data.validation_ds.file_path={FIXTURE}",
           "trainer.max_steps=2", "logger.progress_bar=false", f"exp_manager.explicit_log_dir={tmp_path}",
           f"hydra.run.dir={tmp_path / 'hydra'}"]  # keep Hydra's own folder out of the repo's runs/
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = tmp_path / "checkpoints" / "final"
    assert (final / RM_HEAD_FILE).is_file() and (tmp_path / "metrics.csv").is_file()
    assert "val_mse_helpfulness" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
