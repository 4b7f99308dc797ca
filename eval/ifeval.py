"""IFEval (Zhou et al. 2023, arXiv 2311.07911): 541 prompts with verifiable instructions.

Responses are scored with lm_eval's port of Google's 25 instruction checkers, exactly as
google-research `instruction_following_eval/evaluation_lib.py` does:

- strict: an instruction is followed when `response.strip()` is non-empty and the checker passes;
- loose: followed when the checker passes on ANY of 8 variants of the response (original,
  `*` removed, first line removed, last line removed, both removed, and those three with `*`
  removed), which forgives markdown bold and a chatty first/last line;
- prompt-level accuracy = fraction of prompts whose instructions are all followed;
  instruction-level accuracy = followed instructions / all instructions.

Nemotron-4 reports prompt-strict and instruction-strict. Usage:

    python -m eval.ifeval score --input responses.jsonl --prompts input_data.jsonl --output-dir out/
    python -m eval.ifeval run --base-url http://localhost:8000/v1 --model my-model --output-dir out/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_prep.jsonl import RowError, atomic_write_text, cut_torn_tail, read_jsonl
from eval.clients import (GenerationError, SamplingParams, add_cache_arg, add_client_args, cache_file,
                          client_from_args, failure_reasons, write_failures)

log = logging.getLogger(__name__)

HUB_DATASET = "google/IFEval"
# Long enough that no IFEval answer is cut off (the longest ask for 800+ words).
DEFAULT_PARAMS = SamplingParams(max_new_tokens=1280, temperature=0.0)
CHUNK = 64  # prompts per generate call; responses.jsonl grows by one chunk at a time


@dataclass
class IFEvalPrompt:
    key: int
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]


# --- prompts ----------------------------------------------------------------------------------


def _clean_kwargs(kwargs: dict) -> dict:
    # The hub copy pads every kwargs dict with all 30-odd argument names set to None;
    # Google's input_data.jsonl has only the real ones. Dropping None makes them equal.
    return {k: v for k, v in kwargs.items() if v is not None}


def _prompt_from_row(row: dict, path, line: int, key_required: bool = True) -> IFEvalPrompt:
    for name, typ in (("prompt", str), ("instruction_id_list", list), ("kwargs", list)):
        if not isinstance(row.get(name), typ):
            raise RowError(path, line, name, f"missing or not a {typ.__name__}")
    if len(row["kwargs"]) != len(row["instruction_id_list"]):
        raise RowError(path, line, "kwargs", f"{len(row['kwargs'])} entries for "
                       f"{len(row['instruction_id_list'])} instructions")
    if key_required and not isinstance(row.get("key"), int):
        raise RowError(path, line, "key", "missing or not an integer")
    return IFEvalPrompt(row.get("key", line), row["prompt"], list(row["instruction_id_list"]),
                        [_clean_kwargs(k or {}) for k in row["kwargs"]])


def load_prompts(path: str | os.PathLike | None = None, key: str = "--prompts") -> list[IFEvalPrompt]:
    """Google's `input_data.jsonl` layout from a local `path`, or the hub dataset when `path` is None or
    `google/IFEval`. Without the hub that fails in one line naming `key`, the setting to change."""
    if path is not None and str(path) != HUB_DATASET:
        return [_prompt_from_row(row, path, line) for line, row in read_jsonl(path)]
    try:
        import datasets  # hub path only: never used by the tests (they run offline)

        ds = datasets.load_dataset(HUB_DATASET, split="train")
    except Exception as e:  # noqa: BLE001 - offline, no access, no datasets: all the same advice
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FileNotFoundError(f"IFEval prompts: cannot load {HUB_DATASET} from the hub ({reason}); set "
                                f"{key}=<local input_data.jsonl> (Google's instruction_following_eval/data/"
                                "input_data.jsonl)") from None
    return [_prompt_from_row(dict(row), HUB_DATASET, i + 1) for i, row in enumerate(ds)]


# --- scoring ----------------------------------------------------------------------------------


def _registry() -> dict:
    # The first call imports nltk and lm_eval, which draw from Python's global random generator;
    # the caller's state is given back, so scoring never changes what the caller's next draw is.
    state = random.getstate()
    try:
        # Punkt tables must be on NLTK's path before lm_eval's instructions_util is imported.
        from eval.punkt import ensure_punkt

        ensure_punkt()
        from lm_eval.tasks.ifeval import instructions_registry
    finally:
        random.setstate(state)
    return instructions_registry.INSTRUCTION_DICT


LANGDETECT_SEED = 0  # the seed langdetect's documentation recommends for reproducible results
_UNSET = object()


@contextmanager
def _seeded(prompt: str):
    """Seed the two random sources the checkers draw from, then give the caller's back.

    - Python's `random`: a checker given an invalid argument draws a random one (keys 1122 and
      1129 ask for the "letter" '#' and '!', and get a random ASCII letter). Google leaves that
      unseeded; we seed from the prompt, so a file always gets the same score.
    - langdetect (change_case:english_lowercase / english_capital, language:response_language):
      each detection runs 7 trials on n-grams drawn by a `random.Random` seeded with
      `DetectorFactory.seed`, which is None (the OS entropy) unless set; a short text can then be
      'en' on one run and 'nl' on the next. A seed set on the loaded factory itself wins over the
      class attribute, so both are seeded and both restored.
    """
    from langdetect import detector_factory

    state = random.getstate()
    cls, factory = detector_factory.DetectorFactory, detector_factory._factory
    saved_cls = cls.seed
    saved_own = vars(factory).get("seed", _UNSET) if factory is not None else _UNSET
    random.seed(f"ifeval:{prompt}")
    cls.seed = LANGDETECT_SEED
    if saved_own is not _UNSET:
        factory.seed = LANGDETECT_SEED
    try:
        yield
    finally:
        random.setstate(state)
        cls.seed = saved_cls
        if saved_own is not _UNSET:
            factory.seed = saved_own


def _build_checker(registry: dict, instruction_id: str, kwargs: dict, prompt: str):
    if instruction_id not in registry:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r}")
    checker = registry[instruction_id](instruction_id)
    checker.build_description(**kwargs)
    args = checker.get_instruction_args()
    if args and "prompt" in args:  # checkers that need the prompt itself, as Google's code does
        checker.build_description(prompt=prompt)
    return checker


def loose_variants(response: str) -> list[str]:
    """The 8 responses of the loose check, in Google's order."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def check_response(p: IFEvalPrompt, response: str, loose: bool, registry: dict | None = None) -> dict:
    """One row of `eval_results_{strict,loose}.jsonl` (keys sorted as in Google's files)."""
    registry = registry or _registry()
    variants = loose_variants(response) if loose else [response]
    follows = []
    with _seeded(p.prompt):  # the same verdict on every run (see _seeded)
        for instruction_id, kwargs in zip(p.instruction_id_list, p.kwargs):
            checker = _build_checker(registry, instruction_id, kwargs, p.prompt)  # fresh per mode, as Google does
            follows.append(any(v.strip() and checker.check_following(v) for v in variants))
    return {"follow_all_instructions": all(follows), "follow_instruction_list": follows,
            "instruction_id_list": p.instruction_id_list, "prompt": p.prompt, "response": response}


