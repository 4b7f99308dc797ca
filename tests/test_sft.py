"""The SFT stage on the tiny model: learning, accumulation, resume, checkpoints, LoRA."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipes import loop, sft
from tests.conftest import REPO, TINY, compose_cfg, crash_on_call

FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"


def cfg_for(tmp_path: Path, *overrides: str):
    return compose_cfg(*TINY, f"model.data.train_ds.file_path={FIXTURE}",
                       f"exp_manager.explicit_log_dir={tmp_path}", *overrides)


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in loop.read_metrics(run_dir) if "loss" in m]


def test_overfits_eight_rows(tmp_path):
    cfg = cfg_for(tmp_path, "trainer.max_steps=40", "model.optim.sched.name=constant", "data.shuffle=false")
    sft.run(cfg, tmp_path)
    ls = losses(tmp_path)
    assert len(ls) == 40
    assert ls[-1] < 0.2 * ls[0], ls


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    common = ("trainer.max_steps=3", "model.global_batch_size=4", "model.optim.sched.name=constant")
    a, b = tmp_path / "a", tmp_path / "b"
    sft.run(cfg_for(a, *common, "model.micro_batch_size=1"), a)
    sft.run(cfg_for(b, *common, "model.micro_batch_size=4"), b)
    for x, y in zip(losses(a), losses(b)):
        assert abs(x - y) < 1e-5
    wa = AutoModelForCausalLM.from_pretrained(a / "checkpoints" / "final").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b / "checkpoints" / "final").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=0)  # Adam amplifies fp noise


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    common = ("trainer.max_steps=6", "trainer.save_interval=3", "model.global_batch_size=4", "model.micro_batch_size=2")
    full, cut = tmp_path / "full", tmp_path / "cut"
    sft.run(cfg_for(full, *common), full)

    with crash_on_call(monkeypatch, sft, "train_step", 5):
        sft.run(cfg_for(cut, *common), cut)
    assert (cut / "checkpoints" / "step_000003").is_dir()
    assert not (cut / "checkpoints" / "final").exists()

    sft.run(cfg_for(cut, *common, "resume=true"), cut)
    resumed = [m for m in loop.read_metrics(cut) if "loss" in m]
    # Steps 1-4 ran before the crash (4 was lost with it), 4-6 after the resume from step 3.
    by_step = {m["step"]: m["loss"] for m in resumed}
    assert sorted(by_step) == [1, 2, 3, 4, 5, 6]
    assert [by_step[s] for s in range(1, 7)] == losses(full)


def test_checkpoint_reloads_and_generates(tmp_path):
    sft.run(cfg_for(tmp_path, "trainer.max_steps=2"), tmp_path)
    final = tmp_path / "checkpoints" / "final"
    assert (final / "model.safetensors").is_file()
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pt"))
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    prompt = tok("<extra_id_0>System\n\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n", return_tensors="pt",
                 add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 5


def test_lora_saves_adapter_and_merged_weights(tmp_path):
    from peft import PeftModel

    from data_prep.jsonl import Rejects
    from recipes.data import load_sft, sft_texts
    from recipes.models import load_model, load_tokenizer

    cfg = cfg_for(tmp_path, "trainer.max_steps=3", "model.peft.peft_scheme=lora", "model.optim.lr=1e-2")
    sft.run(cfg, tmp_path)
    final = tmp_path / "checkpoints" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(final)

    # The same random base (the tiny model is deterministic for a seed), with the saved adapter.
    base = load_model(cfg.model, load_tokenizer(cfg.model, sft_texts(load_sft(str(FIXTURE), cfg.data, Rejects()))), cfg.seed)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, final / "adapter")(ids).logits
        merged_logits = merged(ids).logits
    torch.testing.assert_close(merged_logits, adapted, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)


def test_accumulation_settings_are_checked(tmp_path):
    cfg = cfg_for(tmp_path, "model.global_batch_size=6", "model.micro_batch_size=4")
    with pytest.raises(ValueError, match="multiple of model.micro_batch_size"):
        sft.run(cfg, tmp_path)


def test_tiny_tokenizer_is_deterministic():
    from recipes.models import train_tiny_tokenizer

    texts = [json.loads(line)["conversations"][1]["value"] for line in FIXTURE.read_text().splitlines()]
    a, b = train_tiny_tokenizer(texts, 300), train_tiny_tokenizer(texts, 300)
    assert a.get_vocab() == b.get_vocab()
    assert a("<extra_id_1>Assistant")["input_ids"][0] == a.convert_tokens_to_ids("<extra_id_1>")


def test_cosine_schedule_warmup_and_floor():
    from types import SimpleNamespace as NS

    sched = NS(name="cosine", warmup_steps=2, min_lr=1e-4)
    f = [loop.lr_factor(s, 10, sched, 1e-3) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0) and f[-1] > 0.1
    assert loop.lr_factor(10, 10, sched, 1e-3) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))
    assert not any(math.isnan(x) for x in f)
