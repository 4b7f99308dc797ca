"""DPO/RPO rows (NeMo-Aligner `DPOModelDataset`) -> token sequences, with nothing dropped silently.

A row is `{"prompt", "chosen_response", "rejected_response"[, "chosen_reward", "rejected_reward"]}`:
the prompt is a rendered string (responses are then strings, used as they are) or a list of
OpenAI-style messages (responses are then assistant messages, rendered with
`data.prompt_template`). Rows are validated by data_prep.schemas.validate_dpo_pair.

Tokenisation. The prompt and each response are tokenised *separately* and concatenated, so the
prompt's tokens are a prefix of prompt+response by construction, and they are exactly the tokens
the model sees at generation time (the prompt tokenised alone). NeMo instead tokenises
prompt+response jointly and asserts that the prompt's tokens are a prefix of it; we count the
pairs where joint tokenisation would merge a token across the boundary (NeMo's assertion) and
log them, but keep them. Labels are the response tokens only (`IGNORE_INDEX` on the prompt).

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
from data_prep.schemas import nemotron_response, validate_dpo_pair
from recipes.chat import IGNORE_INDEX, Encoded, nemotron_prompt
from recipes.data import read_checked

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


def load_pairs(path: str, data_cfg, rejects: Rejects, reward_aware: bool, loss_name: str) -> list[tuple[int, dict]]:
    """Validated `(line, row)` of a DPO/RPO file, applying the reward rule above for RPO losses."""
    rows = read_checked(path, validate_dpo_pair, "dpo_pair", data_cfg, rejects)
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
    """(prompt, chosen, rejected) as strings; the model is trained on prompt+response."""
    prompt = row["prompt"]
    if isinstance(prompt, str):  # pre-templated (NeMo's original shape): used as is
        return prompt, row["chosen_response"], row["rejected_response"]
    if template == "nemotron":
        text = nemotron_prompt(prompt)
        return text, nemotron_response(row["chosen_response"]["content"]), nemotron_response(row["rejected_response"]["content"])
    if template != "hf":
        raise ValueError(f"data.prompt_template must be 'nemotron' or 'hf', got {template!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_template=hf needs a tokenizer with a chat_template; use data.prompt_template=nemotron")
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    responses = []
    for key in ("chosen_response", "rejected_response"):
        full = tokenizer.apply_chat_template([*prompt, row[key]], tokenize=False)
        if not full.startswith(text):
            raise ValueError("the tokenizer's chat template does not render the prompt as a prefix of prompt+response; "
                             "use data.prompt_template=nemotron")
        responses.append(full[len(text):])
    return text, responses[0], responses[1]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_side(prompt_ids: list[int], response_ids: list[int], max_len: int, overlong: str) -> tuple[Encoded | None, str]:
    """prompt+response with labels on the response; returns (encoded, reason it was dropped)."""
    n = len(prompt_ids) + len(response_ids)
    if not response_ids:
        return None, "response has no tokens"
    if n > max_len:
        if overlong == "drop":
            return None, f"{n} tokens > data.max_seq_length={max_len}"
        room = max_len - len(prompt_ids)
        if room < 1:  # truncation keeps the whole prompt and cuts the response
            return None, f"prompt alone is {len(prompt_ids)} tokens >= data.max_seq_length={max_len}"
        response_ids = response_ids[:room]
    ids = prompt_ids + response_ids
    return Encoded(ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids, truncated=n > max_len), ""


def encode_pairs(rows, path: str, tokenizer, data_cfg, model_data_cfg, rejects: Rejects) -> tuple[list[Pair], dict]:
    """Tokenise rows into Pairs, applying data.overlong. Returns pairs and counts for the log."""
    pairs, n_truncated, n_merged = [], 0, 0
    for line, row in rows:
        prompt, chosen, rejected = render_pair(row, data_cfg.prompt_template, tokenizer)
        p_ids = _ids(tokenizer, prompt)
        sides, reason = [], ""
        for key, response in (("chosen_response", chosen), ("rejected_response", rejected)):
            r_ids = _ids(tokenizer, response)
            # NeMo's prefix assertion, counted instead of raised (see the module docstring).
            n_merged += _ids(tokenizer, prompt + response)[: len(p_ids)] != p_ids
            enc, why = encode_side(p_ids, r_ids, data_cfg.max_seq_length, data_cfg.overlong)
            if enc is None:
                reason = f"prompt+{key}: {why}"
                break
            sides.append(enc)
        if reason:
            rejects.add({"file": str(path), "line": line, "field": "<row>", "reason": reason})
            continue
        n_truncated += sides[0].truncated or sides[1].truncated
        c_rew, r_rew = row.get("chosen_reward"), row.get("rejected_reward")
        pairs.append(Pair(sides[0], sides[1],
                          float(model_data_cfg.default_chosen_reward if c_rew is None else c_rew),
                          float(model_data_cfg.default_rejected_reward if r_rew is None else r_rew), line))
    counts = {"rows": len(rows), "pairs": len(pairs), "truncated": n_truncated, "boundary_merges": n_merged}
    name = Path(path).name
    if n_truncated:
        log.warning("%s: truncated the response of %d pairs to data.max_seq_length=%d tokens",
                    name, n_truncated, data_cfg.max_seq_length)
    if n_merged:
        log.warning("%s: in %d responses joint tokenisation would merge a token across the prompt/response "
                    "boundary (NeMo asserts on this); we train on separately tokenised prompt + response", name, n_merged)
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
