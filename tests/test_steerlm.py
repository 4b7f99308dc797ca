"""SteerLM: attribute lines (golden strings), annotation -> labels, the label block's loss mask,
a tiny model steered by verbosity, stage=generate on the command line, the clients' raw-prompt
path, and the experiment=steerlm loop end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.jsonl import Rejects, RowError, read_jsonl
from eval.clients import NemoServerClient, OpenAIChatClient, SamplingParams
from recipes import steerlm
from recipes.backends import torch_backend
from recipes.chat import IGNORE_INDEX
from recipes.config import SteerConfig, validate
from recipes.data import encode_sft_rows, load_sft, sft_texts
from recipes.models import load_tokenizer
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_clients import FakeServer

FIXTURE = REPO / "tests" / "fixtures" / "steerlm_verbosity.jsonl"  # 4 prompts x (verbosity 0: short, 4: long)
RM_FIXTURE = REPO / "tests" / "fixtures" / "rm_tiny.jsonl"
# Nemotron-3-8B-SteerLM model card (HF / NGC), single-turn prompt with its example attribute values.
CARD_LINE = ("quality:4,understanding:4,correctness:4,coherence:4,complexity:4,verbosity:4,toxicity:0,humor:0,"
             "creativity:0,violence:0,helpfulness:4,not_appropriate:0,hate_speech:0,sexual_content:0,fails_task:0,"
             "political_content:0,moral_judgement:0,lang:en")
HS2 = {"helpfulness": 3, "correctness": 3, "coherence": 4, "complexity": 2, "verbosity": 2}
USER = [{"role": "user", "content": "Why is the sky blue?"}]


def steer_cfg(*overrides):
    return compose_cfg("stage=generate", *overrides).steer


# ---------------------------------------------------------------- attribute lines
def test_nemotron3_attribute_line_and_prompt_golden():
    values = steerlm.resolve(steer_cfg(), spec=None)  # no steerlm.json: the model card's defaults
    assert steerlm.attribute_line(values) == CARD_LINE
    assert steerlm.steer_prompt(USER, values) == (
        "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions.\n<extra_id_1>User\nWhy is the sky "
        f"blue?\n<extra_id_1>Assistant\n<extra_id_2>{CARD_LINE}\n")
    steered = steerlm.resolve(steer_cfg("steer.verbosity=1", "steer.humor=2", "steer.lang=de"), spec=None)
    assert steerlm.attribute_line(steered) == (CARD_LINE.replace("verbosity:4", "verbosity:1")
                                               .replace("humor:0", "humor:2").replace("lang:en", "lang:de"))


def test_helpsteer2_attribute_line_golden():
    values = steerlm.resolve(steer_cfg("steer.vocabulary=helpsteer2_5", *[f"steer.{k}={v}" for k, v in HS2.items()]), None)
    assert steerlm.attribute_line(values) == "helpfulness:3,correctness:3,coherence:4,complexity:2,verbosity:2"
    # Defaults: HS2 §4.5's inference attributes.
    assert steerlm.attribute_line(steerlm.resolve(steer_cfg("steer.vocabulary=helpsteer2_5"), None)) == (
        "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2")


def test_multi_turn_prompt_labels_every_assistant_turn():
    conv = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    text = steerlm.steer_prompt(conv, {"verbosity": 1}, system="")
    assert text == ("<extra_id_0>System\n\n<extra_id_1>User\nQ1\n<extra_id_1>Assistant\n<extra_id_2>verbosity:1\nA1\n"
                    "<extra_id_1>User\nQ2\n<extra_id_1>Assistant\n<extra_id_2>verbosity:1\n")


def test_checkpoint_spec_sets_vocabulary_and_defaults():
    spec = {"vocabulary": "helpsteer2_5", "attributes": ["helpfulness", "verbosity"],
            "defaults": {"helpfulness": 4, "verbosity": 3}}
    assert steerlm.resolve(steer_cfg(), spec) == {"helpfulness": 4, "verbosity": 3}
    assert steerlm.resolve(steer_cfg("steer.verbosity=0"), spec) == {"helpfulness": 4, "verbosity": 0}
    with pytest.raises(ValueError, match=r"steer.humor: not an attribute of this model .*helpfulness, verbosity"):
        steerlm.resolve(steer_cfg("steer.humor=1"), spec)
    with pytest.raises(ValueError, match=r"steer.verbosity=7 must be an integer in \[0, 4\]"):
        steerlm.resolve(steer_cfg("steer.verbosity=7"), spec)


def test_steer_config_lists_the_model_card_attributes_in_order():
    fields = [f for f in SteerConfig.__dataclass_fields__ if f in steerlm.NEMOTRON3_17]
    assert fields == list(steerlm.NEMOTRON3_17) and len(fields) == 18  # 17 attributes + lang


# ---------------------------------------------------------------- annotation -> labels
def test_label_from_attributes_clamps_rounds_half_even_and_orders():
    attrs = {"verbosity": 2.5, "coherence": 4.6, "helpfulness": 3.5, "complexity": 0.5, "correctness": -0.4}
    # Clamped to [0, 4], then Python's round (as attribute_annotate.py): 2.5 -> 2, 3.5 -> 4, 0.5 -> 0.
    assert steerlm.label_from_attributes(attrs) == "helpfulness:4,correctness:0,coherence:4,complexity:0,verbosity:2"
    assert steerlm.label_from_attributes({"verbosity": 1.5, "quality": 3.49}) == "quality:3,verbosity:2"
    nemo = [round(min(4.0, max(0.0, float(r)))) for r in attrs.values()]  # the script's own two lines
    assert sorted(nemo) == sorted(int(v) for v in steerlm.parse_label(steerlm.label_from_attributes(attrs)).values())
    with pytest.raises(ValueError, match="not reward-model outputs"):
        steerlm.label_from_attributes({"lang": 1.0})


def test_sft_rows_round_trip_through_annotation_records():
    rows = [(3, {"system": "", "mask": "User", "type": None, "conversations": [
        {"from": "User", "value": "Q1"}, {"from": "Assistant", "value": "A1"},
        {"from": "User", "value": "Q2"}, {"from": "Assistant", "value": "A2"}]})]
    records = steerlm.sft_to_sdg(rows)
    assert [r["id"] for r in records] == ["3:1", "3:3"]
    assert records[1]["conversations"][-1] == {"from": "User", "value": "Q2"}
    assert records[1]["responses"] == [{"text": "A2"}]
    scored = [dict(r, responses=[{"text": "x", "attributes": {"helpfulness": 3.2, "verbosity": v}}])
              for r, v in zip(records, (0.2, 3.7))]
    (row,) = steerlm.label_sft_rows(rows, scored)
    assert row["type"] == "VALUE_TO_TEXT"
    assert [t["label"] for t in row["conversations"]] == [None, "helpfulness:3,verbosity:0", None,
                                                         "helpfulness:3,verbosity:4"]


def test_sdg_records_become_one_labelled_row_per_response():
    records = [{"id": "p1", "prompt": "Q", "responses": [{"text": "A", "attributes": {"verbosity": 0.4}, "reward": 0.1},
                                                         {"text": "B", "attributes": {"verbosity": 3.6}, "reward": 0.2}]},
               {"prompt": "R", "response": "C", "attributes": {"helpfulness": 9.0}}]  # a flat row
    rows = steerlm.sdg_to_sft(records)
    assert [(r["conversations"][0]["value"], r["conversations"][1]["value"], r["conversations"][1]["label"])
            for r in rows] == [("Q", "A", "verbosity:0"), ("Q", "B", "verbosity:4"), ("R", "C", "helpfulness:4")]
    assert all(r["type"] == "VALUE_TO_TEXT" and r["system"] == steerlm.STEERLM_SYSTEM_PROMPT for r in rows)


# ---------------------------------------------------------------- stage=steerlm_sft
def test_label_block_is_not_trained_through_the_sft_encoding(tmp_path):
    cfg = compose_cfg(*TINY, "stage=steerlm_sft", f"model.data.train_ds.file_path={FIXTURE}")
    rows = load_sft(str(FIXTURE), cfg.data, Rejects())
    tok = load_tokenizer(cfg.model, sft_texts(rows))
    examples, _ = encode_sft_rows(rows, str(FIXTURE), tok, cfg.data, Rejects())
    for (_, row), enc in zip(rows, examples):
        answer, label = row["conversations"][1]["value"], row["conversations"][1]["label"]
        assert f"<extra_id_2>{label}\n" in tok.decode(enc.input_ids)  # the label conditions the answer ...
        trained = tok.decode([t for t in enc.labels if t != IGNORE_INDEX])
        assert trained == answer + "\n<extra_id_1>"  # ... but only the answer and its end are targets


def test_steerlm_sft_refuses_labels_it_would_not_render(tmp_path):
    bad = tmp_path / "untyped.jsonl"
    row = json.loads(FIXTURE.read_text().splitlines()[0])
    bad.write_text(json.dumps(dict(row, type=None)) + "\n")
    cfg = compose_cfg(*TINY, "stage=steerlm_sft", f"model.data.train_ds.file_path={bad}")
    with pytest.raises(RowError, match=r"untyped.jsonl:1: type: is None, so conversations\[1\].label is not rendered"):
        steerlm.train(cfg, tmp_path)
    with pytest.raises(ValueError, match="needs data.prompt_template=nemotron"):
        steerlm.train(compose_cfg(*TINY, "stage=steerlm_sft", "data.prompt_template=hf",
                                  f"model.data.train_ds.file_path={FIXTURE}"), tmp_path)


@pytest.fixture(scope="module")
def steered(tmp_path_factory):
    """A tiny model trained on FIXTURE, where the verbosity label alone decides the answer's length."""
    run_dir = tmp_path_factory.mktemp("steerlm_sft")
    cfg = compose_cfg(*TINY, "stage=steerlm_sft", f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=80",
                      "model.micro_batch_size=8", "model.optim.sched.name=constant", f"exp_manager.explicit_log_dir={run_dir}")
    return Path(torch_backend.run(cfg, run_dir))


