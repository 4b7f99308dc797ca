"""Log-probabilities of the label tokens of a causal LM, without the full B×T×V logits.

The SFT loss, the DPO/RPO sequence log-probs and the SFT term all need log π(y_t) only where a
label is trained. The plain path (`model(...).logits`) projects *every* position onto the whole
vocabulary and keeps the result for backward: at a 128k vocabulary one micro-batch of 8×4096
tokens is 16 GB of float32 logits, and as much again for their gradient. Here instead:

1. the model's body gives the final hidden states (B, T, H), `model.get_decoder()`;
2. the positions whose next token carries a label are gathered: (N, H), N ≤ B·(T−1);
3. `ChunkedLogProbs` projects them through the output head (`get_output_embeddings()`)
   `model.logprob_chunk_tokens` rows at a time, keeping only the log-sum-exp (N,); backward
   recomputes each chunk's logits. At most one chunk × V block exists at any time, forward or
   backward (two under bf16: the bf16 product and its float32 copy).

Both paths return the same values (tests/test_logprobs.py pins them to 1e-5 in fp32, gradients
included), so `model.logprob_chunk_tokens=0` (the plain path) stays as the reference. The functions
take a model and a `Batch` and return *sums and counts*: the caller divides by the count of the
whole global batch (so gradient accumulation, and later data parallelism, equal one big batch).

Models whose logits are not `lm_head(final hidden state)` (Gemma-2's final_logit_softcapping,
Cohere's logit_scale, Granite's logits_scaling, ...) are refused with one line on first use: a
probe compares the two on 8 tokens. Packed rows (position ids restarting per conversation, no
attention mask; recipes/packing.py) are probed the same way, so a model or transformers version
that would let packed conversations attend to each other stops the run instead of training wrong.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from recipes import distributed, loop
from recipes.chat import IGNORE_INDEX, Encoded
from recipes.losses import sequence_logps as full_sequence_logps


@dataclass
class Batch:
    input_ids: Tensor  # (B, T)
    labels: Tensor  # (B, T), IGNORE_INDEX where nothing is trained; unshifted (label t is predicted at t-1)
    attention_mask: Tensor | None  # (B, T), 1 = real token; None for packed rows
    position_ids: Tensor | None  # (B, T) for packed rows: restarting at 0 for each conversation


def collate(encs: list[Encoded], pad_id: int, device) -> Batch:
    """Right-padded tensors of a micro-batch. Packed rows (`Encoded.position_ids` set) get no
    attention mask: the position ids separate their conversations, and the padding at the end
    of a row is one more segment (positions 0, 1, ...), which no real token can see (causal)."""
    ids = loop.pad_batch([e.input_ids for e in encs], pad_id).to(device)
    labels = loop.pad_batch([e.labels for e in encs], IGNORE_INDEX).to(device)
    if any(e.position_ids is not None for e in encs):
        width = ids.shape[1]
        pos = [(e.position_ids or list(range(len(e.input_ids)))) + list(range(width - len(e.input_ids))) for e in encs]
        return Batch(ids, labels, None, torch.tensor(pos, device=device))
    return Batch(ids, labels, loop.pad_batch([[1] * len(e.input_ids) for e in encs], 0).to(device), None)


def _inputs(batch: Batch) -> dict:
    # use_cache=False: a forward-only pass in eval mode would otherwise build a KV cache it never
    # uses (time and memory), and with a cache transformers does not separate packed sequences.
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
            "position_ids": batch.position_ids, "use_cache": False}


def output_head(model) -> torch.nn.Linear:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"model.logprob_chunk_tokens: the output head of {type(model).__name__} is "
                         f"{type(head).__name__}, not a plain Linear (LoRA on lm_head?); set model.logprob_chunk_tokens=0")
    return head


def final_hidden(model, batch: Batch) -> Tensor:
    """(B, T, H) final hidden states from the model's body (under LoRA too: peft forwards the lookup).
    Call it through distributed.as_forward: a sharded model gathers its root weights for it."""
    return model.get_decoder()(**_inputs(batch)).last_hidden_state


# ---------------------------------------------------------------- the chunked projection
def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32, or float64 for float64 products


def _project(hidden: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """float32 logits of some rows: the product in `dtype` (bf16 under autocast, as nn.Linear would)."""
    logits = hidden.to(dtype) @ weight.t()
    if bias is not None:
        logits += bias.to(dtype)
    return logits.to(_acc(dtype))


class ChunkedLogProbs(torch.autograd.Function):
    """log softmax(h Wᵀ + b)[y] for N rows, `chunk` rows at a time.

    Forward keeps lse (N,) only; backward recomputes each chunk's logits z and uses
    ∂ logp_i / ∂ z_ij = 1[j = y_i] − softmax(z_i)_j, so no N × V tensor is ever stored.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, dtype: torch.dtype):
        n = hidden.shape[0]
        w = weight.to(dtype)  # once, not per chunk (a no-op in float32)
        out = hidden.new_empty(n, dtype=_acc(dtype))
        lse = hidden.new_empty(n, dtype=_acc(dtype))
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                z = _project(hidden[s:s + chunk], w, bias, dtype)
                picked = z.gather(1, targets[s:s + chunk, None]).squeeze(1)
                top = z.amax(dim=-1)
                # log Σ exp(z) in place on z: one c × V buffer, not logsumexp's two
                lse[s:s + chunk] = top + z.sub_(top[:, None]).exp_().sum(-1).log()
                out[s:s + chunk] = picked - lse[s:s + chunk]
                del z  # before the next chunk's is allocated: one c × V block at a time
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        chunk, dtype = ctx.chunk, ctx.dtype
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=_acc(dtype), device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=_acc(dtype), device=weight.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                h, g = hidden[s:s + chunk], grad_out[s:s + chunk].to(lse.dtype)[:, None]
                d = _project(h, w, bias, dtype).sub_(lse[s:s + chunk, None]).exp_().mul_(-g)  # −g·softmax
                d.scatter_add_(1, targets[s:s + chunk, None], g)  # + g at the label
                d = d.to(dtype)
                if need_h:
                    grad_h[s:s + chunk] = (d @ w).to(hidden.dtype)
                if need_w:
                    if dtype == grad_w.dtype:
                        grad_w.addmm_(d.t(), h.to(dtype))
                    else:
                        grad_w += d.t() @ h.to(dtype)
                if need_b:
                    grad_b += d.sum(0).to(grad_b.dtype)
                del d
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None


