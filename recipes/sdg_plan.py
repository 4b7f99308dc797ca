"""How many requests an SDG stage sends, before it runs: shown by `dry_run=true` next to each stage's
overrides, and tabled in docs/sdg.md.

Counts are upper bounds: a list the generator returns shorter, a prompt the filters drop or a dialogue
cut short sends fewer. Where the size is another stage's output (the prompts sdg_generate answers), the
count is a formula in that size; with a local input file it is a number.
"""

from __future__ import annotations

from pathlib import Path

from recipes.sdg_prompts import SHIPPED_KEYWORDS, read_documents, read_lines


def _count(path, read) -> int | None:
    return len(read(path)) if path and Path(path).is_file() else None


def _rows(path: str | None) -> int | None:
    if not path or not Path(path).is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def prompts_requests(s) -> dict[str, int]:
    """sdg_prompts: generator requests per step (given topics, documents and keyword files as they are now)."""
    on = set(s.tasks)
    users = _count(s.topics, lambda p: read_lines(p, "topics")) or 0
    steps: dict[str, int] = {}
    if s.n_macro_topics > 0:
        steps["macro_topics"] = 1
    roots = users + max(s.n_macro_topics, 0)
    if s.n_subtopics > 0 and roots:
        steps["subtopics"] = roots
    topics = roots * (1 + s.n_subtopics)
    per_topic = [t for t, n in (("open_qa", s.n_open_qa), ("writing", s.n_writing)) if t in on and n > 0]
    lists = topics * len(per_topic)
    if "closed_qa" in on and s.n_closed_qa > 0:
        lists += _count(s.documents, read_documents) or 0
    for task in ("math", "python"):
        if task in on and s[f"n_{task}"] > 0:
            n = _count(s[f"{task}_keywords"] or SHIPPED_KEYWORDS[task], lambda p: read_lines(p, task)) or 0
            lists += min(n, s.max_keywords) if s.max_keywords else n
    steps["lists"] = lists
    if s.refine:
        steps["refine"] = topics * sum(s[f"n_{t}"] for t in per_topic)
    n_if = s.n_instruction_following if "instruction_following" in on else 0
    multi = sum(s.if_variants[i % len(s.if_variants)] != "single" for i in range(n_if)) if s.if_variants else 0
    n_two = s.n_two_turn if "two_turn" in on else 0
    steps["assistant_turns"] = multi + n_two
    steps["second_user_turns"] = n_two
    steps["total"] = sum(steps.values())
    return steps


def describe(job) -> str | None:
    """One line for the plan: the requests the stage sends (None for stages that send none)."""
    c, kind = job.cfg, job.kind
    if kind == "sdg_prompts":
        steps = prompts_requests(c.sdg_prompts)
        where = c.sdg_prompts.generator.kind
        return f"requests ({where} generator): " + ", ".join(f"{k} {v}" for k, v in steps.items())
    if kind == "sdg_generate":
        s = c.sdg
        n = _rows(s.prompts)
        size = f"{min(n, s.limit) if s.limit and n else n} prompts" if n is not None else \
            f"P (the prompts of {s.prompts}{f', at most {s.limit}' if s.limit else ''})"
        return f"requests ({s.generator.kind} generator): {size} x {s.n_responses} responses"
    if kind == "sdg_dialogue":
        d = c.sdg_dialogue
        n = _rows(d.prompts)
        size = str(min(n, d.limit) if d.limit and n else n) if n is not None else "P"
        where = "endpoint" if str(d.reward_model).startswith("http") else "in-process"
        return (f"requests: {size} dialogues x {2 * d.turns - 1} generator ({d.turns} assistant + "
                f"{d.turns - 1} user turns) + {size} x {d.turns} reward model ({where})")
    if kind == "rm_annotate":
        a = c.annotate
        if not str(a.reward_model).startswith("http"):
            return None
        return f"requests (reward endpoint {a.reward_model}): one per response of {a.input_file}"
    return None