def test_verbosity_label_steers_answer_length(steered):
    from eval.hf_client import HFClient

    spec = json.loads((steered / steerlm.STEERLM_FILE).read_text())
    assert spec == {"vocabulary": "helpsteer2_5", "attributes": list(HS2),
                    "defaults": {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 2}}
    assert json.loads((steered / "recipe.json").read_text())["stage"] == "steerlm_sft"
    prompts = [[{"role": "user", "content": r["conversations"][0]["value"]}] for _, r in read_jsonl(FIXTURE)][::2]
    client = HFClient(str(steered), template="nemotron", progress=False, device="cpu")
    mean_len = {}
    for v in (0, 4):
        values = steerlm.resolve(steer_cfg(), spec, {"verbosity": v})
        rows = steerlm.generate(client, prompts, values, SamplingParams(max_new_tokens=80))  # greedy
        assert all(r["attributes"]["verbosity"] == v for r in rows)
        mean_len[v] = sum(len(r["response"]) for r in rows) / len(rows)
    # Training answers: ~25 characters at verbosity 0, ~150 at 4.
    assert mean_len[4] > 2 * mean_len[0], mean_len


def test_generate_stage_from_the_command_line(steered, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "launch.py"), "stage=generate", "model=hf", f"model.name_or_path={steered}",
           "steer.verbosity=4", "steer.prompts=[What do bees make?,What is rain?]", "steer.max_new_tokens=16",
           "logger.progress_bar=false", f"exp_manager.explicit_log_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r for _, r in read_jsonl(out / "generations.jsonl")]
    assert [r["prompt"] for r in rows] == ["What do bees make?", "What is rain?"]
    # Unset attributes come from the checkpoint's steerlm.json.
    assert rows[0]["attributes"] == {**HS2, "helpfulness": 4, "correctness": 4, "verbosity": 4}
    assert all(isinstance(r["response"], str) for r in rows)


