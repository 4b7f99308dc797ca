"""AlpacaEval 2.0: conformance with alpaca-eval 0.6.6 on 805 official annotations, the judge request, the length-
controlled win rate's plumbing, and a judged run against a real HTTP judge on 127.0.0.1."""

import json
import math
import sys

import pytest

from eval import alpaca_eval as ae
from tests.conftest import REPO
from tests.test_clients import FakeServer

FIX = REPO / "tests" / "fixtures" / "alpaca_eval"
SECRET = "sk-alpaca-7f6e5d4c"


@pytest.fixture(scope="module")
def official():
    return ae.read_annotations(FIX / "annotations.json.gz"), json.loads((FIX / "expected.json").read_text())


@pytest.fixture(scope="module")
def annotator():
    return ae.load_annotator(FIX / "configs.yaml")


def test_aggregation_reproduces_get_winrate_exactly(official):
    rows, expected = official
    s = ae.summarize(rows)
    for key, value in expected["computed_here"]["values"].items():
        assert s[key] == pytest.approx(value, abs=1e-9, rel=0), key
    assert (s["n_wins"], s["n_wins_base"], s["n_draws"], s["n_total"]) == (64, 737, 4, 805)
    assert s["length_controlled_winrate"] is None and "df_gamed.csv" in s["length_controlled_note"]


def test_parser_reproduces_every_stored_preference(official, annotator):
    rows, _ = official
    with_logprobs = [r for r in rows if r.get("raw_completion")]
    assert len(with_logprobs) == 801
    for r in with_logprobs:  # alpaca_eval stores preferences rounded to 10 decimals
        assert round(ae.preference(annotator, r["instruction"], r["raw_completion"]), 10) == r["preference"]
    # the 4 others are the identical-output draws, scored 1.5 without a judge call
    assert all(r["preference"] == 1.5 and r["output_1"] == r["output_2"] for r in rows if not r.get("raw_completion"))
    reparsed, differ = ae.reparse(rows, annotator)
    assert differ == 0
    assert ae.summarize(reparsed)["win_rate"] == pytest.approx(ae.summarize(rows)["win_rate"], abs=1e-9)


def test_order_switch_and_parser_rules(annotator):
    choice = lambda *tops: {"logprobs": {"content": [{"token": tops[0][0], "top_logprobs": [  # noqa: E731
        {"token": t, "logprob": lp} for t, lp in tops]}]}}
    assert ae.parse_preference(annotator, choice(("m", 0.0), ("M", -50.0))) == pytest.approx(1.0)
    assert ae.parse_preference(annotator, choice(("M", math.log(0.75)), ("m", math.log(0.25)))) == pytest.approx(1.75)
    assert ae.parse_preference(annotator, choice(("M", -0.1), ("The", -3.0))) == 2.0  # missing m: probability 0
    assert math.isnan(ae.parse_preference(annotator, choice(("The", -0.1), ("A", -2.0))))
    assert math.isnan(ae.parse_preference(annotator, {"message": {"content": "m"}}))  # no logprobs
    # the switch: random.Random("is_switched_outputs" + instruction + "0"), undone as 3 - p
    flips = {t: ae.is_switched(t) for t in ("a", "b", "c", "d", "e", "f", "g", "h")}
    assert set(flips.values()) == {False, True}
    t = next(k for k, v in flips.items() if v)
    assert ae.preference(annotator, t, choice(("m", 0.0), ("M", -50.0))) == pytest.approx(2.0)


def test_judge_request_follows_the_annotator_config(annotator):
    # a placeholder inside the instruction is what make_prompts' first-occurrence replacement fills next
    body = ae.judge_request(annotator, "Say {output_1}!", "BASE", "MODEL")
    assert {k: v for k, v in body.items() if k != "messages"} == {"max_tokens": 1, "temperature": 1, "logprobs": True,
                                                                  "top_logprobs": 5}
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are a highly efficient assistant")
    first, second = ("MODEL", "BASE") if ae.is_switched("Say {output_1}!") else ("BASE", "MODEL")
    # so the first output lands in the instruction and the first slot keeps its placeholder (as in alpaca_eval)
    assert f'"instruction": """Say {first}!"""' in user["content"]
    assert '"output": """{output_1}"""' in user["content"] and f'"output": """{second}"""' in user["content"]
    assert user["content"].endswith("## Best Model Identifier")
    assert annotator.judge_model == "gpt-4-1106-preview"
    if ae.package_dir():  # the fixture is the package's own config and prompt, byte for byte
        pkg = ae.load_annotator()
        assert (pkg.template, pkg.completions_kwargs) == (annotator.template, annotator.completions_kwargs)


