"""AlpacaEval 2.0 (Dubois et al. 2024): 805 instructions; a GPT-4-Turbo judge compares each output of the model
with gpt4_1106_preview's, and the win rate is the mean preference. Everything is alpaca-eval 0.6.6's:

- judge request: annotator `weighted_alpaca_eval_gpt4_turbo`, its config and prompt as the package ships them
  (`evaluators_configs/`): the prompt's `{instruction}`, `{output_1}`, `{output_2}` replaced by their first
  occurrence, in order (alpaca_eval `utils.make_prompts`, not `str.format`), the ChatML text split into
  system + user messages (`utils.prompt_to_chatml`), sent with the config's max_tokens 1, temperature 1,
  logprobs, top_logprobs 5; the outputs swapped exactly when `random.Random("is_switched_outputs" + instruction
  + "0")` picks True (RandomSwitchTwoColumnsProcessor, seed 0); identical outputs get 1.5 without a call;
- preference (logprob_parser, not binarized): `2 - P(m) / (P(m) + P(M))` from the first token's top_logprobs,
  a missing token counting as probability 0, NaN when neither is there; `3 - p` when the outputs were swapped;
- win rate, standard error, discrete win rate and counts exactly as `alpaca_eval.metrics.get_winrate`;
- the length-controlled win rate by the package's own `get_length_controlled_winrate`, which needs the hub
  file `df_gamed.csv` of `tatsu-lab/alpaca_eval`; without it the summary says so in one line.

Files, in alpaca_eval's layouts: `model_outputs.json` ({instruction, output, generator, dataset}) and
`annotations.json`; both are caches, so a rerun pays for nothing twice.

    python -m eval.alpaca_eval score --annotations annotations.json [--json] [--reparse] [--df-gamed df_gamed.csv]
    python -m eval.alpaca_eval run --base-url http://localhost:8000/v1 --model m --output-dir out/ --limit 20
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_prep.jsonl import RowError, atomic_write_text, read_jsonl
from eval.clients import GenerationError, SamplingParams, add_client_args, client_from_args
from eval.judging import JudgeError, add_judge_args, call_in_chunks, check_failures, judge_from_args

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
BASELINE = "gpt4_1106_preview"
HUB_DATASET, HUB_EVAL_SET = "tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"
N_INSTRUCTIONS = 805
PLACEHOLDER = re.compile(r"{([^ \s]+?)}")  # alpaca_eval utils.make_prompts


@dataclass
class Annotator:
    name: str
    template: str  # ChatML text with {instruction}, {output_1}, {output_2}
    judge_model: str
    completions_kwargs: dict  # max_tokens, temperature, logprobs, top_logprobs
    numerator_token: str
    denominator_tokens: list[str]


# --- judge request and preference --------------------------------------------------------------


def package_dir() -> Path | None:
    """alpaca_eval's installed package directory, found without importing it."""
    spec = importlib.util.find_spec("alpaca_eval")
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def load_annotator(config_file: str | os.PathLike | None = None) -> Annotator:
    """The annotator config (`configs.yaml`) and its prompt: the package's, or a copy (prompt next to it)."""
    import yaml

    if config_file is None:
        pkg = package_dir()
        if pkg is None:
            raise FileNotFoundError("no AlpacaEval judge config: pip install 'alpaca-eval==0.6.6' or pass the config")
        config_file = pkg / "evaluators_configs" / ANNOTATOR / "configs.yaml"
    config_file = Path(config_file)
    (name, c), = yaml.safe_load(config_file.read_text()).items()
    parser = c.get("completion_parser_kwargs", {})
    weighted = c.get("fn_completion_parser") == "logprob_parser" and not parser.get("is_binarize", True)
    if not weighted or c.get("batch_size", 1) != 1:
        raise ValueError(f"{config_file}: only weighted logprob annotators (logprob_parser, is_binarize false, "
                         "batch_size 1) are implemented")
    rel = Path(c["prompt_template"])
    prompt = next((p for p in (config_file.parent / rel.name, config_file.parent.parent / rel) if p.is_file()), None)
    if prompt is None:
        raise FileNotFoundError(f"{config_file}: prompt template {rel} not found next to it or in ../{rel}")
    kwargs = dict(c["completions_kwargs"])
    return Annotator(name, prompt.read_text(), kwargs.pop("model_name"), kwargs, parser["numerator_token"],
                     list(parser["denominator_tokens"]))


