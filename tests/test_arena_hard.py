"""Arena-Hard v0.1: scores of hand-built judgment files (by hand, and by show_result.py's algorithm written with
pandas as the official script is), verdict extraction, and a judged run against a real HTTP judge on 127.0.0.1."""

import json
import math

import pytest

from eval import arena_hard as ah
from tests.conftest import REPO
from tests.test_clients import FakeServer, chat_reply

FIX = REPO / "tests" / "fixtures" / "arena_hard"
JUDGMENTS = FIX / "model_judgment" / "gpt-4-1106-preview"


def show_result_v01(files, baseline="gpt-4-0314", weight=3, rounds=20):
    """show_result.py at 4813756, step by step with pandas as it is written there: battles by pd.concat in file
    order, compute_mle_elo, np.random.seed(42) and battles.sample(frac=1.0, replace=True), percentiles, win rates."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    table = {"A=B": ("tie", 1), "A>B": ("model_a", 1), "A>>B": ("model_a", weight), "B>A": ("model_b", 1),
             "B>>A": ("model_b", weight)}
    battles = pd.DataFrame()
    for f in files:
        for _, row in pd.read_json(f, lines=True).iterrows():
            for g, game in enumerate(row["games"]):
                if game["score"] not in table:
                    continue
                winner, n = table[game["score"]]
                if g == 1 and winner != "tie":
                    winner = {"model_a": "model_b", "model_b": "model_a"}[winner]
                out = {"question_id": row["question_id"], "model_a": baseline, "model_b": row["model"], "winner": winner}
                battles = pd.concat([battles, pd.DataFrame([out] * n)])

    def mle(df):
        models = pd.concat([df["model_a"], df["model_b"]]).unique()
        models = pd.Series(np.arange(len(models)), index=models)
        df = pd.concat([df, df], ignore_index=True)
        n = df.shape[0]
        X = np.zeros([n, len(models)])
        X[np.arange(n), models[df["model_a"]]] = math.log(10)
        X[np.arange(n), models[df["model_b"]]] = -math.log(10)
        Y = np.zeros(n)
        Y[df["winner"] == "model_a"] = 1.0
        tie = (df["winner"] == "tie").to_numpy().copy()
        tie[len(tie) // 2:] = False
        Y[tie] = 1.0
        elo = 400 * LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8).fit(X, Y).coef_[0] + 1000
        elo += 1000 - elo[models[baseline]]
        return pd.Series(elo, index=models.index)

    point = mle(battles)
    np.random.seed(42)
    boot = pd.DataFrame([mle(battles.sample(frac=1.0, replace=True)) for _ in range(rounds)])
    wr = lambda e, eb: round(1 / (1 + 10 ** ((eb - e) / 400)) * 100, 2)  # noqa: E731 (numpy floats: numpy's round)
    out = {}
    for m in point.index:
        lo, hi = np.percentile(boot[m], 2.5), np.percentile(boot[m], 97.5)
        lob, hib = np.percentile(boot[baseline], 2.5), np.percentile(boot[baseline], 97.5)
        s, lower, upper = (50.0, 50.0, 50.0) if m == baseline else (wr(point[m], point[baseline]), wr(lo, lob),
                                                                     wr(hi, hib))
        out[m] = (s, lower, upper, round(lower - s, 1), round(upper - s, 1))
    return out


def test_scores_of_hand_built_judgments_match_by_hand_and_show_result():
    files = sorted(JUDGMENTS.glob("*.jsonl"))
    rows = [r for f in files for r in ah.read_judgments(f)]
    table = ah.leaderboard(rows, answers=ah.load_answer_dir(FIX / "model_answer"), rounds=20)  # 100 in real runs
    assert table["gpt-3.5-turbo-0125"]["score"] == 54.55  # 100 * (5 wins + 2 ties / 2) / 11 battles
    assert table["toy-model"]["score"] == 58.33  # 100 * (3 + 1 / 2) / 6
    assert table["gpt-4-0314"]["score"] == 50.0
    assert table["gpt-3.5-turbo-0125"]["avg_tokens"] == 68 and table["gpt-3.5-turbo-0125"]["n_battles"] == 11
    official = show_result_v01(files)
    for m, (s, lower, upper, ci_lo, ci_hi) in official.items():
        assert (table[m]["score"], table[m]["lower"], table[m]["upper"]) == (s, lower, upper), m
        assert table[m]["ci"] == [ci_lo, ci_hi], m
    alone = ah.leaderboard(ah.read_judgments(files[0]), rounds=20)  # the interval depends on the files present
    assert alone["gpt-3.5-turbo-0125"]["score"] == 54.55
    assert (alone["gpt-3.5-turbo-0125"]["lower"], alone["gpt-3.5-turbo-0125"]["upper"]) == show_result_v01(files[:1])[
        "gpt-3.5-turbo-0125"][1:3]


def test_battles_weights_and_one_sided_judgments():
    rows = [{"question_id": "q", "model": "m", "games": [{"score": "A>>B"}, {"score": "A>>B"}]},
            {"question_id": "r", "model": "m", "games": [{"score": "A<B"}, {"score": None}]}]  # not v0.1 labels
    assert ah.battles_from_judgments(rows) == [("gpt-4-0314", "m", "model_a")] * 3 + [("gpt-4-0314", "m", "model_b")] * 3
    assert ah.battles_from_judgments(rows, weight=1, first_game_only=True) == [("gpt-4-0314", "m", "model_a")]
    won = [{"question_id": "q", "model": "m", "games": [{"score": "B>A"}, {"score": "A>B"}]}]
    assert ah.leaderboard(won, rounds=3)["m"]["score"] == 100.0  # where show_result.py raises: the limit


def test_verdict_extraction():
    p = ah.load_judge_config(FIX / "judge_config.yaml").pattern
    assert ah.verdict("\nMy final verdict is [[A>B]].", p) == ("A>B", False)
    assert ah.verdict("\n[[B>>A]] ... so [[B>>A]]", p) == ("B>>A", False)
    assert ah.verdict("\n[[A>B]] or rather [[B>A]]", p) == (None, False)  # two labels: no verdict, no retry
    assert ah.verdict("\nThey are both fine.", p) == (None, True)  # none: ask again


def judge_server(requests, fail_question=None):
    """Asks once more ('continue ...') on the first question's game 1, says B>A elsewhere; 400 on `fail_question`."""
    def respond(n, req):
        msgs = req["body"]["messages"]
        requests.append(msgs)
        if fail_question and fail_question in msgs[1]["content"]:
            return 400, {"error": "bad request"}, 0.0
        if "folk tune" in msgs[1]["content"] and msgs[1]["content"].index("gpt4 answer") < msgs[1]["content"].index(
                "my answer"):
            return 200, chat_reply("Let me think." if len(msgs) == 2 else "Verdict: [[A>B]]"), 0.0
        return 200, chat_reply("My final verdict is [[B>A]]"), 0.0
    return FakeServer(respond)


