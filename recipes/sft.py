"""Supervised fine-tuning on NeMo SFT chat JSONL (torch backend).

Read top to bottom: load rows -> load model/tokenizer (+LoRA) -> tokenise with
loss masks -> loop over global batches (gradient accumulation over micro-batches)
-> validate, log, checkpoint -> final checkpoint in `<run dir>/checkpoints/final/`.

The loss of a global batch is the token-level cross-entropy summed over every
trained token of all its micro-batches divided by the number of those tokens, so
accumulation 4 x micro-batch 1 gives the same update as 1 x 4 (NeMo-RL's rule).
With `model.data.train_ds.packed_sequence=true` the examples are packed rows of several
conversations (recipes/packing.py) and the same rule holds: packing changes no token's loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from data_prep.jsonl import Rejects
from recipes import distributed, logprobs, loop, packing
from recipes.chat import IGNORE_INDEX, Encoded
from recipes.data import encode_sft_rows, load_sft, sft_texts
from recipes.models import final_merged, load_policy, recipe_meta

log = logging.getLogger(__name__)


def token_loss_sum(model, batch: list[Encoded], pad_id: int, device, precision, chunk_tokens: int) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over trained tokens of a micro-batch, and their count
    (only labelled positions reach the output head, `model.logprob_chunk_tokens` at a time)."""
    with loop.autocast(device, precision):
        return logprobs.nll_sum(model, logprobs.collate(batch, pad_id, device), chunk_tokens)


def n_trained(batch: list[Encoded]) -> int:
    return sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in batch)


@torch.no_grad()
def validate(model, examples: list[Encoded], cfg, pad_id: int, device) -> dict:
    model.eval()
    total, count = 0.0, 0
    limit = cfg.trainer.limit_val_batches or None
    batches = loop.micro_batches(list(range(len(examples))), cfg.model.micro_batch_size)[:limit]
    mine, per = distributed.share(batches)  # each rank its share (one process: all of them)
    for idx in mine + [[]] * (per - len(mine)):
        loss, n = token_loss_sum(model, [examples[i] for i in idx or batches[0]], pad_id, device,
                                 cfg.trainer.precision, cfg.model.logprob_chunk_tokens)
        if idx:  # an empty one is a stand-in: every rank runs as many forward passes
            total, count = total + float(loss), count + n
    total, count = distributed.sum_all(total, count)
    model.train()
    return {"val_loss": total / max(count, 1)}


def train_step(model, optimizer, examples: list[Encoded], indices: list[int], cfg, pad_id: int, device) -> dict:
    """One optimizer step over a global batch, accumulating micro-batch gradients (several processes: each
    its share of the batch, recipes/distributed.py)."""
    denom = max(n_trained([examples[i] for i in indices]), 1)  # trained tokens in the *global* batch
    total, n_tokens = 0.0, 0
    for mb in distributed.micro_batches(indices, cfg.model.micro_batch_size):
        part = [examples[i] for i in mb or indices[:1]]  # empty: a zero-weight stand-in (a short last batch)
        loss, _ = token_loss_sum(model, part, pad_id, device, cfg.trainer.precision, cfg.model.logprob_chunk_tokens)
        (loss / denom * bool(mb)).backward()
        if mb:
            total += float(loss.detach())
            n_tokens += sum(len(e.input_ids) for e in part)
    grad_norm = distributed.clip_grad_norm(model, cfg.trainer.gradient_clip_val)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total, n_tokens = distributed.sum_all(total, n_tokens)
    return {"loss": total / denom, "grad_norm": grad_norm, "tokens": n_tokens, "trained_tokens": denom}


def run(cfg, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    loop.seed_everything(cfg.seed)
    device = loop.pick_device(cfg.trainer)
    rejects = Rejects()
    train_path, val_path = cfg.model.data.train_ds.file_path, cfg.model.data.validation_ds.file_path
    if not train_path:
        raise ValueError("model.data.train_ds.file_path is required for stage=sft")
    train_rows = load_sft(train_path, cfg.data, rejects, cfg.model.data.train_ds.split)
    val_rows = load_sft(val_path, cfg.data, rejects, cfg.model.data.validation_ds.split, "validation_ds") if val_path else []

    # Template and LoRA/full choice: the starting checkpoint's unless given (models.inherit).
    tokenizer, model = load_policy(cfg, sft_texts(train_rows))
    model = distributed.prepare(model, cfg, device)  # to the device, or sharded over the processes
    model.train()
    recipe = recipe_meta(cfg)
    train, counts = encode_sft_rows(train_rows, train_path, tokenizer, cfg.data, rejects)
    val = encode_sft_rows(val_rows, val_path, tokenizer, cfg.data, rejects)[0] if val_rows else []
    if loop.save_rejects(rejects, run_dir):
        log.warning("%d rows rejected (%s); see %s", len(rejects), rejects.counts(), run_dir / "rejects.jsonl")
    if not train:
        raise ValueError(f"{train_path}: no trainable examples after filtering")
    log.info("train: %s; validation: %d examples", counts, len(val))
    max_len, packed = cfg.data.max_seq_length, cfg.model.data.train_ds.packed_sequence
    if packed:  # a global batch is then model.global_batch_size packed rows
        n = len(train)
        train = packing.pack(train, max_len)
        log.info("packed %d conversations into %d rows of up to %d tokens: packing efficiency %.1f%% "
                 "(tokens used / tokens available)", n, len(train), max_len, 100 * packing.efficiency(train, max_len))
    if val and cfg.model.data.validation_ds.packed_sequence:
        val = packing.pack(val, max_len)

    gbs = cfg.model.global_batch_size
    distributed.check_batch(gbs, cfg.model.micro_batch_size)
    steps = loop.total_steps(cfg.trainer, len(train), gbs)
    optimizer = loop.build_optimizer(model, cfg.model.optim)
    start = 0
    ckpt = loop.latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        start = loop.load_checkpoint(ckpt, model, optimizer)["step"]
        log.info("resuming from %s at step %d", ckpt, start)
    logger = loop.MetricsLogger(run_dir, cfg, resume=ckpt is not None)
    pad_id = tokenizer.pad_token_id

    bar = loop.progress(cfg, start, steps, "sft")
    speed = loop.Throughput()
    for step in bar:
        lr = loop.set_lr(optimizer, step, steps, cfg.model.optim)
        idx = loop.global_batch_indices(step, len(train), gbs, cfg.seed, cfg.data.shuffle)
        m = train_step(model, optimizer, train, idx, cfg, pad_id, device)
        n_tokens = m.pop("tokens")
        m.update(lr=lr, tokens_per_s=speed.tick(n_tokens), step_time_s=speed.last_dt,
                 trained_tokens_per_s=m.pop("trained_tokens") / speed.last_dt)
        if packed:
            m["packing_efficiency"] = n_tokens / (len(idx) * max_len)
        done = step + 1
        if val and loop.due(cfg.trainer.val_check_interval, done, steps):
            m.update(validate(model, val, cfg, pad_id, device))
        logger.log(m, done)
        bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if loop.due(cfg.trainer.save_interval, done, steps):
            loop.save_checkpoint(run_dir, f"step_{done:06d}", model, tokenizer, optimizer, {"step": done},
                                 recipe=recipe)
    if val:
        logger.log(validate(model, val, cfg, pad_id, device), steps)
    logger.close()
    return loop.save_checkpoint(run_dir, "final", model, tokenizer, merged=final_merged(cfg), recipe=recipe)
