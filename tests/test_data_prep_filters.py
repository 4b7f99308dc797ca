"""Shared filters: decontamination on real evaluation prompts, dedup, empty text, token length."""

import json
from pathlib import Path

import pytest

from data_prep.filters import Decontaminator, FilterConfig, Filters, eval_prompts, normalize, words
from data_prep.helpsteer2 import convert_helpsteer2
from data_prep.inputs import DataPrepError
from data_prep.sdg import convert_sdg
from tests.conftest import FIXTURES as ALL_FIXTURES, REWARD_BENCH_ROWS

FIXTURES = Path(__file__).parent / "fixtures" / "data_prep"
MT_QUESTIONS = ALL_FIXTURES / "mt_bench" / "question.jsonl"
N_IFEVAL, N_REWARD_BENCH = 48, 61  # rows of tests/fixtures/ifeval/input_data.jsonl and the demo's RewardBench subset


def write(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def eval_files():
    return [str(MT_QUESTIONS), str(ALL_FIXTURES / "ifeval" / "input_data.jsonl"), str(REWARD_BENCH_ROWS)]


def test_eval_file_layouts():
    mt, ifeval, rb = eval_files()
    mt_prompts = eval_prompts(mt)
    assert len(mt_prompts) == 160 and mt_prompts[0][0] == 1 and mt_prompts[1][0] == 1  # both turns of question 81
    assert len(eval_prompts(ifeval)) == N_IFEVAL
    assert len(eval_prompts(rb)) == N_REWARD_BENCH


def test_decontamination_hits_a_real_mt_bench_question(tmp_path):
    q = json.loads(MT_QUESTIONS.read_text().splitlines()[9])["turns"][0]  # question_id 90
    d = Decontaminator(eval_files())
    # The question pasted into a longer prompt, with case and whitespace changed.
    hit = d.match("Please help me with this task:\n\n" + "  ".join(q.upper().split()) + "\nThanks!")
    ws = words(q)
    assert hit == f"shares the 13-gram '{' '.join(ws[:13])}' with question.jsonl:10"
    assert d.match("Write a short poem about the sea and the wind at dawn, in the style of a sea shanty.") is None
    # RewardBench's short prompts (fewer than 13 words) match only the same words.
    # (line 1 of the subset: "Who created the Superman cartoon character?")
    assert d.match("who created the SUPERMAN cartoon character") == "same words as reward_bench_subset.jsonl:1"
    assert d.match("Who created the Superman cartoon character first?") is None
    # n is configurable.
    assert Decontaminator(eval_files(), n=5).match("superman cartoon character first?") is None
    assert Decontaminator(eval_files(), n=4).match("so who created the superman") is not None


def test_decontamination_in_both_scripts(tmp_path):
    q = json.loads(MT_QUESTIONS.read_text().splitlines()[0])["turns"][0]
    rows = [{"prompt": q, "response": r, "helpfulness": h, "correctness": 3, "coherence": 3, "complexity": 1, "verbosity": 1}
            for r, h in (("A", 4), ("B", 1))]
    rows += [{"prompt": "Tell me about otters.", "response": r, "helpfulness": h, "correctness": 3, "coherence": 3,
              "complexity": 1, "verbosity": 1} for r, h in (("C", 4), ("D", 1))]
    src = write(tmp_path / "hs.jsonl", rows)
    rep = convert_helpsteer2(src, tmp_path / "hs", val_fraction=0.0, filters={"decontaminate": eval_files()})
    assert rep["outputs"]["train.jsonl"]["rejected"] == {"contaminated": 2}
    assert rep["outputs"]["train_dpo.jsonl"]["rejected"] == {"contaminated": 1}
    assert rep["filters"]["decontaminate"]["eval_prompts"] == 160 + N_IFEVAL + N_REWARD_BENCH
    rep = convert_sdg(str(FIXTURES / "sdg_records.jsonl"), tmp_path / "sdg", filters={"decontaminate": eval_files()})
    assert rep["outputs"]["train_sft.jsonl"]["rejected"] == {"empty_text": 1, "contaminated": 1}
    rec = [json.loads(x) for x in (tmp_path / "sdg" / "rejects.jsonl").read_text().splitlines() if "contaminated" in x]
    assert rec[0]["line"] == 7 and rec[0]["detail"].endswith("with question.jsonl:1")


def test_unknown_eval_layout(tmp_path):
    bad = write(tmp_path / "eval.jsonl", [{"question": "What?"}])
    with pytest.raises(DataPrepError, match=r"eval.jsonl:1: not an evaluation prompt: expected 'turns' \(MT-Bench\)"):
        Decontaminator([bad])


def test_dedup_and_empty():
    f = Filters(FilterConfig())
    assert normalize("  Hello\n\tWORLD ") == "hello world"
    assert f.prompt_reason("Hello world", normalize("Hello world")) is None
    assert f.prompt_reason("hello   WORLD", normalize("hello   WORLD")) == ("duplicate_prompt", "an earlier prompt has the same normalised text")
    assert f.prompt_reason(" \n ", "") == ("empty_text", "the prompt is empty")
    assert f.response_reasons(["ok", "\t"]) == [None, ("empty_text", "the response is empty")]
    keep = Filters(FilterConfig(dedup=False, drop_empty=False))
    assert keep.prompt_reason("x", "x") is None and keep.prompt_reason("x", "x") is None
    # An empty answer is never kept: no output row type accepts one (data_prep/schemas.py).
    assert keep.response_reasons([""]) == [("empty_text", "the response is empty")]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A word-level tokenizer saved like a Hugging Face one (built offline, in-process)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)
    return str(path)


