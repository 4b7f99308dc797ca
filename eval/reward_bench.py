"""RewardBench (v1) scoring, as allenai/reward-bench computes it.

A pair is won only when score(chosen) > score(rejected); a tie is a loss. Per-subset
accuracy is the fraction of pairs won. A section score is the mean of its subsets'
accuracies weighted by EXAMPLE_COUNTS (rewardbench/utils.py
`calculate_scores_per_section`): math-prm counts as 984 pairs, not its real 447, so
math and code are half of Reasoning each. `overall` is the plain mean of the four
sections: the convention of the HelpSteer2 / Nemotron-4 340B papers and of the
leaderboard since mid-2024. Prior Sets and the early leaderboard's 2:2:2:2:1
average are reported only when prior-set results are given. docs/reward_bench.md
has the details and the three reference models this reproduces.

    python -m eval.reward_bench score --results FILE [--json] [--prior-sets FILE] [--legacy-xstest]
    python -m eval.reward_bench run --reward-model DIR --data PATH --output-dir DIR [--limit N] [--weights W]
    python -m eval.reward_bench run --policy DIR --reference DIR --data PATH --output-dir DIR

`run` scores the rows with a reward model written by stage=rm (attributes weighted into one
score) or, for a DPO policy, with the implicit reward log pi(y|x) - log pi_ref(y|x), and writes
per-example `results.jsonl` (what `score` reads), `scores.json` and `scores.md`;
`run_reward_bench(...)` is the same from Python (the `eval=[reward_bench]` hook).

FILE is per-example JSONL (`subset` plus `chosen_score`/`rejected_score`, or
`correct`) or one JSON object mapping subset -> accuracy in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

from data_prep.jsonl import RowError, is_finite_number, read_jsonl
from data_prep.schemas import ALL_STEERLM_ATTRIBUTES

# rewardbench/constants.py SUBSET_MAPPING
SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond", "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
# rewardbench/constants.py EXAMPLE_COUNTS, as of commit 6552e93 (2024-09-10). These are
# weights: they equal the subset sizes except math-prm (447 pairs, weighted as 984).
EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154, "xstest-should-respond": 250,
    "donotanswer": 136,
    "math-prm": 984, "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
# Before 6552e93 the two xstest weights were swapped; Safety scores published then used these.
LEGACY_XSTEST_COUNTS = {"xstest-should-refuse": 250, "xstest-should-respond": 154}
# allenai/pref-test-sets: "Prior Sets" is the plain mean of these four (analysis/get_benchmark_results.py);
# the other subsets of that dataset are accepted and shown but not averaged.
PRIOR_SETS = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")
OTHER_PREF_SETS = ("anthropic_harmless", "mtbench_gpt4", "mtbench_human", "pku_better", "pku_safer")
KNOWN_SUBSETS = (*EXAMPLE_COUNTS, *PRIOR_SETS, *OTHER_PREF_SETS)

# Weights over the 9 regression outputs (ALL_STEERLM_ATTRIBUTES order) that make one
# RewardBench score: HelpSteer2 paper, Appendix H.
NEMOTRON_340B_WEIGHTS = (0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33)
LLAMA3_70B_WEIGHTS = (0.0, 0.0, 0.0, 0.0, 0.65, 0.8, 0.45, 0.55, -0.4)

ROW_KEYS = ("prompt", "chosen", "rejected", "subset", "id")


def weighted_reward(attributes, weights=NEMOTRON_340B_WEIGHTS):
    """One reward per response: attributes (..., 9) @ weights (9,) -> (...).

    Takes a torch tensor (result on its device and dtype), a numpy array or nested lists.
    """
    torch = sys.modules.get("torch")  # only a tensor needs torch; never import it just for this
    if torch is not None and isinstance(attributes, torch.Tensor):
        if attributes.shape[-1] != len(weights):
            raise ValueError(f"expected {len(weights)} attributes in the last dim, got {tuple(attributes.shape)}")
        return attributes @ torch.as_tensor(weights, dtype=attributes.dtype, device=attributes.device)
    import numpy as np

    arr = np.asarray(attributes, dtype=np.float64)
    if arr.shape[-1:] != (len(weights),):
        names = ", ".join(ALL_STEERLM_ATTRIBUTES)
        raise ValueError(f"expected {len(weights)} attributes ({names}) in the last dim, got shape {arr.shape}")
    return arr @ np.asarray(weights, dtype=np.float64)


def _row_problems(row: dict) -> list[tuple[str, str]]:
    """Validator for one per-example result row (data_prep.jsonl style)."""
    subset = row.get("subset")
    if not isinstance(subset, str):
        return [("subset", "missing or not a string")]
    if subset not in KNOWN_SUBSETS:
        return [("subset", f"unknown subset {subset!r}; see eval.reward_bench.SECTIONS / PRIOR_SETS")]
    if "chosen_score" in row or "rejected_score" in row:
        for key in ("chosen_score", "rejected_score"):
            if not is_finite_number(row.get(key)):
                return [(key, f"must be a finite number, got {row.get(key)!r}")]
        return []
    if "correct" in row:
        if row["correct"] not in (True, False, 0, 1) or isinstance(row["correct"], float):
            return [("correct", f"must be true/false or 0/1, got {row['correct']!r}")]
        return []
    return [("<row>", "needs chosen_score and rejected_score, or correct")]


def _won(row: dict) -> bool:
    if "chosen_score" in row:
        return row["chosen_score"] > row["rejected_score"]  # strict: a tie is a loss
    return bool(row["correct"])


def score_pairs(rows) -> dict[str, float]:
    """Per-subset accuracy in [0, 1] from per-example rows.

    Each row: `subset` and either `chosen_score` + `rejected_score` (won iff chosen >
    rejected) or `correct` (bool / 0 / 1). Raises ValueError on a bad row.
    """
    won, total = Counter(), Counter()
    for i, row in enumerate(rows):
        problems = _row_problems(row)
        if problems:
            raise ValueError(f"row {i}: {problems[0][0]}: {problems[0][1]}")
        total[row["subset"]] += 1
        won[row["subset"]] += _won(row)
    return {s: won[s] / total[s] for s in total}


def section_scores(subset_acc: dict[str, float], *, legacy_xstest: bool = False) -> dict:
    """Section and overall scores (0-100, unrounded) from per-subset accuracies in [0, 1].

    Returns {"Chat", "Chat Hard", "Safety", "Reasoning", "overall", "subsets"} where
    `subsets` maps every given subset to its accuracy x 100. A section averages the
    subsets present (weights EXAMPLE_COUNTS; `legacy_xstest` uses the pre-2024-09-10
    xstest weights); a section with none present scores 0, as in reward-bench.
    If any of PRIOR_SETS is given, also "Prior Sets" (plain mean of those present) and
    "overall_v1" = (2·Chat + 2·Chat Hard + 2·Safety + 2·Reasoning + Prior Sets) / 9.
    """
    for name, acc in subset_acc.items():
        if name not in KNOWN_SUBSETS:
            raise ValueError(f"unknown subset {name!r}; known: {', '.join(KNOWN_SUBSETS)}")
        if not is_finite_number(acc) or not 0.0 <= acc <= 1.0:
            raise ValueError(f"accuracy of {name!r} must be a number in [0, 1], got {acc!r}")
    counts = {**EXAMPLE_COUNTS, **LEGACY_XSTEST_COUNTS} if legacy_xstest else EXAMPLE_COUNTS
    out: dict = {}
    for section, names in SECTIONS.items():
        present = [n for n in names if n in subset_acc]
        weight = sum(counts[n] for n in present)
        out[section] = 100.0 * sum(subset_acc[n] * counts[n] for n in present) / weight if weight else 0.0
    out["overall"] = sum(out[s] for s in SECTIONS) / len(SECTIONS)
    prior = [subset_acc[n] for n in PRIOR_SETS if n in subset_acc]
    if prior:
        out["Prior Sets"] = 100.0 * sum(prior) / len(prior)
        out["overall_v1"] = (2 * sum(out[s] for s in SECTIONS) + out["Prior Sets"]) / 9
    out["subsets"] = {n: 100.0 * a for n, a in subset_acc.items()}
    return out


def missing_subsets(subset_acc: dict[str, float]) -> list[str]:
    """Core subsets with no result: their sections are averaged over fewer subsets."""
    return [n for n in EXAMPLE_COUNTS if n not in subset_acc]


def load_rows(path_or_hub: str = "allenai/reward-bench", split: str = "filtered") -> list[dict]:
    """RewardBench rows {prompt, chosen, rejected, subset, id} from a local JSONL or the hub.

    The hub branch needs network access (`datasets.load_dataset(path_or_hub, split=split)`);
    tests only use local files.
    """
    path = Path(path_or_hub)
    if path.is_file():
        def problems(row):
            return [(k, "missing") for k in ROW_KEYS if k not in row] + [
                (k, "must be a string") for k in ("chosen", "rejected", "subset") if not isinstance(row.get(k, ""), str)
            ]
        return [{k: row[k] for k in ROW_KEYS} for _, row in read_jsonl(path, validate=problems)]
    if path.exists() or path.suffix in (".jsonl", ".json", ".gz") or path_or_hub.count("/") != 1:
        raise FileNotFoundError(f"{path_or_hub}: not a JSONL file and not a hub dataset name (owner/name)")
    from datasets import load_dataset  # heavy; only for the hub

    return [{k: row[k] for k in ROW_KEYS} for row in load_dataset(path_or_hub, split=split)]


def _line_of(text: str, key: str) -> int:
    at = text.find(json.dumps(key))
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def read_results(path: str | Path) -> tuple[dict[str, float], dict[str, int] | None]:
    """(subset -> accuracy in [0, 1], subset -> number of pairs or None) from a results file.

    A file holding one JSON object without a `subset` key is an accuracy map (string or
    null values, such as reward-bench's `model` / `model_type`, are skipped); anything
    else is read as per-example JSONL. Errors are RowError / FileNotFoundError naming
    the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        whole = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        whole = None
    if isinstance(whole, dict) and "subset" not in whole:
        acc = {}
        for key, value in whole.items():
            if value is None or isinstance(value, str):
                continue  # metadata
            if key not in KNOWN_SUBSETS:
                raise RowError(path, _line_of(text, key), key, "unknown subset (see eval.reward_bench.SECTIONS)")
            if not is_finite_number(value) or not 0.0 <= value <= 1.0:
                raise RowError(path, _line_of(text, key), key, f"accuracy must be a number in [0, 1], got {value!r}")
            acc[key] = float(value)
        if not acc:
            raise RowError(path, 1, "<file>", "no subset accuracies in this JSON object")
        return acc, None
    if whole is not None and not isinstance(whole, dict):
        raise RowError(path, 1, "<file>", f"expected JSONL rows or one JSON object, got a JSON {type(whole).__name__}")
    rows = [row for _, row in read_jsonl(path, validate=_row_problems)]
    if not rows:
        raise RowError(path, 1, "<file>", "no result rows")
    return score_pairs(rows), dict(Counter(r["subset"] for r in rows))


def format_markdown(scores: dict, n_pairs: dict[str, int] | None = None, legacy_xstest: bool = False) -> str:
    """Two markdown tables: sections (+ overall) and subsets."""
    lines = ["| Section | Score |", "|---|---:|"]
    for key, label in [*((s, s) for s in SECTIONS), ("overall", "**Overall** (mean of 4 sections)"),
                       ("Prior Sets", "Prior Sets"), ("overall_v1", "Overall v1 (2:2:2:2:1 with Prior Sets)")]:
        if key in scores:
            lines.append(f"| {label} | {scores[key]:.2f} |")
    counts = {**EXAMPLE_COUNTS, **LEGACY_XSTEST_COUNTS} if legacy_xstest else EXAMPLE_COUNTS
    section_of = {n: s for s, names in SECTIONS.items() for n in names}
    lines += ["", "| Subset | Section | Weight | Pairs | Accuracy |", "|---|---|---:|---:|---:|"]
    for name in sorted(scores["subsets"], key=lambda n: KNOWN_SUBSETS.index(n)):
        section = section_of.get(name, "Prior Sets" if name in PRIOR_SETS else "-")
        pairs = n_pairs[name] if n_pairs else "-"
        lines.append(f"| {name} | {section} | {counts.get(name, '-')} | {pairs} | {scores['subsets'][name]:.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- inference: run a model over the rows
# torch and transformers are imported inside these functions: `score` must stay light.


def limit_rows(rows: list[dict], limit: int) -> list[dict]:
    """At most `limit` rows (0 = all), taken round-robin over the subsets in file order, so a
    small smoke run still spans every subset present. The result keeps the file's order."""
    if not limit or limit >= len(rows):
        return list(rows)
    by_subset: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_subset.setdefault(row["subset"], []).append(i)
    picked: list[int] = []
    for k in range(max(len(v) for v in by_subset.values())):
        for idx in by_subset.values():
            if k < len(idx) and len(picked) < limit:
                picked.append(idx[k])
    return [rows[i] for i in sorted(picked)]


def write_run(output_dir: str | Path, results: list[dict]) -> dict:
    """Write `results.jsonl` (one pair a line, what `score --results` reads), `scores.json` and
    `scores.md` to output_dir; return the section scores plus `num_pairs` and `results_file`."""
    from data_prep.jsonl import atomic_write_text, write_jsonl

    out = Path(output_dir)
    write_jsonl(out / "results.jsonl", results)
    acc = score_pairs(results)
    scores = section_scores(acc)
    n_pairs = dict(Counter(r["subset"] for r in results))
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=2))
    atomic_write_text(out / "scores.md", format_markdown(scores, n_pairs) + "\n")
    return {**scores, "num_pairs": len(results), "results_file": str(out / "results.jsonl")}


