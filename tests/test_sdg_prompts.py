"""stage=sdg_prompts against a real local OpenAI-compatible server: every task, list parsing, the filters
and their counts, provenance, the cache on rerun, and IFEval prompts checked by eval/ifeval.py."""

import json
import re

import pytest

from eval.ifeval import IFEvalPrompt, check_response
from recipes import sdg_generate, sdg_prompts
from recipes.sdg_common import parse_list, parse_refined, parse_single, strip_polite
from recipes.sdg_instructions import usable_ids
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_clients import FakeServer, chat_reply

IFEVAL = REPO / "data" / "demo" / "ifeval_prompts.jsonl"
CONTAMINATED = json.loads(IFEVAL.read_text().splitlines()[0])["prompt"]
# Instructions a test can follow from their kwargs alone (no language detection, no counting).
CHECKABLE = {"detectable_format:title", "punctuation:no_comma", "keywords:existence", "startend:end_checker",
             "detectable_content:postscript"}


def generator(n, req):
    """A stand-in Mixtral: deterministic lists in the layouts real models use, some of them bad."""
    text = req["body"]["messages"][-1]["content"]
    topic = re.search(r'"([^"]+)"', text)
    topic = topic.group(1) if topic else ""
    if text.startswith("List ") and "broad topics" in text:
        reply = "Here are some topics:\n1. Astronomy\n2. **Cooking**"
    elif "subtopics of the topic" in text:
        reply = "Sure!" if topic == "Cooking" else f"1. {topic} basics\n2) The history of {topic}\n"
    elif "questions that a curious person" in text:
        reply = (f"1. What is the most important idea in {topic}?\n"
                 f"2. What is the most important idea in {topic}?\n"  # an exact duplicate
                 "3. How do people measure the distance between the Earth and the Moon?\n"
                 "4. How do people measure the distance between the Earth and the Moon today?\n"  # near duplicate
                 + (f"5. {CONTAMINATED}\n" if topic == "Astronomy" else ""))
    elif "writing tasks" in text:
        reply = f"- Write a short poem about {topic}.\n- Write a letter to a friend about {topic}.\nI hope this helps!"
    elif text.startswith("Rewrite the question"):
        q = text.split("Question: ", 1)[1]
        reply = "" if "history" in q else f"Revised question: {q[:-1]}, with two concrete examples?"
    elif text.startswith("Rewrite the writing task"):
        reply = "Sure! Here is the rewritten task:\n" + text.split("Task: ", 1)[1][:-1] + " in about 200 words."
    elif "Here is a document" in text:
        reply = "1. Summarise the document in two sentences.\n2. When does the group meet?"
    elif "math problems" in text:
        reply = f"1. A problem about {topic}: what is 20% of 150?\n2. Compute 3/4 + 1/8 using {topic}."
    elif "Python programming tasks" in text:
        reply = f"* Write a function that uses {topic} to square a list of numbers.\n* Explain {topic} with code."
    elif "Write the next message the user sends" in text:
        reply = "Can you give me one more example of that?"
    else:  # an assistant turn
        reply = "Here is a helpful answer."
    return 200, chat_reply(reply), 0.0


def cfg_for(url, out_dir, *extra):
    return compose_cfg("stage=sdg_prompts", *TINY, f"sdg_prompts.topics={REPO / 'data' / 'demo' / 'topics.txt'}",
                       "sdg_prompts.generator.kind=openai", f"sdg_prompts.generator.base_url={url}/v1",
                       "sdg_prompts.generator.model=mixtral", "sdg_prompts.generator.max_concurrency=4",
                       "sdg_prompts.n_macro_topics=2", "sdg_prompts.n_subtopics=2", "sdg_prompts.n_open_qa=5",
                       "sdg_prompts.n_writing=2", f"sdg_prompts.documents={REPO / 'data' / 'demo' / 'documents.jsonl'}",
                       "sdg_prompts.n_closed_qa=2", "sdg_prompts.max_keywords=2", "sdg_prompts.n_instruction_following=9",
                       "sdg_prompts.n_two_turn=2", "sdg_prompts.max_instructions=3",
                       f"sdg_prompts.decontaminate=[{IFEVAL}]", f"exp_manager.explicit_log_dir={out_dir}", *extra)


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdgp")
    exclude = sorted(set(usable_ids(exclude=())) - CHECKABLE)
    with FakeServer(generator) as srv:
        cfg = cfg_for(srv.url, out, f"sdg_prompts.if_exclude=[{','.join(exclude)}]")
        path = sdg_prompts.run(cfg, out)
        first = len(srv.requests)
        before = path.read_bytes()
        sdg_prompts.run(cfg, out)  # everything comes from the cache
        again = len(srv.requests) - first
    return {"dir": out, "path": path, "rows": [json.loads(x) for x in path.read_text().splitlines()],
            "report": json.loads((out / "report.json").read_text()), "requests": first, "again": again,
            "same": path.read_bytes() == before,
            "rejects": [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]}