def fill_template(template: str, values: dict) -> str:
    """Each placeholder replaced once, the first occurrence, in order of first appearance (make_prompts)."""
    for key in dict.fromkeys(PLACEHOLDER.findall(template)):
        template = template.replace("{" + key + "}", str(values[key]), 1)
    return template


def chatml_to_messages(prompt: str) -> list[dict]:
    """alpaca_eval `utils.prompt_to_chatml` for plain roles: `<|im_start|>role\\ncontent<|im_end|>` blocks."""
    prompt = prompt.strip()
    if not (prompt.startswith("<|im_start|>") and prompt.endswith("<|im_end|>")):
        raise ValueError("judge prompt is not ChatML (<|im_start|>role ... <|im_end|>)")
    messages = []
    for part in prompt.split("<|im_start|>")[1:]:
        role, _, rest = part.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return messages


def is_switched(instruction: str, seed: int = 0) -> bool:
    """RandomSwitchTwoColumnsProcessor's choice: output_2 is shown first when True."""
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[0]


def judge_request(ann: Annotator, instruction: str, output_1: str, output_2: str) -> dict:
    """The chat-completions body for one comparison (no `model`: the judge client fills it in)."""
    a, b = (output_2, output_1) if is_switched(instruction) else (output_1, output_2)
    prompt = fill_template(ann.template, {"instruction": instruction, "output_1": a, "output_2": b})
    return {"messages": chatml_to_messages(prompt), **ann.completions_kwargs}


def parse_preference(ann: Annotator, choice: dict) -> float:
    """logprob_parser on the only token (batch_size 1): 2 - P(numerator) / P(denominators), NaN if unreadable."""
    import numpy as np
    from scipy.special import logsumexp

    try:
        content = choice["logprobs"]["content"]
        if len(content) != 1:  # alpaca_eval: a batch of the wrong size gives no annotation
            return math.nan
        tokens = ann.denominator_tokens + [ann.numerator_token]
        logprobs = {t["token"]: t["logprob"] for t in content[0]["top_logprobs"] if t["token"] in tokens}
    except (KeyError, TypeError, IndexError):
        return math.nan
    if not logprobs:
        return math.nan
    numerator = logprobs.get(ann.numerator_token, -math.inf)
    denominator = logsumexp([logprobs.get(t, -math.inf) for t in ann.denominator_tokens])
    return float(2 - np.exp(numerator - denominator))


def preference(ann: Annotator, instruction: str, choice: dict) -> float:
    """The stored preference: 1 = output_1 (the baseline) better, 2 = output_2 (the model) better."""
    p = parse_preference(ann, choice)
    return 3 - p if is_switched(instruction) else p


# --- scores ------------------------------------------------------------------------------------


