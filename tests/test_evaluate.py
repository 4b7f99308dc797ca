"""Eval hooks: the in-process HF client, stage=eval end to end with a local judge, hooks after training."""

import json
import os
import subprocess
import sys

import pytest

from eval.clients import SamplingParams
from eval.hf_client import HFClient
from recipes import sft
from recipes.backends import torch_backend
from tests.conftest import FIXTURES, REPO, TINY, compose_cfg
from tests.test_clients import FakeServer, chat_reply

FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"
IFEVAL_PROMPTS = FIXTURES / "ifeval" / "input_data.jsonl"  # 48 of Google's 541 prompts
MT_BENCH = FIXTURES / "mt_bench"  # FastChat's questions, references and judge prompts
SECRET = "sk-test-9f8e7d6c5b4a"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sft")
    cfg = compose_cfg(*TINY, f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=80",
                      "model.optim.sched.name=constant", f"exp_manager.explicit_log_dir={run_dir}", "data.shuffle=false")
    return torch_backend.run(cfg, run_dir)


def test_checkpoint_records_its_template(tiny_ckpt):
    recipe = json.loads((tiny_ckpt / "recipe.json").read_text())
    assert {k: recipe[k] for k in ("stage", "prompt_template", "base_model", "adapter_only")} == {
        "stage": "sft", "prompt_template": "nemotron", "base_model": None, "adapter_only": False}
    assert recipe["peft"]["peft_scheme"] == "none"  # `auto` resolved: a fresh tiny model has no LoRA to continue


def test_hf_client_batches_like_single_and_stops_at_turn_end(tiny_ckpt):
    client = HFClient(str(tiny_ckpt), template="nemotron", batch_size=3, progress=False)
    convs = [[{"role": "user", "content": q}] for q in ("What is two plus two?", "Capital of France?", "Say hello.")]
    params = SamplingParams(max_new_tokens=12)
    batched = client.generate(convs, params)
    single = [client.generate([c], params)[0] for c in convs]
    assert batched == single
    assert all("<extra_id_1>" not in t for t in batched)
    # The tiny model memorised this answer; the reply stops at the end of its turn.
    assert batched[1] == "Paris.", batched


def judge_server():
    def respond(n, req):
        assert req["headers"].get("Authorization") == f"Bearer {SECRET}"
        return 200, chat_reply("The answer is fine. Rating: [[7]]"), 0.0
    return FakeServer(respond)


def test_stage_eval_end_to_end_with_local_judge(tiny_ckpt, tmp_path):
    ifeval, mt = IFEVAL_PROMPTS, MT_BENCH
    run_dir = tmp_path / "eval_run"
    with judge_server() as judge:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "JUDGE_KEY": SECRET}
        r = subprocess.run(
            [sys.executable, str(REPO / "launch.py"), "stage=eval", "eval=[ifeval,mt_bench]", f"eval.model={tiny_ckpt}",
             f"eval.ifeval.prompts={ifeval}", "eval.ifeval.limit=4", "eval.ifeval.max_new_tokens=8",
             f"eval.mt_bench.data={mt}", "eval.mt_bench.limit=2", "eval.mt_bench.max_new_tokens=8",
             f"eval.mt_bench.judge.base_url={judge.url}/v1", "eval.mt_bench.judge.api_key_env=JUDGE_KEY",
             "logger.wandb.enabled=false", f"exp_manager.explicit_log_dir={run_dir}"],
            capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(judge.requests) == 4  # 2 questions x 2 turns
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["ifeval"]) >= {"prompt_level_strict", "instruction_level_strict", "prompt_level_loose"}
    assert results["mt_bench"]["average"] == 7.0
    assert (run_dir / "eval" / "ifeval" / "eval_results_strict.jsonl").is_file()
    assert "| ifeval | prompt_level_strict |" in (run_dir / "eval" / "results.md").read_text()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_eval_hooks_run_after_a_training_stage(tmp_path):
    ifeval = IFEVAL_PROMPTS
    run_dir = tmp_path / "run"
    cfg = compose_cfg(*TINY, f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=1",
                      f"exp_manager.explicit_log_dir={run_dir}", "eval=[ifeval]", f"eval.ifeval.prompts={ifeval}",
                      "eval.ifeval.limit=2", "eval.ifeval.max_new_tokens=4")
    torch_backend.run(cfg, run_dir)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert 0.0 <= results["ifeval"]["prompt_level_strict"] <= 1.0


def test_mt_bench_without_judge_is_skipped_not_failed(tiny_ckpt, tmp_path):
    mt = MT_BENCH
    cfg = compose_cfg(*TINY, "stage=eval", "eval=[mt_bench]", f"eval.model={tiny_ckpt}", f"eval.mt_bench.data={mt}")
    from recipes.evaluate import run

    run(cfg, tmp_path)
    assert "skipped" in json.loads((tmp_path / "eval" / "results.json").read_text())["mt_bench"]


def test_stage_eval_needs_a_benchmark(tmp_path):
    from recipes.evaluate import run

    with pytest.raises(ValueError, match="at least one benchmark"):
        run(compose_cfg(*TINY, "stage=eval"), tmp_path)
