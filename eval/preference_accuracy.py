"""Preference accuracy of a policy on held-out pairs (`eval.preference_accuracy`).

For each pair (a DPO/RPO JSONL row: prompt, chosen, rejected; e.g. the validation split data prep holds
out, `pref_data` with `val_fraction`), the policy's length-normalised log-likelihood of each response:

    ll(y) = (1/|y|) Σ_t log π(y_t | x, y_<t)        over the response tokens, rendered as DPO trains them

A pair is won when ll(chosen) > ll(rejected) (an exact tie counts 1/2). `accuracy` is the share of pairs
won; `mean_margin` the mean of ll(chosen) − ll(rejected) (nats per token), which moves before a small set's
accuracy can. The measure needs no reference model, so it is the same yardstick for every stage (the
starting model, SFT, DPO, each RPO iteration): DPO's own reward accuracy is relative to each stage's
reference and is 50% by construction at the start of every stage. Normalising by length keeps the longer
response from losing just for having more tokens to pay for. Needs log-probabilities: a checkpoint
(eval.generator.kind=hf), not a served chat endpoint.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.jsonl import Rejects, write_jsonl

PAIRS = "pairs.jsonl"


def length_normalised_logps(model, pairs, pad_id: int, batch_size: int, device, precision: str = "auto",
                            chunk_tokens: int = 1024):
    """(chosen, rejected) per-token mean log-probs of each Pair (recipes.preference_data), lists of floats."""
    import torch

    from recipes.dpo import batch_logps
    from recipes.loop import micro_batches

    chosen, rejected = [], []
    with torch.no_grad():
        for mb in micro_batches(pairs, batch_size):
            lc, lr, nc, nr = batch_logps(model, mb, pad_id, device, precision, chunk_tokens)
            chosen += (lc / nc.clamp(min=1)).tolist()
            rejected += (lr / nr.clamp(min=1)).tolist()
    return chosen, rejected


def summarise(chosen: list[float], rejected: list[float]) -> dict:
    n = len(chosen)
    won = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    return {"accuracy": won / n, "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / n, "n_pairs": n}


def run_preference_accuracy(model, tokenizer, template: str, data: str, data_cfg, model_data_cfg, output_dir,
                            batch_size: int = 4, limit: int = 0, device=None, precision: str = "auto",
                            chunk_tokens: int = 1024) -> dict:
    """Score the pairs of `data` with `model` (rendered in `template`, as DPO renders them, data.max_seq_length
    and data.overlong applied); write pairs.jsonl (line, chosen_ll, rejected_ll) and return the summary."""
    from omegaconf import OmegaConf

    from recipes.preference_data import encode_pairs, load_pairs

    if not Path(data).is_file():
        raise ValueError(f"eval.preference_accuracy.data: no file at {data}")
    rejects = Rejects()
    data_cfg = OmegaConf.merge(data_cfg, {"prompt_template": template})
    rows = load_pairs(data, data_cfg, rejects, reward_aware=False, loss_name="dpo")[: limit or None]
    pairs = encode_pairs(rows, data, tokenizer, data_cfg, model_data_cfg, rejects)[0]
    if not pairs:
        raise ValueError(f"eval.preference_accuracy.data={data}: no pair fits data.max_seq_length "
                         f"({len(rejects)} rejected)")
    import torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chosen, rejected = length_normalised_logps(model, pairs, pad_id, batch_size, device, precision, chunk_tokens)
    write_jsonl(Path(output_dir) / PAIRS, [{"line": p.line, "chosen_ll": round(c, 6), "rejected_ll": round(r, 6)}
                                           for p, c, r in zip(pairs, chosen, rejected)])
    return {**summarise(chosen, rejected), "n_rejected": len(rejects), "data": str(data)}