def test_judged_run_two_games_second_call_resume_and_failures(tmp_path):
    from eval.clients import OpenAIChatClient

    data = tmp_path / "data"
    (data / "model_answer").mkdir(parents=True)
    (data / "question.jsonl").write_text((FIX / "question.jsonl").read_text())
    (data / "judge_config.yaml").write_text((FIX / "judge_config.yaml").read_text())
    questions = ah.load_questions(FIX / "question.jsonl")
    (data / "model_answer" / "gpt-4-0314.jsonl").write_text("".join(json.dumps(
        {"question_id": q["question_id"], "choices": [{"index": 0, "turns": [{"content": "gpt4 answer",
                                                                            "token_len": 3}]}]})
        + "\n" for q in questions))
    gen = lambda convs, params: ["my answer"] * len(convs)  # noqa: E731
    seen = []
    out = tmp_path / "out"
    with judge_server(seen, fail_question="chord progression") as server:
        judge = OpenAIChatClient(server.url + "/v1", "gpt-4-1106-preview", max_retries=0, progress=False,
                                 max_failed_fraction=1.0)
        with pytest.raises(ah.JudgeError, match="2 of 9 judge requests failed"):
            ah.run_arena_hard(gen, judge, out, "my-model", data, rounds=5)
        rows = ah.read_judgments(out / "model_judgment" / "gpt-4-1106-preview" / "my-model.jsonl")
        assert len(rows) == 3 and len(seen) == 9  # 4 questions x 2 games + 1 second call; 2 failed, not saved
    with judge_server(seen) as server:
        judge = OpenAIChatClient(server.url + "/v1", "gpt-4-1106-preview", progress=False)
        s = ah.run_arena_hard(gen, judge, out, "my-model", data, rounds=5)
        assert len(seen) == 11  # only the failed question again
        ah.run_arena_hard(gen, judge, out, "my-model", data, rounds=5)
        assert len(seen) == 11
    system = ah.load_judge_config(data / "judge_config.yaml").system_prompt
    first = seen[0]
    assert first[0] == {"role": "system", "content": system}
    assert first[1]["content"] == ("<|User Prompt|>\n" + questions[0]["turns"][0]["content"] +
                                   "\n\n<|The Start of Assistant A's Answer|>\ngpt4 answer\n<|The End of Assistant A's "
                                   "Answer|>\n\n<|The Start of Assistant B's Answer|>\nmy answer\n<|The End of "
                                   "Assistant B's Answer|>")
    again = next(m for m in seen if len(m) == 4)
    assert again[2] == {"role": "assistant", "content": "Let me think."}
    assert again[3] == {"role": "user", "content": ah.CONTINUE}
    assert ah.CONTINUE == "continue your judgment and finish by outputting a final verdict label"
    saved = ah.read_judgments(out / "model_judgment" / "gpt-4-1106-preview" / "my-model.jsonl")
    rows = {r["question_id"]: r for r in saved}
    folk = rows[questions[0]["question_id"]]["games"]
    assert folk[0]["judgment"] == "\nLet me think.\nVerdict: [[A>B]]" and folk[0]["score"] == "A>B"
    assert folk[1]["score"] == "B>A" and "Assistant A's Answer|>\nmy answer" in folk[1]["user_prompt"]
    # game 1 of the folk tune: baseline x1; every other game: B>A = model x1 (game 1) and baseline x1 (game 2)
    assert s["score"] == round(100 * 3 / 8, 2) and s["n_judge_calls"] == 2 and s["n_questions"] == 4
    assert s["avg_tokens"] is None and s["models"]["gpt-4-0314"]["avg_tokens"] == 3


def test_score_cli(tmp_path, capsys):
    assert ah.main(["score", "--judgments", str(JUDGMENTS / "toy-model.jsonl"), "--json", "--rounds", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 58.33
    (tmp_path / "bad.jsonl").write_text('{"question_id": "q", "model": "m", "games": "A>B"}\n')
    assert ah.main(["score", "--judgments", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: games: must be a list" in capsys.readouterr().err