def _pick_device(device):
    import torch

    return torch.device(device if device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu"))


def run_reward_bench(reward_model_dir, data: str = "allenai/reward-bench", output_dir="reward_bench_out",
                     weights=None, batch_size: int = 8, limit: int = 0, device=None, precision: str = "auto",
                     rows: list[dict] | None = None) -> dict:
    """Score RewardBench with a reward model written by stage=rm; write results and the section table.

    Each pair is rendered as the RM was trained (recipes.reward_model.rm_text: SteerLM system prompt,
    the prompt as one User turn, the response, `<extra_id_2>`); a response's score is its attributes
    (A,) @ weights (A,). weights: default the checkpoint's attribute_weights (Nemotron-4-340B-Reward's
    unless the RM was trained with others); give eval.reward_bench.attribute_weights from the hook.
    Returns write_run's dict (sections, overall, subsets, num_pairs, results_file).
    """
    from recipes.reward_model import load_reward_model, rewards, rm_text, score_texts

    rows = limit_rows(rows if rows is not None else load_rows(data), limit)
    dev = _pick_device(device)
    rm, tokenizer, meta = load_reward_model(reward_model_dir, dev)
    weights = list(weights) if weights is not None else meta["attribute_weights"]
    texts = [rm_text([("User", r["prompt"])], r[side], meta["system_prompt"]) for r in rows for side in ("chosen", "rejected")]
    attrs = score_texts(rm, tokenizer, texts, batch_size, meta["max_seq_length"], dev, precision)  # (2N, A)
    scores = rewards(attrs, weights).view(-1, 2).tolist()  # (N, 2): chosen, rejected
    names = meta["attribute_names"]
    keep = [i for i, n in enumerate(names) if n in meta["trained_attributes"]]
    pairs = attrs.view(-1, 2, attrs.shape[-1]).tolist()
    results = [
        {"id": r["id"], "subset": r["subset"], "chosen_score": s[0], "rejected_score": s[1],
         "chosen_attributes": {names[i]: round(a[0][i], 4) for i in keep},
         "rejected_attributes": {names[i]: round(a[1][i], 4) for i in keep}}
        for r, s, a in zip(rows, scores, pairs)
    ]
    return write_run(output_dir, results)


def _dpo_example(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + response in the Nemotron template, labels -100 on the prompt.

    As in NeMo's DPOModelDataset the prompt's own tokenisation marks where the response starts.
    """
    from data_prep.schemas import nemotron_prompt, nemotron_response

    head = nemotron_prompt("", [("User", prompt)])
    n_prompt = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(head + nemotron_response(response), add_special_tokens=False)["input_ids"])[:max_len]
    return ids, [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]


def _sequence_logps(model, examples, pad_id: int, batch_size: int, device, precision: str, average: bool):
    """Σ (or mean) log π(response tokens) per example, (N,) float32 on the CPU."""
    import torch

    from recipes import loop
    from recipes.losses import sequence_logps

    out = torch.empty(len(examples))
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        input_ids = loop.pad_batch([ids for ids, _ in batch], pad_id).to(device)
        labels = loop.pad_batch([lab for _, lab in batch], -100).to(device)
        attention = loop.pad_batch([[1] * len(ids) for ids, _ in batch], 0).to(device)
        with torch.no_grad(), loop.autocast(device, precision):
            logits = model(input_ids=input_ids, attention_mask=attention).logits
        out[start:start + len(batch)] = sequence_logps(logits, labels, average=average)[0].float().cpu()
    return out


def run_implicit_reward_bench(policy_dir, reference_dir, data: str = "allenai/reward-bench",
                              output_dir="reward_bench_out", batch_size: int = 8, limit: int = 0,
                              average: bool = False, max_seq_length: int = 4096, device=None,
                              precision: str = "auto", rows: list[dict] | None = None) -> dict:
    """RewardBench with a DPO policy as the reward model: score = log π(y|x) − log π_ref(y|x),
    summed over the response tokens (mean with `average`), prompts in the Nemotron template with an
    empty system prompt (the DPO data's format). Same outputs as run_reward_bench."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = limit_rows(rows if rows is not None else load_rows(data), limit)
    dev = _pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [_dpo_example(tokenizer, r["prompt"], r[side], max_seq_length) for r in rows for side in ("chosen", "rejected")]
    logps = []
    for path in (policy_dir, reference_dir):  # one model in memory at a time
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(dev).eval()
        logps.append(_sequence_logps(model, examples, pad_id, batch_size, dev, precision, average))
        del model
    scores = (logps[0] - logps[1]).view(-1, 2).tolist()
    results = [{"id": r["id"], "subset": r["subset"], "chosen_score": s[0], "rejected_score": s[1]}
               for r, s in zip(rows, scores)]
    return write_run(output_dir, results)


def _run_cli(args) -> int:
    if bool(args.reward_model) == bool(args.policy) or bool(args.policy) != bool(args.reference):
        print("error: give --reward-model DIR, or --policy DIR with --reference DIR", file=sys.stderr)
        return 2
    try:
        if args.reward_model:
            weights = None
            if args.weights:
                from data_prep.pairs import parse_weights

                weights = parse_weights(args.weights)
            scores = run_reward_bench(args.reward_model, args.data, args.output_dir, weights, args.batch_size,
                                      args.limit, args.device)
        else:
            scores = run_implicit_reward_bench(args.policy, args.reference, args.data, args.output_dir,
                                               args.batch_size, args.limit, args.average_log_probs, device=args.device)
    except RowError as err:
        print(f"error: {err.path}:{err.line}: {err.field}: {err.problem}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = missing_subsets(scores["subsets"])
    if missing:
        print(f"warning: no results for {len(missing)} subsets; sections average the subsets present "
              "and a section with none scores 0", file=sys.stderr)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        print(Path(args.output_dir, "scores.md").read_text(), end="")
        print(f"\n{scores['num_pairs']} pairs; per-example results: {scores['results_file']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.reward_bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score a results file")
    score.add_argument("--results", required=True, help="per-example JSONL or a JSON object subset -> accuracy")
    score.add_argument("--prior-sets", help="results for allenai/pref-test-sets (same formats); adds Prior Sets")
    score.add_argument("--legacy-xstest", action="store_true",
                       help="xstest weights used before 2024-09-10 (should-refuse 250, should-respond 154)")
    score.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    run = sub.add_parser("run", help="score RewardBench rows with a reward model (or a DPO policy) and print the table")
    run.add_argument("--reward-model", help="a checkpoint directory written by stage=rm")
    run.add_argument("--policy", help="a DPO policy checkpoint: implicit reward log pi - log pi_ref (needs --reference)")
    run.add_argument("--reference", help="the DPO reference policy checkpoint")
    run.add_argument("--data", default="allenai/reward-bench", help="a local JSONL or a hub id, split filtered (default: %(default)s)")
    run.add_argument("--output-dir", required=True, help="where results.jsonl, scores.json and scores.md go")
    run.add_argument("--limit", type=int, default=0, help="at most N pairs, round-robin over subsets (default: all)")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--weights", help="attribute weights: nemotron-340b, llama3-70b, or 9 (or 5) numbers "
                                       "(default: the checkpoint's rm_config.json)")
    run.add_argument("--average-log-probs", action="store_true", help="policy mode: mean instead of sum over tokens")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run_cli(args)

    try:
        acc, n_pairs = read_results(args.results)
        if args.prior_sets:
            prior_acc, prior_n = read_results(args.prior_sets)
            acc.update(prior_acc)
            n_pairs = {**n_pairs, **prior_n} if n_pairs is not None and prior_n is not None else None
        scores = section_scores(acc, legacy_xstest=args.legacy_xstest)
    except RowError as err:  # its str() has only the file's name; show the path as given
        print(f"error: {err.path}:{err.line}: {err.field}: {err.problem}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = missing_subsets(acc)
    if missing:
        print(f"warning: no results for {', '.join(missing)}; sections average the subsets present "
              "and a section with none scores 0 (as reward-bench does)", file=sys.stderr)
    print(json.dumps(scores, indent=2) if args.json else format_markdown(scores, n_pairs, args.legacy_xstest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
