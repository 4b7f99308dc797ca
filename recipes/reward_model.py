"""The SteerLM regression reward model: a causal-LM backbone plus a linear head.

    hidden = backbone(input_ids).last_hidden_state        (B, T, H)
    reward = head(hidden[b, last real token of b])         (B, A),  A = model.regression.num_attributes

This is NeMo-Aligner's `GPTRewardModel` + `RewardModelHead` (one linear layer with a
bias, read at position `length - 1`). The regression texts end with `<extra_id_2>`,
so that last token is where the attributes are read (HelpSteer2 slots 4-8 of 9).

A checkpoint directory holds the backbone as a plain Hugging Face model (`AutoModel`
loads it), the tokenizer, `rm_head.safetensors` (head weight and bias) and
`rm_config.json` (attribute names, weights, the text format). `load_reward_model`
reads one back for scoring; `score_texts` scores strings in batches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from data_prep.schemas import STEERLM_SYSTEM_PROMPT, regression_text
from recipes import distributed, loop
from recipes.models import load_model, resolve_peft_scheme, start_recipe

log = logging.getLogger(__name__)

RM_HEAD_FILE = "rm_head.safetensors"
RM_CONFIG_FILE = "rm_config.json"
TEXT_FORMAT = ("<extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{prompt}\\n<extra_id_1>Assistant\\n"
               "{response}\\n<extra_id_2>  (NeMo-Aligner process_to_regression_format.py)")


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Position of the last real token of each row, for left or right padding.

    attention_mask: (B, T) of 0/1. Returns (B,) int64: the largest t with mask[b, t] = 1.
    """
    T = attention_mask.shape[1]
    return (T - 1 - attention_mask.flip(-1).argmax(-1)).long()


class RewardModel(nn.Module):
    """Backbone (an HF base model, possibly LoRA-wrapped) + `head`: Linear(hidden, num_attributes)."""

    def __init__(self, backbone: nn.Module, num_attributes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, num_attributes, bias=True)
        # NeMo's head init: normal(0, 0.02) weights, zero bias.
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: (B, T). Returns float32 attributes (B, A)."""
        # Positions count real tokens only, so a left-padded row gets the same positions
        # (and the same scores) as the same row right-padded.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state  # (B, T, H)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        # The head runs in float32 even under bf16 autocast (NeMo's force_head_dtype, for the regression).
        with torch.autocast(device_type=last.device.type, enabled=False):
            return self.head(last.float())


def _lora(backbone, peft_cfg):
    """LoRA on a base model. models.apply_lora wraps causal LMs (task CAUSAL_LM), which needs
    generation methods a base model lacks; FEATURE_EXTRACTION wraps any module."""
    if peft_cfg.peft_scheme == "none":
        return backbone
    if peft_cfg.peft_scheme != "lora":
        raise ValueError(f"model.peft.peft_scheme must be none or lora, got {peft_cfg.peft_scheme!r}")
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=peft_cfg.lora_rank, lora_alpha=peft_cfg.lora_alpha, lora_dropout=peft_cfg.lora_dropout,
                      target_modules=list(peft_cfg.target_modules), task_type="FEATURE_EXTRACTION")
    return get_peft_model(backbone, lora)


def build_reward_model(model_cfg, tokenizer, seed: int) -> RewardModel:
    """The backbone of `model.source` (tiny | gguf | hf) without its LM head, LoRA per `model.peft`
    (the head is always fully trained), and a fresh head of `model.regression.num_attributes`."""
    # LoRA or full: the starting checkpoint's unless given (recipe.json; models.resolve_peft_scheme).
    model_cfg.peft.peft_scheme = resolve_peft_scheme(model_cfg.peft.peft_scheme, start_recipe(model_cfg),
                                                     model_cfg.name_or_path)
    lm = load_model(model_cfg, tokenizer, seed)
    backbone = lm.base_model  # e.g. LlamaForCausalLM.model: the decoder stack and final norm
    if backbone is lm:
        raise ValueError(f"{type(lm).__name__} exposes no base model (base_model_prefix); cannot build a reward model")
    backbone = _lora(backbone, model_cfg.peft)
    torch.manual_seed(seed)  # the head's init does not depend on how many draws the backbone took
    return RewardModel(backbone, model_cfg.regression.num_attributes)


# ---------------------------------------------------------------- the text format
def rm_text(turns: list[tuple[str, str]], response: str, system: str = STEERLM_SYSTEM_PROMPT) -> str:
    """The regression-format string a reward model scores: the prompt turns, the response, `<extra_id_2>`.

    turns: [(role, value), ...] ending with a User turn; HelpSteer2-style prompts that embed earlier
    turns with `<extra_id_1>` markers are passed as one User turn, as NeMo-Aligner does.
    """
    return regression_text(system, [*turns, ("Assistant", response)])


def encode(tokenizer, text: str, max_len: int) -> tuple[list[int], bool]:
    """Token ids without BOS/EOS (NeMo tokenises RM text with add_BOS=False, add_EOS=False).

    Over `max_len`, the *last* max_len tokens are kept: the reward is read at the final token.
    Returns (ids, truncated).
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return (ids[-max_len:], True) if len(ids) > max_len else (ids, False)


