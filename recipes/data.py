"""Reading training rows and turning them into token sequences, with nothing dropped silently.

Every row is validated by its schema (data_prep/schemas.py). Bad rows stop the
run with `file:line: field: problem`, or with `data.on_bad_row=skip` are skipped,
counted and written to `<run dir>/rejects.jsonl`. Over-long rows follow
`data.overlong`: `truncate` (logged and counted) or `drop` (rejected with reason).
"""

from __future__ import annotations

import logging
from pathlib import Path

from data_prep.jsonl import Rejects, read_jsonl
from data_prep.schemas import unknown_fields, validate_sft_chat
from recipes.chat import Encoded, encode_chat, truncate

log = logging.getLogger(__name__)


def read_rows(path: str, validate, data_cfg, rejects: Rejects, kind: str | None = None) -> list[tuple[int, dict]]:
    rows = read_checked(path, validate, kind, data_cfg, rejects)
    if not rows:
        raise ValueError(f"{path}: no usable rows ({len(rejects)} rejected, see rejects.jsonl)" if len(rejects)
                         else f"{path}: the file has no rows")
    return rows


def read_checked(path: str, validate, kind: str | None, data_cfg, rejects: Rejects) -> list[tuple[int, dict]]:
    """The good rows of a training file; fields a `kind` row does not define (schemas.KNOWN_FIELDS) follow
    data.unknown_fields: ignore, count (one warning per file, the default) or error (a bad row)."""
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

    rows = list(read_jsonl(path, check, on_bad_row=data_cfg.on_bad_row, rejects=rejects))
    if counts:
        listing = ", ".join(f"{k} ({n} row{'s' * (n != 1)})" for k, n in counts.items())
        log.warning("%s: fields a %s row does not define, ignored: %s (data.unknown_fields=error refuses them, "
                    "=ignore silences this)", Path(path).name, kind, listing)
    return rows


def sft_texts(rows: list[tuple[int, dict]]) -> list[str]:
    """The raw text of SFT rows, to train a tiny model's tokenizer on."""
    return [t for _, r in rows for t in [r["system"], *(c["value"] for c in r["conversations"])] if t]


def encode_sft_rows(rows, path: str, tokenizer, data_cfg, rejects: Rejects) -> tuple[list[Encoded], dict]:
    """Tokenise SFT rows; apply the over-length policy. Returns examples and counts for the log."""
    examples, n_truncated = [], 0
    for line, row in rows:
        enc = encode_chat(row, tokenizer, data_cfg.prompt_template)
        if len(enc.input_ids) > data_cfg.max_seq_length:
            if data_cfg.overlong == "drop":
                reason = f"longer than data.max_seq_length={data_cfg.max_seq_length}"
                rejects.add({**_reject(path, line, reason), "tokens": len(enc.input_ids)})
                continue
            enc = truncate(enc, data_cfg.max_seq_length)
            n_truncated += 1
        if not any(x != -100 for x in enc.labels):
            rejects.add(_reject(path, line, "no trained tokens left (answer truncated away or empty)"))
            continue
        examples.append(enc)
    counts = {"rows": len(rows), "examples": len(examples), "truncated": n_truncated}
    if n_truncated:
        log.warning("%s: truncated %d rows to data.max_seq_length=%d tokens", Path(path).name, n_truncated, data_cfg.max_seq_length)
    return examples, counts


def _reject(path: str, line: int, reason: str) -> dict:
    return {"file": str(path), "line": line, "field": "<row>", "reason": reason}


def load_sft(path: str, data_cfg, rejects: Rejects) -> list[tuple[int, dict]]:
    return read_rows(path, validate_sft_chat, data_cfg, rejects, "sft_chat")