def get_winrate(preferences: list) -> dict:
    """alpaca_eval.metrics.get_winrate (AbsoluteScoringRule, ZeroOneScoringRule for the discrete rate); win rates
    and standard error in percent. None and NaN are no preference; 0 is the old code for a draw."""
    import numpy as np

    p = np.array([math.nan if x is None else float(x) for x in preferences], dtype=float)
    p[p == 0] = 1.5
    valid = (p >= 1) & (p <= 2)  # validate_alpacaeval_preference; NaN fails both
    x = p[valid] - 1
    # ZeroOneScoringRule: 1.5 -> 0 (a draw), round half to even (pandas), then 0 -> 1.5 again
    q = np.where(p == 1.5, 0.0, np.round(p))
    q[q == 0] = 1.5
    q_valid = q[(q >= 1) & (q <= 2)] - 1
    n = len(x)
    return {
        "win_rate": float(x.mean() * 100) if n else math.nan,
        "standard_error": float(x.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else math.nan,
        "n_wins": int((x > 0.5).sum()), "n_wins_base": int((x < 0.5).sum()), "n_draws": int((p == 1.5).sum()),
        "n_total": n,
        "discrete_win_rate": float(q_valid.mean() * 100) if len(q_valid) else math.nan,
    }


def _glm_module():
    """alpaca-eval's metrics/glm_winrate.py, imported without running the package's __init__ (it imports every
    annotator, decoder and API client and loads a .env file into the environment). alpaca_eval.utils does
    `import pkg_resources`, which setuptools >= 81 no longer ships: for that import only, a stand-in with the
    two functions utils calls (neither is used on the length-controlled path) is put in its place."""
    if "alpaca_eval" not in sys.modules:
        pkg = package_dir()
        if pkg is None:
            raise ImportError("alpaca-eval is not installed (pip install 'alpaca-eval==0.6.6')")
        bare = types.ModuleType("alpaca_eval")
        bare.__path__ = [str(pkg)]
        sys.modules["alpaca_eval"] = bare
    if importlib.util.find_spec("pkg_resources") is not None:
        return importlib.import_module("alpaca_eval.metrics.glm_winrate")
    from packaging.version import parse

    standin = types.ModuleType("pkg_resources")
    standin.parse_version = parse
    standin.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
    sys.modules["pkg_resources"] = standin
    try:
        return importlib.import_module("alpaca_eval.metrics.glm_winrate")
    finally:
        del sys.modules["pkg_resources"]


def length_controlled(rows: list[dict], df_gamed: str | None = None) -> dict:
    """alpaca-eval's get_length_controlled_winrate on the annotations, or a one-line note saying why not."""
    none = {"length_controlled_winrate": None, "lc_standard_error": None}
    if len(rows) != N_INSTRUCTIONS:
        return {**none, "length_controlled_note": f"not computed: the GLM needs all {N_INSTRUCTIONS} instructions of "
                f"the eval set, in order (have {len(rows)})"}
    if df_gamed is None:
        from huggingface_hub import hf_hub_download

        try:  # the download get_length_controlled_winrate makes, done first so that failing gives one clear line
            df_gamed = hf_hub_download(repo_id=HUB_DATASET, filename="df_gamed.csv", repo_type="dataset")
        except Exception as e:  # noqa: BLE001 - offline, no route to the hub, not cached: all the same to the user
            return {**none, "length_controlled_note": f"not computed: it needs df_gamed.csv of the hub dataset "
                    f"{HUB_DATASET}, which could not be loaded ({type(e).__name__}); give a local copy with "
                    "eval.alpaca_eval.df_gamed (CLI --df-gamed)"}
    try:
        glm = _glm_module()
    except ImportError as e:
        return {**none, "length_controlled_note": f"not computed: {e}"}
    import warnings

    import pandas as pd
    import sklearn

    df = pd.DataFrame([{k: r[k] for k in ("instruction", "output_1", "output_2", "generator_1", "generator_2",
                                          "annotator", "preference")} for r in rows])
    df["preference"] = df["preference"].astype(float)
    fetch, glm.hf_hub_download = glm.hf_hub_download, lambda **kw: str(df_gamed)
    # config_context: the function turns on sklearn's metadata routing for the whole process; this undoes it.
    try:
        with warnings.catch_warnings(), sklearn.config_context():
            warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.8+ deprecations inside alpaca-eval's fit
            out = glm.get_length_controlled_winrate(df, save_weights_dir=None, is_add_glm_preference_inplace=False)
    finally:
        glm.hf_hub_download = fetch
    return {"length_controlled_winrate": float(out["length_controlled_winrate"]),
            "lc_standard_error": float(out["lc_standard_error"])}


def summarize(rows: list[dict], df_gamed: str | None = None) -> dict:
    """The leaderboard row of a set of annotations: get_winrate, avg_length and the length-controlled win rate."""
    summary = get_winrate([r.get("preference") for r in rows])
    lengths = [len(r["output_2"]) for r in rows]
    summary["avg_length"] = int(sum(lengths) / len(lengths)) if lengths else 0
    summary.update(length_controlled(rows, df_gamed))
    summary["n_unparsed"] = sum(r.get("preference") is None or r["preference"] != r["preference"] for r in rows)
    for key, field in (("model", "generator_2"), ("baseline", "generator_1"), ("annotator", "annotator")):
        summary[key] = ", ".join(sorted({str(r.get(field)) for r in rows}))
    return {k: None if isinstance(v, float) and v != v else v for k, v in summary.items()}  # NaN is not JSON


def markdown_table(s: dict) -> str:
    fmt = lambda x: "-" if x is None or x != x else f"{x:.2f}"  # noqa: E731
    lc = fmt(s["length_controlled_winrate"]) if s["length_controlled_winrate"] is not None else \
        f"- ({s.get('length_controlled_note', '')})"
    return "\n".join([
        f"AlpacaEval 2.0, model {s['model']} vs {s['baseline']}, annotator {s['annotator']}: {s['n_total']} "
        f"preferences ({s['n_wins']} wins, {s['n_wins_base']} losses, {s['n_draws']} draws, {s['n_unparsed']} "
        "unparsed)", "", "| metric | value |", "|---|---|",
        f"| length-controlled win rate (%) | {lc} |", f"| win rate (%) | {fmt(s['win_rate'])} |",
        f"| standard error | {fmt(s['standard_error'])} |", f"| discrete win rate (%) | {fmt(s['discrete_win_rate'])} |",
        f"| average length (characters) | {s['avg_length']} |"]) + "\n"


# --- files ---------------------------------------------------------------------------------------


def read_rows(path: str | os.PathLike) -> list[dict]:
    """A JSON list (alpaca_eval's files; .gz too) or JSONL."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
    if head == "[":
        with opener(path, "rt", encoding="utf-8") as f:
            rows = json.load(f)
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: every element must be an object")
        return rows
    return [row for _, row in read_jsonl(path)]


def _check(rows: list[dict], path, fields: tuple[str, ...]) -> list[dict]:
    for i, row in enumerate(rows, 1):
        for name in fields:
            if not isinstance(row.get(name), str):
                raise RowError(path, i, name, "missing or not a string")
    return rows


def load_eval_set(path: str | os.PathLike | None = None) -> list[dict]:
    """The baseline's rows {instruction, output, generator, dataset}, in eval-set order: a local file (alpaca_eval's
    reference outputs, or annotations, whose output_1 is the baseline), else the hub's alpaca_eval_gpt4_baseline."""
    if path is None:
        from huggingface_hub import hf_hub_download  # hub path only; the tests run offline on local files

        path = hf_hub_download(repo_id=HUB_DATASET, filename=HUB_EVAL_SET, repo_type="dataset")
    rows = read_rows(path)
    if rows and "output_1" in rows[0]:
        rows = [{"instruction": r.get("instruction"), "output": r.get("output_1"), "generator": r.get("generator_1"),
                 "dataset": r.get("dataset")} for r in rows]
    return _check(rows, path, ("instruction", "output"))


