"""stage=rm_annotate: scoring SDG records with a trained reward model, resumably, in input order."""

import json
from pathlib import Path

import pytest

from data_prep.jsonl import RowError, read_jsonl
from data_prep.schemas import HELPSTEER_ATTRIBUTES, NEMOTRON_340B_REWARD_WEIGHTS, validate_sdg_row
from recipes import rm, rm_annotate
from recipes.reward_model import load_reward_model, rm_text, score_texts
from tests.conftest import REPO, TINY, compose_cfg, crash_on_call

FIXTURE = REPO / "tests" / "fixtures" / "rm_tiny.jsonl"
SDG = REPO / "tests" / "fixtures" / "rm_sdg_tiny.jsonl"  # 5 records, 10 responses; prompt and conversations


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("rm")
    cfg = compose_cfg(*TINY, "stage=rm", f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=5",
                      f"exp_manager.explicit_log_dir={run_dir}")
    return rm.run(cfg, run_dir)


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_writes_attributes_and_weighted_reward(reward_model, tmp_path):
    out = tmp_path / "scored.jsonl"
    stats = rm_annotate.annotate_file(SDG, out, reward_model, batch_size=3, progress=False)
    assert stats["rows"] == stats["scored"] == 5 and stats["responses"] == 10 and stats["skipped"] == 0
    assert not out.with_name(out.name + ".partial").exists()
    inp, got = rows(SDG), rows(out)
    assert [r["id"] for r in got] == [r["id"] for r in inp]  # input order, other fields kept
    assert got[0]["responses"][0]["model"] == "a"
    assert len(list(read_jsonl(out, validate_sdg_row))) == 5  # data_prep.sdg accepts the file

    model, tok, meta = load_reward_model(reward_model)
    w = dict(zip(meta["attribute_names"], NEMOTRON_340B_REWARD_WEIGHTS))
    conv = inp[1]["conversations"]
    text = rm_text([(t["from"], t["value"]) for t in conv], inp[1]["responses"][0]["text"])
    assert text.endswith("<extra_id_1>User\nTell me a fact about cats.\n<extra_id_1>Assistant\n"
                         "Cats sleep for about 13 to 16 hours a day.\n<extra_id_2>")
    direct = score_texts(model, tok, [text], 1, meta["max_seq_length"], "cpu")[0]
    resp = got[1]["responses"][0]
    assert list(resp["attributes"]) == HELPSTEER_ATTRIBUTES
    for i, name in enumerate(meta["attribute_names"][4:], start=4):
        assert resp["attributes"][name] == pytest.approx(float(direct[i]), abs=1e-5)
    assert resp["reward"] == pytest.approx(sum(w[a] * v for a, v in resp["attributes"].items()), abs=1e-5)
    # A response that came with a reward gets the RM's instead.
    assert got[3]["responses"][0]["reward"] != 1.0


def test_rerun_skips_everything(reward_model, tmp_path):
    out = tmp_path / "scored.jsonl"
    rm_annotate.annotate_file(SDG, out, reward_model, batch_size=4, progress=False)
    before = out.read_bytes()
    stats = rm_annotate.annotate_file(SDG, out, reward_model, batch_size=4, progress=False)
    assert stats["scored"] == 0 and stats["skipped"] == 5
    assert out.read_bytes() == before


