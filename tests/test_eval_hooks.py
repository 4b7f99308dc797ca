"""`stage=eval` with the report's other benchmarks against a served model and judges: one OpenAI-compatible stand-in
server on 127.0.0.1 answers as the model (fixed replies per benchmark) and as the AlpacaEval and Arena-Hard
judges (fixed logprobs and verdicts), so every score below is known exactly. Offline, through launch.py."""

import json
import math
import os
import subprocess
import sys

from eval.humaneval import load_problems
from tests.conftest import REPO
from tests.test_clients import FakeServer, chat_reply

FIX = REPO / "tests" / "fixtures"
SECRET = "sk-judge-0a1b2c3d"
MBPP_CODE = {"sum of a list": "def sum_list(xs):\n    return sum(xs)\n```",
             "reverse a string": "def reverse_string(s):\n    return s[::-1]\n```",
             "is even": "def is_even(n):\n    return n % 2 == 1\n```"}  # wrong


def stand_in(problem0):
    def respond(n, req):
        body = req["body"]
        msgs = body["messages"]
        text = "\n".join(m["content"] for m in msgs)
        judge = req["headers"].get("Authorization") == f"Bearer {SECRET}"
        if body.get("logprobs"):  # the AlpacaEval judge: P(M) = 0.8
            assert judge
            tops = [{"token": "M", "logprob": math.log(0.8)}, {"token": "m", "logprob": math.log(0.2)}]
            return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "M"},
                                      "logprobs": {"content": [{"token": "M", "logprob": tops[0]["logprob"],
                                                                "top_logprobs": tops}]}}]}, 0.0
        if msgs[0]["content"].startswith("Please act as an impartial judge"):  # Arena-Hard
            assert judge
            model_is_b = "Assistant B's Answer|>\nA fixed answer." in text
            return 200, chat_reply("[[B>>A]]" if model_is_b else "[[A=B]]"), 0.0
        assert not judge  # the served model gets no key
        if msgs[-1]["content"].startswith("Q: "):  # GSM8K (lm-eval gsm8k_cot_zeroshot)
            return 200, chat_reply("Step by step... So the answer is 18."), 0.0
        if "You are an expert Python programmer" in text:  # MBPP (lm-eval mbpp_instruct)
            return 200, chat_reply(next(c for k, c in MBPP_CODE.items() if k in text)), 0.0
        if "Write a solution to the following problem" in text:  # HumanEval
            ok = "def has_close_elements" in text
            return 200, chat_reply(f"```python\n{problem0 if ok else '    return None'}\n```"), 0.0
        if text.rstrip().endswith("Answer:"):  # MMLU (generative)
            return 200, chat_reply("B"), 0.0
        return 200, chat_reply("A fixed answer."), 0.0  # AlpacaEval and Arena-Hard answers
    return FakeServer(respond)


def test_stage_eval_report_benchmarks_against_a_served_model_and_judges(tmp_path):
    p0 = load_problems()[0]
    run_dir = tmp_path / "eval_run"
    with stand_in(p0["prompt"] + p0["canonical_solution"]) as server:
        url = f"{server.url}/v1"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
               "JUDGE_KEY": SECRET}
        judged = [f"eval.{b}.judge.{k}" for b in ("alpaca_eval", "arena_hard") for k in ("base_url", "api_key_env")]
        r = subprocess.run(
            [sys.executable, str(REPO / "launch.py"), "stage=eval",
             "eval=[alpaca_eval,arena_hard,mmlu,gsm8k,humaneval,mbpp]", "eval.generator.kind=openai",
             f"eval.generator.base_url={url}", "eval.generator.model=served-model",
             *(f"{k}={url if k.endswith('base_url') else 'JUDGE_KEY'}" for k in judged),
             f"eval.alpaca_eval.eval_set={FIX / 'alpaca_eval' / 'annotations.json.gz'}", "eval.alpaca_eval.limit=3",
             f"eval.arena_hard.data={FIX / 'arena_hard'}", "eval.arena_hard.limit=2",
             "eval.arena_hard.bootstrap_rounds=10",
             "eval.mmlu.task=mmlu_generative", "eval.mmlu.metric=exact_match", "eval.mmlu.filter=get_response",
             f"eval.mmlu.data={FIX / 'lm_eval_tasks' / 'mmlu.jsonl'}",
             f"eval.gsm8k.data={FIX / 'lm_eval_tasks' / 'gsm8k.jsonl'}",
             f"eval.mbpp.data={FIX / 'lm_eval_tasks' / 'mbpp.jsonl'}", "eval.mbpp.allow_code_execution=true",
             "eval.humaneval.allow_code_execution=true", "eval.humaneval.limit=2",
             "logger.wandb.enabled=false", "logger.progress_bar=false", f"exp_manager.explicit_log_dir={run_dir}"],
            capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((run_dir / "eval" / "results.json").read_text())
    # AlpacaEval: 3 judge calls, preference 1.8 (or 1.2 where the outputs were shown swapped)
    from eval.alpaca_eval import is_switched, load_eval_set

    prefs = [1.2 if is_switched(row["instruction"]) else 1.8 for row in
             load_eval_set(FIX / "alpaca_eval" / "annotations.json.gz")[:3]]
    assert res["alpaca_eval"]["n_judge_calls"] == 3
    assert abs(res["alpaca_eval"]["win_rate"] - 100 * sum(p - 1 for p in prefs) / 3) < 1e-9
    assert res["alpaca_eval"]["length_controlled_winrate"] is None  # 3 of 805 instructions: said in one line
    # Arena-Hard: per question B>>A with the model as B (3 wins) and A=B (a tie): (6 + 2 / 2) / 8
    assert res["arena_hard"]["score"] == 87.5 and res["arena_hard"]["n_judge_calls"] == 4
    assert res["mmlu"]["score"] == 0.25 and res["mmlu"]["n_samples"] == 4  # "B" is right for 1 of 4
    assert res["gsm8k"]["score"] == 0.25  # 18 is right for 1 of 4
    assert abs(res["mbpp"]["score"] - 2 / 3) < 1e-12 and res["mbpp"]["n_samples"] == 3
    assert res["humaneval"]["pass@1"] == 0.5 and res["humaneval"]["n_problems"] == 2
    md = (run_dir / "eval" / "results.md").read_text()
    assert "| arena_hard | score | 87.5000 |" in md and "| humaneval | pass@1 | 0.5000 |" in md
    assert (run_dir / "eval" / "arena_hard" / "model_judgment" / "gpt-4-1106-preview" / "served-model.jsonl").is_file()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
