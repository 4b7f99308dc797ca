"""IFEval: conformance with Google's official results for GPT-4's responses, offline Punkt,
input handling, run_ifeval with a fake model, and the same verdict on every run.

The conformance rows are tests/fixtures/ifeval/: 48 of the 541 prompts, chosen so that each of the 25
instruction types is followed, failed, and (where any row does) scored differently strict and loose, with the
official eval_results rows for the same keys (all 541: bench/conformance.py).

Keys 1122 and 1129 use `keywords:letter_frequency` with a non-letter ('#', '!'); the reference
checker then swaps in `random.choice(string.ascii_letters)`, so that one instruction of each is
one random draw in the official files (we seed the draw, so ours is fixed but need not match).
We compare everything else in those two rows, and to reproduce expected_metrics.json (which
aggregates the official files, the two random outcomes included) we splice the official rows
for those two keys into our results.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.jsonl import RowError
from eval import ifeval
from eval.clients import SamplingParams
from tests.conftest import FIXTURES

NONDETERMINISTIC = {1122: "keywords:letter_frequency", 1129: "keywords:letter_frequency"}
RUN = "gpt4_20231107_145030"


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Score GPT-4's responses once through the CLI; return (output dir, prompts, official dir)."""
    official = FIXTURES / "ifeval"
    prompts_file = official / "input_data.jsonl"
    out = tmp_path_factory.mktemp("ifeval")
    rc = ifeval.main(["score", "--input", str(official / f"input_response_data_{RUN}.jsonl"),
                      "--prompts", str(prompts_file), "--output-dir", str(out)])
    assert rc == 0
    return out, ifeval.load_prompts(prompts_file), official


@pytest.mark.parametrize("mode", ["strict", "loose"])
def test_per_prompt_results_match_official(scored, mode):
    out, prompts, official = scored
    ours = (out / f"eval_results_{mode}.jsonl").read_text().splitlines()
    ref = (official / f"eval_results_{mode}.jsonl").read_text().splitlines()
    assert len(ours) == len(ref) == len(prompts) == 48
    compared = 0
    for p, our_line, ref_line in zip(prompts, ours, ref):
        if p.key not in NONDETERMINISTIC:
            assert our_line == ref_line, f"key {p.key}: {mode} result differs"  # same bytes, same layout
            compared += 1
            continue
        a, b = json.loads(our_line), json.loads(ref_line)
        assert (a["prompt"], a["response"], a["instruction_id_list"]) == (b["prompt"], b["response"], b["instruction_id_list"])
        for inst, fa, fb in zip(a["instruction_id_list"], a["follow_instruction_list"], b["follow_instruction_list"]):
            if inst != NONDETERMINISTIC[p.key]:
                assert fa == fb, f"key {p.key} {inst}"
    assert compared == 46


def test_metrics_reproduce_expected(scored):
    out, prompts, official = scored
    expected = json.loads((official / "expected_metrics.json").read_text())
    assert sorted(expected["nondeterministic_keys"]) == sorted(NONDETERMINISTIC)
    assert expected["keys"] == [p.key for p in prompts]
    rows = {}
    for mode in ("strict", "loose"):
        ours, ref = jsonl(out / f"eval_results_{mode}.jsonl"), jsonl(official / f"eval_results_{mode}.jsonl")
        for i, p in enumerate(prompts):
            if p.key in NONDETERMINISTIC:  # take the reference run's random outcome for these two rows
                ours[i] = ref[i]
        rows[mode] = ours
    summary = ifeval.summarize(rows["strict"], rows["loose"])
    assert (summary["n_prompts"], summary["n_instructions"]) == (expected["n_prompts"], expected["n_instructions"])
    for ours_key, ref_key in [("prompt_level_strict", "prompt_level_strict_acc"),
                              ("instruction_level_strict", "inst_level_strict_acc"),
                              ("prompt_level_loose", "prompt_level_loose_acc"),
                              ("instruction_level_loose", "inst_level_loose_acc")]:
        assert summary[ours_key] == pytest.approx(expected[ref_key], abs=1e-12), ours_key


def test_summary_files(scored):
    out, _, official = scored
    expected = json.loads((official / "expected_metrics.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_prompts"], summary["n_instructions"]) == (48, 80) == (expected["n_prompts"], expected["n_instructions"])
    assert len(summary["per_instruction"]) == 25 and len(summary["per_category"]) == 9
    assert sum(d["n"] for d in summary["per_instruction"].values()) == 80
    # at most the two random instructions can move the headline numbers
    assert abs(summary["instruction_level_strict"] - expected["inst_level_strict_acc"]) <= 2 / 80 + 1e-12
    md = (out / "summary.md").read_text()
    assert "| prompt |" in md and "| keywords:letter_frequency |" in md


