"""The pipeline's own reward model as judge of a policy (`eval.policy_reward`, the report's RM-as-judge).

A policy answers held-out prompts (never trained on: not SDG prompts, not the SFT sample) greedily, so
every stage is asked the same way; the reward model written by stage=rm scores each reply exactly as
annotation scored the training responses (recipes.reward_model.rm_text, the checkpoint's attribute
weights). Results:

    mean_reward   mean RM reward of this stage's replies (n_prompts of them)
    win_rate      against the previous stage's replies to the same prompts (`previous`, its
                  responses.jsonl): (wins + ties / 2) / n_compared, both replies scored by this RM in one
                  pass. A tie is an identical reply (greedy decoding often gives one) or an equal reward.

Writes `responses.jsonl` (id, prompt or conversations, response, reward, attributes), which the next
stage's hook reads as its `previous`. Prompts: a JSONL in stage=sdg_generate's layout (`prompt`, or
`conversations` ending with a User turn); where they came from does not matter.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data_prep.jsonl import read_jsonl, write_jsonl

log = logging.getLogger(__name__)
RESPONSES = "responses.jsonl"


def load_prompt_rows(path: str, limit: int = 0) -> list[dict]:
    """Held-out prompt rows (sdg_generate's layout, duplicates dropped), the first `limit` (0: all)."""
    from recipes.sdg_generate import dedup, load_prompts

    if not Path(path).is_file():
        raise ValueError(f"eval.policy_reward.prompts: no file at {path}")
    rows, _ = dedup(load_prompts(path))
    if not rows:
        raise ValueError(f"eval.policy_reward.prompts={path}: no prompts")
    return rows[: limit or None]


def score(reward_model, rows: list[dict], replies: list[str], batch_size: int, device) -> tuple[list[float], list[dict]]:
    """(rewards, attributes) of each reply to its row's prompt, with the loaded (rm, tokenizer, meta)."""
    from recipes.reward_model import rewards, rm_text, score_texts
    from recipes.sdg_generate import turns_of

    rm, tokenizer, meta = reward_model
    texts = [rm_text(turns_of(row), reply, meta["system_prompt"]) for row, reply in zip(rows, replies)]
    attrs = score_texts(rm, tokenizer, texts, batch_size, meta["max_seq_length"], device)
    keep = [i for i, n in enumerate(meta["attribute_names"]) if n in meta["trained_attributes"]]
    named = [{meta["attribute_names"][i]: round(a[i], 6) for i in keep} for a in attrs.tolist()]
    return rewards(attrs, meta["attribute_weights"]).tolist(), named


def _reply_problems(row: dict) -> list[tuple[str, str]]:
    from recipes.sdg_generate import _prompt_problems

    if not isinstance(row.get("response"), str):
        return [("response", "missing or not a string")]
    return _prompt_problems(row)


def load_previous(path: str) -> dict[str, tuple[dict, str]]:
    """prompt key -> (row, reply) of an earlier stage's responses.jsonl."""
    from recipes.sdg_generate import prompt_key

    if not Path(path).is_file():
        raise ValueError(f"eval.policy_reward.previous: no file at {path} (the previous stage's "
                         f"eval/policy_reward/{RESPONSES}: did its policy_reward hook run?)")
    return {prompt_key(row): (row, row["response"]) for _, row in read_jsonl(path, _reply_problems)}


def compare(ours: list[float], theirs: list[float], same_text: list[bool]) -> dict:
    """Win rate of `ours` over `theirs`, pair by pair: a win scores 1, a tie (same text or same reward) 1/2."""
    wins = sum(not s and a > b for a, b, s in zip(ours, theirs, same_text))
    ties = sum(s or a == b for a, b, s in zip(ours, theirs, same_text))
    n = len(ours)
    return {"win_rate": (wins + ties / 2) / n, "wins": wins, "ties": ties, "losses": n - wins - ties,
            "n_compared": n, "previous_mean_reward": sum(theirs) / n}


def run_policy_reward(generate, prompts: str, reward_model_dir: str, output_dir, max_new_tokens: int,
                      previous: str | None = None, limit: int = 0, batch_size: int = 8, device="cpu") -> dict:
    """Answer the held-out prompts with `generate` (greedy), score the replies with the reward model, compare
    with `previous` (an earlier stage's responses.jsonl) when given; write responses.jsonl, return the summary."""
    from eval.clients import SamplingParams, failure_reasons
    from recipes.reward_model import load_reward_model
    from recipes.sdg_generate import conversation, prompt_key

    rows = load_prompt_rows(prompts, limit)
    earlier = load_previous(previous) if previous else None  # a bad file fails before any generation
    replies = generate([conversation(r) for r in rows], SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    reasons = failure_reasons(generate, len(rows))
    failed = [{"id": r.get("id"), "error": why or "no response"} for r, t, why in zip(rows, replies, reasons) if t is None]
    answered = [(r, t) for r, t in zip(rows, replies) if t is not None]
    if not answered:
        raise ValueError(f"policy_reward: none of {len(rows)} prompts got a reply")
    if failed:
        log.warning("policy_reward: %d of %d prompts got no reply; left out of the scores", len(failed), len(rows))
    rows, replies = [r for r, _ in answered], [t for _, t in answered]

    rm = load_reward_model(reward_model_dir, device)
    matched = [(i, earlier[prompt_key(r)][1]) for i, r in enumerate(rows) if prompt_key(r) in earlier] if earlier else []
    if earlier is not None and not matched:
        raise ValueError(f"eval.policy_reward.previous={previous}: none of its prompts is in {prompts}")
    # This stage's replies and the previous stage's (for the win rate) in one scoring pass.
    all_rewards, attrs = score(rm, rows + [rows[i] for i, _ in matched], replies + [t for _, t in matched],
                               batch_size, device)
    ours = all_rewards[: len(rows)]
    keep = ("id", "category", "system", "prompt", "conversations")
    out = [{**{k: r[k] for k in keep if k in r}, "response": t, "reward": round(w, 6), "attributes": a}
           for r, t, w, a in zip(rows, replies, ours, attrs)]
    write_jsonl(Path(output_dir) / RESPONSES, out)
    result = {"mean_reward": sum(ours) / len(ours), "n_prompts": len(ours), "n_failed": len(failed),
              "max_new_tokens": max_new_tokens, "mean_reply_chars": sum(map(len, replies)) / len(replies),
              "prompts_file": str(prompts), "reward_model": str(reward_model_dir)}
    if matched:
        theirs = all_rewards[len(rows):]
        result.update(compare([ours[i] for i, _ in matched], theirs, [replies[i] == t for i, t in matched]),
                      previous=str(previous))
    return result


def check_disjoint(prompts: str, training_files: list[str], ngram: int = 13) -> list[str]:
    """The held-out prompts that overlap a training prompt file (data_prep's decontamination rule: a shared
    `ngram`-word n-gram, or the same words): [] when they are disjoint."""
    from data_prep.filters import Decontaminator
    from recipes.sdg_generate import turns_of

    decon = Decontaminator(training_files, ngram)
    return [f"{r.get('id', i)}: {why}" for i, r in enumerate(load_prompt_rows(prompts))
            for why in [decon.match(" ".join(v for _, v in turns_of(r)))] if why]

