"""eval/reward_bench.py inference: a trained RM (or a DPO policy) over RewardBench rows, end to end."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from eval import reward_bench as rb
from recipes import rm
from recipes.reward_model import load_reward_model, rm_text, score_texts
from tests.conftest import REPO, REWARD_BENCH_ROWS, TINY, compose_cfg

FIXTURE = REPO / "tests" / "fixtures" / "rm_tiny.jsonl"


def bench_file() -> Path:
    return REWARD_BENCH_ROWS  # the demo's 61 real RewardBench pairs (data/demo/README.md)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("rm")
    # max_seq_length 384: RewardBench answers are long; the tail (and <extra_id_2>) is what the RM reads.
    cfg = compose_cfg(*TINY, "stage=rm", f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=5",
                      "data.max_seq_length=384", f"exp_manager.explicit_log_dir={run_dir}")
    return rm.run(cfg, run_dir)


def test_limit_spans_subsets_in_file_order():
    rows = [{"subset": s, "id": i} for i, s in enumerate("aaaaabbbc")]
    picked = rb.limit_rows(rows, 5)
    assert [r["id"] for r in picked] == [0, 1, 5, 6, 8]  # a, b, c, a, b; then back in file order
    assert rb.limit_rows(rows, 0) == rows and rb.limit_rows(rows, 100) == rows


def test_cli_run_then_score(reward_model, tmp_path):
    """The whole demo subset, scored by a tiny RM: every pair once, per-section counts as data/demo/README.md says."""
    out = tmp_path / "rb"
    cmd = [sys.executable, "-m", "eval.reward_bench", "run", "--reward-model", str(reward_model),
           "--data", str(bench_file()), "--output-dir", str(out), "--batch-size", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| Chat |" in proc.stdout and "| Chat Hard |" in proc.stdout and "| mt-bench-hard |" in proc.stdout
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in rb.load_rows(str(bench_file())))
    counts = Counter(r["subset"] for r in results)
    assert len(counts) == 8 and {s: sum(counts[n] for n in names) for s, names in rb.SECTIONS.items()} == {
        "Chat": 40, "Chat Hard": 21, "Safety": 0, "Reasoning": 0}
    scores = json.loads((out / "scores.json").read_text())
    # The existing scorer reads what `run` wrote and agrees with it.
    proc = subprocess.run([sys.executable, "-m", "eval.reward_bench", "score", "--results", str(out / "results.jsonl"),
                           "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == scores
    assert 0.0 <= scores["overall"] <= 100.0 and scores["Safety"] == 0.0  # no Safety rows in the file


def test_function_scores_pairs_as_the_rm_was_trained(reward_model, tmp_path):
    rows = rb.load_rows(str(bench_file()))
    weights = rb.LLAMA3_70B_WEIGHTS
    scores = rb.run_reward_bench(reward_model, str(bench_file()), tmp_path, weights=weights, batch_size=4, limit=10)
    assert scores["num_pairs"] == 10 and set(rb.SECTIONS) <= set(scores)
    results = [json.loads(x) for x in Path(scores["results_file"]).read_text().splitlines()]
    first = next(r for r in rows if r["id"] == results[0]["id"])
    model, tok, meta = load_reward_model(reward_model)
    attrs = score_texts(model, tok, [rm_text([("User", first["prompt"])], first["chosen"])], 1,
                        meta["max_seq_length"], "cpu")[0]
    assert results[0]["chosen_score"] == pytest.approx(float(attrs @ torch.tensor(weights)), abs=1e-5)
    assert list(results[0]["chosen_attributes"]) == meta["trained_attributes"]
    assert (tmp_path / "scores.md").read_text().startswith("| Section | Score |")


def test_cli_errors_are_one_line(reward_model, tmp_path):
    assert rb.main(["run", "--output-dir", str(tmp_path)]) == 2
    assert rb.main(["run", "--reward-model", str(tmp_path), "--data", str(bench_file()), "--output-dir", str(tmp_path)]) == 2


def test_dpo_policy_implicit_reward(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from recipes.models import train_tiny_tokenizer

    rows = rb.limit_rows(rb.load_rows(str(bench_file())), 4)
    tok = train_tiny_tokenizer([r["prompt"] + r["chosen"] for r in rows], 400)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    ref, policy = LlamaForCausalLM(config), LlamaForCausalLM(config)
    for model, name in ((policy, "policy"), (ref, "ref")):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    scores = rb.run_implicit_reward_bench(tmp_path / "policy", tmp_path / "ref", rows=rows, output_dir=tmp_path / "out",
                                          max_seq_length=512)
    result = json.loads(Path(scores["results_file"]).read_text().splitlines()[0])

    def logp(model, prompt, response):  # by hand: Σ log p(response tokens | everything before)
        head = "<extra_id_0>System\n\n<extra_id_1>User\n" + prompt + "\n<extra_id_1>Assistant\n"
        n = len(tok(head, add_special_tokens=False)["input_ids"])
        ids = tok(head + response + "\n<extra_id_1>", add_special_tokens=False)["input_ids"][:512]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        return sum(lp[t - 1, ids[t]].item() for t in range(n, len(ids)))

    expected = logp(policy, rows[0]["prompt"], rows[0]["chosen"]) - logp(ref, rows[0]["prompt"], rows[0]["chosen"])
    assert result["chosen_score"] == pytest.approx(expected, abs=1e-3)
    assert scores["num_pairs"] == 4
