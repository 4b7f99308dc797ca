"""Arena-Hard-Auto v0.1 (Li et al. 2024; lmarena/arena-hard-auto at 4813756, the version the Nemotron report used):
500 hard prompts; a GPT-4-Turbo judge (gpt-4-1106-preview) compares the model's answer with the baseline's
(gpt-4-0314) twice, positions swapped the second time; the score is the model's win rate against the baseline
under a Bradley-Terry fit of the verdicts, with a bootstrap 95% interval.

Data: a folder in arena-hard-auto's layout (`question.jsonl`, `model_answer/<baseline>.jsonl`) and its
`judge_config.yaml` (there, in `judge_prompt/`, or given). Judging, as `gen_judgment.py`:

- messages `[system_prompt, prompt_template[0].format(question_1=..., answer_1=A, answer_2=B)]`; game 1: A = the
  baseline, B = the model; game 2: swapped; temperature 0, max_tokens 4096 (the config's);
- verdict: the labels `regex_pattern` (`\\[\\[([AB<>=]+)\\]\\]`) finds in the judgment so far; none: the reply and
  "continue your judgment and finish by outputting a final verdict label" are added and the judge is asked again
  (at most `number_of_judgment_attempts` = 2 calls); one distinct label: the verdict; more: no verdict.
  The judgment text is "\\n" + reply (+ "\\n" + second reply), stored in their file layout
  `model_judgment/<judge>/<model>.jsonl`, which doubles as the cache (a rerun judges only what is missing).

Scoring, as v0.1's `show_result.py`: a verdict becomes battles (baseline vs model): `A>B` one win, `A>>B` three
(`--weight`), `A=B` one tie, anything else none, game 2 read with A and B swapped; Bradley-Terry = logistic
regression without intercept or penalty (sklearn, tol 1e-8) on the battles twice over (a tie = one win + one
loss), Elo = 400 * coef + 1000 anchored at baseline = 1000; score = 100 / (1 + 10^((Elo_baseline - Elo) / 400))
rounded to 2 decimals; interval: `np.random.seed(42)`, 100 resamples of all battles with replacement, 2.5 and
97.5 percentiles of the refitted Elo, as win rates; average tokens from the answer files' `token_len`.
Where the official script stops with an error, every battle won (or lost), we report the limit, 100 (or 0).

    python -m eval.arena_hard score --judgments model_judgment/gpt-4-1106-preview [--answers model_answer] [--json]
    python -m eval.arena_hard run --data-dir arena-hard-v0.1 --base-url ... --model m --output-dir out/ --limit 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_prep.jsonl import RowError, atomic_write_text, read_jsonl, write_jsonl
from eval.clients import GenerationError, SamplingParams, add_client_args, client_from_args
from eval.judging import JudgeError, add_judge_args, check_failures, judge_from_args, reply_text

BASELINE, JUDGE = "gpt-4-0314", "gpt-4-1106-preview"
CONTINUE = "continue your judgment and finish by outputting a final verdict label"
WEIGHT, ROUNDS, SEED = 3, 100, 42
# Battle outcome of each label, game 1 (A = baseline); game 2 reads A and B swapped.
OUTCOME = {"A=B": ("tie", 1), "A>B": ("model_a", 1), "A>>B": ("model_a", WEIGHT), "B>A": ("model_b", 1),
           "B>>A": ("model_b", WEIGHT)}
SWAP = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}


@dataclass
class JudgeSettings:
    judge_model: str
    baseline_model: str
    system_prompt: str
    prompt_template: str
    pattern: re.Pattern
    temperature: float
    max_tokens: int
    attempts: int


# --- data -------------------------------------------------------------------------------------


def find_judge_config(data_dir: str | os.PathLike) -> Path:
    d = Path(data_dir)
    for p in (d / "judge_config.yaml", d / "judge_prompt" / "judge_config.yaml", d.parent.parent / "config" /
              "judge_config.yaml"):
        if p.is_file():
            return p
    raise FileNotFoundError(f"no judge_config.yaml in {d}, {d / 'judge_prompt'} or {d.parent.parent / 'config'}")


def load_judge_config(path: str | os.PathLike) -> JudgeSettings:
    import yaml

    c = yaml.safe_load(Path(path).read_text())
    if not c.get("pairwise", True) or c.get("reference"):
        raise ValueError(f"{path}: only pairwise judging without reference answers (v0.1) is implemented")
    return JudgeSettings(c["judge_model"], c["baseline_model"], c["system_prompt"], c["prompt_template"][0],
                         re.compile(c["regex_pattern"]), float(c["temperature"]), int(c["max_tokens"]),
                         int(c["number_of_judgment_attempts"]))


def load_questions(path: str | os.PathLike) -> list[dict]:
    out = []
    for line, q in read_jsonl(path):
        if not isinstance(q.get("question_id"), str):
            raise RowError(path, line, "question_id", "missing or not a string")
        turns = q.get("turns")
        first = turns[0] if isinstance(turns, list) and turns else None
        if not (isinstance(first, dict) and isinstance(first.get("content"), str)):
            raise RowError(path, line, "turns", "must be a list of {content: str}")
        out.append(q)
    return out


def load_answers(path: str | os.PathLike) -> dict[str, dict]:
    """An answer file by question_id: {question_id, model_id, choices: [{turns: [{content, token_len}]}]}."""
    out = {}
    for line, a in read_jsonl(path):
        try:
            ok = isinstance(a["question_id"], str) and isinstance(a["choices"][0]["turns"][0]["content"], str)
        except (KeyError, IndexError, TypeError):
            ok = False
        if not ok:
            raise RowError(path, line, "choices[0].turns[0].content", "missing (or no string question_id)")
        out[a["question_id"]] = a
    return out


def answer_text(answer: dict) -> str:
    return answer["choices"][0]["turns"][0]["content"]


# --- judging ------------------------------------------------------------------------------------


def judge_messages(s: JudgeSettings, question: dict, answer_a: str, answer_b: str) -> list[dict]:
    user = s.prompt_template.format(question_1=question["turns"][0]["content"], answer_1=answer_a, answer_2=answer_b)
    return [{"role": "system", "content": s.system_prompt}, {"role": "user", "content": user}]


def verdict(judgment: str, pattern: re.Pattern) -> tuple[str | None, bool]:
    """(label, ask again): gen_judgment.py's get_score."""
    labels = [m for m in pattern.findall(judgment) if m != ""]
    if not labels:
        return None, True
    if len(set(labels)) == 1:
        return labels[0].strip("\n"), False
    return None, False


