"""Sequence packing for SFT (`model.data.train_ds.packed_sequence=true`, NeMo-Aligner's key name).

Several tokenised conversations share one row of up to `data.max_seq_length` tokens, so a batch
carries little padding. A packed row is an `Encoded` whose `position_ids` restart at 0 for each
conversation; it is fed with no attention mask, and transformers (>= 4.53, for the models built on
its masking utilities) turns the restarts into a block-diagonal causal mask, or into varlen
attention under flash-attention: no conversation sees another one, and RoPE positions are those
of the conversation alone. recipes/logprobs.check_packing probes the model once and stops the run
where that does not hold. Each conversation's first label is masked (in a row of its own nothing
predicts it), so a packed row trains exactly the tokens its conversations train unpacked, with
the same values and gradients (tests/test_packing.py), and the loss normaliser stays the trained-
token count of the global batch.

Packing is best-fit decreasing on token counts (longest first, into the fullest row that still has
room, ties by input order): deterministic, so a resumed run sees the rows an uninterrupted one
would. A global batch is then `model.global_batch_size` packed rows, shuffled per epoch like any
examples. Efficiency = tokens used / tokens available = Σ tokens / (rows × max_seq_length).
"""

from __future__ import annotations

import bisect

from recipes.chat import IGNORE_INDEX, Encoded


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total <= capacity (best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), kept sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens > data.max_seq_length={capacity}")
        k = bisect.bisect_left(free, (n, -1))  # the fullest bin that still has room for n
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins


def pack(examples: list[Encoded], max_len: int) -> list[Encoded]:
    """Packed rows of `examples`, each at most `max_len` tokens, with restarting position ids."""
    rows = []
    for members in pack_bins([len(e.input_ids) for e in examples], max_len):
        ids, labels, pos = [], [], []
        for i in members:
            e = examples[i]
            ids += e.input_ids
            labels += [IGNORE_INDEX] + e.labels[1:]  # nothing predicts a conversation's first token
            pos += range(len(e.input_ids))
        rows.append(Encoded(ids, labels, any(examples[i].truncated for i in members), pos))
    return rows


def efficiency(rows: list[Encoded], max_len: int) -> float:
    """Tokens used / tokens available in packed rows of capacity `max_len`."""
    return sum(len(r.input_ids) for r in rows) / max(1, len(rows) * max_len)


def n_conversations(row: Encoded) -> int:
    return 1 if row.position_ids is None else sum(1 for p in row.position_ids if p == 0)
