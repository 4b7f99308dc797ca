"""Reading training rows and turning them into token sequences, with nothing dropped silently.

Every row is validated by its schema (data_prep/schemas.py). Bad rows stop the
run with `file:line: field: problem`, or with `data.on_bad_row=skip` are skipped,
counted and written to `<run dir>/rejects.jsonl`. Over-long rows follow
`data.overlong`: `truncate` (logged and counted) or `drop` (rejected with reason).
"""

from __future__ import annotations

import logging
from pathlib import Path

from data_prep.inputs import iter_source
from data_prep.jsonl import Rejects
from data_prep.schemas import to_sft_chat, unknown_fields, validate_sft_row
from recipes.chat import IGNORE_INDEX, Encoded, encode_chat, truncate

log = logging.getLogger(__name__)
VALIDATION_SPLITS = ("validation", "test")  # what validation_ds reads from a dataset id when its split is null


def read_rows(path: str, validate, data_cfg, rejects: Rejects, split: str | None = None,
              which: str = "train_ds", kind: str | None = None) -> list[tuple[int, dict]]:
    """Validated `(line, row)` of a training source: a JSONL/Parquet file, a dataset directory or a hub id
    (`model.data.<which>.split`, default train / validation or test), nothing dropped silently. Fields a `kind`
    row does not define (schemas.KNOWN_FIELDS) follow data.unknown_fields: ignore, count (one warning per
    file, the default) or error (a bad row)."""
    mode = data_cfg.get("unknown_fields", "count") if kind else "ignore"
    counts: dict[str, int] = {}

    def check(row: dict):
        problems = validate(row) if validate else []
        extra = unknown_fields(row, kind) if mode != "ignore" and not problems else []
        if extra and mode == "error":
            return [(extra[0], "unknown field (data.unknown_fields=count or ignore accepts it)")]
        for name in extra:
            counts[name] = counts.get(name, 0) + 1
        return problems

    fallback = ("train",) if which == "train_ds" else VALIDATION_SPLITS
    rows = list(iter_source(path, check, data_cfg.on_bad_row, rejects, split, f"model.data.{which}.split", fallback))
    if counts:
        listing = ", ".join(f"{k} ({n} row{'s' * (n != 1)})" for k, n in counts.items())
        log.warning("%s: fields a %s row does not define, ignored: %s (data.unknown_fields=error refuses them, "
                    "=ignore silences this)", Path(path).name, kind, listing)
    if not rows:
        raise ValueError(f"{path}: no usable rows ({len(rejects)} rejected, see rejects.jsonl)" if len(rejects)
                         else f"{path}: the file has no rows")
    return rows


def sft_texts(rows: list[tuple[int, dict]]) -> list[str]:
    """The raw text of SFT rows, to train a tiny model's tokenizer on."""
    return [t for _, r in rows for t in [r["system"], *(c["value"] for c in r["conversations"])] if t]


def answer_cut(enc: Encoded, max_len: int) -> bool:
    """Truncating at max_len cuts an answer short (it trains without its end-of-turn token): the tokens on
    both sides of the cut are trained."""
    return max_len < len(enc.labels) and enc.labels[max_len - 1] != IGNORE_INDEX and enc.labels[max_len] != IGNORE_INDEX


def encode_sft_rows(rows, path: str, tokenizer, data_cfg, rejects: Rejects) -> tuple[list[Encoded], dict]:
    """Tokenise SFT rows; apply the over-length policy. Returns examples and counts for the log.

    data.overlong=truncate keeps the first max_seq_length tokens (NeMo's GPTSFTChatDataset truncates too):
    later turns are lost, and a row whose answer the cut falls inside trains on that answer without its
    end-of-turn token. Both are counted (`truncated`, `answers_cut`) and warned about; data.overlong=drop
    rejects such rows instead.
    """
    examples, n_truncated, n_cut = [], 0, 0
    max_len = data_cfg.max_seq_length
    for line, row in rows:
        enc = encode_chat(row, tokenizer, data_cfg.prompt_template)
        if len(enc.input_ids) > max_len:
            if data_cfg.overlong == "drop":
                reason = f"longer than data.max_seq_length={max_len}"
                rejects.add({**_reject(path, line, reason), "tokens": len(enc.input_ids)})
                continue
            n_cut += answer_cut(enc, max_len)
            enc = truncate(enc, max_len)
            n_truncated += 1
        if not any(x != -100 for x in enc.labels):
            rejects.add(_reject(path, line, "no trained tokens left (answer truncated away or empty)"))
            continue
        examples.append(enc)
    counts = {"rows": len(rows), "examples": len(examples), "truncated": n_truncated, "answers_cut": n_cut}
    if n_truncated:
        log.warning("%s: truncated %d rows to data.max_seq_length=%d tokens; in %d of them an answer is cut and "
                    "trains without its end-of-turn token (data.overlong=drop drops them)",
                    Path(path).name, n_truncated, max_len, n_cut)
    return examples, counts


def _reject(path: str, line: int, reason: str) -> dict:
    return {"file": str(path), "line": line, "field": "<row>", "reason": reason}


def load_sft(path: str, data_cfg, rejects: Rejects, split: str | None = None,
             which: str = "train_ds") -> list[tuple[int, dict]]:
    """SFT rows, NeMo chat or TRL `messages` (converted to NeMo chat by schemas.to_sft_chat)."""
    rows = read_rows(path, validate_sft_row, data_cfg, rejects, split, which, "sft_chat")
    return [(line, to_sft_chat(row)) for line, row in rows]