def score(pairs: list[tuple[IFEvalPrompt, str]]) -> tuple[list[dict], list[dict]]:
    """(strict rows, loose rows) for (prompt, response) pairs."""
    registry = _registry()
    strict = [check_response(p, r, loose=False, registry=registry) for p, r in pairs]
    loose = [check_response(p, r, loose=True, registry=registry) for p, r in pairs]
    return strict, loose


def summarize(strict: list[dict], loose: list[dict]) -> dict:
    """Prompt- and instruction-level accuracy (fractions), overall and per instruction id / category."""

    def levels(rows):
        flat = [f for r in rows for f in r["follow_instruction_list"]]
        return sum(r["follow_all_instructions"] for r in rows) / len(rows), sum(flat) / len(flat)

    if not strict:
        raise ValueError("no responses to summarize")
    (ps, is_), (pl, il) = levels(strict), levels(loose)
    per: dict[str, dict] = {}
    for s, l in zip(strict, loose):
        for inst, fs, fl in zip(s["instruction_id_list"], s["follow_instruction_list"], l["follow_instruction_list"]):
            for name in (inst, inst.split(":")[0]):
                d = per.setdefault(name, {"n": 0, "strict": 0, "loose": 0})
                d["n"], d["strict"], d["loose"] = d["n"] + 1, d["strict"] + fs, d["loose"] + fl
    acc = lambda names: {k: {"n": per[k]["n"], "strict": per[k]["strict"] / per[k]["n"],  # noqa: E731
                             "loose": per[k]["loose"] / per[k]["n"]} for k in sorted(names)}
    return {
        "n_prompts": len(strict),
        "n_instructions": sum(len(r["follow_instruction_list"]) for r in strict),
        "prompt_level_strict": ps, "instruction_level_strict": is_,
        "prompt_level_loose": pl, "instruction_level_loose": il,
        "per_category": acc(k for k in per if ":" not in k),
        "per_instruction": acc(k for k in per if ":" in k),
    }


