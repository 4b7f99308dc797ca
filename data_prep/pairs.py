"""Prompts with scored responses, and how preference pairs are picked from them (shared by all scripts)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from data_prep.filters import normalize
from data_prep.inputs import DataPrepError
from data_prep.schemas import (
    ALL_STEERLM_ATTRIBUTES,
    HELPSTEER_ATTRIBUTES,
    LLAMA3_70B_REWARD_WEIGHTS,
    NEMOTRON_340B_REWARD_WEIGHTS,
    NUM_ATTRIBUTES,
)

# Pair-level reasons (report.json / rejects.jsonl).
TIE = "tie"  # best and worst response score the same
TOO_FEW = "fewer_than_2_responses"  # after response-level filters
GAP = "gap_below_min"
CHOSEN_LOW = "chosen_below_min_reward"
IDENTICAL = "identical_responses"  # chosen and rejected text are the same: the pair teaches nothing

WEIGHT_PRESETS = {"nemotron-340b": NEMOTRON_340B_REWARD_WEIGHTS, "llama3-70b": LLAMA3_70B_REWARD_WEIGHTS}


@dataclass
class Response:
    text: str
    reward: float
    line: int
    row: dict  # the input row or response object (attributes, model, ...)


@dataclass
class PromptGroup:
    """One prompt and its responses. `turns` are (role, value) and end with a User turn."""

    source: str
    system: str
    turns: list[tuple[str, str]]
    responses: list[Response] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    @property
    def prompt_text(self) -> str:
        return "\n".join(v for _, v in self.turns)

    @cached_property
    def key(self) -> str:
        """Normalised system + turns: equal keys are duplicate prompts (computed once: dedup and split use it)."""
        return "\x00".join([normalize(self.system)] + [f"{r}\x00{normalize(v)}" for r, v in self.turns])


def in_validation(key: str, seed: int, val_fraction: float) -> bool:
    """Deterministic split by prompt: a hash of (seed, prompt) decides, so every response of a prompt lands
    in the same split and the split does not depend on row order."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def parse_weights(spec) -> tuple[float, ...]:
    """Attribute weights over the 9 slots from a preset name, 9 numbers, or 5 numbers (the HelpSteer slots)."""
    items = spec
    if isinstance(spec, str):
        if spec in WEIGHT_PRESETS:
            return WEIGHT_PRESETS[spec]
        items = spec.replace(",", " ").split()
    try:
        values = [float(x) for x in items]
    except (TypeError, ValueError):
        raise DataPrepError(f"weights must be numbers or one of {', '.join(WEIGHT_PRESETS)}, got {spec!r}") from None
    if len(values) == len(HELPSTEER_ATTRIBUTES):
        values = [0.0] * (NUM_ATTRIBUTES - len(values)) + values
    if len(values) != NUM_ATTRIBUTES or any(v != v or abs(v) == float("inf") for v in values):
        raise DataPrepError(f"weights need {NUM_ATTRIBUTES} finite numbers (slots {', '.join(ALL_STEERLM_ATTRIBUTES)}) "
                            f"or {len(HELPSTEER_ATTRIBUTES)} (the HelpSteer slots), got {spec!r}")
    return tuple(values)


def select_pairs(rewards: list[float], mode: str, min_gap: float = 0.0, min_chosen_reward: float = float("-inf"),
                 texts: list[str] | None = None) -> tuple[list[tuple[int, int]], str | None]:
    """Indices (chosen, rejected) of the pairs to keep, or ([], reason).

    `best_vs_worst`: the highest against the lowest reward (first one wins a tie
    for either place). `all_pairs`: every pair with a different reward. Either
    way a pair needs chosen - rejected >= min_gap (and > 0: equal rewards never
    make a pair) and chosen >= min_chosen_reward. With `texts`, a pair of two
    identical texts is never made.
    """
    if len(rewards) < 2:
        return [], TOO_FEW
    if max(rewards) == min(rewards):
        return [], TIE
    if mode == "best_vs_worst":
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        worst = min(range(len(rewards)), key=lambda i: (rewards[i], i))
        candidates = [(best, worst)]
    elif mode == "all_pairs":
        candidates = [(i, j) if rewards[i] > rewards[j] else (j, i)
                      for i in range(len(rewards)) for j in range(i + 1, len(rewards)) if rewards[i] != rewards[j]]
    else:
        raise DataPrepError(f"pairing mode must be 'best_vs_worst' or 'all_pairs', got {mode!r}")
    if texts is not None:
        candidates = [(c, r) for c, r in candidates if texts[c] != texts[r]]
        if not candidates:
            return [], IDENTICAL
    strong = [(c, r) for c, r in candidates if rewards[c] >= min_chosen_reward]
    if not strong:
        return [], CHOSEN_LOW
    kept = [(c, r) for c, r in strong if rewards[c] - rewards[r] >= min_gap]
    return (kept, None) if kept else ([], GAP)