def chunked_logps(hidden: Tensor, head: torch.nn.Linear, targets: Tensor, chunk: int) -> Tensor:
    """(N,) float32 log-probs of `targets` under `head(hidden)`, at most `chunk` × V logits at a time.
    Respects the ambient autocast (bf16 products, float32 log-sum-exp), as the plain path does."""
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else head.weight.dtype
    return ChunkedLogProbs.apply(hidden, head.weight, head.bias, targets, chunk, dtype)


# ---------------------------------------------------------------- one-time probes of a model
_checked_head: weakref.WeakSet = weakref.WeakSet()
_checked_packing: weakref.WeakSet = weakref.WeakSet()


@torch.no_grad()
def _probe(model, fn):
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(model.get_input_embeddings().weight.device.type, enabled=False):
            return fn()
    finally:
        model.train(was_training)


def _probe_batch(model, ids: list[int], positions: list[int] | None = None) -> Batch:
    device = model.get_input_embeddings().weight.device
    t = torch.tensor([ids], device=device)
    pos = torch.tensor([positions], device=device) if positions is not None else None
    return Batch(t, torch.full_like(t, IGNORE_INDEX), None if pos is not None else torch.ones_like(t), pos)


def check_head(model) -> None:
    """Refuse (one line) a model whose forward post-processes `lm_head(final hidden state)`."""
    if model in _checked_head:
        return
    head = output_head(model)
    n_vocab = head.weight.shape[0]
    batch = _probe_batch(model, [(7 * i + 3) % n_vocab for i in range(8)])

    def head_logits():
        return _project(final_hidden(model, batch), head.weight, head.bias, head.weight.dtype)

    def gap():
        full = model(**_inputs(batch)).logits.float()
        ours = distributed.as_forward(model, head_logits)
        return float((full - ours).abs().max()), float(full.abs().max())

    diff, scale = _probe(model, gap)
    tolerance = 1e-4 if head.weight.dtype in (torch.float32, torch.float64) else 2e-2  # bf16 weights under FSDP
    if diff > tolerance * max(1.0, scale):
        hints = [k for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
                 if getattr(model.config, k, None) not in (None, 1, 1.0)]
        raise ValueError(f"model.logprob_chunk_tokens: {type(model).__name__}'s logits are not lm_head(final hidden "
                         f"state) (max difference {diff:.3g}{'; ' + ', '.join(hints) if hints else ''}); "
                         "set model.logprob_chunk_tokens=0")
    _checked_head.add(model)