def test_length_controlled_through_the_package_with_a_local_df_gamed(official, tmp_path):
    pytest.importorskip("sklearn")
    if ae.package_dir() is None:
        pytest.skip("alpaca-eval is not installed")
    import numpy as np
    import sklearn

    rows, _ = official
    rng = np.random.default_rng(0)
    gamed = tmp_path / "df_gamed.csv"  # a stand-in with the real file's columns (the real one is on the hub)
    lines = ["model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline"]
    difficulty = rng.normal(size=805)
    for model, shift in (("verbose", 1.0), ("concise", -1.0)):
        lines += [f"{model},{i},{np.clip(0.5 + 0.2 * shift + 0.1 * rng.normal(), 0, 1)},{-shift * abs(rng.normal())},"
                  f"{difficulty[i]},False" for i in range(805)]
    gamed.write_text("\n".join(lines) + "\n")
    s = ae.summarize(rows, str(gamed))
    assert 0 < s["length_controlled_winrate"] < 100 and s["lc_standard_error"] > 0
    assert "length_controlled_note" not in s
    assert sklearn.get_config()["enable_metadata_routing"] is False  # the package's global switch was undone
    # no pkg_resources stand-in left behind (a real module has a __spec__)
    assert "pkg_resources" not in sys.modules or sys.modules["pkg_resources"].__spec__ is not None
    assert ae.length_controlled(rows[:10])["length_controlled_note"].startswith("not computed: the GLM needs all 805")


def test_score_cli_prints_the_leaderboard_keys(tmp_path, capsys):
    assert ae.main(["score", "--annotations", str(FIX / "annotations.json.gz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["win_rate"] == pytest.approx(9.177964561962733, abs=1e-9)
    assert {"standard_error", "discrete_win_rate", "n_wins", "n_wins_base", "n_draws", "n_total"} <= set(out)
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x", "output_1": "a", "output_2": "b"},
                                                   {"instruction": "y", "output_1": "a"}]))
    assert ae.main(["score", "--annotations", str(tmp_path / "bad.json")]) == 2
    assert "bad.json:2: output_2: missing or not a string" in capsys.readouterr().err


def logprob_judge(requests_seen):
    """Prefers 'M' (the second slot) with probability 0.8 for every request; counts them."""
    def respond(n, req):
        requests_seen.append(req)
        assert req["headers"].get("Authorization") == f"Bearer {SECRET}"
        tops = [{"token": "M", "logprob": math.log(0.8)}, {"token": "m", "logprob": math.log(0.2)}]
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "M"},
                                  "logprobs": {"content": [{"token": "M", "logprob": tops[0]["logprob"],
                                                            "top_logprobs": tops}]}}]}, 0.0
    return FakeServer(respond)


def test_judged_run_resumes_without_paying_twice(official, annotator, tmp_path, monkeypatch):
    from eval.clients import OpenAIChatClient

    rows, _ = official
    eval_set = ae.load_eval_set(FIX / "annotations.json.gz")[:6]
    assert eval_set[0]["output"] == rows[0]["output_1"] and eval_set[0]["generator"] == "gpt4_1106_preview"
    asked = []

    def gen(convs, params):  # repeats the baseline on instruction 2 (a draw, no judge call); 5 fails the first time
        asked.extend(c[0]["content"] for c in convs)
        return [eval_set[2]["output"] if c[0]["content"] == eval_set[2]["instruction"] else
                None if c[0]["content"] == eval_set[5]["instruction"] and len(asked) <= 6 else "An answer."
                for c in convs]

    monkeypatch.setenv("JUDGE_KEY", SECRET)
    seen = []
    with logprob_judge(seen) as server:
        judge = OpenAIChatClient(server.url + "/v1", "gpt-4-1106-preview", api_key_env="JUDGE_KEY", progress=False)
        first = ae.run_alpaca_eval(gen, judge, tmp_path, "my-model", eval_set, annotator=annotator)
        assert len(seen) == 4 and all(r["body"]["model"] == "gpt-4-1106-preview" for r in seen)
        assert seen[0]["body"]["max_tokens"] == 1 and seen[0]["body"]["top_logprobs"] == 5
        assert first["n_failed_outputs"] == 1 and first["n_total"] == 5
        s = ae.run_alpaca_eval(gen, judge, tmp_path, "my-model", eval_set, annotator=annotator)
        assert asked[6:] == [eval_set[5]["instruction"]] and len(seen) == 5  # only what the first run missed
        ae.run_alpaca_eval(gen, judge, tmp_path, "my-model", eval_set, annotator=annotator)
        assert len(asked) == 7 and len(seen) == 5  # everything from model_outputs.json and annotations.json
    saved = json.loads((tmp_path / "annotations.json").read_text())
    expected = [1.5 if i == 2 else (3 - 1.8 if ae.is_switched(r["instruction"]) else 1.8)
                for i, r in enumerate(eval_set)]
    assert [r["preference"] for r in saved] == pytest.approx(expected)
    assert s["n_judge_calls"] == 1 and s["n_draws"] == 1 and s["n_total"] == 6 and s["n_failed_outputs"] == 0
    assert s["win_rate"] == pytest.approx(100 * sum(p - 1 for p in expected) / 6)
    assert json.loads((tmp_path / "model_outputs.json").read_text())[0] == {
        "instruction": eval_set[0]["instruction"], "output": "An answer.", "generator": "my-model"}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
