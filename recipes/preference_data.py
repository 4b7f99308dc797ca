"""DPO/RPO rows (NeMo-Aligner `DPOModelDataset`) -> token sequences, with nothing dropped silently.

A row is `{"prompt", "chosen_response", "rejected_response"[, "chosen_reward", "rejected_reward"]}`:
the prompt is a rendered string (responses are then strings, used as they are: NeMo's original
shape) or a list of OpenAI-style messages (responses are then assistant messages, rendered with the
checkpoint's `data.prompt_template`; the assistant header is scored as part of each response, as
NeMo-Aligner does: chat.render_prompt_response). TRL's preference rows (`prompt`/`chosen`/`rejected`,
strings or message lists) are accepted too. Rows are validated by data_prep.schemas
(validate_preference_row) and converted by schemas.to_dpo_pair.

Tokenisation. The prompt and each response are tokenised *separately* and concatenated, so the
prompt's tokens are a prefix of prompt+response by construction. NeMo instead tokenises
prompt+response jointly and asserts that the prompt's tokens are a prefix of it; we count the
pairs where joint tokenisation would merge a token across the boundary (NeMo's assertion) and
log them, but keep them. Labels are the response tokens only (`IGNORE_INDEX` on the prompt).
Over-long pairs follow data.overlong (fit_prompt): no trained response loses its stop token.

Rewards. DPO/IPO ignore them; a missing one gets `model.data.default_*_reward` (for logging).
The RPO losses fit the policy's gap to η·(chosen_reward − rejected_reward), so for them:
  * a file where no row has rewards falls back to the defaults for every row, as NeMo-Aligner
    does, with a warning (RPO then fits one constant gap η·(1 − 0), i.e. a DPO-like target);
  * a file where some rows have rewards and others lack one is a data bug: each row missing a
    reward is a bad row (`file:line: chosen_reward: missing ...`, or skipped into
    rejects.jsonl with `data.on_bad_row=skip`).
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from dataclasses import dataclass
from pathlib import Path

from data_prep.jsonl import Rejects, RowError
from data_prep.schemas import TURN_START, to_dpo_pair, validate_preference_row
from recipes.chat import IGNORE_INDEX, Encoded, render_prompt_response
from recipes.data import read_rows

log = logging.getLogger(__name__)


@dataclass
class Pair:
    chosen: Encoded
    rejected: Encoded
    chosen_reward: float
    rejected_reward: float
    line: int
    # Reference log-probs (sums over response tokens), filled in before training.
    ref_chosen: float | None = None
    ref_rejected: float | None = None


# ---------------------------------------------------------------- reading rows
def _has(row: dict, key: str) -> bool:
    return row.get(key) is not None


def load_pairs(path: str, data_cfg, rejects: Rejects, reward_aware: bool, loss_name: str, split: str | None = None,
               which: str = "train_ds") -> list[tuple[int, dict]]:
    """Validated `(line, row)` of a DPO/RPO source (a file, dataset directory or hub id; NeMo's or TRL's rows,
    converted by schemas.to_dpo_pair), applying the reward rule above for RPO losses."""
    rows = [(line, to_dpo_pair(row)) for line, row in read_rows(path, validate_preference_row, data_cfg, rejects,
                                                                 split, which, "dpo_pair")]
    if reward_aware and rows:
        scored = [_has(r, "chosen_reward") or _has(r, "rejected_reward") for _, r in rows]
        if not any(scored):
            log.warning(
                "%s: no row has chosen_reward/rejected_reward; preference_loss=%s uses "
                "model.data.default_chosen_reward/default_rejected_reward for all %d rows",
                Path(path).name, loss_name, len(rows))
        else:
            kept = []
            for line, row in rows:
                missing = [k for k in ("chosen_reward", "rejected_reward") if not _has(row, k)]
                if not missing:
                    kept.append((line, row))
                    continue
                err = RowError(path, line, missing[0],
                               f"missing; preference_loss={loss_name} fits the reward gap and other rows of this "
                               "file have rewards (score every row, or data.on_bad_row=skip)")
                if data_cfg.on_bad_row == "error":
                    raise err
                rejects.add(err.as_record())
            rows = kept
    if not rows:
        raise ValueError(f"{path}: no usable rows ({len(rejects)} rejected, see rejects.jsonl)" if len(rejects)
                         else f"{path}: the file has no rows")
    return rows


def pair_texts(rows: list[tuple[int, dict]]) -> list[str]:
    """The raw text of the rows, to train a tiny model's tokenizer on."""
    out = []
    for _, row in rows:
        for key in ("prompt", "chosen_response", "rejected_response"):
            value = row[key]
            msgs = value if isinstance(value, list) else [value]
            out += [m["content"] if isinstance(m, dict) else m for m in msgs]
    return [t for t in out if t]


