"""Throughput of the data-prep converters on synthetic inputs; prints a markdown table (docs/data_prep.md).

    .venv/bin/python bench/bench_data_prep.py [--prompts 10681] [--repeats 3]

* HelpSteer2-sized: 21,362 rows = 10,681 prompts x 2 responses, prompt ~713 and response ~1,493 characters
  (HelpSteer2 paper, Table 2), through `convert_helpsteer2` (SFT, regression and DPO files, 5% validation).
* SDG -> pairs: records of 4 responses with attributes, through `convert_sdg` (SFT + DPO + pairwise RM files).

Each case runs with and without decontamination (against the real MT-Bench, IFEval and RewardBench prompts
under ../shared/evaldata when present, else 1,200 synthetic evaluation prompts). "rows" are input lines
(SDG: responses); time covers reading, validation, filtering, building and writing every output
(input synthesis excluded), best of --repeats runs. Outputs above 20 MB are written by two processes
(data_prep.report.write_outputs), so CPU seconds can exceed wall seconds; `--no-fork` writes them all in this
process (what the fork saves, docs/data_prep.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.helpsteer2 import convert_helpsteer2  # noqa: E402
from data_prep.sdg import convert_sdg  # noqa: E402

EVAL_FILES = ["mt_bench/question.jsonl", "ifeval/input_data.jsonl", "rewardbench/filtered_first500.jsonl"]


def _text(rng: random.Random, vocab: list[str], chars: int) -> str:
    words, n = [], 0
    while n < chars:
        w = rng.choice(vocab)
        words.append(w)
        n += len(w) + 1
    return " ".join(words)[:chars]


def synth_helpsteer2(path: Path, n_prompts: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)] + ["the", "a", "of", "and", "to", "in", "is", "that", "for", "it"]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_prompts):
            prompt = _text(rng, vocab, 713)
            for _ in range(2):
                row = {"prompt": prompt, "response": _text(rng, vocab, 1493),
                       **{a: rng.randint(0, 4) for a in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}}
                f.write(json.dumps(row) + "\n")
    return 2 * n_prompts


def synth_sdg(path: Path, n_prompts: int, seed: int = 1) -> tuple[int, int]:
    rng = random.Random(seed)
    vocab = [f"v{i}" for i in range(5000)] + ["the", "a", "of", "and", "to", "in", "is", "that", "for", "it"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_prompts):
            responses = [{"text": _text(rng, vocab, 1493), "model": f"m{k}",
                          "attributes": {a: round(rng.uniform(0, 4), 2) for a in
                                         ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}}
                         for k in range(4)]
            f.write(json.dumps({"id": i, "prompt": _text(rng, vocab, 713), "responses": responses}) + "\n")
    return n_prompts, 4 * n_prompts


def eval_files(tmp: Path) -> tuple[list[str], str]:
    shared = Path(os.environ.get("RECIPES_SHARED_DIR", REPO.parent / "shared")) / "evaldata"
    real = [str(shared / f) for f in EVAL_FILES]
    if all(Path(p).exists() for p in real):
        return real, "MT-Bench + IFEval + RewardBench (1,201 prompts)"
    rng, path = random.Random(2), tmp / "eval.jsonl"
    with open(path, "w") as f:
        for _ in range(1200):
            f.write(json.dumps({"prompt": " ".join(f"e{rng.randrange(20000)}" for _ in range(60))}) + "\n")
    return [str(path)], "1,200 synthetic prompts"


def best_time(fn, repeats: int) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds of this process and its forked writer) over `repeats` runs.

    CPU time barely moves when other jobs share the machine; wall time does, so both are printed."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        c0, t0 = _cpu(), time.perf_counter()
        out = fn()
        best = min(best, (time.perf_counter() - t0, _cpu() - c0))
        shutil.rmtree(out)  # outside the timed region: each run writes into a fresh directory
    return best


def run(convert, src: Path, out: Path, **options) -> Path:
    convert(str(src), out, **options)
    return out


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=10681, help="HelpSteer2 prompts (x2 rows); SDG uses half as many")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-fork", action="store_true", help="write every output in this process (no forked writer)")
    a = ap.parse_args()
    if a.no_fork:
        from data_prep import report

        report.PARALLEL_MIN_BYTES = 1 << 62
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        hs2, sdg = tmp / "hs2.jsonl", tmp / "sdg.jsonl"
        n_hs2 = synth_helpsteer2(hs2, a.prompts)
        n_rec, n_resp = synth_sdg(sdg, a.prompts // 2)
        evals, eval_desc = eval_files(tmp)
        decon = {"decontaminate": evals}
        cases = [
            ("HelpSteer2 -> SFT + regression + DPO pairs", n_hs2, f"{n_hs2:,} rows",
             lambda: run(convert_helpsteer2, hs2, tmp / "o1", val_fraction=0.05)),
            ("  same, with decontamination", n_hs2, f"{n_hs2:,} rows",
             lambda: run(convert_helpsteer2, hs2, tmp / "o2", val_fraction=0.05, filters=decon)),
            ("SDG (4 responses/prompt) -> SFT + DPO + RM pairs, best_vs_worst (dpo preset)", n_resp,
             f"{n_rec:,} records = {n_resp:,} responses", lambda: run(convert_sdg, sdg, tmp / "o3")),
            ("  same, with decontamination", n_resp, f"{n_rec:,} records = {n_resp:,} responses",
             lambda: run(convert_sdg, sdg, tmp / "o4", filters=decon)),
            ("SDG, all_pairs (rpo preset): up to 6 pairs per prompt", n_resp, f"{n_rec:,} records = {n_resp:,} responses",
             lambda: run(convert_sdg, sdg, tmp / "o5", pairs={"mode": "all_pairs"}, preset="rpo")),
        ]
        print(f"Decontamination against {eval_desc}; 13-grams. Best of {a.repeats} runs; {os.cpu_count()} CPU cores; "
              f"load average {os.getloadavg()[0]:.1f} at start; {'no' if a.no_fork else 'with the'} forked writer.\n")
        print("| case | input | wall s | rows/s (wall) | CPU s | rows per CPU-s |")
        print("|---|---|---:|---:|---:|---:|")
        for name, n, what, fn in cases:
            wall, cpu = best_time(fn, a.repeats)
            print(f"| {name} | {what} | {wall:.2f} | {n / wall:,.0f} | {cpu:.2f} | {n / cpu:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
