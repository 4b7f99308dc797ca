"""Build tests/fixtures/{ifeval,mt_bench,helpsteer,nemo_aligner}/ and data/demo/reward_bench_subset.jsonl
from the project's full evaluation data (read-only), so that the test suite needs nothing outside the repo.

    python scripts/make_fixtures.py [--shared DIR]    # default: $RECIPES_SHARED_DIR, else ../shared

Every row is copied unchanged from the source files; the subsets are chosen by a fixed rule (below), so a rerun
writes the same bytes. Expected metrics for a subset are recomputed here with the official formulas,
written independently of eval/ (they are the oracle the tests compare eval/ against).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from itertools import groupby
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
IFEVAL_RUN = "gpt4_20231107_145030"
MT_MODEL = "llama-2-chat-7b-0.1-0.1"
MT_PER_CATEGORY = 2
HELPSTEER_PROMPTS = 70  # the 70 prompts whose rows are shortest: 236 rows, ~330 KB
RB_PER_SUBSET = 8
IFEVAL_NONDETERMINISTIC = (1122, 1129)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_lines(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# --- IFEval ---------------------------------------------------------------------------------------


def ifeval_subset(prompts: list[dict], strict: list[dict], loose: list[dict]) -> list[int]:
    """Row indices: per instruction id, the shortest response it follows (strict), the shortest it fails,
    and the shortest where strict and loose disagree; plus the two rows with a random draw."""
    picked = {i for i, p in enumerate(prompts) if p["key"] in IFEVAL_NONDETERMINISTIC}
    by_len = sorted(range(len(prompts)), key=lambda i: (len(strict[i]["response"]), i))
    ids = sorted({x for p in prompts for x in p["instruction_id_list"]})
    for inst in ids:
        for want in ("follows", "fails", "loose_differs"):
            for i in by_len:
                pairs = [(s, lo) for x, s, lo in zip(prompts[i]["instruction_id_list"], strict[i]["follow_instruction_list"],
                                                     loose[i]["follow_instruction_list"]) if x == inst]
                if any((want == "follows" and s) or (want == "fails" and not s) or (want == "loose_differs" and s != lo)
                       for s, lo in pairs):
                    picked.add(i)
                    break
    return sorted(picked)


def ifeval_metrics(strict: list[dict], loose: list[dict]) -> dict:
    """google-research instruction_following_eval/evaluation_main.py: prompt level = mean of
    follow_all_instructions; instruction level = mean of the flattened follow_instruction_list."""
    def level(rows):
        flat = [f for r in rows for f in r["follow_instruction_list"]]
        return sum(r["follow_all_instructions"] for r in rows) / len(rows), sum(flat) / len(flat)

    (ps, is_), (pl, il) = level(strict), level(loose)
    return {"prompt_level_strict_acc": ps, "inst_level_strict_acc": is_,
            "prompt_level_loose_acc": pl, "inst_level_loose_acc": il,
            "n_prompts": len(strict), "n_instructions": sum(len(r["follow_instruction_list"]) for r in strict)}


def make_ifeval(shared: Path) -> None:
    src, run = shared / "evaldata" / "ifeval", shared / "evaldata" / "ifeval" / IFEVAL_RUN
    out = FIXTURES / "ifeval"
    files = {"input_data.jsonl": src / "input_data.jsonl",
             f"input_response_data_{IFEVAL_RUN}.jsonl": run / f"input_response_data_{IFEVAL_RUN}.jsonl",
             "eval_results_strict.jsonl": run / "eval_results_strict.jsonl",
             "eval_results_loose.jsonl": run / "eval_results_loose.jsonl"}
    raw = {name: lines(path) for name, path in files.items()}
    prompts = [json.loads(x) for x in raw["input_data.jsonl"]]
    strict = [json.loads(x) for x in raw["eval_results_strict.jsonl"]]
    loose = [json.loads(x) for x in raw["eval_results_loose.jsonl"]]
    keep = ifeval_subset(prompts, strict, loose)
    for name, rows in raw.items():
        write_lines(out / name, [rows[i] for i in keep])
    metrics = ifeval_metrics([strict[i] for i in keep], [loose[i] for i in keep])
    write_json(out / "expected_metrics.json", {
        **metrics, "keys": [prompts[i]["key"] for i in keep],
        "nondeterministic_keys": list(IFEVAL_NONDETERMINISTIC),
        "method": "Aggregates of the official eval_results_{strict,loose}.jsonl rows of this subset, computed as "
                  "google-research instruction_following_eval/evaluation_main.py does (prompt level = mean of "
                  "follow_all_instructions; instruction level = mean over the flattened follow_instruction_list); "
                  "built by scripts/make_fixtures.py. Keys 1122 and 1129 hold one random draw each (see README)."})
    print(f"ifeval: {len(keep)} of {len(prompts)} prompts, {metrics['n_instructions']} instructions")


# --- MT-Bench -------------------------------------------------------------------------------------


def mt_bench_scores(judgments: list[dict], category_of: dict[int, str]) -> dict:
    """FastChat fastchat/llm_judge/show_result.py, single mode: drop score == -1, plain means."""
    valid = [j for j in judgments if j["score"] != -1]
    mean = lambda rows: sum(r["score"] for r in rows) / len(rows)  # noqa: E731
    cats = sorted({category_of[j["question_id"]] for j in valid})
    return {"n_judgments": len(judgments), "n_invalid_score_minus_1": len(judgments) - len(valid),
            "first_turn": mean([j for j in valid if j["turn"] == 1]),
            "second_turn": mean([j for j in valid if j["turn"] == 2]),
            "average": mean(valid),
            "per_category": {c: mean([j for j in valid if category_of[j["question_id"]] == c]) for c in cats}}


def make_mt_bench(shared: Path) -> None:
    src, out = shared / "evaldata" / "mt_bench", FIXTURES / "mt_bench"
    for name in ("question.jsonl", "judge_prompts.jsonl", "reference_answer/gpt-4.jsonl"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, out / name)
    questions = read_jsonl(src / "question.jsonl")
    category_of = {q["question_id"]: q["category"] for q in questions}
    answer_lines = lines(src / "model_answer" / f"{MT_MODEL}.jsonl")
    judgment_lines = lines(src / "model_judgment" / f"gpt-4_single_{MT_MODEL}.jsonl")
    judgments = [json.loads(x) for x in judgment_lines]
    size = {}
    for j in judgments:
        size[j["question_id"]] = size.get(j["question_id"], 0) + len(j["user_prompt"]) + len(j["judgment"])
    keep = set()
    for cat in sorted(set(category_of.values())):  # the shortest questions (prompts + judgments) of each category
        qids = sorted((size[q], q) for q in size if category_of[q] == cat)
        keep |= {q for _, q in qids[:MT_PER_CATEGORY]}
    write_lines(out / "model_answer" / f"{MT_MODEL}.jsonl", [x for x in answer_lines if json.loads(x)["question_id"] in keep])
    kept = [x for x, j in zip(judgment_lines, judgments) if j["question_id"] in keep]
    write_lines(out / "model_judgment" / f"gpt-4_single_{MT_MODEL}.jsonl", kept)
    expected = mt_bench_scores([json.loads(x) for x in kept], category_of)
    write_json(out / f"expected_scores_{MT_MODEL}.json", {
        "model": MT_MODEL, "judge": "gpt-4", "mode": "single", "question_ids": sorted(keep), **expected,
        "method": "FastChat fastchat/llm_judge/show_result.py (single mode) on this subset of the judgment file: "
                  "drop score == -1, plain mean of score over turn-1 rows, turn-2 rows and all rows; per category "
                  "the mean over both turns; built by scripts/make_fixtures.py."})
    print(f"mt_bench: {len(keep)} questions, {len(kept)} of {len(judgments)} judgments")


# --- HelpSteer -------------------------------------------------------------------------------------


def make_helpsteer(shared: Path) -> None:
    src = shared / "data" / "helpsteer_v1_sample.jsonl"
    rows = lines(src)
    groups = [list(g) for _, g in groupby(rows, key=lambda x: json.loads(x)["prompt"])]
    shortest = sorted(range(len(groups)), key=lambda i: (sum(map(len, groups[i])), i))[:HELPSTEER_PROMPTS]
    kept = [x for i in sorted(shortest) for x in groups[i]]  # whole prompts, in file order
    write_lines(FIXTURES / "helpsteer" / "helpsteer_v1_sample.jsonl", kept)
    print(f"helpsteer: {len(kept)} of {len(rows)} rows ({HELPSTEER_PROMPTS} of {len(groups)} prompts)")


# --- RewardBench (the demo's subset, also read by the tests) and the NeMo-Aligner key list --------


def make_reward_bench(shared: Path) -> None:
    raw = lines(shared / "evaldata" / "rewardbench" / "filtered_first500.jsonl")
    rows = [json.loads(x) for x in raw]
    keep = set()
    for subset in dict.fromkeys(r["subset"] for r in rows):
        mine = sorted((len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"]), r["id"]) for r in rows if r["subset"] == subset)
        keep |= {i for _, i in mine[:RB_PER_SUBSET]}
    kept = [x for x, r in zip(raw, rows) if r["id"] in keep]
    write_lines(REPO / "data" / "demo" / "reward_bench_subset.jsonl", kept)
    shutil.copyfile(shared / "evaldata" / "rewardbench" / "known_model_results.json",
                    FIXTURES / "rewardbench" / "known_model_results.json")
    print(f"reward_bench: {len(kept)} of {len(rows)} rows")


def make_nemo_aligner(shared: Path) -> None:
    name = "nemo_aligner_v0.7.0_config_keys.json"
    (FIXTURES / "nemo_aligner").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / "reference" / name, FIXTURES / "nemo_aligner" / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("RECIPES_SHARED_DIR", str(REPO.parent / "shared")))
    shared = Path(ap.parse_args().shared)
    if not (shared / "evaldata").is_dir():
        raise SystemExit(f"error: {shared}/evaldata not found (give --shared or set RECIPES_SHARED_DIR)")
    (FIXTURES / "rewardbench").mkdir(parents=True, exist_ok=True)
    for make in (make_ifeval, make_mt_bench, make_helpsteer, make_reward_bench, make_nemo_aligner):
        make(shared)


if __name__ == "__main__":
    main()
