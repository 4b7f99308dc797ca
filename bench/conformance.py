"""Conformance on the full public sets, beyond the subsets the tests ship; prints a table (docs/eval.md).

    .venv/bin/python bench/conformance.py [--shared DIR]   # default: $RECIPES_SHARED_DIR, else ../shared

Optional: it needs the project's full evaluation data (IFEval's 541 GPT-4 responses with the official results,
FastChat's 160 GPT-4 judgments of one MT-Bench run, 500 RewardBench rows). Without it, it says so and exits 2;
on any mismatch it exits 1. What it checks:

* IFEval: every strict and loose row equals the official `eval_results_*.jsonl` line byte for byte, except the
  random instruction of keys 1122 and 1129 (the rest of those rows must match); the official metrics are
  reproduced with the official rows spliced in for those two; a second scoring gives the same bytes.
* MT-Bench: all 160 judge prompts equal the recorded `user_prompt` (and the prompt name), all 160 ratings parse to
  the recorded score, and the aggregate equals `expected_scores_*.json`.
* RewardBench: the 500 rows load, the whole Chat section is there with the official per-subset counts, and the
  section scores of the known models are reproduced.
* Fixtures: every row under tests/fixtures/{ifeval,mt_bench,helpsteer}/ and in data/demo/reward_bench_subset.jsonl
  is a row of the full file, unchanged (scripts/make_fixtures.py made them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval import ifeval, mt_bench, reward_bench  # noqa: E402

IFEVAL_RUN = "gpt4_20231107_145030"
MT_MODEL = "llama-2-chat-7b-0.1-0.1"
RANDOM_IFEVAL = {1122: "keywords:letter_frequency", 1129: "keywords:letter_frequency"}
METRIC_NAMES = [("prompt_level_strict", "prompt_level_strict_acc"), ("instruction_level_strict", "inst_level_strict_acc"),
                ("prompt_level_loose", "prompt_level_loose_acc"), ("instruction_level_loose", "inst_level_loose_acc")]


def lines(path: Path) -> list[str]:
    return [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def check_ifeval(root: Path) -> list[tuple[str, str, bool]]:
    run = root / "ifeval" / IFEVAL_RUN
    prompts = ifeval.load_prompts(root / "ifeval" / "input_data.jsonl")
    pairs = ifeval.read_responses(run / f"input_response_data_{IFEVAL_RUN}.jsonl", prompts)
    results = []
    scored = ifeval.score(pairs)
    again = ifeval.score(pairs)
    for mode, ours in zip(("strict", "loose"), scored):
        ref = lines(run / f"eval_results_{mode}.jsonl")
        same = sum(json.dumps(o) == r for o, r in zip(ours, ref))
        others_ok = all(fa == fb for p, o, r in zip(prompts, ours, ref) if p.key in RANDOM_IFEVAL
                        for inst, fa, fb in zip(p.instruction_id_list, o["follow_instruction_list"],
                                                json.loads(r)["follow_instruction_list"]) if inst != RANDOM_IFEVAL[p.key])
        random_same = [p.key for p, o, r in zip(prompts, ours, ref) if p.key in RANDOM_IFEVAL and json.dumps(o) == r]
        ok = same >= len(ref) - len(RANDOM_IFEVAL) and others_ok and len(ours) == len(ref)
        results.append((f"IFEval {mode} rows byte-identical", f"{same}/{len(ref)} (random keys equal: "
                        f"{random_same or 'none'})", ok))
    expected = json.loads((run / "expected_metrics.json").read_text())
    spliced = []
    for mode, ours in zip(("strict", "loose"), scored):
        ref = [json.loads(x) for x in lines(run / f"eval_results_{mode}.jsonl")]
        spliced.append([r if p.key in RANDOM_IFEVAL else o for p, o, r in zip(prompts, ours, ref)])
    summary = ifeval.summarize(*spliced)
    diffs = [f"{a}={summary[a]:.7f} vs {expected[b]:.7f}" for a, b in METRIC_NAMES if abs(summary[a] - expected[b]) > 1e-12]
    results.append(("IFEval metrics (official rows for 1122/1129)", "; ".join(diffs) or
                    " / ".join(f"{summary[a]:.7f}" for a, _ in METRIC_NAMES), not diffs))
    results.append(("IFEval second scoring identical", str(again == scored), again == scored))
    return results


def check_mt_bench(root: Path) -> list[tuple[str, str, bool]]:
    d = root / "mt_bench"
    data = mt_bench.load_data(d)
    questions = {q["question_id"]: q for q in data.questions}
    answers = {r["question_id"]: r for r in map(json.loads, lines(d / "model_answer" / f"{MT_MODEL}.jsonl"))}
    judgments = [json.loads(x) for x in lines(d / "model_judgment" / f"gpt-4_single_{MT_MODEL}.jsonl")]
    same = 0
    for row in judgments:
        q = questions[row["question_id"]]
        name, messages = mt_bench.judge_conversation(data, q, answers[q["question_id"]]["choices"][0]["turns"], row["turn"])
        same += name == row["judge"][1] and messages[1]["content"] == row["user_prompt"]
    parsed = sum(mt_bench.parse_rating(r["judgment"]) == r["score"] for r in judgments)
    expected = json.loads((d / f"expected_scores_{MT_MODEL}.json").read_text())
    got = mt_bench.aggregate(judgments, data.questions)
    agg_ok = all(abs(got[k] - expected[k]) < 1e-12 for k in ("first_turn", "second_turn", "average")) and all(
        abs(got["categories"][c] - v) < 1e-12 for c, v in expected["per_category"].items())
    return [("MT-Bench judge prompts byte-identical", f"{same}/{len(judgments)}", same == len(judgments)),
            ("MT-Bench ratings parsed = recorded", f"{parsed}/{len(judgments)}", parsed == len(judgments)),
            ("MT-Bench aggregate = expected", f"{got['first_turn']} / {got['second_turn']} / {got['average']}", agg_ok)]


def check_reward_bench(root: Path) -> list[tuple[str, str, bool]]:
    d = root / "rewardbench"
    rows = reward_bench.load_rows(str(d / "filtered_first500.jsonl"))
    counts = Counter(r["subset"] for r in rows)
    chat_ok = all(counts[n] == reward_bench.EXAMPLE_COUNTS[n] for n in reward_bench.SECTIONS["Chat"])
    models = json.loads((d / "known_model_results.json").read_text())["models"]
    bad = [m["model"] for m in models
           if any(abs(reward_bench.section_scores(m["per_subset_accuracy"])[s] - 100 * m["expected_current_constants"][s]) > 1e-6
                  for s in reward_bench.SECTIONS)]
    return [("RewardBench rows load, Chat section complete", f"{len(rows)} rows, {len(counts)} subsets", chat_ok),
            ("RewardBench known models' sections", f"{len(models) - len(bad)}/{len(models)}", not bad)]


def check_fixtures(shared: Path) -> list[tuple[str, str, bool]]:
    ev, fx = shared / "evaldata", REPO / "tests" / "fixtures"
    pairs = [(fx / "ifeval" / "input_data.jsonl", ev / "ifeval" / "input_data.jsonl")]
    pairs += [(fx / "ifeval" / n, ev / "ifeval" / IFEVAL_RUN / n) for n in
              (f"input_response_data_{IFEVAL_RUN}.jsonl", "eval_results_strict.jsonl", "eval_results_loose.jsonl")]
    pairs += [(fx / "mt_bench" / n, ev / "mt_bench" / n) for n in
              ("question.jsonl", "judge_prompts.jsonl", "reference_answer/gpt-4.jsonl", f"model_answer/{MT_MODEL}.jsonl",
               f"model_judgment/gpt-4_single_{MT_MODEL}.jsonl")]
    pairs += [(fx / "helpsteer" / "helpsteer_v1_sample.jsonl", shared / "data" / "helpsteer_v1_sample.jsonl"),
              (REPO / "data" / "demo" / "reward_bench_subset.jsonl", ev / "rewardbench" / "filtered_first500.jsonl")]
    out = []
    for small, full in pairs:
        known = set(lines(full))
        mine = lines(small)
        kept = sum(x in known for x in mine)
        out.append((f"fixture {small.relative_to(REPO)}", f"{kept}/{len(mine)} rows of {full.name}", kept == len(mine) > 0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("RECIPES_SHARED_DIR", str(REPO.parent / "shared")))
    shared = Path(ap.parse_args(argv).shared)
    if not (shared / "evaldata").is_dir():
        print(f"conformance: the full evaluation data is not here ({shared}/evaldata does not exist); nothing checked. "
              "Give --shared DIR or set RECIPES_SHARED_DIR. The test suite's subsets are in tests/fixtures/.")
        return 2
    os.environ.setdefault("RECIPES_NLTK_DATA", str(Path(tempfile.gettempdir()) / "nemotron-recipes-nltk"))
    rows = []
    for check in (check_ifeval, check_mt_bench, check_reward_bench):
        rows += check(shared / "evaldata")
    rows += check_fixtures(shared)
    print("| check | result | ok |\n|---|---|---|")
    for name, result, ok in rows:
        print(f"| {name} | {result} | {'yes' if ok else '**NO**'} |")
    failed = [name for name, _, ok in rows if not ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks pass" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