# ---------------------------------------------------------------- servers: the raw-prompt path
def test_nemo_server_gets_the_rendered_steerlm_prompt():
    def respond(n, req):
        return 200, {"sentences": [p + "Short.\n<extra_id_1>" for p in req["body"]["sentences"]]}, 0.0

    values = {"helpfulness": 4, "verbosity": 0}
    with FakeServer(respond) as srv:
        client = NemoServerClient(srv.url, backoff_s=0.01, progress=False)
        rows = steerlm.generate(client, [USER], values, SamplingParams(max_new_tokens=9))
    body = srv.requests[0]["body"]
    assert srv.requests[0]["method"] == "PUT" and srv.requests[0]["path"] == "/generate"
    assert body["sentences"] == [steerlm.steer_prompt(USER, values)] and body["end_strings"] == ["<extra_id_1>"]
    assert rows == [{"prompt": "Why is the sky blue?", "attributes": values, "response": "Short."}]


def test_openai_compatible_server_gets_a_completions_request():
    def respond(n, req):
        return 200, {"choices": [{"index": 0, "text": "Short.\n", "finish_reason": "stop"}]}, 0.0

    with FakeServer(respond) as srv:
        client = OpenAIChatClient(srv.url + "/v1", "steer-model", backoff_s=0.01, progress=False)
        rows = steerlm.generate(client, [USER], {"verbosity": 0}, SamplingParams(max_new_tokens=9))
    req = srv.requests[0]
    assert req["method"] == "POST" and req["path"] == "/v1/completions"
    assert req["body"]["prompt"].endswith("<extra_id_1>Assistant\n<extra_id_2>verbosity:0\n")
    assert req["body"]["stop"] == ["<extra_id_1>"] and req["body"]["model"] == "steer-model"
    assert rows[0]["response"] == "Short."


