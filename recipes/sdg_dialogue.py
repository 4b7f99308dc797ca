"""Synthetic multi-turn dialogues: `python launch.py stage=sdg_dialogue sdg_dialogue.prompts=prompts.jsonl
sdg_dialogue.reward_model=<checkpoint or http://host:port/v1>`.

The Nemotron-4 report's SFT dialogues (§3.2.2): the generator plays both sides in turn. It answers as the
assistant; then, told a personality for the user (`sdg_dialogue.personas`, default
recipes/sdg_templates.PERSONAS) and shown the conversation so far, it writes the user's next message,
whose polite closers ("Thank you ...") are stripped; and so on for `sdg_dialogue.turns` assistant turns
(3 in the report, sampled greedily). The reward model then scores every assistant turn (a checkpoint
in-process, or an endpoint over the OpenAI-compatible reward API, as stage=rm_annotate does), the turns'
rewards are reduced to one (`dialogue_reward`: min, our default, or mean or last), and dialogues below
`min_reward` are dropped (the report gives no threshold: null keeps every scored dialogue).

Outputs in the run directory:

    dialogues.jsonl          NeMo SFT chat rows (system, conversations User/Assistant..., mask User)
    dialogues_scored.jsonl   the same dialogues with persona, per-turn attributes and rewards, provenance
    report.json, rejects.jsonl   counts at every filter: failed requests, empty turns, unusable user
                             turns, below min_reward (data_prep/report.py's accounting)

The generator's replies are cached (request_cache/), so a killed run is rerun at the cost of what it had
not got.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from data_prep.jsonl import write_jsonl
from data_prep.report import Report
from data_prep.schemas import sft_chat_row
from recipes.sdg_common import parse_single, strip_polite
from recipes.sdg_templates import PERSONAS, load_templates, render

log = logging.getLogger(__name__)
OUT = "dialogues.jsonl"


def messages(system: str, turns: list[tuple[str, str]]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + \
        [{"role": role.lower(), "content": text} for role, text in turns]


def history(turns: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"{role}: {text}" for role, text in turns)


def reduce(values: list[float], how: str) -> float:
    return {"min": min, "mean": lambda v: sum(v) / len(v), "last": lambda v: v[-1]}[how](values)


class Dialogues:
    """The dialogues in flight; each drop is counted in the report under its reason."""

    def __init__(self, rows: list[dict], personas: list[str], rng: random.Random, report: Report, source: str):
        self.live = [{"row": r, "persona": rng.choice(personas), "turns": [("User", r["prompt"])], "stripped": 0}
                     for r in rows]
        self.report, self.source = report, source

    def drop(self, d: dict, reason: str, detail: str) -> None:
        self.report.reject([OUT], reason, self.source, [], f"{d['row'].get('id', '')}: {detail}")
        self.live.remove(d)


def converse(d, dlg: Dialogues, generate, params, templates: dict) -> None:
    """`d.turns` assistant turns per dialogue; between them the generator plays the user (a persona, the
    conversation so far), polite closers stripped."""
    for turn in range(d.turns):
        replies = generate([messages(d.system, x["turns"]) for x in dlg.live], params)
        for x, reply in list(zip(dlg.live, replies)):
            if reply is None or not reply.strip():
                dlg.drop(x, "failed_request" if reply is None else "empty_assistant_turn", f"assistant turn {turn + 1}")
            else:
                x["turns"].append(("Assistant", reply.strip()))
        if turn == d.turns - 1:
            break
        asks = [[{"role": "user", "content": render(templates, "dialogue_user", persona=x["persona"],
                                                   history=history(x["turns"]))}] for x in dlg.live]
        for x, reply in list(zip(dlg.live, generate(asks, params))):
            text = parse_single(reply) if reply else None
            user = strip_polite(text) if text else ""
            if reply is None or len(user) < 8:
                dlg.drop(x, "failed_request" if reply is None else "unusable_user_turn",
                         f"user turn {turn + 2}: {(reply or '')[:120]!r}")
                continue
            x["stripped"] += user != text
            x["turns"].append(("User", user))


def score(cfg, d, dlg: Dialogues, run_dir: Path) -> list[dict]:
    """Every assistant turn scored with the conversation before it (as rm_annotate scores a response), one
    reward per dialogue (`dialogue_reward`), the dialogues that reach `min_reward`."""
    from recipes import loop
    from recipes.rm_annotate import given_weights, is_endpoint, make_scorer

    scorer = make_scorer(d.reward_model, d.batch_size, given_weights(cfg),
                         None if is_endpoint(d.reward_model) else loop.pick_device(cfg.trainer), cfg.trainer.precision,
                         d.endpoint, run_dir / "request_cache", cfg.logger.progress_bar)
    items, owner = [], []
    for x in dlg.live:
        for i, (role, text) in enumerate(x["turns"]):
            if role == "Assistant":
                items.append((x["turns"][:i], text))
                owner.append(x)
    scores = scorer(items) if items else []
    for x in dlg.live:
        x["scores"] = [s for s, o in zip(scores, owner) if o is x]
    kept = []
    for x in list(dlg.live):
        if any(s is None for s in x["scores"]):
            dlg.drop(x, "failed_request", "reward model request")
            continue
        x["reward"] = reduce([r for _, r in x["scores"]], d.dialogue_reward)
        if d.min_reward is not None and x["reward"] < d.min_reward:
            dlg.drop(x, "below_min_reward", f"reward {x['reward']:.4g} < sdg_dialogue.min_reward {d.min_reward:g}")
            continue
        kept.append(x)
    return kept


def run(cfg, run_dir: Path) -> Path:
    from eval.clients import SamplingParams
    from recipes.sdg_generate import dedup, load_prompts
    from recipes.sdg_prompts import make_generator

    d = cfg.sdg_dialogue
    if not d.prompts or not d.reward_model:
        raise ValueError("stage=sdg_dialogue needs sdg_dialogue.prompts (a JSONL of prompts, e.g. stage=sdg_prompts' "
                         "output) and sdg_dialogue.reward_model (a stage=rm checkpoint or an endpoint URL)")
    run_dir = Path(run_dir)
    output = Path(d.output_file) if d.output_file else run_dir / OUT
    templates = load_templates(d.templates, d.templates_file)
    report = Report("recipes.sdg_dialogue", {"turns": d.turns, "dialogue_reward": d.dialogue_reward,
                                             "min_reward": d.min_reward, "seed": cfg.seed}, inputs=[str(d.prompts)])
    loaded = load_prompts(d.prompts)
    unique, dups = dedup(loaded)
    single = [r for r in unique if "prompt" in r]  # a dialogue starts from one user turn
    rows = single[: d.limit or None]
    counts = {"duplicate_prompt": dups, "multi_turn_prompt": len(unique) - len(single), "over_limit": len(single) - len(rows)}
    report.input = {"rows_in": len(loaded), "rows_ok": len(rows), "rejected": {k: n for k, n in counts.items() if n}}
    report.output(OUT, "dialogue").rows_in = len(rows)
    report.outputs[OUT].rejected = {r: 0 for r in ("failed_request", "empty_assistant_turn", "unusable_user_turn",
                                                   "below_min_reward")}  # every filter listed, at 0 if it dropped none
    if not rows:
        raise ValueError(f"sdg_dialogue.prompts={d.prompts}: no single-turn prompts")

    generate, model = make_generator(cfg, d, run_dir)
    params = SamplingParams(max_new_tokens=d.max_new_tokens, temperature=d.temperature, top_p=d.top_p)
    rng = random.Random(cfg.seed)
    dlg = Dialogues(rows, list(d.personas) or PERSONAS, rng, report, str(d.prompts))
    converse(d, dlg, generate, params, templates)
    kept = score(cfg, d, dlg, run_dir)
    c = report.outputs[OUT]
    c.rows_out = len(kept)
    c.lines = write_jsonl(output, [sft_chat_row(d.system, x["turns"][:-1], x["turns"][-1][1]) for x in kept])
    write_jsonl(run_dir / "dialogues_scored.jsonl", [
        {"id": x["row"].get("id"), "persona": x["persona"], "reward": round(x["reward"], 6),
         "conversations": [{"from": r, "value": t} for r, t in x["turns"]],
         "turn_scores": [{"attributes": {k: round(v, 6) for k, v in a.items()}, "reward": round(r, 6)}
                         for a, r in x["scores"]],
         "provenance": {"prompt": x["row"].get("provenance"), "generator": model, "reward_model": str(d.reward_model),
                        "seed": cfg.seed, "polite_phrases_stripped": x["stripped"]}} for x in kept])
    stripped = sum(x["stripped"] for x in kept)
    report.notes.append(f"{len(kept)} dialogues of {d.turns} assistant turns; polite closers stripped from "
                        f"{stripped} user turns")
    report.write(run_dir)
    log.info("sdg_dialogue: %d of %d dialogues kept -> %s", len(kept), len(rows), output)
    return output
