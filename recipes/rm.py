"""Reward-model training on NeMo regression JSONL (torch backend): `python launch.py stage=rm ...`.

Read top to bottom: load `{"text", "label"}` rows -> tokenizer and reward model
(backbone + linear head, recipes/reward_model.py; LoRA on the backbone if asked)
-> tokenise without BOS/EOS -> loop over global batches with gradient accumulation
-> validate, log, checkpoint -> `<run dir>/checkpoints/final/`.

Two losses (`model.regression.loss_func`):

* `regression` (SteerLM / HelpSteer2): masked MSE, labels equal to
  `model.regression.loss_mask_val` (-100) ignored. The loss of a global batch is the
  sum of squared errors over every valid label of all its micro-batches divided by
  the number of those labels, so accumulation 4 x 1 equals 1 x 4 (NeMo-Aligner
  averages per-micro-batch means instead, which weighs rows differently).
* `regular_bt | margin_bt | scaled_bt` (HelpSteer2-Preference): rows come in adjacent
  pairs whose `label[0]` is the preference strength; batches are made of whole pairs
  (so `global_batch_size` and `micro_batch_size` must be even) and the loss is the
  mean over the pairs of the global batch of `losses.bt_loss` on output slot 4.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep.jsonl import Rejects
from data_prep.schemas import LABEL_START, STEERLM_SYSTEM_PROMPT, SYSTEM_TEMPLATE, validate_regression_rm
from recipes import distributed, loop
from recipes.data import read_rows
from recipes.losses import BT_KINDS, HELPFULNESS_INDEX, attribute_mse, bt_loss, regression_loss
from recipes.models import load_tokenizer, recipe_meta, resolve_source
from recipes.reward_model import (TEXT_FORMAT, batch_tensors, build_reward_model, encode, load_rm_checkpoint,
                                  save_rm_checkpoint)

log = logging.getLogger(__name__)


@dataclass
class Example:
    input_ids: list[int]
    label: list[float]  # num_attributes values; loss_mask_val marks a missing one
    line: int  # line in the source file, for error messages


# ---------------------------------------------------------------- data
def load_examples(path: str, tokenizer, cfg, rejects: Rejects) -> tuple[list[Example], dict]:
    """Validated, tokenised rows of a regression JSONL; over-long rows follow `data.overlong`
    (`truncate` keeps the last data.max_seq_length tokens, where the reward is read)."""
    rows = read_rows(path, lambda r: validate_regression_rm(r, cfg.model.regression.num_attributes), cfg.data, rejects,
                     kind="regression_rm")
    examples, n_truncated, no_label_start, other_system = [], 0, 0, 0
    header = SYSTEM_TEMPLATE.format(value=STEERLM_SYSTEM_PROMPT)
    for line, row in rows:
        ids, truncated = encode(tokenizer, row["text"], cfg.data.max_seq_length)
        if truncated and cfg.data.overlong == "drop":
            rejects.add({"file": str(path), "line": line, "field": "text",
                         "reason": f"over data.max_seq_length={cfg.data.max_seq_length} tokens"})
            continue
        n_truncated += truncated
        no_label_start += not row["text"].endswith(LABEL_START)
        other_system += not row["text"].startswith(header)
        examples.append(Example(ids, [float(x) for x in row["label"]], line))
    if n_truncated:
        log.warning("%s: kept the last %d tokens of %d over-long rows", Path(path).name, cfg.data.max_seq_length, n_truncated)
    if no_label_start:
        log.warning("%s: %d rows do not end with %s; their reward is read at their last token", Path(path).name,
                    no_label_start, LABEL_START)
    if other_system:
        # Annotation and RewardBench render with the SteerLM system prompt (rm_config.json system_prompt).
        log.warning("%s: %d rows do not start with the SteerLM system prompt that scoring renders with",
                    Path(path).name, other_system)
    return examples, {"rows": len(rows), "examples": len(examples), "truncated": n_truncated}


def check_pairs(examples: list[Example], path: str, mask_value: float) -> None:
    """BT files: adjacent rows are the two responses of one preference, both labelled with its strength."""
    if len(examples) % 2:
        raise ValueError(f"{path}: {len(examples)} usable rows; the *_bt losses need adjacent pairs (an even number)")
    for a, b in zip(examples[::2], examples[1::2]):
        if a.label[0] == mask_value:
            raise ValueError(f"{Path(path).name}:{a.line}: label[0]: the *_bt losses read the preference strength "
                             f"there, got {mask_value:g} (missing)")
        if a.label[0] != b.label[0]:
            raise ValueError(f"{Path(path).name}:{b.line}: label[0]: {b.label[0]:g} differs from line {a.line} "
                             f"({a.label[0]:g}); the two rows of a pair carry the same preference strength")


def texts_for_tokenizer(path: str, cfg) -> list[str]:
    """The training texts a tiny model's tokenizer is trained on (model.source=tiny)."""
    return [row["text"] for _, row in read_rows(path, None, cfg.data, Rejects()) if isinstance(row.get("text"), str)]


