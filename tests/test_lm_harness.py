"""MMLU / GSM8K / MBPP through lm-evaluation-harness, offline: lm-eval's HF model on a tiny checkpoint with lm-eval's
own MMLU task reading local rows, the Nemotron chat template, MBPP's code-block extraction, and the errors.
(Served models, GSM8K and MBPP end to end: tests/test_eval_hooks.py.)"""

import json
from types import SimpleNamespace

import pytest

from eval import lm_harness as lh
from recipes.chat import nemotron_prompt
from recipes.config import MMLUConfig
from tests.conftest import REPO
from tests.test_sdg_generate import make_tiny_checkpoint

FIX = REPO / "tests" / "fixtures" / "lm_eval_tasks"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("lm") / "tiny")


def test_mmlu_through_lm_eval_hf_model_on_local_rows(tiny, tmp_path):
    lm = lh.make_lm(SimpleNamespace(kind="hf", batch_size=4), tiny, "nemotron")
    settings = MMLUConfig(data=str(FIX / "mmlu.jsonl"))
    s = lh.run_lm_eval(lh.MMLU, settings, lm, tmp_path, chat=True, nemotron=True)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    # one lm-eval task per subject in the file, each reading only its rows
    assert sorted(s["tasks"]) == ["mmlu_elementary_mathematics", "mmlu_high_school_chemistry"]
    assert s["n_samples"] == 4 and [s["tasks"][t]["n"] for t in sorted(s["tasks"])] == [2, 2]
    assert s["score"] == pytest.approx(sum(x["acc"] for x in samples) / 4)
    first = next(x for x in samples if x["doc"]["question"] == "What is the value of 7 * 8?")
    contexts = [a[0] for a in first["arguments"]]
    # lm-eval's MMLU prompt (its description as the system turn, question, lettered choices, "Answer:") in the
    # Nemotron template; each letter is scored as the start of the assistant's answer
    assert set(contexts) == {"<extra_id_0>System\nThe following are multiple choice questions (with answers) about "
                             "elementary mathematics.\n\n\n<extra_id_1>User\nWhat is the value of 7 * 8?\nA. 54\n"
                             "B. 56\nC. 64\nD. 48\nAnswer:\n<extra_id_1>Assistant\n"}
    assert [a[1] for a in first["arguments"]] == ["A", "B", "C", "D"]
    assert first["target"] == 1 and s["task"] == "mmlu" and s["num_fewshot"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["score"] == s["score"]
    assert lh.score_files([str(tmp_path)], "acc,none")["score"] == s["score"]  # `score` on the logs
    with pytest.raises(ValueError, match=r"they have: acc,none"):
        lh.score_files([str(tmp_path)], "exact_match,none")


def test_nemotron_chat_template_renders_like_recipes_chat(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    tok.chat_template = lh.NEMOTRON_CHAT_TEMPLATE
    for msgs in ([{"role": "user", "content": "Hi"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]):
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == nemotron_prompt(msgs)


def test_loglikelihood_tasks_refuse_chat_endpoints_and_mbpp_needs_the_opt_in(tmp_path):
    lm = lh.make_lm(SimpleNamespace(kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None,
                                    concurrency=1, max_concurrency=1, max_retries=0, timeout_s=5), None,
                      "chat-api")  # (max_concurrency: the clients branch's name for concurrency)
    with pytest.raises(ValueError, match="eval.mmlu.task=mmlu_generative"):
        lh.run_lm_eval(lh.MMLU, MMLUConfig(data=str(FIX / "mmlu.jsonl")), lm, tmp_path, chat=True, nemotron=False)
    from eval.humaneval import CodeExecutionRefused
    from recipes.config import MBPPConfig

    with pytest.raises(CodeExecutionRefused, match="eval.mbpp.allow_code_execution=true"):
        lh.task_configs(lh.MBPP, MBPPConfig(data=str(FIX / "mbpp.jsonl")), tmp_path, nemotron=False)
    with pytest.raises(ValueError, match="kind=nemo"):
        lh.make_lm(SimpleNamespace(kind="nemo"), None, "nemotron")


def test_mbpp_config_is_lm_eval_s_with_our_execution(tmp_path):
    from recipes.config import MBPPConfig

    (cfg,) = lh.task_configs(lh.MBPP, MBPPConfig(data=str(FIX / "mbpp.jsonl"), allow_code_execution=True), tmp_path,
                             nemotron=True)
    assert cfg["task"] == "mbpp_instruct" and cfg["gen_prefix"] == "\n```python\n"
    assert cfg["doc_to_text"].startswith("You are an expert Python programmer, and here is your task:\n{{text}}")
    assert cfg["dataset_path"] == "json" and cfg["generation_kwargs"]["until"] == ["<extra_id_1>"]
    (metric,) = cfg["metric_list"]
    assert metric["metric"](references=["assert f() == 1"], predictions=[["def f():\n    return 1"]]) == 1.0
    assert metric["metric"](references=["assert f() == 1"], predictions=[["def f():\n    return 2"]]) == 0.0
    extract = cfg["filter_list"][0]["filter"][0]["filter_fn"]
    # the reply continues the "```python" its prompt opened (lm-eval 0.4.13 would drop its "def"), or opens its own
    # block, or has none
    replies = [["def f():\n    return 1\n```\nThis works."], ["import re\ndef h(): pass\n```"],
               ["```python\ndef g(): pass\n```"], ["Sure.\n```python\ndef k(): pass\n```"], ["no code"]]
    assert extract(replies, [{}] * 5) == [["def f():\n    return 1"], ["import re\ndef h(): pass"], ["def g(): pass"],
                                          ["def k(): pass"], [""]]