def markdown_table(summary: dict) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    failed = f"; {summary['n_failed']} prompts without a response (failures.jsonl)" if summary.get("n_failed") else ""
    out = [f"IFEval, {summary['n_prompts']} prompts, {summary['n_instructions']} instructions (accuracy %){failed}", "",
           "| level | strict | loose |", "|---|---|---|",
           f"| prompt | {pct(summary['prompt_level_strict'])} | {pct(summary['prompt_level_loose'])} |",
           f"| instruction | {pct(summary['instruction_level_strict'])} | {pct(summary['instruction_level_loose'])} |",
           "", "| instruction | n | strict | loose |", "|---|---|---|---|"]
    for group in ("per_category", "per_instruction"):
        for name, d in summary[group].items():
            out.append(f"| {name} | {d['n']} | {pct(d['strict'])} | {pct(d['loose'])} |")
    return "\n".join(out) + "\n"


def write_results(output_dir: str | os.PathLike, strict: list[dict], loose: list[dict], n_failed: int = 0) -> dict:
    """Write Google's two result files, `summary.json` and `summary.md`; return the summary.
    `n_failed`: prompts left out because their request failed (`run` only)."""
    out = Path(output_dir)
    for name, rows in (("eval_results_strict.jsonl", strict), ("eval_results_loose.jsonl", loose)):
        atomic_write_text(out / name, "".join(json.dumps(r) + "\n" for r in rows))
    summary = {**summarize(strict, loose), "n_failed": n_failed}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table(summary))
    return summary


# --- inputs: responses files ------------------------------------------------------------------


def read_responses(path: str | os.PathLike,
                   prompts: list[IFEvalPrompt] | None = None) -> list[tuple[IFEvalPrompt, str]]:
    """(prompt, response) pairs from a JSONL of `{prompt, response}` rows.

    Rows that carry `instruction_id_list` and `kwargs` are scored as they are, in file order.
    Other rows are joined to `prompts` by exact prompt text and returned in `prompts` order,
    as Google's evaluation_main does; every prompt must then have exactly one response.
    """
    rows = list(read_jsonl(path))
    for line, row in rows:
        if not isinstance(row.get("response"), str):
            raise RowError(path, line, "response", "missing or not a string")
        if not isinstance(row.get("prompt"), str):
            raise RowError(path, line, "prompt", "missing or not a string")
    if rows and all("instruction_id_list" in row for _, row in rows):
        return [(_prompt_from_row(row, path, line, key_required=False), row["response"]) for line, row in rows]

    prompts = prompts if prompts is not None else load_prompts()
    known = {p.prompt for p in prompts}
    by_prompt: dict[str, str] = {}
    for line, row in rows:
        if row["prompt"] not in known:
            raise RowError(path, line, "prompt", f"not in the prompts file: {row['prompt'][:80]!r}")
        if row["prompt"] in by_prompt:
            raise RowError(path, line, "prompt", f"second response for the same prompt: {row['prompt'][:80]!r}")
        by_prompt[row["prompt"]] = row["response"]
    missing = [p for p in prompts if p.prompt not in by_prompt]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of {len(prompts)} prompts have no response "
                         f"(first: key {missing[0].key}, {missing[0].prompt[:80]!r})")
    return [(p, by_prompt[p.prompt]) for p in prompts]