def test_interrupted_run_resumes(reward_model, tmp_path, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    rm_annotate.annotate_file(SDG, whole, reward_model, batch_size=2, progress=False)

    out = tmp_path / "cut.jsonl"
    with crash_on_call(monkeypatch, rm_annotate, "score_texts", 3):  # the third batch
        rm_annotate.annotate_file(SDG, out, reward_model, batch_size=2, progress=False)
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and len(rows(partial)) == 2  # records 1 and 2 were written and flushed
    with open(partial, "a") as f:
        f.write('{"id": "p3", "prom')  # a line torn by the crash

    stats = rm_annotate.annotate_file(SDG, out, reward_model, batch_size=2, progress=False)
    assert stats["skipped"] == 2 and stats["scored"] == 3
    assert out.read_bytes() == whole.read_bytes() and not partial.exists()


def test_partial_output_of_other_input_is_refused(reward_model, tmp_path):
    out = tmp_path / "scored.jsonl"
    other = dict(rows(SDG)[0], prompt="Something else?")
    out.with_name(out.name + ".partial").write_text(json.dumps(other) + "\n")
    with pytest.raises(RowError, match=r"rm_sdg_tiny.jsonl:1: <row>: differs from row 1"):
        rm_annotate.annotate_file(SDG, out, reward_model, progress=False)


def test_flat_rows_and_bad_rows(reward_model, tmp_path):
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"prompt": "Hi", "response": "Hello!"}) + "\n"
                    + json.dumps({"prompt": "Hi", "response": "Go away."}) + "\n")
    out = tmp_path / "flat_scored.jsonl"
    rm_annotate.annotate_file(flat, out, reward_model, progress=False)
    got = rows(out)
    assert set(got[0]) == {"prompt", "response", "attributes", "reward"}
    assert got[0]["reward"] != got[1]["reward"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "responses": [{"text": "ok"}, {"txt": "typo"}]}) + "\n")
    with pytest.raises(RowError, match=r"bad.jsonl:1: responses\[1\].text: missing"):
        rm_annotate.annotate_file(bad, tmp_path / "x.jsonl", reward_model, progress=False)
    # Nothing left to score (every row skipped as bad, or an empty file): an error, not an empty output.
    with pytest.raises(ValueError, match=r"bad.jsonl: no rows to score \(1 bad rows skipped\)"):
        rm_annotate.annotate_file(bad, tmp_path / "y.jsonl", reward_model, on_bad_row="skip", progress=False)
    assert not (tmp_path / "y.jsonl").exists() and not (tmp_path / "y.jsonl.partial").exists()


def test_stage_and_custom_weights(reward_model, tmp_path):
    out = tmp_path / "stage.jsonl"
    weights = "[0,0,0,0,1,0,0,0,0]"  # reward = helpfulness
    cfg = compose_cfg(*TINY, "stage=rm_annotate", f"annotate.input_file={SDG}", f"annotate.output_file={out}",
                      f"annotate.reward_model={reward_model}", "annotate.batch_size=4",
                      f"model.regression.attribute_weights={weights}", f"exp_manager.explicit_log_dir={tmp_path}")
    assert rm_annotate.run(cfg, tmp_path) == out
    for record in rows(out):
        for resp in record["responses"]:
            assert resp["reward"] == pytest.approx(resp["attributes"]["helpfulness"], abs=1e-6)
    cfg = compose_cfg(*TINY, "stage=rm_annotate", f"exp_manager.explicit_log_dir={tmp_path}")
    with pytest.raises(ValueError, match="annotate.input_file and annotate.reward_model"):
        rm_annotate.run(cfg, tmp_path)
    cfg = compose_cfg(*TINY, "stage=rm_annotate", f"annotate.input_file={SDG}", "annotate.reward_model=/no/rm")
    with pytest.raises(ValueError, match=r"^annotate.reward_model: no reward-model checkpoint at /no/rm"):
        rm_annotate.run(cfg, tmp_path)


def test_annotated_file_feeds_data_prep(reward_model, tmp_path):
    from data_prep.sdg import convert_sdg

    out = tmp_path / "scored.jsonl"
    rm_annotate.annotate_file(SDG, out, reward_model, progress=False)
    # generate -> annotate -> data_prep: the scored file becomes DPO/RPO pairs with the RM's rewards.
    convert_sdg(str(out), tmp_path / "prep", preset="rpo", pairs={"min_chosen_reward": None}, sft={"min_reward": None})
    pairs = rows(tmp_path / "prep" / "train_dpo.jsonl")
    scored = {r["text"]: r["reward"] for record in rows(out) for r in record["responses"]}
    assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert {round(p["chosen_reward"], 6) for p in pairs} <= {round(v, 6) for v in scored.values()}
