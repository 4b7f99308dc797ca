"""eval/reward_bench.py: the official RewardBench v1 formula on real published results."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from eval import reward_bench as rb
from tests.conftest import FIXTURES, REPO, REWARD_BENCH_ROWS

SECTIONS = ("Chat", "Chat Hard", "Safety", "Reasoning")


def known_models():
    return json.loads((FIXTURES / "rewardbench" / "known_model_results.json").read_text())["models"]


def test_constants_match_reward_bench():
    assert sum(len(v) for v in rb.SECTIONS.values()) == len(rb.EXAMPLE_COUNTS) == 23
    assert set(rb.EXAMPLE_COUNTS) == {n for names in rb.SECTIONS.values() for n in names}
    section_weight = {s: sum(rb.EXAMPLE_COUNTS[n] for n in names) for s, names in rb.SECTIONS.items()}
    assert section_weight == {"Chat": 358, "Chat Hard": 456, "Safety": 740, "Reasoning": 1968}
    # math-prm is weighted like all of code together
    code = ("cpp", "go", "java", "js", "python", "rust")
    assert rb.EXAMPLE_COUNTS["math-prm"] == sum(rb.EXAMPLE_COUNTS[f"hep-{x}"] for x in code)


@pytest.mark.parametrize("legacy", [False, True])
def test_reproduces_known_models(legacy):
    key = "expected_pre_2024_09_10_constants" if legacy else "expected_current_constants"
    for model in known_models():
        scores = rb.section_scores(model["per_subset_accuracy"], legacy_xstest=legacy)
        expected = model[key]
        for section in SECTIONS:
            assert scores[section] == pytest.approx(100 * expected[section], abs=1e-6), (model["model"], section)
            assert round(scores[section], 1) == expected["rounded_x100"][section]
        assert scores["overall"] == pytest.approx(100 * expected["overall_mean_of_4_sections"], abs=1e-6)
        assert round(scores["overall"], 1) == expected["rounded_x100"]["overall"]
        assert scores["subsets"]["math-prm"] == pytest.approx(100 * model["per_subset_accuracy"]["math-prm"])
        assert "Prior Sets" not in scores


def test_reported_model_card_values_within_a_tenth():
    model = next(m for m in known_models() if "reported" in m)
    scores = rb.section_scores(model["per_subset_accuracy"])
    for key, value in model["reported"]["value"].items():
        assert abs(scores[key] - value) <= 0.1 + 1e-9, key


def test_score_pairs_tie_is_a_loss_and_correct_rows():
    rows = [
        {"subset": "alpacaeval-easy", "chosen_score": 2.0, "rejected_score": 1.0},
        {"subset": "alpacaeval-easy", "chosen_score": 1.0, "rejected_score": 1.0},  # tie
        {"subset": "alpacaeval-easy", "chosen_score": 0.0, "rejected_score": 1.0},
        {"subset": "alpacaeval-easy", "chosen_score": -1.0, "rejected_score": -3.0},
        {"subset": "hep-go", "correct": True},
        {"subset": "hep-go", "correct": 0},
    ]
    assert rb.score_pairs(rows) == {"alpacaeval-easy": 0.5, "hep-go": 0.5}
    with pytest.raises(ValueError, match="row 0: <row>: needs chosen_score"):
        rb.score_pairs([{"subset": "hep-go"}])


def test_section_scores_hand_weighted_mean_and_prior_sets():
    acc = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5, "shp": 0.6, "anthropic_hhh": 0.8, "mtbench_human": 0.1}
    s = rb.section_scores(acc)
    assert s["Chat"] == pytest.approx(100 * (100 * 1.0 + 28 * 0.5) / 128)
    assert s["Chat Hard"] == s["Safety"] == s["Reasoning"] == 0.0  # empty sections score 0, as in reward-bench
    assert s["overall"] == pytest.approx(s["Chat"] / 4)
    assert s["Prior Sets"] == pytest.approx(70.0)  # plain mean of the prior sets present; mtbench_human not averaged
    assert s["overall_v1"] == pytest.approx((2 * s["Chat"] + 70.0) / 9)
    assert s["subsets"]["mtbench_human"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="unknown subset 'chat'"):
        rb.section_scores({"chat": 0.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        rb.section_scores({"hep-go": 97.0})


def test_weighted_reward():
    attrs = [[0, 0, 0, 0, 4.0, 3.0, 4.0, 2.0, 1.0], [9, 9, 9, 9, 0, 0, 0, 0, 0]]
    expected = 0.3 * 4 + 0.74 * 3 + 0.46 * 4 + 0.47 * 2 - 0.33 * 1
    assert rb.weighted_reward(attrs).tolist() == pytest.approx([expected, 0.0])
    torch = pytest.importorskip("torch")
    out = rb.weighted_reward(torch.tensor(attrs, dtype=torch.float64), rb.LLAMA3_70B_WEIGHTS)
    assert out.dtype == torch.float64
    assert out.tolist() == pytest.approx([0.65 * 4 + 0.8 * 3 + 0.45 * 4 + 0.55 * 2 - 0.4, 0.0])
    with pytest.raises(ValueError, match="9 attributes"):
        rb.weighted_reward([1.0, 2.0])


def test_load_rows_of_the_demo_subset():
    """data/demo/reward_bench_subset.jsonl holds what data/demo/README.md says: 8 real pairs of every subset in
    the first 500 `filtered` rows (llmbar-adver-neighbor has only 5 there), 40 Chat and 21 Chat Hard."""
    rows = rb.load_rows(str(REWARD_BENCH_ROWS))
    assert len(rows) == 61
    assert set(rows[0]) == set(rb.ROW_KEYS)
    counts = Counter(r["subset"] for r in rows)
    assert counts == {"alpacaeval-easy": 8, "alpacaeval-length": 8, "alpacaeval-hard": 8, "mt-bench-easy": 8,
                      "mt-bench-med": 8, "mt-bench-hard": 8, "llmbar-natural": 8, "llmbar-adver-neighbor": 5}
    per_section = {s: sum(counts[n] for n in names) for s, names in rb.SECTIONS.items()}
    assert per_section == {"Chat": 40, "Chat Hard": 21, "Safety": 0, "Reasoning": 0}
    assert len({r["id"] for r in rows}) == 61 and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    # a constant scorer ties every pair: 0 everywhere
    tied = [{"subset": r["subset"], "chosen_score": 0.0, "rejected_score": 0.0} for r in rows]
    assert rb.section_scores(rb.score_pairs(tied))["Chat"] == 0.0
    with pytest.raises(FileNotFoundError, match="not a JSONL file"):
        rb.load_rows("no/such/dir/file.jsonl")


# --- the CLI, in a subprocess -------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "eval.reward_bench", "score", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_accuracy_map_json(tmp_path):
    model = known_models()[1]
    path = tmp_path / "acc.json"
    path.write_text(json.dumps({"model": model["model"], "model_type": None, **model["per_subset_accuracy"]}))
    proc = run_cli("--results", path, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {*SECTIONS, "overall", "subsets"}
    assert out["overall"] == pytest.approx(100 * model["expected_current_constants"]["overall_mean_of_4_sections"])
    legacy = json.loads(run_cli("--results", path, "--json", "--legacy-xstest").stdout)
    assert legacy["Safety"] == pytest.approx(100 * model["expected_pre_2024_09_10_constants"]["Safety"])

    table = run_cli("--results", path)
    assert table.returncode == 0 and "| Chat Hard | 74.12 |" in table.stdout and "| Subset |" in table.stdout


def test_cli_per_example_rows_and_prior_sets(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "subset": "hep-rust", "chosen_score": 0.3, "rejected_score": 0.1},
        {"id": 2, "subset": "hep-rust", "chosen_score": 0.1, "rejected_score": 0.1},
        {"id": 3, "subset": "math-prm", "correct": True},
    ]))
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"shp": 0.5, "summarize": 0.7}))
    proc = run_cli("--results", rows, "--prior-sets", prior, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["subsets"] == {"hep-rust": 50.0, "math-prm": 100.0, "shp": 50.0, "summarize": 70.0}
    assert out["Reasoning"] == pytest.approx(100 * (984 * 1.0 + 164 * 0.5) / (984 + 164))
    assert out["Prior Sets"] == pytest.approx(60.0)
    assert "warning: no results for alpacaeval-easy" in proc.stderr

    table = run_cli("--results", rows)
    assert "| hep-rust | Reasoning | 164 | 2 | 50.00 |" in table.stdout


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"subset": "hep-go", "correct": true}\n{"subset": "hep-go", "chosen_score": "high", "rejected_score": 1}\n',
         ":2: chosen_score: must be a finite number"),
        ('{"subset": "hep-go", "correct": true}\nnot json\n', ":2: <line>: invalid JSON"),
        ('{"subset": "hep-gox", "correct": true}\n', ":1: subset: unknown subset 'hep-gox'"),
        ('{\n  "hep-go": 0.9,\n  "hep-java": 97.5\n}\n', ":3: hep-java: accuracy must be a number in [0, 1]"),
        ("[0.5, 0.6]\n", ":1: <file>: expected JSONL rows or one JSON object"),
        ("", ":1: <file>: no result rows"),
    ],
)
def test_cli_bad_input_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "results.jsonl"
    path.write_text(content)
    proc = run_cli("--results", path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {path}") and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_missing_file(tmp_path):
    proc = run_cli("--results", tmp_path / "nope.jsonl")
    assert proc.returncode == 2 and "results file not found" in proc.stderr and "Traceback" not in proc.stderr