def read_annotations(path: str | os.PathLike) -> list[dict]:
    rows = _check(read_rows(path), path, ("instruction", "output_1", "output_2"))
    for i, r in enumerate(rows, 1):
        p = r.get("preference")
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))):
            raise RowError(path, i, "preference", f"not a number: {p!r}")
    return rows


def _write_json(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


# --- a run: generate, judge, score ------------------------------------------------------------------


def generate_outputs(generate_fn: Callable, eval_set: list[dict], model_id: str, path: Path,
                     max_new_tokens: int = 2048, chunk_size: int = 64) -> list[dict | None]:
    """The model's output for every instruction (greedy, one user turn, stripped), saved after each chunk; None
    where the request failed (a served model's client gives None then; not saved, so a rerun asks again)."""
    cached = {r["instruction"]: r for r in read_rows(path)} if path.exists() else {}
    todo = [r["instruction"] for r in eval_set if r["instruction"] not in cached]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start: start + chunk_size]
        outs = generate_fn([[{"role": "user", "content": t}] for t in chunk], params)
        for t, o in zip(chunk, outs):
            if o is not None:
                cached[t] = {"instruction": t, "output": o.strip(), "generator": model_id}
        _write_json(path, [cached[r["instruction"]] for r in eval_set if r["instruction"] in cached])
    return [{**cached[r["instruction"]], "dataset": r.get("dataset")} if r["instruction"] in cached else None
            for r in eval_set]


def annotate(judge, ann: Annotator, eval_set: list[dict], outputs: list[dict], path: Path,
             max_failed: float = 0.05, chunk_size: int = 64) -> tuple[list[dict], dict]:
    """One annotation per instruction (cached in `path` by instruction and both outputs); (rows, call counts)."""
    old = read_annotations(path) if path.exists() else []
    cache = {(r["instruction"], r["output_1"], r["output_2"]): r for r in old}
    rows: dict[int, dict] = {}
    pending = []
    for i, (base, out) in enumerate(zip(eval_set, outputs)):
        if out is None:  # no output from the model: nothing to judge
            continue
        row = {"instruction": base["instruction"], "output_1": base["output"], "generator_1": base.get("generator"),
               "dataset": base.get("dataset"), "output_2": out["output"], "generator_2": out["generator"],
               "annotator": ann.name}
        key = (row["instruction"], row["output_1"], row["output_2"])
        if key in cache:
            rows[i] = cache[key]
        elif row["output_1"] == row["output_2"]:
            rows[i] = {**row, "preference": 1.5, "raw_completion": None}
        else:
            rows[i] = row
            pending.append(i)

    def answered(i: int, reply: dict) -> None:
        choice = (reply.get("choices") or [{}])[0]
        p = preference(ann, rows[i]["instruction"], choice)
        rows[i] = {**rows[i], "preference": None if p != p else p, "raw_completion": choice}

    def save() -> None:
        _write_json(path, [rows[i] for i in sorted(rows) if "preference" in rows[i]])

    failed = call_in_chunks(judge, pending, lambda i: judge_request(ann, rows[i]["instruction"], rows[i]["output_1"],
                                                                     rows[i]["output_2"]), answered, save, chunk_size)
    save()
    check_failures(failed, len(pending), max_failed, "AlpacaEval")
    done = [rows[i] for i in sorted(rows) if "preference" in rows[i]]
    return done, {"n_judge_calls": len(pending) - failed, "n_failed": failed}