def test_every_task_with_provenance_and_sdg_generate_reads_it(produced):
    rows = produced["rows"]
    by_task = {t: [r for r in rows if r["category"] == t] for t in sdg_prompts.TASKS}
    assert all(by_task[t] for t in sdg_prompts.TASKS), {t: len(v) for t, v in by_task.items()}
    loaded = sdg_generate.load_prompts(str(produced["path"]))  # the next stage's reader accepts every row
    assert len(loaded) == len(rows) and sdg_generate.dedup(loaded)[1] == 0
    q = next(r for r in by_task["open_qa"] if "Moon" in r["prompt"])
    assert q["prompt"].endswith("with two concrete examples?") and q["provenance"]["refined"] is True
    assert q["provenance"]["templates"][-2:] == ["open_qa", "refine_open_qa"]
    assert q["provenance"]["generator"] == "mixtral" and q["provenance"]["seed"] == 1234
    unrefined = [r for r in by_task["open_qa"] if "history" in r["prompt"]]
    assert unrefined and all(r["provenance"]["refined"] is False for r in unrefined)  # empty refinement kept the first
    sub = next(r for r in by_task["writing"] if r["provenance"]["topic"] == "Astronomy basics")
    assert sub["provenance"]["templates"][:2] == ["macro_topics", "subtopics"]
    closed = by_task["closed_qa"][0]
    assert closed["prompt"].startswith("The Cactus Club") and closed["prompt"].endswith("in two sentences.")
    assert {r["provenance"]["keyword"] for r in by_task["math"]} == {"percentages", "fractions"}
    two = by_task["two_turn"][0]["conversations"]
    assert [t["from"] for t in two] == ["User", "Assistant", "User"]
    assert two[2]["value"] == "Can you give me one more example of that?"
    variants = {r["provenance"]["variant"]: r for r in by_task["instruction_following"]}
    assert set(variants) == {"single", "all_turns", "revise"}
    assert "In this and all your following answers:" in variants["all_turns"]["conversations"][0]["value"]
    assert variants["revise"]["conversations"][2]["value"].startswith("Please rewrite your previous answer")


def test_filter_counts_and_rejects(produced):
    rep = produced["report"]
    oq = rep["outputs"]["prompts.jsonl [open_qa]"]
    assert oq["rejected"]["duplicate_prompt"] >= 5 and oq["rejected"]["near_duplicate"] >= 1
    assert oq["rejected"]["contaminated"] == 1
    assert all(c["rows_in"] == c["rows_out"] + sum(c["rejected"].values()) for c in rep["outputs"].values())
    bad = [r for r in produced["rejects"] if r["reason"] == "unparseable_output"]
    assert rep["input"]["rejected"] == {"unparseable_output": len(bad), "failed_request": 0}
    assert rep["outputs"]["prompts.jsonl [python]"]["rejected"] == {
        "empty_text": 0, "duplicate_prompt": 0, "contaminated": 0, "near_duplicate": 0}  # every filter listed
    assert [r["raw"] for r in bad if r["template"] == "subtopics"] == ["Sure!"]  # Cooking's subtopics
    assert {r["template"] for r in bad} == {"subtopics", "refine_open_qa"}  # + the empty refinements
    contaminated = next(r for r in produced["rejects"] if r["reason"] == "contaminated")
    assert "ifeval_prompts.jsonl:1" in contaminated["detail"]
    assert sum(c["rows_out"] for c in rep["outputs"].values()) == len(produced["rows"])


def test_rerun_asks_nothing_and_writes_the_same(produced):
    assert produced["requests"] > 40 and produced["again"] == 0 and produced["same"]


def test_instruction_following_prompts_are_checked_by_ifeval(produced):
    rows = [r for r in produced["rows"] if r["category"] == "instruction_following"]
    assert len(rows) >= 6
    n_followed = 0
    for i, row in enumerate(rows):
        assert len(row["instruction_id_list"]) == len(row["kwargs"]) >= 1
        assert set(row["instruction_id_list"]) <= CHECKABLE
        text = row.get("prompt") or row["conversations"][-1]["value"]
        p = IFEvalPrompt(i, text, row["instruction_id_list"], row["kwargs"])
        kw = {k: v for d in row["kwargs"] for k, v in d.items()}
        good = (f"<<an answer>>\nhere it is with {' '.join(kw.get('keywords', []))}\n"
                f"{kw.get('postscript_marker', 'P.S.')} one more thing {kw.get('end_phrase', 'done')}")
        assert check_response(p, good, loose=False)["follow_all_instructions"], (row["instruction_id_list"], kw)
        bad = check_response(p, "no title, no keywords, commas", loose=False)
        assert not any(bad["follow_instruction_list"])
        n_followed += 1
    assert n_followed == len(rows)