def test_token_length_filter(tmp_path, tiny_tokenizer):
    long = " ".join(["word"] * 60)
    rows = [{"prompt": "Short question?", "response": r, "helpfulness": h, "correctness": 3, "coherence": 3,
             "complexity": 1, "verbosity": 1} for r, h in (("Short answer.", 4), (long, 1))]
    src = write(tmp_path / "hs.jsonl", rows)
    rep = convert_helpsteer2(src, tmp_path / "a", val_fraction=0.0, allow_empty=True,  # the one pair goes
                             filters={"tokenizer": tiny_tokenizer, "max_seq_length": 50})
    assert rep["outputs"]["train.jsonl"]["rejected"] == {"too_long": 1}
    assert rep["outputs"]["train_dpo.jsonl"]["rejected"] == {"fewer_than_2_responses": 1}
    assert rep["filters"]["too_long"] == f"max_seq_length=50 tokens with tokenizer {tiny_tokenizer}"
    (rec,) = [json.loads(x) for x in (tmp_path / "a" / "rejects.jsonl").read_text().splitlines() if "too_long" in x]
    assert rec["line"] == 2 and rec["detail"].endswith("tokens > max_seq_length=50")
    # Without a tokenizer the filter is skipped, and the report says so.
    rep = convert_helpsteer2(src, tmp_path / "b", val_fraction=0.0, filters={"max_seq_length": 50})
    assert rep["filters"]["too_long"] == "skipped: no tokenizer given"
    assert rep["outputs"]["train.jsonl"]["rows_out"] == 2
    # SDG: a too-long response is dropped from its prompt, the prompt stays.
    sdg = write(tmp_path / "sdg.jsonl", [{"prompt": "q", "responses": [{"text": "good", "reward": 7}, {"text": "fine", "reward": 6.6},
                                                                        {"text": long, "reward": 1}]}])
    rep = convert_sdg(sdg, tmp_path / "c", filters={"tokenizer": tiny_tokenizer, "max_seq_length": 50}, allow_empty=True)
    assert rep["responses_dropped"] == {"too_long": 1}
    assert rep["outputs"]["train_dpo.jsonl"]["rejected"] == {"gap_below_min": 1}  # 7 vs 6.6 < dpo min_gap 0.5


def test_bad_tokenizer_path(tmp_path):
    with pytest.raises(DataPrepError, match="cannot load tokenizer"):
        Filters(FilterConfig(tokenizer=str(tmp_path / "missing")))