def run_alpaca_eval(generate_fn: Callable, judge, output_dir: str | os.PathLike, model_id: str,
                    eval_set: list[dict], max_new_tokens: int = 2048, annotator: Annotator | None = None,
                    df_gamed: str | None = None, max_failed: float = 0.05) -> dict:
    out = Path(output_dir)
    ann = annotator or load_annotator()
    outputs = generate_outputs(generate_fn, eval_set, model_id, out / "model_outputs.json", max_new_tokens)
    rows, calls = annotate(judge, ann, eval_set, outputs, out / "annotations.json", max_failed)
    summary = {**summarize(rows, df_gamed), **calls, "n_instructions": len(eval_set),
               "n_failed_outputs": sum(o is None for o in outputs), "judge_model": judge.model}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table(summary))
    return summary


def reparse(rows: list[dict], ann: Annotator) -> tuple[list[dict], int]:
    """Preferences recomputed from each row's raw_completion (rows without one keep theirs); how many differ
    from the stored value beyond the 1e-10 rounding alpaca_eval stores them with."""
    out, differ = [], 0
    for r in rows:
        if r.get("raw_completion"):
            p = preference(ann, r["instruction"], r["raw_completion"])
            stored = r.get("preference")
            differ += not (stored is not None and p == p and abs(round(p, 10) - stored) < 1e-12)
            r = {**r, "preference": None if p != p else p}
        out.append(r)
    return out, differ


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.alpaca_eval", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="the leaderboard row of an annotations file in alpaca_eval's layout")
    sc.add_argument("--annotations", required=True, help="annotations.json (JSON list or JSONL, .gz too)")
    sc.add_argument("--reparse", action="store_true", help="recompute preferences from raw_completion first")
    sc.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    rn = sub.add_parser("run", help="generate from an endpoint, judge, score")
    rn.add_argument("--model-id", required=True, help="generator name in the output files")
    rn.add_argument("--output-dir", required=True)
    rn.add_argument("--eval-set", default=None, help=f"local baseline outputs (default: the hub's {HUB_EVAL_SET})")
    rn.add_argument("--limit", type=int, default=0, help="the first N instructions (0: all)")
    rn.add_argument("--max-new-tokens", type=int, default=2048)
    add_client_args(rn)
    add_judge_args(rn, "gpt-4-1106-preview")
    for p in (sc, rn):
        p.add_argument("--annotator-config", default=None, help="configs.yaml (default: alpaca-eval's own)")
        p.add_argument("--df-gamed", default=None, help="local df_gamed.csv for the length-controlled win rate")
    args = ap.parse_args(argv)
    try:
        ann = load_annotator(args.annotator_config) if args.cmd == "run" or args.reparse else None
        if args.cmd == "score":
            rows = read_annotations(args.annotations)
            differ = None
            if args.reparse:
                rows, differ = reparse(rows, ann)
            summary = summarize(rows, args.df_gamed)
            if differ is not None:
                summary["n_reparsed_differ"] = differ
        else:
            eval_set = load_eval_set(args.eval_set)[: args.limit or None]
            summary = run_alpaca_eval(client_from_args(args).generate, judge_from_args(args), args.output_dir,
                                      args.model_id, eval_set, args.max_new_tokens, ann, args.df_gamed, args.judge_max_failed_fraction)
    except (OSError, ValueError, KeyError, GenerationError, JudgeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if getattr(args, "json", False) else markdown_table(summary).rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
