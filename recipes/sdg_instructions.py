"""Verifiable instructions for synthetic instruction-following prompts, from lm-eval's IFEval registry.

The Nemotron-4 report builds instruction-following prompts from a synthetic prompt plus instructions of
the IFEval taxonomy (Zhou et al. 2023). We draw them from `lm_eval.tasks.ifeval.instructions_registry`
itself, the same checkers eval/ifeval.py scores with, so every prompt carries `instruction_id_list` and
`kwargs` in Google's `input_data.jsonl` layout and any response to it can be checked:

    ids, kwargs, text = draw_instructions(rng, prompt, k=2)
    # ids    ["detectable_format:title", "punctuation:no_comma"]
    # kwargs [{}, {}]
    # text   "Your answer must contain a title, ... In your entire response, refrain from ..."

Instructions that conflict (`INSTRUCTION_CONFLICTS`) are never drawn together. The checkers pick their
own random arguments (a keyword, a number of words); we seed Python's `random` from the caller's `rng`
around each draw (and restore the caller's state), so a seed gives the same instructions every run.
"""

from __future__ import annotations

import random

# Needs the prompt itself (repeat it verbatim): left out of multi-turn variants, where "the prompt" is
# ambiguous; language:response_language asks for e.g. Tamil, which small generators cannot follow.
SINGLE_TURN_ONLY = {"combination:repeat_prompt"}
DEFAULT_EXCLUDE = ("language:response_language",)


def registry() -> tuple[dict, dict]:
    """(INSTRUCTION_DICT, INSTRUCTION_CONFLICTS) with NLTK's Punkt tables in place (eval/punkt.py)."""
    from eval.punkt import ensure_punkt

    ensure_punkt()
    from lm_eval.tasks.ifeval import instructions_registry as r

    return r.INSTRUCTION_DICT, r.INSTRUCTION_CONFLICTS


def usable_ids(exclude=DEFAULT_EXCLUDE, multi_turn: bool = False) -> list[str]:
    instructions, _ = registry()
    unknown = set(exclude) - set(instructions)
    if unknown:
        raise ValueError(f"unknown IFEval instruction id(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(instructions))})")
    skip = set(exclude) | (SINGLE_TURN_ONLY if multi_turn else set())
    return sorted(i for i in instructions if i not in skip)


def _clean(kwargs: dict | None) -> dict:
    # The checkers return their arguments with None for the ones not used (as the hub copy of IFEval).
    return {k: v for k, v in (kwargs or {}).items() if v is not None}


def describe(instruction_id: str, kwargs: dict, prompt: str) -> str:
    """The instruction text for fixed arguments (what the checker will check)."""
    instructions, _ = registry()
    checker = instructions[instruction_id](instruction_id)
    return checker.build_description(**kwargs, **({"prompt_to_repeat": prompt}
                                                 if instruction_id == "combination:repeat_prompt" else {}))


def draw_instructions(rng: random.Random, prompt: str, k: int, exclude=DEFAULT_EXCLUDE,
                      multi_turn: bool = False) -> tuple[list[str], list[dict], str]:
    """k non-conflicting instructions for `prompt`: (ids, kwargs as the checker takes them, their text)."""
    instructions, conflicts = registry()
    pool = usable_ids(exclude, multi_turn)
    ids: list[str] = []
    while len(ids) < k:
        free = [i for i in pool if i not in ids and not any(i in conflicts.get(j, ()) or j in conflicts.get(i, ())
                                                             for j in ids)]
        if not free:
            break
        ids.append(rng.choice(free))
    state = random.getstate()
    random.seed(rng.random())
    try:
        kwargs, texts = [], []
        for iid in ids:
            checker = instructions[iid](iid)
            if iid == "combination:repeat_prompt":
                texts.append(checker.build_description(prompt_to_repeat=prompt))
                kwargs.append({"prompt_to_repeat": prompt})
                continue
            texts.append(checker.build_description())
            kwargs.append(_clean(checker.get_instruction_args()))
    finally:
        random.setstate(state)
    return ids, kwargs, " ".join(t.strip() for t in texts)
