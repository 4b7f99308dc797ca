"""Served evaluation that survives real servers: IFEval killed with `kill -9` and rerun asks nothing twice,
a failed request is counted instead of aborting, MT-Bench resumes and reports judgments without a rating,
stage=eval with a keyless local judge, and sdg_generate with failures. Real servers on 127.0.0.1."""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from eval import ifeval, mt_bench
from eval.clients import GenerationError, OpenAIChatClient, SamplingParams
from recipes import sdg_generate as sg
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_clients import FakeServer, chat_reply

FAST = {"backoff_s": 0.01, "progress": False}


def write_ifeval_prompts(path, n):
    rows = [{"key": i, "prompt": f"Question {i}: reply in lowercase.", "instruction_id_list":
             ["change_case:english_lowercase"], "kwargs": [{}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["prompt"] for r in rows]


def lower_echo(n, req):
    return 200, chat_reply(req["body"]["messages"][-1]["content"].lower()), 0.0


def asked(server):
    return [r["body"]["messages"][-1]["content"] for r in server.requests]


def test_ifeval_killed_and_rerun_asks_nothing_twice(tmp_path):
    prompts = write_ifeval_prompts(tmp_path / "input_data.jsonl", 6)
    release = threading.Event()

    def respond(n, req):
        if n == 3 and not release.is_set():
            release.wait(60)  # the 4th request hangs until the client is dead
        return lower_echo(n, req)

    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with FakeServer(respond) as srv:
        cmd = [sys.executable, "-m", "eval.ifeval", "run", "--prompts", str(tmp_path / "input_data.jsonl"),
               "--base-url", srv.url + "/v1", "--model", "m", "--output-dir", str(out), "--backoff-s", "0.01"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(srv.requests) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup, no flush
        proc.wait(30)
        release.set()
        assert len(srv.requests) == 4, proc.stderr.read().decode()[-2000:]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        counts = Counter(asked(srv))
    # the three answered before the kill are never asked again; the one in flight is asked once more
    assert len(srv.requests) == 6 + 1 and counts[prompts[3]] == 2
    assert all(counts[p] == 1 for p in prompts if p != prompts[3])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 6 and summary["n_failed"] == 0 and summary["prompt_level_strict"] == 1.0
    saved = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in saved] == prompts  # rewritten in prompt order


def test_ifeval_failed_request_is_counted_not_fatal_and_rerun_asks_only_it(tmp_path):
    write_ifeval_prompts(tmp_path / "p.jsonl", 25)
    prompts = ifeval.load_prompts(tmp_path / "p.jsonl")
    slow = prompts[7].prompt

    def respond(n, req):
        text = req["body"]["messages"][-1]["content"]
        return (200, chat_reply("too late"), 1.5) if text == slow else lower_echo(n, req)

    out = tmp_path / "out"
    cache = out / "request_cache" / "generator.jsonl"
    with FakeServer(respond) as srv:
        client = OpenAIChatClient(srv.url, "m", timeout_s=0.3, cache=cache, **FAST)
        summary = ifeval.run_ifeval(client.generate, prompts, None, out)
        assert summary["n_failed"] == 1 and summary["n_prompts"] == 24
        failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
        assert len(failures) == 1 and failures[0]["key"] == 7 and failures[0]["prompt"] == slow
        assert "failed after 2 attempts" in failures[0]["error"] and "timed out after 0.3 s" in failures[0]["error"]
        assert len((out / "responses.jsonl").read_text().splitlines()) == 24
        n_before = len(srv.requests)
    with FakeServer(lower_echo) as srv:  # the server is healthy again (another port: the cache key differs)
        again = ifeval.run_ifeval(OpenAIChatClient(srv.url, "m", **FAST).generate, prompts, None, out)
        assert asked(srv) == [slow]  # the 24 saved responses are reused, only the failed prompt is asked
    assert n_before == 24 + 2 and again["n_failed"] == 0 and again["n_prompts"] == 25
    assert not (out / "failures.jsonl").exists()


def test_ifeval_resumes_from_responses_without_a_cache(tmp_path):
    write_ifeval_prompts(tmp_path / "p.jsonl", 5)
    prompts = ifeval.load_prompts(tmp_path / "p.jsonl")
    calls = []

    def crashing(conversations, params):
        if calls:
            raise KeyboardInterrupt  # interrupted after the first chunk
        calls.append(len(conversations))
        return [c[-1]["content"].lower() for c in conversations]

    with pytest.raises(KeyboardInterrupt):
        ifeval.run_ifeval(crashing, prompts, None, tmp_path, chunk_size=2)
    seen = []

    def counting(conversations, params):
        seen.extend(c[-1]["content"] for c in conversations)
        return [c[-1]["content"].lower() for c in conversations]

    assert ifeval.run_ifeval(counting, prompts, None, tmp_path, chunk_size=2)["n_prompts"] == 5
    assert seen == [p.prompt for p in prompts[2:]]
    ifeval.run_ifeval(counting, prompts, None, tmp_path, resume=False)  # resume=False: everything again
    assert len(seen) == 3 + 5


def test_ifeval_offline_without_prompts_names_the_key(tmp_path):
    from recipes.evaluate import run

    cfg = compose_cfg(*TINY, "stage=eval", "eval=[ifeval]", "eval.generator.kind=openai",
                      "eval.generator.base_url=http://127.0.0.1:9/v1", "eval.generator.model=m")
    with pytest.raises(FileNotFoundError, match=r"set eval\.ifeval\.prompts=<local input_data\.jsonl>"):
        run(cfg, tmp_path)


# ---------------------------------------------------------------- MT-Bench
def small_mt_bench():
    questions = [{"question_id": 1, "category": "writing", "turns": ["w1?", "w2?"]},
                 {"question_id": 2, "category": "math", "turns": ["m1?", "m2?"]},
                 {"question_id": 3, "category": "stem", "turns": ["s1?", "s2?"]}]
    templates = {"single-v1": "Q {question} A {answer}",
                 "single-v1-multi-turn": "Q {question_1} A {answer_1} Q {question_2} A {answer_2}",
                 "single-math-v1": "Q {question} R {ref_answer_1} A {answer}",
                 "single-math-v1-multi-turn": "Q {question_1} R {ref_answer_1} A {answer_1} Q {question_2} "
                                              "R {ref_answer_2} A {answer_2}"}
    prompts = {name: {"name": name, "system_prompt": "You are a judge.", "prompt_template": t}
               for name, t in templates.items()}
    refs = {2: {"question_id": 2, "choices": [{"index": 0, "turns": ["r1", "r2"]}]}}
    return mt_bench.MTBenchData(questions, prompts, refs)


def answer_server():
    return FakeServer(lambda n, req: (200, chat_reply(f"answer to {req['body']['messages'][-1]['content']}"), 0.0))


def test_mt_bench_failed_judgments_are_counted_and_rerun_asks_only_them(tmp_path):
    data = small_mt_bench()

    def flaky_judge(n, req):
        return (500, {"error": "overloaded"}, 0.0) if n >= 3 else (200, chat_reply("Good. Rating: [[8]]"), 0.0)

    with answer_server() as gen, FakeServer(flaky_judge) as judge_srv:
        generator = OpenAIChatClient(gen.url, "policy", cache=tmp_path / "gen.jsonl", **FAST)
        judge = OpenAIChatClient(judge_srv.url, "judge", max_retries=0, max_failed_fraction=1.0, **FAST)
        summary = mt_bench.run_mt_bench(generator.generate, judge, tmp_path, "policy", data=data)
        assert len(gen.requests) == 6 and len(judge_srv.requests) == 6
        assert summary["n_failed_judgments"] == 3 and summary["n_judgments"] == 3 and summary["average"] == 8
        failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
        assert len(failures) == 3 and all(f["step"] == "judgment" and "HTTP 500" in f["error"] for f in failures)
    with answer_server() as gen, FakeServer(lambda n, req: (200, chat_reply("[[6]]"), 0.0)) as judge_srv:
        generator = OpenAIChatClient(gen.url, "policy", **FAST)
        summary = mt_bench.run_mt_bench(generator.generate, OpenAIChatClient(judge_srv.url, "judge", **FAST),
                                        tmp_path, "policy", data=data)
        assert len(gen.requests) == 0  # every answer was saved
        assert len(judge_srv.requests) == 3  # only the judgments that failed
    assert summary["n_judgments"] == 6 and summary["n_failed_judgments"] == 0 and summary["average"] == 7
    assert not (tmp_path / "failures.jsonl").exists()


def test_mt_bench_counts_judgments_without_a_rating_and_fails_when_none_has_one(tmp_path):
    data = small_mt_bench()

    def judge(n, req):
        rated = "Q w1?" in req["body"]["messages"][1]["content"]  # only question 1 gets a rating
        return 200, chat_reply("Rating: [[9]]" if rated else "I cannot rate this."), 0.0

    gen = lambda convs, params: ["an answer" for _ in convs]  # noqa: E731
    with FakeServer(judge) as srv:
        summary = mt_bench.run_mt_bench(gen, OpenAIChatClient(srv.url, "j", **FAST), tmp_path / "a", "m", data=data)
    assert summary["n_judgments"] == 6 and summary["n_invalid"] == 4 and summary["average"] == 9
    with FakeServer(lambda n, req: (200, chat_reply("No verdict."), 0.0)) as srv:
        with pytest.raises(ValueError, match=r"^MT-Bench: none of the 6 judgments by j has a rating \(\[\[n\]\]\)"):
            mt_bench.run_mt_bench(gen, OpenAIChatClient(srv.url, "j", **FAST), tmp_path / "b", "m", data=data)
    assert json.loads((tmp_path / "b" / "summary_m.json").read_text())["n_invalid"] == 6


def test_stage_eval_served_model_with_keyless_local_judge(tmp_path, monkeypatch):
    from recipes.evaluate import run

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent-anywhere")
    write_ifeval_prompts(tmp_path / "ifeval.jsonl", 3)
    mt_dir = tmp_path / "mt"
    (mt_dir / "reference_answer").mkdir(parents=True)
    data = small_mt_bench()
    (mt_dir / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in data.questions))
    (mt_dir / "judge_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in data.judge_prompts.values()))
    (mt_dir / "reference_answer" / "gpt-4.jsonl").write_text(json.dumps(data.references[2]) + "\n")
    with answer_server() as gen, FakeServer(lambda n, req: (200, chat_reply("[[5]]"), 0.0)) as judge:
        overrides = [*TINY, "stage=eval", "eval=[ifeval,mt_bench]", "eval.generator.kind=openai",
                     f"eval.generator.base_url={gen.url}/v1", "eval.generator.model=policy",
                     "eval.generator.max_concurrency=2", f"eval.ifeval.prompts={tmp_path / 'ifeval.jsonl'}",
                     f"eval.mt_bench.data={mt_dir}", f"eval.mt_bench.judge.base_url={judge.url}/v1",
                     "eval.mt_bench.judge.api_key_env=null", "eval.mt_bench.judge.model=local-judge"]
        cfg = compose_cfg(*overrides)
        assert cfg.eval.mt_bench.judge.api_key_env is None
        run(cfg, tmp_path / "run")
        assert len(gen.requests) == 3 + 6 and len(judge.requests) == 6
        assert all("Authorization" not in r["headers"] for r in gen.requests + judge.requests)
        run(cfg, tmp_path / "run")  # a rerun into the same directory asks nothing
        assert len(gen.requests) == 9 and len(judge.requests) == 6
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["mt_bench"]["average"] == 5 and results["mt_bench"]["n_invalid"] == 0
    assert results["ifeval"]["n_prompts"] == 3
    caches = sorted(p.name for p in (tmp_path / "run" / "eval" / "request_cache").iterdir())
    assert caches == ["generator.jsonl", "judge.jsonl"]


def test_served_client_keys_are_validated_and_renamed(tmp_path):
    from dataclasses import fields

    from recipes.config import JudgeConfig, ServedClientConfig, check_overrides
    from eval.request_pool import Limits

    for f in fields(Limits):  # one set of defaults: the config's equal the library's
        assert getattr(ServedClientConfig(), f.name) == f.default == getattr(JudgeConfig(), f.name), f.name
    assert check_overrides(["eval.generator.concurrency=4"], REPO / "conf") == (
        "unknown key 'eval.generator.concurrency'; did you mean 'eval.generator.max_concurrency'?")
    assert check_overrides(["sdg.generator.requests_per_minute=60", "eval.mt_bench.judge.api_key_env=null"],
                           REPO / "conf") is None


# ---------------------------------------------------------------- SDG
def test_sdg_prompt_with_a_failed_response_gets_no_record_and_is_asked_again(tmp_path):
    rows = [{"id": i, "prompt": f"Topic {i}?"} for i in range(4)]

    def respond(n, req):
        text = req["body"]["messages"][-1]["content"]
        return (400, {"error": "too long"}, 0.0) if text == "Topic 2?" else (200, chat_reply(f"r{n}"), 0.0)

    out = tmp_path / "gen.jsonl"
    params = SamplingParams(temperature=0.9)
    with FakeServer(respond) as srv:
        client = OpenAIChatClient(srv.url, "m", cache=tmp_path / "request_cache" / "generator.jsonl",
                                  max_failed_fraction=0.5, **FAST)
        stats = sg.generate_file(rows, out, client.generate, params, 2, "m", progress=False,
                                 failures_file=tmp_path / "sdg_failures.jsonl")
    assert stats["failed_prompts"] == 1 and stats["generated"] == 3 and stats["responses"] == 6
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1, 3]
    failure = json.loads((tmp_path / "sdg_failures.jsonl").read_text())
    assert failure["id"] == 2 and failure["failed_responses"] == 2 and "HTTP 400" in failure["error"]
    with FakeServer(lambda n, req: (200, chat_reply("fixed"), 0.0)) as srv:
        client = OpenAIChatClient(srv.url, "m", **FAST)
        stats = sg.generate_file(rows, out, client.generate, params, 2, "m", progress=False,
                                 failures_file=tmp_path / "sdg_failures.jsonl")
        assert asked(srv) == ["Topic 2?", "Topic 2?"]
    assert stats["already_done"] == 3 and stats["failed_prompts"] == 0
    assert not (tmp_path / "sdg_failures.jsonl").exists()


def test_too_many_failures_stop_sdg_in_one_line(tmp_path):
    rows = [{"id": i, "prompt": f"Topic {i}?"} for i in range(20)]
    with FakeServer(lambda n, req: (503, {"error": "down"}, 0.0)) as srv:
        client = OpenAIChatClient(srv.url, "m", max_retries=0, **FAST)
        with pytest.raises(GenerationError, match=r"^3 of 40 requests failed"):
            sg.generate_file(rows, tmp_path / "g.jsonl", client.generate, SamplingParams(), 2, "m", chunk_size=20,
                             progress=False)
        assert len(srv.requests) == 3