def batch_tensors(seqs: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Right-padded (input_ids, attention_mask), each (B, T)."""
    input_ids = loop.pad_batch(seqs, pad_id).to(device)
    attention = loop.pad_batch([[1] * len(s) for s in seqs], 0).to(device)
    return input_ids, attention


@torch.no_grad()
def score_ids(rm: RewardModel, seqs: list[list[int]], pad_id: int, batch_size: int, device,
              precision: str = "auto") -> Tensor:
    """Attributes of each token sequence, (N, A) float32 on the CPU, in the order given.

    Sequences are batched longest first so each batch pads little.
    """
    device = torch.device(device)
    was_training = rm.training
    rm.eval()
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = torch.empty(len(seqs), rm.head.out_features)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, attention = batch_tensors([seqs[i] for i in idx], pad_id, device)
        with loop.autocast(device, precision):
            out[idx] = rm(input_ids, attention).float().cpu()
    rm.train(was_training)
    return out


def score_texts(rm: RewardModel, tokenizer, texts: list[str], batch_size: int, max_len: int, device,
                precision: str = "auto") -> Tensor:
    """Attributes (N, A) of regression-format strings (see `rm_text`)."""
    seqs = [encode(tokenizer, t, max_len)[0] for t in texts]
    return score_ids(rm, seqs, tokenizer.pad_token_id, batch_size, device, precision)


def rewards(attributes: Tensor, weights) -> Tensor:
    """One reward per row: attributes (N, A) @ weights (A,) -> (N,)."""
    w = torch.as_tensor(list(weights), dtype=attributes.dtype)
    if w.numel() != attributes.shape[-1]:
        raise ValueError(f"{w.numel()} attribute weights for a reward model with {attributes.shape[-1]} outputs")
    return attributes @ w


# ---------------------------------------------------------------- checkpoints
def save_rm_checkpoint(run_dir: Path, name: str, rm: RewardModel, tokenizer, meta: dict, optimizer=None,
                       state: dict | None = None, merged: bool = False, recipe: dict | None = None) -> Path:
    """Write `<run dir>/checkpoints/<name>/` atomically (loop.save_checkpoint): the backbone, tokenizer,
    optimizer and RNG state, recipe.json, plus `rm_head.safetensors` and `rm_config.json`. A reward model
    sharded over several processes: as loop.save_checkpoint does (recipes/distributed.py)."""
    if distributed.is_sharded(rm):
        return distributed.save(run_dir, name, rm, optimizer, state, lambda plain: save_rm_checkpoint(
            run_dir, name, plain, tokenizer, meta, merged=merged, recipe=recipe))
    head = {k: v.detach().cpu().contiguous() for k, v in rm.head.state_dict().items()}
    return loop.save_checkpoint(run_dir, name, rm.backbone, tokenizer, optimizer, state, merged=merged,
                                extra_files={RM_CONFIG_FILE: json.dumps(meta, indent=1)},
                                extra_tensors={RM_HEAD_FILE: head}, recipe=recipe)


def load_head(ckpt: Path, rm: RewardModel) -> None:
    rm.head.load_state_dict(load_file(str(Path(ckpt) / RM_HEAD_FILE)))


def load_rm_checkpoint(ckpt: Path, rm: RewardModel, optimizer) -> dict:
    """Restore a resumable checkpoint of save_rm_checkpoint (backbone, head, optimizer, RNG); its state."""
    if distributed.is_sharded(rm):
        return distributed.load(ckpt, rm, optimizer)
    state = loop.load_checkpoint(ckpt, rm.backbone, optimizer)
    load_head(ckpt, rm)
    return state


def read_rm_config(ckpt: str | Path) -> dict:
    path = Path(ckpt) / RM_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt}: not a reward-model checkpoint (no {RM_CONFIG_FILE}); "
                                "give a directory written by stage=rm, e.g. <run dir>/checkpoints/final")
    return json.loads(path.read_text())


def load_reward_model(ckpt: str | Path, device=None) -> tuple[RewardModel, object, dict]:
    """(reward model in eval mode, tokenizer, rm_config.json) from a stage=rm checkpoint directory."""
    from transformers import AutoModel, AutoTokenizer

    ckpt = Path(ckpt)
    meta = read_rm_config(ckpt)
    if not list(ckpt.glob("model*.safetensors")):
        raise FileNotFoundError(f"{ckpt}: holds only a LoRA adapter; score the final checkpoint "
                                "(written merged when model.peft.save_merged=true)")
    backbone = AutoModel.from_pretrained(ckpt, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    rm = RewardModel(backbone, meta["num_attributes"])
    load_head(ckpt, rm)
    rm.eval()
    return rm.to(device or "cpu"), tokenizer, meta