# ---------------------------------------------------------------- configs and the loop
@pytest.mark.parametrize("overrides", [("stage=generate",), ("stage=steerlm_sft",), ("experiment=steerlm",)])
def test_shipped_configs_compose_and_validate(overrides):
    assert validate(compose_cfg(*overrides)) == []


def test_experiment_loop_end_to_end(tmp_path):
    # A tiny reward model first (stage=rm); its scores are noise, the loop's plumbing is what is tested.
    rm_dir = tmp_path / "rm"
    rm_cfg = compose_cfg(*TINY, "stage=rm", f"model.data.train_ds.file_path={RM_FIXTURE}", "trainer.max_steps=2",
                         f"exp_manager.explicit_log_dir={rm_dir}")
    rm_ckpt = torch_backend.run(rm_cfg, rm_dir)
    run_dir = tmp_path / "loop"
    cfg = compose_cfg(*TINY, "experiment=steerlm", f"annotate.input_file={FIXTURE}", f"annotate.reward_model={rm_ckpt}",
                      "trainer.max_steps=3", "steer.max_new_tokens=8", "steerlm.num_prompts=2",
                      f"exp_manager.explicit_log_dir={run_dir}")
    out = torch_backend.run(cfg, run_dir)
    report = json.loads(Path(out).read_text())
    labelled = [r for _, r in read_jsonl(run_dir / "annotate" / "train.jsonl")]
    assert len(labelled) == 8
    for row in labelled:  # the RM's five trained attributes, as 0-4 integers, in label order
        parsed = steerlm.parse_label(row["conversations"][1]["label"])
        assert list(parsed) == list(HS2) and all(v in "01234" for v in parsed.values())
    assert (run_dir / "sft" / "checkpoints" / "final" / steerlm.STEERLM_FILE).is_file()
    assert [s["value"] for s in report["settings"]] == [0, 4]
    for s in report["settings"]:
        rows = [r for _, r in read_jsonl(s["file"])]
        assert len(rows) == s["n"] == 2 and all(r["attributes"]["verbosity"] == s["value"] for r in rows)
        assert isinstance(s["rm_verbosity"], float) and s["mean_chars"] >= 0
    assert set(report["effect"]) == {"mean_chars", "mean_words", "rm_verbosity"}
    assert "| verbosity | mean_chars | mean_words | rm_verbosity |" in (run_dir / "report.md").read_text()
    assert report["prompts"] == 2