# ---------------------------------------------------------------- losses of a batch
def forward(rm, batch: list[Example], pad_id: int, device, precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-head outputs (B, A) float32 and labels (B, A) of a micro-batch."""
    input_ids, attention = batch_tensors([e.input_ids for e in batch], pad_id, device)
    with loop.autocast(device, precision):
        out = rm(input_ids, attention)
    labels = torch.tensor([e.label for e in batch], dtype=torch.float32, device=out.device)
    return out, labels


def regression_share(out: torch.Tensor, labels: torch.Tensor, n_valid_global: int, mask_value: float) -> torch.Tensor:
    """This micro-batch's part of the global-batch masked MSE: its SSE / (valid labels in the global batch).

    regression_loss is the micro-batch mean SSE_mb / n_mb; scaling by n_mb / N gives SSE_mb / N,
    and the micro-batch parts add up to SSE / N of the whole global batch.
    """
    n_mb = int((labels != mask_value).sum())
    return regression_loss(out, labels, mask_value) * (n_mb / n_valid_global)


def bt_pair_losses(out: torch.Tensor, labels: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair BT losses (P,) and wins (P,) of a micro-batch of P adjacent pairs: out, labels (2P, A)."""
    pairs = out.view(-1, 2, out.shape[-1])  # (P, 2, A)
    strength = labels.view(-1, 2, labels.shape[-1])[:, 0, 0]  # (P,)
    losses = bt_loss(pairs, strength, kind)
    r = pairs[..., HELPFULNESS_INDEX]
    first_chosen = strength < 0  # NeMo's rule: strength 0 counts as "second response preferred"
    won = torch.where(first_chosen, r[:, 0] > r[:, 1], r[:, 1] > r[:, 0])
    return losses, won.float()


def train_step(rm, optimizer, examples: list[Example], indices: list[int], cfg, pad_id: int, device) -> dict:
    """One optimizer step over a global batch (row indices; whole pairs for BT), accumulating micro-batches
    (several processes: each its share of the batch, in whole pairs; recipes/distributed.py)."""
    reg = cfg.model.regression
    batch = [examples[i] for i in indices]
    bt = reg.loss_func in BT_KINDS
    # The denominator is fixed by the whole global batch before any micro-batch runs.
    denom = len(batch) // 2 if bt else sum(x != reg.loss_mask_val for e in batch for x in e.label)
    total, wins, n_tokens = 0.0, 0.0, 0
    for mb in distributed.micro_batches(indices, cfg.model.micro_batch_size, unit=2 if bt else 1):
        # An empty micro-batch (a short last batch) runs a zero-weight stand-in: as many passes on every rank.
        out, labels = forward(rm, [examples[i] for i in mb or indices[:2 if bt else 1]], pad_id, device,
                              cfg.trainer.precision)
        if bt:
            losses, won = bt_pair_losses(out, labels, reg.loss_func)
            loss = losses.sum() / denom
        else:
            loss = regression_share(out, labels, denom, reg.loss_mask_val)
        (loss * bool(mb)).backward()
        if mb:
            total += float(loss.detach())
            wins += float(won.sum()) if bt else 0.0
            n_tokens += sum(len(examples[i].input_ids) for i in mb)
    grad_norm = distributed.clip_grad_norm(rm, cfg.trainer.gradient_clip_val)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total, wins, n_tokens = distributed.sum_all(total, wins, n_tokens)
    metrics = {"loss": total, "grad_norm": grad_norm, "tokens": n_tokens}
    if bt:
        metrics["acc"] = wins / denom
    return metrics


@torch.no_grad()
def validate(rm, examples: list[Example], cfg, pad_id: int, device) -> dict:
    """Regression: pooled masked MSE (`val_loss`) and per-attribute MSE (`val_mse_<name>`).
    BT: mean pair loss (`val_loss`) and accuracy (`val_acc`)."""
    reg = cfg.model.regression
    rm.eval()
    mbs = cfg.model.micro_batch_size
    batches = loop.micro_batches(list(range(len(examples))), mbs)[: cfg.trainer.limit_val_batches or None]
    mine, per = distributed.share(batches)  # each rank its share (one process: all of them)
    sse = torch.zeros(reg.num_attributes, dtype=torch.float64)
    counts = torch.zeros(reg.num_attributes, dtype=torch.float64)
    pair_loss, wins, n_pairs = 0.0, 0.0, 0
    for idx in mine + [[]] * (per - len(mine)):
        out, labels = forward(rm, [examples[i] for i in idx or batches[0]], pad_id, device, cfg.trainer.precision)
        if not idx:  # a stand-in: every rank runs as many forward passes
            continue
        if reg.loss_func in BT_KINDS:
            losses, won = bt_pair_losses(out, labels, reg.loss_func)
            pair_loss, wins, n_pairs = pair_loss + float(losses.sum()), wins + float(won.sum()), n_pairs + len(losses)
        else:
            mse, n = attribute_mse(out, labels, reg.loss_mask_val)
            sse += (mse.nan_to_num() * n).double().cpu()
            counts += n.double().cpu()
    sse, counts, pair_loss, wins, n_pairs = distributed.sum_all(sse, counts, pair_loss, wins, n_pairs)
    rm.train()
    if reg.loss_func in BT_KINDS:
        return {"val_loss": pair_loss / max(n_pairs, 1), "val_acc": wins / max(n_pairs, 1)}
    metrics = {"val_loss": float(sse.sum() / counts.sum().clamp(min=1))}
    for name, s, n in zip(reg.attribute_names, sse, counts):
        if n > 0:
            metrics[f"val_mse_{name}"] = float(s / n)
    return metrics


# ---------------------------------------------------------------- the stage
def check_config(cfg) -> None:
    reg = cfg.model.regression
    if cfg.model.reward_model_type != "regression":
        raise ValueError(f"model.reward_model_type={cfg.model.reward_model_type!r}: the torch backend trains "
                         "regression heads (HelpSteer2-Preference BT: model.regression.loss_func=*_bt)")
    for key in ("attribute_names", "attribute_weights"):
        if len(reg[key]) != reg.num_attributes:
            raise ValueError(f"model.regression.{key} has {len(reg[key])} entries; "
                             f"model.regression.num_attributes={reg.num_attributes}")
    mbs = cfg.model.micro_batch_size
    distributed.check_batch(cfg.model.global_batch_size, mbs)
    if reg.loss_func in BT_KINDS:
        if mbs % 2:
            raise ValueError(f"model.micro_batch_size={mbs} must be even for {reg.loss_func} (whole pairs)")
        if reg.num_attributes <= HELPFULNESS_INDEX:
            raise ValueError(f"{reg.loss_func} reads output {HELPFULNESS_INDEX} (helpfulness); "
                             f"model.regression.num_attributes={reg.num_attributes} is too small")


def rm_meta(cfg, train: list[Example]) -> dict:
    """rm_config.json: what scoring needs to use the checkpoint the way it was trained."""
    reg = cfg.model.regression
    if reg.loss_func in BT_KINDS:
        trained = [reg.attribute_names[HELPFULNESS_INDEX]]
    else:
        trained = [n for i, n in enumerate(reg.attribute_names) if any(e.label[i] != reg.loss_mask_val for e in train)]
    return {
        "num_attributes": reg.num_attributes,
        "attribute_names": list(reg.attribute_names),
        "attribute_weights": [float(w) for w in reg.attribute_weights],
        "trained_attributes": trained,
        "loss_func": reg.loss_func,
        "max_seq_length": cfg.data.max_seq_length,
        "system_prompt": STEERLM_SYSTEM_PROMPT,
        "text_format": TEXT_FORMAT,
    }


def run(cfg, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    check_config(cfg)
    loop.seed_everything(cfg.seed)
    device = loop.pick_device(cfg.trainer)
    reg = cfg.model.regression
    bt = reg.loss_func in BT_KINDS
    train_path, val_path = cfg.model.data.train_ds.file_path, cfg.model.data.validation_ds.file_path
    if not train_path:
        raise ValueError("model.data.train_ds.file_path is required for stage=rm (regression JSONL: text, label)")

    texts = texts_for_tokenizer(train_path, cfg) if resolve_source(cfg.model) == "tiny" else None
    tokenizer = load_tokenizer(cfg.model, texts)
    rm = build_reward_model(cfg.model, tokenizer, cfg.seed)  # resolves model.peft.peft_scheme
    rm = distributed.prepare(rm, cfg, device, keep_fp32=[rm.head])  # to the device, or sharded
    # The texts are the regression rows' own rendering (data prep and rm_text: the Nemotron/SteerLM template).
    recipe = {**recipe_meta(cfg), "prompt_template": "nemotron"}
    rm.train()
    rejects = Rejects()
    train, counts = load_examples(train_path, tokenizer, cfg, rejects)
    val = load_examples(val_path, tokenizer, cfg, rejects)[0] if val_path else []
    if loop.save_rejects(rejects, run_dir):
        log.warning("%d rows rejected (%s); see %s", len(rejects), rejects.counts(), run_dir / "rejects.jsonl")
        if bt:  # a dropped row would pair the rows after it with the wrong partner
            raise ValueError(f"{len(rejects)} rows rejected; the *_bt losses need every pair intact (see rejects.jsonl)")
    if not train:
        raise ValueError(f"{train_path}: no trainable examples after filtering")
    if bt:
        check_pairs(train, train_path, reg.loss_mask_val)
        if val:
            check_pairs(val, val_path, reg.loss_mask_val)
    meta = rm_meta(cfg, train)
    untrained = [n for n, w in zip(reg.attribute_names, reg.attribute_weights) if w and n not in meta["trained_attributes"]]
    if untrained:
        log.warning("model.regression.attribute_weights weigh %s, which the training data never labels", untrained)
    log.info("train: %s; validation: %d examples; loss %s", counts, len(val), reg.loss_func)

    # The batch unit is a row for regression and a pair for BT (pairs stay together).
    gbs = cfg.model.global_batch_size
    unit = 2 if bt else 1
    if gbs % unit:
        raise ValueError(f"model.global_batch_size={gbs} must be even for {reg.loss_func} (whole pairs)")
    n_units = len(train) // unit
    steps = loop.total_steps(cfg.trainer, n_units, gbs // unit)
    optimizer = loop.build_optimizer(rm, cfg.model.optim)
    start = 0
    ckpt = loop.latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        start = load_rm_checkpoint(ckpt, rm, optimizer)["step"]
        log.info("resuming from %s at step %d", ckpt, start)
    logger = loop.MetricsLogger(run_dir, cfg, resume=ckpt is not None)
    pad_id = tokenizer.pad_token_id

    bar = loop.progress(cfg, start, steps, "rm")
    speed = loop.Throughput()
    for step in bar:
        lr = loop.set_lr(optimizer, step, steps, cfg.model.optim)
        units = loop.global_batch_indices(step, n_units, gbs // unit, cfg.seed, cfg.data.shuffle)
        idx = [u * unit + k for u in units for k in range(unit)]
        m = train_step(rm, optimizer, train, idx, cfg, pad_id, device)
        m.update(lr=lr, tokens_per_s=speed.tick(m.pop("tokens")), step_time_s=speed.last_dt)
        done = step + 1
        if val and loop.due(cfg.trainer.val_check_interval, done, steps):
            m.update(validate(rm, val, cfg, pad_id, device))
        logger.log(m, done)
        bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if loop.due(cfg.trainer.save_interval, done, steps):
            save_rm_checkpoint(run_dir, f"step_{done:06d}", rm, tokenizer, meta, optimizer, {"step": done},
                               recipe=recipe)
    if val:
        logger.log(validate(rm, val, cfg, pad_id, device), steps)
    logger.close()
    return save_rm_checkpoint(run_dir, "final", rm, tokenizer, meta, merged=cfg.model.peft.save_merged, recipe=recipe)