def test_random_fallback_is_seeded_and_global_state_kept():
    # '#' is not a letter: the checker draws a random one. Same input, same verdict, every run.
    p = ifeval.IFEvalPrompt(1122, "tweet", ["keywords:letter_frequency"],
                            [{"let_relation": "at least", "letter": "#", "let_frequency": 4}])
    import random

    verdicts = set()
    for seed in range(5):
        random.seed(seed)
        before = random.getstate()
        verdicts.add(tuple(ifeval.check_response(p, "aaaa bbbb cccc dddd eeee", loose=False)["follow_instruction_list"]))
        assert random.getstate() == before
    assert len(verdicts) == 1


# A short lowercase English haiku that langdetect, unseeded, calls 'en' or 'nl' (about 60/40), so that
# change_case:english_lowercase was followed on one run and not on the next (issue 13, item 8).
HAIKU = "green hills of kerry\nsheep on the green donegal hills\ngreen land under mist"
LANGDETECT_CHECK = """
import json, random, sys, langdetect
from langdetect import DetectorFactory, detector_factory
from eval import ifeval
haiku = sys.argv[1]
unseeded = sorted({langdetect.detect(haiku) for _ in range(100)})
p = ifeval.IFEvalPrompt(1, "Write a haiku about Ireland, all lowercase.", ["change_case:english_lowercase"], [{}])
random.seed(1)
before = random.getstate()
verdicts = [ifeval.check_response(p, haiku, loose=False)["follow_instruction_list"][0] for _ in range(10)]
kept = [DetectorFactory.seed is None, random.getstate() == before]
DetectorFactory.seed = 7  # the caller's own seed, given back after scoring
verdicts.append(ifeval.check_response(p, haiku, loose=False)["follow_instruction_list"][0])
detector_factory._factory.set_seed(5)  # a seed set on the loaded factory wins over the class's
verdicts.append(ifeval.check_response(p, haiku, loose=False)["follow_instruction_list"][0])
kept += [detector_factory._factory.seed == 5, DetectorFactory.seed == 7, random.getstate() == before]
print(json.dumps({"unseeded": unseeded, "verdicts": verdicts, "kept": kept}))
"""