# ---------------------------------------------------------------- rendering and tokenising
def render_pair(row: dict, template: str, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) as strings; the model is trained on prompt+response, scored on the response.
    A message-list row renders with `template` (chat.render_prompt_response: the assistant header is part of
    each response, as in NeMo-Aligner); a string row (NeMo's original, pre-templated shape) is used as it is."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return prompt, row["chosen_response"], row["rejected_response"]
    text, chosen = render_prompt_response(prompt, row["chosen_response"], template, tokenizer)
    return text, chosen, render_prompt_response(prompt, row["rejected_response"], template, tokenizer)[1]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(prompt_ids: list[int], response_ids: list[list[int]], max_len: int, overlong: str) -> tuple[list[int] | None, str]:
    """The prompt tokens a pair trains with under data.overlong, or (None, why the pair is dropped).

    No trained response ever loses its end (the stop token it learns to emit): `truncate` cuts the *prompt*
    from the left (keeping its end, the turn being answered; TRL's keep_end) so that prompt + the longer
    response fits, and drops the pair when even one prompt token does not fit; `drop` drops every pair
    longer than max_len. Both responses keep the same prompt, so their log-probs stay comparable.
    """
    if any(not r for r in response_ids):
        return None, "response has no tokens"
    longest = max(len(r) for r in response_ids)
    n = len(prompt_ids) + longest
    if n <= max_len:
        return prompt_ids, ""
    if overlong == "drop":
        return None, f"{n} tokens > data.max_seq_length={max_len}"
    room = max_len - longest
    if room < 1:
        return None, (f"the longer response alone is {longest} tokens >= data.max_seq_length={max_len} "
                      "(its end-of-turn token would be cut)")
    return prompt_ids[-room:], ""


def side(prompt_ids: list[int], response_ids: list[int], truncated: bool) -> Encoded:
    """prompt+response with labels on the response only."""
    return Encoded(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids, truncated=truncated)


def encode_pairs(rows, path: str, tokenizer, data_cfg, model_data_cfg, rejects: Rejects) -> tuple[list[Pair], dict]:
    """Tokenise rows into Pairs, applying data.overlong (fit_prompt). Returns pairs and counts for the log."""
    pairs, n_cut, n_merged, n_foreign = [], 0, 0, 0
    for line, row in rows:
        prompt, chosen, rejected = render_pair(row, data_cfg.prompt_template, tokenizer)
        n_foreign += data_cfg.prompt_template == "hf" and isinstance(row["prompt"], str) and TURN_START in prompt
        p_ids = _ids(tokenizer, prompt)
        r_ids = [_ids(tokenizer, chosen), _ids(tokenizer, rejected)]
        # NeMo's prefix assertion, counted instead of raised (see the module docstring).
        n_merged += sum(_ids(tokenizer, prompt + r)[: len(p_ids)] != p_ids for r in (chosen, rejected))
        kept, why = fit_prompt(p_ids, r_ids, data_cfg.max_seq_length, data_cfg.overlong)
        if kept is None:
            rejects.add({"file": str(path), "line": line, "field": "<row>", "reason": f"prompt+response: {why}"})
            continue
        cut = len(kept) < len(p_ids)
        n_cut += cut
        c_rew, r_rew = row.get("chosen_reward"), row.get("rejected_reward")
        pairs.append(Pair(side(kept, r_ids[0], cut), side(kept, r_ids[1], cut),
                          float(model_data_cfg.default_chosen_reward if c_rew is None else c_rew),
                          float(model_data_cfg.default_rejected_reward if r_rew is None else r_rew), line))
    counts = {"rows": len(rows), "pairs": len(pairs), "prompt_cut": n_cut, "boundary_merges": n_merged}
    name = Path(path).name
    if n_cut:
        log.warning("%s: cut the prompt of %d pairs from the left to fit data.max_seq_length=%d tokens (both "
                    "responses kept whole; data.overlong=drop drops such pairs)", name, n_cut, data_cfg.max_seq_length)
    if n_merged:
        log.warning("%s: in %d responses joint tokenisation would merge a token across the prompt/response "
                    "boundary (NeMo asserts on this); we train on separately tokenised prompt + response", name, n_merged)
    if n_foreign:
        log.warning("%s: %d rows are pre-rendered strings in the Nemotron template (%s...) but the model's template "
                    "is hf: they train as written; write message-list prompts to render them in the model's template",
                    name, n_foreign, TURN_START)
    return pairs, counts


def pairs_digest(pairs: list[Pair]) -> str:
    """A hash of every token and label of `pairs` (so of data, template, tokenizer and max length)."""
    h = hashlib.sha256()
    for p in pairs:
        for enc in (p.chosen, p.rejected):
            h.update(len(enc.input_ids).to_bytes(8, "little"))
            h.update(array("q", enc.input_ids).tobytes())
            h.update(array("q", enc.labels).tobytes())
    return h.hexdigest()