# --- generation + scoring ---------------------------------------------------------------------


def read_saved_responses(path: Path) -> dict[str, str]:
    """Responses by prompt from a (possibly interrupted) `responses.jsonl`; a torn last line is cut off."""
    cut_torn_tail(path)
    rows = (row for _, row in read_jsonl(path)) if path.exists() else ()
    return {r["prompt"]: r["response"] for r in rows if isinstance(r.get("prompt"), str)
            and isinstance(r.get("response"), str)}


def run_ifeval(generate_fn: Callable, prompts: list[IFEvalPrompt] | str | os.PathLike | None,
               params: SamplingParams | None, output_dir: str | os.PathLike, resume: bool = True,
               chunk_size: int = CHUNK) -> dict:
    """Answer every prompt as a single user turn (no system prompt), score the answers; return the summary.

    Answers are appended to `responses.jsonl` (Google's input_response_data layout) a chunk at a time and,
    with `resume`, reused by a rerun into the same directory, which asks only what is missing. A prompt whose
    request failed (generate gave None) is counted (`n_failed`), listed in `failures.jsonl` and left out of
    the scores; a rerun asks it again. In the end responses.jsonl holds the answers in prompt order.
    """
    if not isinstance(prompts, list):
        prompts = load_prompts(prompts)
    params = params or DEFAULT_PARAMS
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "responses.jsonl"
    done = read_saved_responses(path) if resume else {}
    todo = [p for p in prompts if p.prompt not in done]
    failures = []
    with open(path, "a" if resume else "w", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            responses = generate_fn([[{"role": "user", "content": p.prompt}] for p in chunk], params)
            if len(responses) != len(chunk):
                raise RuntimeError(f"generate returned {len(responses)} responses for {len(chunk)} prompts")
            for p, response, reason in zip(chunk, responses, failure_reasons(generate_fn, len(chunk))):
                if response is None:
                    failures.append({"key": p.key, "prompt": p.prompt, "error": reason or "no response"})
                    continue
                done[p.prompt] = response
                f.write(json.dumps({"prompt": p.prompt, "response": response}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    answered = [(p, done[p.prompt]) for p in prompts if p.prompt in done]
    atomic_write_text(path, "".join(json.dumps({"prompt": p.prompt, "response": r}) + "\n" for p, r in answered))
    write_failures(out / "failures.jsonl", failures)
    if not answered:
        raise GenerationError(f"IFEval: none of {len(prompts)} prompts got a response"
                              + (f"; first error: {failures[0]['error']}" if failures else ""))
    if failures:
        log.warning("IFEval: %d of %d prompts got no response and are left out of the scores (%s); rerun to "
                    "ask them again", len(failures), len(prompts), out / "failures.jsonl")
    return write_results(out, *score(answered), n_failed=len(failures))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.ifeval", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="score an existing responses JSONL")
    sc.add_argument("--input", required=True, help="JSONL rows {prompt, response} (optionally with "
                    "instruction_id_list and kwargs)")
    sc.add_argument("--prompts", default=None, help="Google's input_data.jsonl (default: the hub copy)")
    sc.add_argument("--output-dir", required=True)
    rn = sub.add_parser("run", help="generate responses from an endpoint, then score them (resumable)")
    rn.add_argument("--prompts", default=None, help="Google's input_data.jsonl (default: the hub copy)")
    rn.add_argument("--output-dir", required=True)
    rn.add_argument("--limit", type=int, default=0, help="only the first N prompts (0: all)")
    rn.add_argument("--max-new-tokens", type=int, default=DEFAULT_PARAMS.max_new_tokens)
    add_client_args(rn)
    add_cache_arg(rn)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "score":
            prompts = load_prompts(args.prompts) if args.prompts else None
            summary = write_results(args.output_dir, *score(read_responses(args.input, prompts)))
        else:
            params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
            prompts = load_prompts(args.prompts)
            prompts = prompts[: args.limit] if args.limit else prompts
            client = client_from_args(args, cache=cache_file(args, "generator"))
            summary = run_ifeval(client.generate, prompts, params, args.output_dir)
    except (OSError, ValueError, GenerationError) as e:  # bad input file, unreachable endpoint, too many failures
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(summary), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