def test_list_parsing_is_robust_to_layouts():
    text = ("Sure! Here are four questions:\n\n1. What is X and why?\n2) **How** does Y work?\n- A bullet item here\n"
            "Question 4: A long first item that\ncontinues on the next line\n\nI hope this helps!")
    assert parse_list(text) == ["What is X and why?", "How does Y work?", "A bullet item here",
                                "A long first item that continues on the next line"]
    assert parse_list("1. **Soil health**: keeping it rich\n2. \"Composting at home\"") == [
        "Soil health: keeping it rich", "Composting at home"]
    assert parse_list("Sure!") == [] and parse_list("I'm sorry, I can't help with that.") == []
    assert parse_list("1. ok\n2. Fine question here?", max_items=1) == ["Fine question here?"]
    assert parse_list("1. 2.5% of 80 is what?\n2. What is 0.5 of 12?") == ["2.5% of 80 is what?", "What is 0.5 of 12?"]
    assert parse_single('Sure! Here is the revised question:\n"What are three ways to enrich clay soil?"') == \
        "What are three ways to enrich clay soil?"
    assert parse_single("Sure!") is None
    assert parse_refined('Here is a more specific version:\n\n"What are three ways to enrich clay soil?"\n\nI added '
                         'detail.', question=True) == "What are three ways to enrich clay soil?"
    assert parse_refined("To grow plants you need light.\n\nPlants also need water and soil.", question=True) is None
    assert parse_refined("Question: How much light do tomatoes need in pots? I added the pots.", question=True) == \
        "How much light do tomatoes need in pots?"
    assert parse_list("1. Ideas for the garden:\nA. compost\n2. Watering in the morning\n\nThese questions are "
                      "numbered as you asked.") == ["Watering in the morning"]
    assert strip_polite("Thank you so much! Could you explain Phobos? Thanks in advance.") == "Could you explain Phobos?"


def test_config_errors_are_one_line(tmp_path):
    cfg = compose_cfg("stage=sdg_prompts", *TINY)
    with pytest.raises(ValueError, match="needs sdg_prompts.topics"):
        sdg_prompts.run(cfg, tmp_path)
    cfg = compose_cfg("stage=sdg_prompts", *TINY, "sdg_prompts.tasks=[open_qa,poems]")
    with pytest.raises(ValueError, match="unknown task or variant 'poems'"):
        sdg_prompts.run(cfg, tmp_path)
    cfg = compose_cfg("stage=sdg_prompts", *TINY, "sdg_prompts.topics=x.txt", "+sdg_prompts.templates.open_qa='{n} on {topc}'")
    with pytest.raises(ValueError, match=r"template 'open_qa' uses \{topc\}"):
        sdg_prompts.run(cfg, tmp_path)
    from recipes.config import validate

    assert any("sdg_prompts.n_open_qa=-1" in p for p in validate(compose_cfg(*TINY, "sdg_prompts.n_open_qa=-1")))


def test_in_process_generator_resumes_from_its_cache(tmp_path, monkeypatch):
    """Killed after its first step, a run with the HF model asks only what it had not got; a third run asks
    nothing and writes the same file."""
    from eval.hf_client import HFClient
    from tests.test_sdg_generate import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny")
    real, asked, crash = HFClient.generate, [], {"at": 2}

    def generate(self, conversations, params):
        if len(asked) + 1 == crash["at"]:
            raise KeyboardInterrupt  # a kill during the second step
        asked.append(len(conversations))
        return real(self, conversations, params)

    monkeypatch.setattr(HFClient, "generate", generate)
    cfg = compose_cfg("stage=sdg_prompts", *TINY, f"sdg_prompts.topics={REPO / 'data' / 'demo' / 'topics.txt'}",
                      f"sdg_prompts.model={ckpt}", "data.prompt_template=nemotron", "sdg_prompts.max_new_tokens=6",
                      "sdg_prompts.n_subtopics=1", "sdg_prompts.n_open_qa=1", "sdg_prompts.n_writing=1",
                      "sdg_prompts.tasks=[open_qa,writing,math]", "sdg_prompts.max_keywords=1",
                      "sdg_prompts.near_duplicate_threshold=0")
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        sdg_prompts.run(cfg, out)
    assert asked == [3]  # the subtopics of the 3 topics, cached
    crash["at"] = None
    path = sdg_prompts.run(cfg, out)
    assert len(asked) == 3  # + the lists, then the refinements: the subtopics came from the cache
    first = path.read_bytes()
    n = len(asked)
    sdg_prompts.run(cfg, out)
    assert len(asked) == n and path.read_bytes() == first