def judge_questions(client, s: JudgeSettings, questions: list[dict], model_answers: dict, baseline_answers: dict,
                    model_id: str, path: Path, max_failed: float = 0.05,
                    chunk_size: int = 32) -> tuple[list[dict], dict]:
    """Both games of every question, `chunk_size` questions at a time, each chunk saved when done; (rows, counts)."""
    rows = {r["question_id"]: r for r in read_judgments(path)} if path.exists() else {}
    todo = []
    for q in questions:
        qid = q["question_id"]
        if qid not in model_answers or qid not in baseline_answers:
            continue
        a, b = answer_text(baseline_answers[qid]), answer_text(model_answers[qid])
        games = [judge_messages(s, q, a, b), judge_messages(s, q, b, a)]
        cached = rows.get(qid)
        if not (cached and cached["model"] == model_id and [g["user_prompt"] for g in cached["games"]] ==
                [g[1]["content"] for g in games]):
            todo.append((qid, games))
    calls = failed = 0
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start: start + chunk_size]
        state = [{"qid": qid, "conv": conv, "user_prompt": conv[1]["content"], "judgment": "", "score": None,
                  "open": True, "failed": False} for qid, games in chunk for conv in games]
        for _ in range(s.attempts):
            asking = [g for g in state if g["open"]]
            if not asking:
                break
            replies = client.chat_completions([{"messages": g["conv"], "temperature": s.temperature,
                                                "max_tokens": s.max_tokens} for g in asking])
            for g, reply in zip(asking, replies):
                calls += 1
                if reply is None:
                    failed += 1
                    g["open"], g["failed"] = False, True
                    continue
                text = reply_text(reply)
                g["judgment"] += "\n" + text
                g["score"], again = verdict(g["judgment"], s.pattern)
                g["conv"] = g["conv"] + [{"role": "assistant", "content": text}]
                g["open"] = again
                if again:
                    g["conv"].append({"role": "user", "content": CONTINUE})
        for i in range(0, len(state), 2):
            pair = state[i: i + 2]
            if not any(g["failed"] for g in pair):  # a question with a failed call is retried by the next run
                rows[pair[0]["qid"]] = {"question_id": pair[0]["qid"], "model": model_id, "judge": s.judge_model,
                                        "games": [{k: g[k] for k in ("user_prompt", "judgment", "score")}
                                                  for g in pair], "tstamp": time.time()}
        write_jsonl(path, list(rows.values()))
    check_failures(failed, calls, max_failed, "Arena-Hard")
    return list(rows.values()), {"n_judge_calls": calls, "n_failed": failed}


