"""nvidia/Daring-Anteater (the SFT blend of the HelpSteer2 paper, mostly synthetic) -> NeMo SFT chat JSONL.

    python -m data_prep.daring_anteater --input nvidia/Daring-Anteater --output-dir data/daring_anteater

Rows, per the dataset card: `conversations` (User/Assistant turns, `{"from", "value", ...}`), `mask`
("User": the turns no loss is computed on), `system` and `dataset` (the source subset: synthetic_conv,
synthetic_math, open_platypus_commercial, FinQA, ...). They are NeMo chat rows already; this reader
validates them (`schemas.validate_daring_anteater_row`: alternating turns from User to Assistant, string
values, mask User), drops what the shared filters drop, and writes

* `train.jsonl` (and `val.jsonl` with --val-fraction > 0, split by a seeded hash of the conversation):
  `{"system", "conversations": [{"from", "value", "label": null}], "mask": "User", "type": "VALUE_TO_TEXT"}`,
  extra turn keys dropped;
* `report.json` (rows in/out and rejections by reason per file; kept rows per source `dataset` in `notes`)
  and `rejects.jsonl`, as every data-prep script (data_prep/report.py).

Filters (data_prep/filters.py): `empty_text` (an empty turn), `duplicate_prompt` (the same system and
turns, case and whitespace normalised), `contaminated` (a user turn overlaps an evaluation prompt file),
`too_long` (with --tokenizer).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from data_prep.filters import EMPTY, FilterConfig, Filters, add_filter_args, filter_config_from_args
from data_prep.inputs import DataPrepError, is_hub_id, iter_file, load_hub_split_rows, validated
from data_prep.jsonl import Rejects
from data_prep.pairs import PromptGroup, in_validation
from data_prep.report import Output, Report, print_summary, run_cli, write_output_set
from data_prep.schemas import TURN_START, render_turns, sft_chat_row, validate_daring_anteater_row

HUB_ID = "nvidia/Daring-Anteater"


def source_rows(spec: str, validate, on_bad_row: str, bad: Rejects, data_dir: str | None = None,
                split: str = "train"):
    """(source name, iterator of (line, row)) of a hub dataset's `split`, or of a local .jsonl[.gz]/.parquet."""
    if is_hub_id(spec):
        rows = load_hub_split_rows(spec, data_dir=data_dir)
        if split not in rows:
            raise DataPrepError(f"{spec}: no {split!r} split (splits: {', '.join(rows)})")
        name = f"{spec}:{data_dir + '/' if data_dir else ''}{split}"
        return name, validated(rows[split], name, validate, on_bad_row, bad)
    return spec, iter_file(spec, validate, on_bad_row, bad)


def convert_daring_anteater(input: str = HUB_ID, output_dir: str | Path = "data/daring_anteater",
                            val_fraction: float = 0.0, seed: int = 1234, on_bad_row: str = "error",
                            filters: FilterConfig | None = None, allow_empty: bool = False) -> dict:
    """Convert Daring-Anteater rows; returns the report (also output_dir/report.json). A result with no
    rows fails (data_prep/report.py: refuse_empty) unless `allow_empty`."""
    if not 0 <= val_fraction < 1:
        raise DataPrepError(f"val_fraction must be in [0, 1), got {val_fraction}")
    fcfg = filters or FilterConfig()
    report = Report("data_prep.daring_anteater", {"val_fraction": val_fraction, "seed": seed,
                                                  "on_bad_row": on_bad_row}, inputs=[str(input)])
    flt = Filters(fcfg)
    report.filters = flt.describe()
    bad = Rejects()
    source, it = source_rows(str(input), validate_daring_anteater_row, on_bad_row, bad)
    rows = list(it)
    report.add_input(len(rows), bad)

    groups = []
    for line, row in rows:
        turns = [(t["from"], t["value"]) for t in row["conversations"]]
        g = PromptGroup(source, row.get("system") or "", turns, lines=[line])
        groups.append((g, row.get("dataset") or "unknown"))
    names = ["train.jsonl"] + (["val.jsonl"] if val_fraction > 0 else [])
    for n in names:
        report.output(n, "conversation")
    rendered = [render_turns(g.system, g.turns) + TURN_START for g, _ in groups] if flt.tokens else None
    too_long = flt.response_reasons([g.turns[-1][1] for g, _ in groups], rendered)
    kept: dict[str, list] = {n: [] for n in names}
    by_source: Counter = Counter()
    for (g, src), long_reason in zip(groups, too_long):
        name = "val.jsonl" if val_fraction > 0 and in_validation(g.key, seed, val_fraction) else "train.jsonl"
        report.outputs[name].rows_in += 1
        user = "\n".join(v for r, v in g.turns if r == "User")
        why = ((EMPTY, "a turn is empty") if any(not v.strip() for _, v in g.turns) and fcfg.drop_empty else None) \
            or flt.prompt_reason(user, g.key) or long_reason
        if why:
            report.reject([name], why[0], source, g.lines, why[1])
            continue
        report.outputs[name].rows_out += 1
        kept[name].append(g)
        by_source[src] += 1
    report.notes.append("kept per source dataset: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())))
    files = {n: Output(lambda gs=kept[n]: [sft_chat_row(g.system, g.turns[:-1], g.turns[-1][1]) for g in gs],
                       sum(len(v) + 60 for g in kept[n] for _, v in g.turns)) for n in names}
    return write_output_set(report, output_dir, files, allow_empty)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m data_prep.daring_anteater", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=HUB_ID, help="hub id (default: %(default)s) or a .jsonl/.jsonl.gz/.parquet file")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--val-fraction", type=float, default=0.0, help="held-out share, by a seeded hash (default 0)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    p.add_argument("--allow-empty", action="store_true",
                   help="write empty output files when the filters remove every row (default: exit code 2)")
    add_filter_args(p, dedup_default=True)
    a = p.parse_args(argv)
    report = convert_daring_anteater(a.input, a.output_dir, a.val_fraction, a.seed, a.on_bad_row,
                                     filter_config_from_args(a), a.allow_empty)
    print_summary(report, a.output_dir)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
