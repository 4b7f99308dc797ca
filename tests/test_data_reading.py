"""Reading training rows: precise errors, skip mode with counts and rejects.jsonl, over-length policy."""

import json

import pytest

from data_prep.jsonl import Rejects, RowError, read_jsonl
from data_prep.schemas import validate_sft_chat
from recipes import sft
from tests.conftest import REPO, TINY, compose_cfg

FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"
GOOD = json.loads(FIXTURE.read_text().splitlines()[0])


def write(tmp_path, lines, name="train.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def with_turn(i, **changes):
    row = json.loads(json.dumps(GOOD))
    row["conversations"][i].update(changes)
    return json.dumps(row)


@pytest.mark.parametrize("line, message", [
    ('{"system": "", "conversations": [', "train.jsonl:2: <line>: invalid JSON"),
    ("[1, 2]", "train.jsonl:2: <line>: expected a JSON object, got list"),
    (b'{"system": "\xff"}', "train.jsonl:2: <line>: invalid UTF-8 at byte 12"),
    ('{"system": NaN, "conversations": []}', "train.jsonl:2: <line>: invalid JSON (NaN is not a finite number)"),
    (with_turn(0, **{"from": "user"}), "train.jsonl:2: conversations[0].from: must be 'User' or 'Assistant', got 'user'"),
    (with_turn(1, value=None), "train.jsonl:2: conversations[1].value: must be a string, got null"),
    (with_turn(1, label=4), "train.jsonl:2: conversations[1].label: must be a string or null, got int"),
    ('{"conversations": [{"from": "User", "value": "a"}, {"from": "Assistant", "value": "b"}]}',
     "train.jsonl:2: system: missing"),
    ('{"system": "", "conversations": []}', "train.jsonl:2: conversations: must be a non-empty list, got list"),
    ('{"system": "", "conversations": [{"from": "User", "value": "a"}, {"from": "User", "value": "b"}]}',
     "train.jsonl:2: conversations[1].from: turns must alternate, got two 'User' turns in a row"),
    ('{"system": "", "conversations": [{"from": "User", "value": "a"}]}',
     "train.jsonl:2: conversations[0].from: the last turn must be 'Assistant'"),
    (json.dumps({**GOOD, "type": "V2T"}), "train.jsonl:2: type: must be 'VALUE_TO_TEXT', 'TEXT_TO_VALUE' or null"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(RowError) as err:
        list(read_jsonl(path, validate_sft_chat))
    assert str(err.value).startswith(message)


def test_skip_counts_and_keeps_rejected_rows(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD), "{oops", with_turn(0, **{"from": "user"}), "", json.dumps(GOOD)])
    rejects = Rejects()
    rows = list(read_jsonl(path, validate_sft_chat, on_bad_row="skip", rejects=rejects))
    assert [line for line, _ in rows] == [1, 5]  # the blank line 4 is not a row
    assert [(r["line"], r["field"]) for r in rejects.records] == [(2, "<line>"), (3, "conversations[0].from")]
    assert rejects.records[1]["raw"].startswith('{"system"')


def test_stage_writes_rejects_and_trains_on_the_rest(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    lines.insert(3, "not json")
    path = write(tmp_path, lines)
    run_dir = tmp_path / "run"
    cfg = compose_cfg(*TINY, f"model.data.train_ds.file_path={path}", "data.on_bad_row=skip", "trainer.max_steps=1",
                      f"exp_manager.explicit_log_dir={run_dir}")
    sft.run(cfg, run_dir)
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["line"] == 4 and rejects[0]["file"] == str(path)


def test_overlong_rows_are_truncated_or_dropped_by_policy(tmp_path):
    run_dir = tmp_path / "run"
    base = (*TINY, f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=1", f"exp_manager.explicit_log_dir={run_dir}")
    sft.run(compose_cfg(*base, "data.max_seq_length=38", "data.overlong=drop"), run_dir)
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert rejects and all(r["reason"] == "longer than data.max_seq_length=38" and r["tokens"] > 38 for r in rejects)
    assert len(rejects) < 8

    from recipes.chat import encode_chat
    from recipes.data import encode_sft_rows, load_sft, sft_texts
    from recipes.models import load_tokenizer

    cfg = compose_cfg(*base, "data.max_seq_length=38", "data.overlong=truncate")
    rows = load_sft(str(FIXTURE), cfg.data, Rejects())
    tok = load_tokenizer(cfg.model, sft_texts(rows))
    lost = Rejects()
    kept, counts = encode_sft_rows(rows, str(FIXTURE), tok, cfg.data, lost)
    full = [encode_chat(r, tok) for _, r in rows]
    assert counts["truncated"] == sum(len(e.input_ids) > 38 for e in full) == len(rejects)
    assert all(len(e.input_ids) <= 38 for e in kept)
    # A row truncated before its answer has nothing left to learn: rejected, not silently kept.
    assert len(kept) + len(lost) == 8
    assert all(r["reason"].startswith("no trained tokens left") for r in lost.records)
    # Rows whose cut falls inside an answer train it without its end-of-turn token: counted, one by one.
    from recipes.data import answer_cut

    assert counts["answers_cut"] == sum(answer_cut(e, 38) for e in full) >= 1
    cut = [e for e in full if answer_cut(e, 38)]
    assert all(e.labels[37] != -100 and e.labels[38] != -100 for e in cut)
    assert not any(answer_cut(e, len(e.input_ids)) for e in full)  # an untruncated row never is


def test_an_empty_file_says_so_and_all_rejected_points_to_rejects(tmp_path):
    from recipes.data import read_rows

    data_cfg = compose_cfg(*TINY, "data.on_bad_row=skip").data
    with pytest.raises(ValueError, match=r"val\.jsonl: the file has no rows$"):
        read_rows(str(write(tmp_path, [], "val.jsonl")), validate_sft_chat, data_cfg, Rejects())
    with pytest.raises(ValueError, match=r"train\.jsonl: no usable rows \(1 rejected, see rejects\.jsonl\)"):
        read_rows(str(write(tmp_path, ["[1]"])), validate_sft_chat, data_cfg, Rejects())