def check_packing(model) -> None:
    """Refuse (one line) a model that lets packed conversations attend to each other."""
    if model in _checked_packing:
        return
    n_vocab = model.get_input_embeddings().weight.shape[0]
    a, b = [(5 * i + 1) % n_vocab for i in range(6)], [(11 * i + 2) % n_vocab for i in range(5)]

    def gap():
        packed = distributed.as_forward(model, final_hidden, model,
                                        _probe_batch(model, a + b, list(range(6)) + list(range(5))))[0, 6:]
        alone = distributed.as_forward(model, final_hidden, model, _probe_batch(model, b))[0]
        return float((packed - alone).abs().max())

    diff = _probe(model, gap)
    if diff > 1e-4:
        import transformers

        raise ValueError(f"model.data.train_ds.packed_sequence: {type(model).__name__} "
                         f"(attn_implementation={model.config._attn_implementation}, transformers "
                         f"{transformers.__version__}) attends across packed conversations (difference {diff:.3g}); "
                         "set packed_sequence=false")
    _checked_packing.add(model)


# ---------------------------------------------------------------- what the stages call
def _logits(model, batch: Batch) -> Tensor:
    """The plain path: (B, T, V) logits of every position."""
    if batch.position_ids is not None:
        check_packing(model)
    return model(**_inputs(batch)).logits


def label_logps(model, batch: Batch, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """Log-prob (N,) float32 of every trained label token, and the batch row (N,) it is in;
    the output head sees only these N positions, `chunk_tokens` (> 0) at a time."""
    if batch.position_ids is not None:
        check_packing(model)
    check_head(model)
    return distributed.as_forward(model, _label_logps, model, batch, chunk_tokens)


def _label_logps(model, batch: Batch, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE_INDEX  # position t predicts label t+1
    hidden = final_hidden(model, batch)[:, :-1][mask]  # (N, H)
    return chunked_logps(hidden, output_head(model), targets[mask], chunk_tokens), mask.nonzero()[:, 0]


def sequence_logps(model, batch: Batch, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """Summed label log-probs (B,) float32 and label counts (B,) int64 per row (DPO/RPO, the SFT term).
    `chunk_tokens=0` is the plain full-logits path, recipes.losses.sequence_logps."""
    if chunk_tokens <= 0:
        return full_sequence_logps(_logits(model, batch), batch.labels)
    logps, rows = label_logps(model, batch, chunk_tokens)
    n_rows = batch.labels.shape[0]
    sums = torch.zeros(n_rows, dtype=torch.float32, device=logps.device).index_add(0, rows, logps)
    return sums, torch.bincount(rows, minlength=n_rows)


def nll_sum(model, batch: Batch, chunk_tokens: int) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy over the trained tokens (SFT), and their count.
    `chunk_tokens=0` is the plain path: full logits, then F.cross_entropy."""
    if chunk_tokens <= 0:
        logits = _logits(model, batch)[:, :-1].float()
        targets = batch.labels[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, int((targets != IGNORE_INDEX).sum())
    logps, _ = label_logps(model, batch, chunk_tokens)
    return -logps.sum(), logps.numel()