# --- scores ---------------------------------------------------------------------------------------


def read_judgments(path: str | os.PathLike) -> list[dict]:
    """A judgment file in arena-hard-auto's layout: {question_id, model, games: [{score, ...}, {score, ...}]}."""
    out = []
    for line, r in read_jsonl(path):
        if not isinstance(r.get("model"), str):
            raise RowError(path, line, "model", "missing or not a string")
        games = r.get("games")
        if not (isinstance(games, list) and games and all(isinstance(g, dict) and "score" in g for g in games)):
            raise RowError(path, line, "games", "must be a list of {score: label or null}")
        out.append(r)
    return out


def battles_from_judgments(rows: list[dict], baseline: str = BASELINE, weight: int = WEIGHT,
                           first_game_only: bool = False) -> list[tuple[str, str, str]]:
    """(model_a = baseline, model_b = model, winner) rows in show_result.py's order: per judgment, game 1 then game 2."""
    out = []
    for r in rows:
        for g, game in enumerate(r["games"][: 1 if first_game_only else 2]):
            winner, n = OUTCOME.get(game.get("score"), (None, 0))
            if n:
                out += [(baseline, r["model"], winner if g == 0 else SWAP[winner])] * (weight if n > 1 else 1)
    return out


def mle_elo(battles: list[tuple[str, str, str]], baseline: str = BASELINE) -> dict[str, float]:
    """show_result.py's compute_mle_elo: Bradley-Terry by logistic regression, anchored at baseline = 1000."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    models = list(dict.fromkeys([b[0] for b in battles] + [b[1] for b in battles]))  # pd.concat([a, b]).unique()
    col = {m: i for i, m in enumerate(models)}
    n = len(battles)
    a = np.array([col[b[0]] for b in battles] * 2)
    b = np.array([col[b[1]] for b in battles] * 2)
    winner = np.array([b_[2] for b_ in battles] * 2)
    X = np.zeros((2 * n, len(models)))
    X[np.arange(2 * n), a] = math.log(10)
    X[np.arange(2 * n), b] = -math.log(10)
    Y = (winner == "model_a").astype(float)
    Y[:n][winner[:n] == "tie"] = 1.0  # one tie = one win (first copy) + one loss (second copy)
    if len(set(Y)) < 2:  # every battle one way: the MLE is at infinity (the official script raises here);
        # 20000 Elo points stand for it: a win rate of 1 - 1e-50, 100.00 once rounded
        far = -20000.0 if Y[0] else 20000.0
        return {m: 1000.0 if m == baseline else 1000.0 + far for m in models}
    # C=inf is sklearn >= 1.8's spelling of the official penalty=None
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8).fit(X, Y)
    elo = 400 * lr.coef_[0] + 1000
    if baseline in col:
        elo += 1000 - elo[col[baseline]]
    return dict(zip(models, elo.tolist()))


def bootstrap_elo(battles: list, rounds: int = ROUNDS, seed: int = SEED, baseline: str = BASELINE) -> list[dict]:
    """np.random.seed(seed), then `battles.sample(frac=1.0, replace=True)` refitted `rounds` times (pandas draws
    those indices with the global RandomState's choice(n, n, replace=True), as this does)."""
    import numpy as np

    rs = np.random.RandomState(seed)
    return [mle_elo([battles[i] for i in rs.choice(len(battles), size=len(battles), replace=True)], baseline)
            for _ in range(rounds)]


def win_rate(elo: float, elo_baseline: float) -> float:
    return 1 / (1 + 10 ** ((elo_baseline - elo) / 400))


def leaderboard(rows: list[dict], baseline: str = BASELINE, answers: dict[str, dict] | None = None,
                weight: int = WEIGHT, rounds: int = ROUNDS, first_game_only: bool = False) -> dict[str, dict]:
    """show_result.py's table: per model, score, 95% interval (lower, upper, ci) and avg_tokens."""
    import numpy as np

    battles = battles_from_judgments(rows, baseline, weight, first_game_only)
    if not battles:
        raise ValueError("no judgment has a verdict: nothing to score")
    elo = mle_elo(battles, baseline)
    boot = bootstrap_elo(battles, rounds, baseline=baseline)
    table = {}
    for m in elo:
        lo, hi = (float(np.percentile([r.get(m, math.nan) for r in boot], q)) for q in (2.5, 97.5))
        lo_b, hi_b = (float(np.percentile([r.get(baseline, math.nan) for r in boot], q)) for q in (2.5, 97.5))
        # np.round, as the official rounds numpy floats (round() on a float64 is numpy's, not Python's)
        score, lower, upper = (float(np.round(win_rate(x, xb) * 100, 2)) if m != baseline else 50.0
                               for x, xb in ((elo[m], elo[baseline]), (lo, lo_b), (hi, hi_b)))
        table[m] = {"score": score, "lower": lower, "upper": upper, "avg_tokens": avg_tokens(answers, m),
                    "ci": [float(np.round(lower - score, 1)), float(np.round(upper - score, 1))],
                    "n_battles": sum(b[1] == m for b in battles) if m != baseline else len(battles),
                    "n_questions": len({r["question_id"] for r in rows if r["model"] == m})}
    return table


def avg_tokens(answers: dict[str, dict] | None, model: str) -> int | None:
    """int(mean token_len) of the model's answers, when the answer files carry it."""
    rows = list((answers or {}).get(model, {}).values())
    lens = [a["choices"][0]["turns"][0].get("token_len") for a in rows]
    return int(sum(lens) / len(lens)) if lens and all(isinstance(x, int) for x in lens) else None


def load_answer_dir(path: str | os.PathLike | None) -> dict[str, dict]:
    return {p.stem: load_answers(p) for p in sorted(Path(path).glob("*.jsonl"))} if path else {}


def judgment_files(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    return sorted(p.glob("*.jsonl")) if p.is_dir() else [p]


def markdown_table(table: dict[str, dict], baseline: str) -> str:
    lines = [f"Arena-Hard v0.1, win rate against {baseline}", "", "| model | score | 95% CI | average #tokens |",
             "|---|---|---|---|"]
    for m, r in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        lines.append(f"| {m} | {r['score']:.1f} | ({r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}) | {r['avg_tokens'] or '-'} |")
    return "\n".join(lines) + "\n"


# --- a run: answer, judge, score ----------------------------------------------------------------------


def _token_len(text: str) -> int | None:
    """gen_answer.py's token_len: tiktoken's gpt-3.5-turbo encoding; None when it cannot be loaded (it is
    downloaded on first use, so never under HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return None
    try:
        import tiktoken

        return len(tiktoken.encoding_for_model("gpt-3.5-turbo").encode(text, disallowed_special=()))
    except Exception:  # noqa: BLE001 - not installed, or no route to its download
        return None


def generate_answers(generate_fn: Callable, questions: list[dict], model_id: str, path: Path,
                     max_new_tokens: int = 4096, chunk_size: int = 64) -> dict[str, dict]:
    """Greedy single-turn answers, no system prompt, in arena-hard-auto's answer layout; cached in `path`
    (a failed request, None from a served model's client, is left out and asked again by the next run)."""
    answers = load_answers(path) if path.exists() else {}
    todo = [q for q in questions if q["question_id"] not in answers]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start: start + chunk_size]
        outs = generate_fn([[{"role": "user", "content": q["turns"][0]["content"]}] for q in chunk], params)
        for q, text in zip(chunk, outs):
            if text is None:  # the request failed: no answer (and no judgment) for it this run
                continue
            answers[q["question_id"]] = {"question_id": q["question_id"], "answer_id": uuid.uuid4().hex[:22],
                                         "model_id": model_id, "choices": [{"index": 0, "turns": [
                                             {"content": text, "token_len": _token_len(text)}]}], "tstamp": time.time()}
        write_jsonl(path, list(answers.values()))
    return answers


def run_arena_hard(generate_fn: Callable, judge, output_dir: str | os.PathLike, model_id: str,
                   data_dir: str | os.PathLike, judge_config: str | None = None, limit: int = 0,
                   max_new_tokens: int = 4096, max_failed: float = 0.05, rounds: int = ROUNDS) -> dict:
    out, data = Path(output_dir), Path(data_dir)
    s = load_judge_config(judge_config or find_judge_config(data))
    s.judge_model = judge.model
    questions = load_questions(data / "question.jsonl")[: limit or None]
    baseline = load_answers(data / "model_answer" / f"{s.baseline_model}.jsonl")
    answers = generate_answers(generate_fn, questions, model_id, out / "model_answer" / f"{model_id}.jsonl",
                               max_new_tokens)
    path = out / "model_judgment" / judge.model.replace("/", "_") / f"{model_id}.jsonl"
    wanted = {q["question_id"] for q in questions}
    rows, calls = judge_questions(judge, s, questions, answers, baseline, model_id, path, max_failed)
    rows = [r for r in rows if r["question_id"] in wanted]
    table = leaderboard(rows, s.baseline_model, {model_id: answers, s.baseline_model: baseline}, rounds=rounds)
    summary = {**table[model_id], **calls, "n_no_verdict": sum(g["score"] is None for r in rows for g in r["games"]),
               "n_failed_answers": sum(q["question_id"] not in answers for q in questions),
               "judge_model": judge.model, "baseline": s.baseline_model, "models": table}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table(table, s.baseline_model))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.arena_hard", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="show_result.py on judgment files (a model_judgment/<judge> dir or files)")
    sc.add_argument("--judgments", required=True, nargs="+")
    sc.add_argument("--answers", default=None, help="model_answer/ dir, for the average token counts")
    sc.add_argument("--baseline", default=BASELINE)
    sc.add_argument("--weight", type=int, default=WEIGHT)
    sc.add_argument("--first-game-only", action="store_true")
    sc.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    rn = sub.add_parser("run", help="answer from an endpoint, judge, score")
    rn.add_argument("--model-id", required=True)
    rn.add_argument("--output-dir", required=True)
    rn.add_argument("--data-dir", required=True, help="question.jsonl and model_answer/<baseline>.jsonl")
    rn.add_argument("--judge-config", default=None, help="judge_config.yaml (default: found in --data-dir)")
    rn.add_argument("--limit", type=int, default=0, help="the first N questions (0: all 500)")
    rn.add_argument("--max-new-tokens", type=int, default=4096)
    add_client_args(rn)
    add_judge_args(rn, JUDGE)
    for p in (sc, rn):
        p.add_argument("--rounds", type=int, default=ROUNDS, help="bootstrap rounds")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "score":
            rows = [r for arg in args.judgments for f in judgment_files(arg) for r in read_judgments(f)]
            table = leaderboard(rows, args.baseline, load_answer_dir(args.answers), args.weight, args.rounds,
                                args.first_game_only)
            models = [m for m in table if m != args.baseline]
            summary = {**(table[models[0]] if len(models) == 1 else {}), "baseline": args.baseline, "models": table}
            text = markdown_table(table, args.baseline)
        else:
            summary = run_arena_hard(client_from_args(args).generate, judge_from_args(args), args.output_dir,
                                     args.model_id, args.data_dir, args.judge_config, args.limit, args.max_new_tokens,
                                     args.judge_max_failed_fraction, args.rounds)
            text = markdown_table(summary["models"], summary["baseline"])
    except (OSError, ValueError, KeyError, GenerationError, JudgeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if getattr(args, "json", False) else text.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
