"""On-disk cache of reference-policy log-probs for DPO/RPO (safetensors + a JSON index, never pickle).

The reference policy is frozen, so log π_ref(y|x) of every chosen and rejected response is
computed once before training and reused: by the steps (no reference forward pass, and no
reference model in memory, while training), by `resume=true`, and by any rerun on the same
reference and data. An entry lives in `<cache_dir()>/ref_logps/` (`$RECIPES_CACHE`, default
`~/.cache/nemotron-recipes`) as

    <key>.safetensors   chosen_logps, rejected_logps  (N,) float32 sums over response tokens
                        chosen_tokens, rejected_tokens (N,) int64 counts (means are derived)
    <key>.json          what the entry was computed from, for humans and for `rm -r`

and the key is a hash of:
  * the reference's identity: a checkpoint directory's path plus the name, size and mtime of
    its config and weight files (a hub id: its cached snapshot); for `model.source=tiny`
    (a random model) its config, the seed and the vocabulary size;
  * the data: file path and SHA-256 of its content, prompt template, max length, over-length
    policy, and a digest of every token and label actually trained on (this also covers the
    tokenizer and skipped rows);
  * the numerics: device type and autocast dtype (bf16 log-probs differ from fp32 ones).
Anything that changes any of these misses the cache and recomputes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from data_prep.jsonl import atomic_write_text
from recipes.models import cache_dir, gguf_path, read_recipe, resolve_source

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored values or their meaning change
WEIGHT_FILES = ("config.json", "model*.safetensors", "pytorch_model*.bin", "*.gguf", "adapter/adapter_model.safetensors")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def checkpoint_fingerprint(name_or_path: str) -> dict:
    """Identity of a checkpoint directory, a weights file, or a hub id (its cached snapshot)."""
    path = Path(name_or_path)
    if path.is_file():
        return {"file": str(path.resolve()), **_stat(path)}
    if path.is_dir():
        files = sorted({f for pattern in WEIGHT_FILES for f in path.glob(pattern)})
        if not any(f.name != "config.json" for f in files):
            raise FileNotFoundError(f"{path}: no model weights (model*.safetensors) in this directory")
        found = {"dir": str(path.resolve()), "files": [_stat(f) for f in files]}
        if not (path / "config.json").is_file():  # adapter-only: the adapter on its base_model (models.load_causal_lm)
            base = read_recipe(path).get("base_model")
            found["base"] = checkpoint_fingerprint(base) if base else None
        return found
    snapshot = None
    try:  # a hub id: the snapshot directory names the commit, so an update misses the cache
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name_or_path, "config.json")
        snapshot = str(Path(found).parent) if isinstance(found, str) else None
    except Exception:  # noqa: BLE001 - an identity without the snapshot is still an identity
        pass
    return {"hub": name_or_path, "snapshot": snapshot}


def reference_identity(model_cfg, reference: str | None, vocab_size: int, seed: int) -> dict:
    """What the reference policy is: `model.dpo.reference`, else the initial policy."""
    if reference:
        return {"reference": checkpoint_fingerprint(reference)}
    source = resolve_source(model_cfg)
    if source == "tiny":  # a random model: its config and seed define it
        return {"tiny": OmegaConf.to_container(model_cfg.tiny, resolve=True), "seed": seed, "vocab": vocab_size}
    if source == "gguf":
        return {"gguf": checkpoint_fingerprint(str(gguf_path(model_cfg)))}
    return {"hf": checkpoint_fingerprint(model_cfg.name_or_path)}


def entry_parts(identity: dict, data_path: str, pairs_digest: str, data_cfg, numerics: dict) -> dict:
    return {
        "version": CACHE_VERSION,
        "reference": identity,
        # A dataset directory or hub id has no one file to hash; the token digest covers what is trained on.
        "data": {"path": str(Path(data_path).resolve()) if Path(data_path).exists() else data_path,
                 "sha256": file_sha256(data_path) if Path(data_path).is_file() else None,
                 "prompt_template": data_cfg.prompt_template, "max_seq_length": data_cfg.max_seq_length,
                 "overlong": data_cfg.overlong, "tokens_sha256": pairs_digest},
        "numerics": numerics,
    }


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def entry_dir() -> Path:
    return cache_dir() / "ref_logps"


def load(key: str, n: int) -> dict[str, torch.Tensor] | None:
    """The cached tensors for `key`, or None (absent, or not `n` rows: treated as a miss)."""
    path = entry_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    if any(t.shape != (n,) for t in tensors.values()):
        log.warning("reference cache %s has the wrong size; recomputing", path)
        return None
    return tensors


def save(key: str, tensors: dict[str, torch.Tensor], parts: dict) -> Path:
    """Write the JSON index, then the tensors through a temp file and a rename (readers see all or nothing)."""
    root = entry_dir()
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / f"{key}.json", json.dumps({**parts, "n": len(next(iter(tensors.values())))}, indent=1))
    tmp = root / f".{key}.{os.getpid()}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": key})
    os.replace(tmp, root / f"{key}.safetensors")
    return root / f"{key}.safetensors"
