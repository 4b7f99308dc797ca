"""Sequence packing for SFT (recipes/packing.py): best-fit rows, and a packed row trains exactly
what its conversations train unpacked (loss and gradients), in the stage too."""

import logging

import pytest
import torch

from recipes import logprobs, loop, packing, sft
from recipes.chat import IGNORE_INDEX, Encoded
from recipes.config import validate
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_logprobs import assert_same, examples, run_both, tiny_llama

FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"


def test_best_fit_decreasing_by_hand():
    # longest first: 7 -> new row (room 3); 5 -> new row (room 5); 4 -> the fullest row with room, row 2
    # (room 1); 3 -> row 1 (room 0); 2 -> no room anywhere: a third row
    assert packing.pack_bins([5, 3, 7, 2, 4], 10) == [[2, 1], [0, 4], [3]]
    assert packing.pack_bins([4, 4, 4], 4) == [[0], [1], [2]]  # ties keep input order
    with pytest.raises(ValueError, match="11 tokens > data.max_seq_length=10"):
        packing.pack_bins([3, 11], 10)


def test_packed_rows_positions_labels_and_efficiency():
    encs = [Encoded([1, 2, 3], [IGNORE_INDEX, 2, 3]), Encoded([4, 5], [4, 5]), Encoded([6, 7, 8, 9], [6, 7, 8, 9])]
    rows = packing.pack(encs, max_len=7)
    assert [r.input_ids for r in rows] == [[6, 7, 8, 9, 1, 2, 3], [4, 5]]
    assert rows[0].position_ids == [0, 1, 2, 3, 0, 1, 2]
    # a conversation's first token is never a target: nothing before it in its own row predicts it
    assert rows[0].labels == [IGNORE_INDEX, 7, 8, 9, IGNORE_INDEX, 2, 3]
    assert rows[1].labels == [IGNORE_INDEX, 5]
    assert packing.efficiency(rows, 7) == pytest.approx(9 / 14)
    assert sft.n_trained(rows) == sft.n_trained(encs) == 6


@pytest.mark.parametrize("chunk", [0, 5])
def test_packed_row_loss_and_gradients_equal_unpacked(chunk):
    model = tiny_llama()
    convs = examples(lengths=(9, 14, 6, 11), prompt=(3, 5, 2, 4))
    rows = packing.pack(convs, max_len=24)
    assert [len(r.input_ids) for r in rows] == [23, 17]  # two rows, the second one padded in the batch
    packed = run_both(model, logprobs.collate(rows, 0, "cpu"), logprobs.nll_sum, chunks=(chunk,))[0]
    unpacked = run_both(model, logprobs.collate(convs, 0, "cpu"), logprobs.nll_sum, chunks=(chunk,))[0]
    assert_same(packed, unpacked)


def test_a_model_that_attends_across_packed_conversations_is_refused(monkeypatch):
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)  # packing ignored
    rows = packing.pack(examples(), max_len=40)
    with pytest.raises(ValueError, match="packed_sequence: LlamaForCausalLM .* attends across packed conversations"):
        logprobs.nll_sum(tiny_llama(), logprobs.collate(rows, 0, "cpu"), 0)


def test_sft_stage_packed_equals_unpacked(tmp_path, caplog):
    # One step over the whole fixture (8 conversations): the same tokens, so the same loss and gradient.
    common = (*TINY, f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=1", "model.global_batch_size=8",
              "model.micro_batch_size=2", "data.shuffle=false", "data.max_seq_length=256")
    runs = {}
    for packed in (False, True):
        d = tmp_path / str(packed)
        with caplog.at_level(logging.INFO, logger="recipes.sft"):
            sft.run(compose_cfg(*common, f"model.data.train_ds.packed_sequence={packed}",
                                f"exp_manager.explicit_log_dir={d}"), d)
        runs[packed] = loop.read_metrics(d)[0]
    assert runs[True]["loss"] == pytest.approx(runs[False]["loss"], abs=1e-5)
    assert runs[True]["grad_norm"] == pytest.approx(runs[False]["grad_norm"], rel=1e-5)
    assert "packing_efficiency" not in runs[False] and 0.5 < runs[True]["packing_efficiency"] <= 1
    assert "packed 8 conversations into" in caplog.text and "packing efficiency" in caplog.text


def test_packing_is_refused_outside_sft():
    cfg = compose_cfg(*TINY, "stage=dpo", "model.data.train_ds.packed_sequence=true")
    assert any("packing is for stage=sft/steerlm_sft" in p for p in validate(cfg))
    assert validate(compose_cfg(*TINY, "stage=sft", "model.data.train_ds.packed_sequence=true")) == []
