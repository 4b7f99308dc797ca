"""stage=sdg_dialogue: role-played 3-turn dialogues from a real local server (generator and reward model
endpoint), polite closers stripped, every assistant turn scored, the threshold, counts at every filter."""

import json

import pytest

from data_prep.schemas import validate_sft_chat
from eval.reward_client import reward_reply
from recipes import sdg_dialogue
from tests.conftest import TINY, compose_cfg
from tests.test_clients import FakeServer, chat_reply
from tests.test_rm_annotate import rows

RM = "nvidia/nemotron-4-340b-reward"
W = 0.3 + 0.74 + 0.46 + 0.47 - 0.33  # Nemotron-4-340B-Reward's weights over the five (equal) attributes

PROMPTS = [{"id": "a", "prompt": "How do I start a compost heap?"},
           {"id": "b", "prompt": "What is a light year?"},
           {"id": "c", "prompt": "Why do onions make you cry? (broken user)"},
           {"id": "d", "prompt": "how do I start a  compost heap?"},  # a duplicate of a
           {"id": "e", "conversations": [{"from": "User", "value": "Hi"}, {"from": "Assistant", "value": "Hello"},
                                         {"from": "User", "value": "Tell me a joke."}]}]


def score(text):
    return 1 + (len(text) % 7) / 2  # every attribute of an answer, by its length


def server(n, req):
    """The generator (model mixtral) and the reward model (Nemotron-4-340B-Reward's API) on one port."""
    msgs = req["body"]["messages"]
    text = msgs[-1]["content"]
    if req["body"]["model"] == RM:
        v = score(text)
        return 200, reward_reply({a: v for a in ("helpfulness", "correctness", "coherence", "complexity",
                                                 "verbosity")}, RM), 0
    if text.startswith("You are role-playing a user"):
        if "(broken user)" in text:
            return 200, chat_reply("Thanks!"), 0  # nothing left once the thanks is stripped
        k = text.count("Assistant:")
        return 200, chat_reply(f"Thank you so much! Could you explain point {k} in more detail? Thanks a lot."), 0
    return 200, chat_reply(f"Answer {len(msgs) // 2 + 1}: here is what you asked about ({text[:30]})."), 0


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("dlg")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    with FakeServer(server) as srv:
        base = ("stage=sdg_dialogue", *TINY, f"sdg_dialogue.prompts={prompts}", f"sdg_dialogue.reward_model={srv.url}/v1",
                "sdg_dialogue.endpoint.max_concurrency=4", "sdg_dialogue.generator.kind=openai",
                f"sdg_dialogue.generator.base_url={srv.url}/v1", "sdg_dialogue.generator.model=mixtral",
                "sdg_dialogue.generator.max_concurrency=4", f"exp_manager.explicit_log_dir={root / 'one'}")
        out = sdg_dialogue.run(compose_cfg(*base), root / "one")
        first = len(srv.requests)
        scored = rows(root / "one" / "dialogues_scored.jsonl")
        low, high = sorted(x["reward"] for x in scored)
        cut = (low + high) / 2  # keeps only the better dialogue
        sdg_dialogue.run(compose_cfg(*base, f"sdg_dialogue.min_reward={cut}"), root / "one")
        again = len(srv.requests) - first
    return {"root": root, "out": out, "scored": scored, "requests": first, "again": again,
            "report": json.loads((root / "one" / "report.json").read_text()), "cut": cut}


def test_three_turn_dialogues_as_sft_rows(made):
    scored = made["scored"]
    assert [x["id"] for x in scored] == ["a", "b"]
    for x in scored:
        turns = x["conversations"]
        assert [t["from"] for t in turns] == ["User", "Assistant"] * 3
        assert turns[2]["value"] == "Could you explain point 1 in more detail?"  # the thanks stripped, both ends
        assert turns[5]["value"].startswith("Answer 3:") and x["provenance"]["polite_phrases_stripped"] == 2
        assert len(x["turn_scores"]) == 3 and x["reward"] == min(s["reward"] for s in x["turn_scores"])
    # generator: 3 first answers, 3 user turns (one unusable), 2 + 2 + 2; reward model: 2 dialogues x 3 turns
    assert made["requests"] == 3 + 3 + 2 + 2 + 2 + 6


def test_every_assistant_turn_scored_by_the_endpoint(made):
    for x in made["scored"]:
        answers = [t["value"] for t in x["conversations"] if t["from"] == "Assistant"]
        assert [s["attributes"]["helpfulness"] for s in x["turn_scores"]] == [score(a) for a in answers]
        assert [s["reward"] for s in x["turn_scores"]] == pytest.approx([W * score(a) for a in answers], abs=1e-6)


def test_threshold_and_counts_at_every_filter(made):
    rep = made["report"]
    assert rep["input"] == {"rows_in": 5, "rows_ok": 3, "rejected": {"duplicate_prompt": 1, "multi_turn_prompt": 1}}
    c = rep["outputs"]["dialogues.jsonl"]
    assert c["rows_in"] == 3 and c["rows_out"] == 1
    assert c["rejected"] == {"failed_request": 0, "empty_assistant_turn": 0, "unusable_user_turn": 1,
                             "below_min_reward": 1}
    kept = rows(made["root"] / "one" / "dialogues.jsonl")
    assert len(kept) == 1 and validate_sft_chat(kept[0]) == [] and kept[0]["mask"] == "User"
    assert made["again"] == 0  # the rerun with a threshold asked nothing: generator and RM replies cached


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="needs sdg_dialogue.prompts"):
        sdg_dialogue.run(compose_cfg("stage=sdg_dialogue", *TINY), tmp_path)