def test_language_detection_gives_the_same_verdict_every_run():
    """In fresh processes (langdetect's seed is per process), the haiku that unseeded langdetect calls
    'en' or 'nl' is scored the same 12 times in each, and the caller's langdetect and random state are kept."""
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    procs = [subprocess.Popen([sys.executable, "-c", LANGDETECT_CHECK, HAIKU], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
             for _ in range(3)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert len(r["unseeded"]) > 1, r["unseeded"]  # the text really is unstable without a seed
        assert r["verdicts"] == [True] * 12  # seeded: English, every time
        assert all(r["kept"]), r["kept"]


def test_loose_variants_in_google_order():
    r = "Sure! **Title**\nbody *x*\nHope this helps"
    assert ifeval.loose_variants(r) == [
        r, "Sure! Title\nbody x\nHope this helps",
        "body *x*\nHope this helps", "Sure! **Title**\nbody *x*", "body *x*",
        "body x\nHope this helps", "Sure! Title\nbody x", "body x"]


def test_empty_response_follows_nothing():
    p = ifeval.IFEvalPrompt(1, "Answer in lowercase.", ["change_case:english_lowercase"], [{}])
    assert ifeval.check_response(p, "  \n ", loose=False)["follow_instruction_list"] == [False]
    assert ifeval.check_response(p, "  \n ", loose=True)["follow_instruction_list"] == [False]
    assert ifeval.check_response(p, "all lower", loose=False)["follow_all_instructions"] is True


def test_loose_forgives_a_chatty_first_line():
    p = ifeval.IFEvalPrompt(1, "Wrap your answer in double quotes.", ["startend:quotation"], [{}])
    response = 'Here you go:\n"the answer"'
    assert ifeval.check_response(p, response, loose=False)["follow_all_instructions"] is False
    assert ifeval.check_response(p, response, loose=True)["follow_all_instructions"] is True


PUNKT_CHECK = """
import nltk, os, sys
from eval import ifeval
p = ifeval.IFEvalPrompt(1, "x", ["length_constraints:number_sentences", "change_case:capital_word_frequency"],
                        [{"relation": "less than", "num_sentences": 3},
                         {"capital_relation": "at least", "capital_frequency": 2}])
res = ifeval.check_response(p, "Mr. Smith went to WASHINGTON. It was NICE.", loose=False)
print(res["follow_instruction_list"], str(nltk.data.find("tokenizers/punkt_tab/english/")))
"""


def test_offline_punkt_tables(tmp_path):
    """In a fresh process with an empty cache: the tables are built, found first, and the two
    checkers that need Punkt work (nothing is downloaded: the run is offline)."""
    from eval.punkt import FILES

    root = tmp_path / "nltk_data"
    env = {**os.environ, "RECIPES_NLTK_DATA": str(root), "NLTK_DATA": ""}
    res = subprocess.run([sys.executable, "-c", PUNKT_CHECK], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    follows, found = res.stdout.strip().rsplit("] ", 1)
    assert follows == "[True, True" and found.startswith(str(root))
    lang = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in lang.iterdir()) == sorted(FILES)
    assert "\t" in (lang / "ortho_context.tab").read_text().splitlines()[0]


def test_hub_kwargs_padding_is_dropped():
    row = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"],
           "kwargs": [{"num_words": None, "relation": None}]}
    assert ifeval._prompt_from_row(row, "hub", 1).kwargs == [{}]


def test_responses_errors_name_the_file_line_field(tmp_path):
    prompts = [ifeval.IFEvalPrompt(1, "p1", ["punctuation:no_comma"], [{}]),
               ifeval.IFEvalPrompt(2, "p2", ["punctuation:no_comma"], [{}])]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p1", "response": "ok"}\n{"prompt": "p2"}\n')
    with pytest.raises(RowError, match=r"bad.jsonl:2: response"):
        ifeval.read_responses(bad, prompts)
    bad.write_text('{"prompt": "p1", "response": "ok"}\n{"prompt": "p3", "response": "ok"}\n')
    with pytest.raises(RowError, match=r"bad.jsonl:2: prompt: not in the prompts file"):
        ifeval.read_responses(bad, prompts)
    bad.write_text('{"prompt": "p1", "response": "ok"}\n')
    with pytest.raises(ValueError, match=r"1 of 2 prompts have no response \(first: key 2"):
        ifeval.read_responses(bad, prompts)
    bad.write_text('{"key": 5, "prompt": "p", "instruction_id_list": ["a"], "kwargs": []}\n')
    with pytest.raises(RowError, match=r"bad.jsonl:1: kwargs"):
        ifeval.load_prompts(bad)


def test_cli_bad_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p1", "response": "ok", "instruction_id_list": ["punctuation:no_comma"]}\n')
    assert ifeval.main(["score", "--input", str(bad), "--output-dir", str(tmp_path / "out")]) == 2
    assert "error: bad.jsonl:1: kwargs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_self_contained_rows_need_no_prompts_file(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "No commas please.", "response": "yes indeed",
                                "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}) + "\n")
    pairs = ifeval.read_responses(path)
    strict, loose = ifeval.score(pairs)
    assert strict[0]["follow_instruction_list"] == [True] and loose[0]["follow_all_instructions"] is True


def test_run_ifeval_with_a_fake_model(tmp_path):
    prompts = [ifeval.IFEvalPrompt(1, "Reply without commas.", ["punctuation:no_comma"], [{}]),
               ifeval.IFEvalPrompt(2, "Reply in lowercase.", ["change_case:english_lowercase"], [{}])]
    seen = []

    def fake_generate(conversations, params):
        seen.append((conversations, params))
        return ["no commas here", "Not Lowercase"]

    summary = ifeval.run_ifeval(fake_generate, prompts, None, tmp_path)
    conversations, params = seen[0]
    assert conversations == [[{"role": "user", "content": "Reply without commas."}],
                             [{"role": "user", "content": "Reply in lowercase."}]]
    assert params == SamplingParams(max_new_tokens=1280, temperature=0.0)
    assert summary["prompt_level_strict"] == 0.5 and summary["instruction_level_loose"] == 0.5
    assert jsonl(tmp_path / "responses.jsonl")[1] == {"prompt": "Reply in lowercase.", "response": "Not Lowercase"}
    for name in ("eval_results_strict.jsonl", "eval_results_loose.jsonl", "summary.json", "summary.md"):
        assert (tmp_path / name).is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind


@pytest.mark.parametrize("module", ["eval.ifeval", "eval.mt_bench"])
def test_cli_help(module):
    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert res.returncode == 0 and "score" in res.stdout and "run" in res.stdout
