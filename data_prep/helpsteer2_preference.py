"""HelpSteer2's preference subset (HelpSteer2-Preference) -> DPO/RPO preference pairs.

    python -m data_prep.helpsteer2_preference --input nvidia/HelpSteer2 --output-dir data/hs2_pref

`data_prep.helpsteer2 --preference` turns the same rows into Bradley-Terry reward-model rows, as
NeMo-Aligner does; this reader makes pairs for preference training from them instead. A row (dataset card,
`data_dir="preference"`: one `train` file whose rows carry `split`) holds `prompt`, `response_1`,
`response_2` and `preference_strength` in -3..3: negative means response_1 is better, 0 that they are as
good. Per row, when |strength| >= `min_strength` (default 1, so ties are dropped):

    {"prompt": [{"role": "system", "content": ""}, {"role": "user", "content": "{prompt}"}],
     "chosen_response": {"role": "assistant", "content": "{better}"},
     "rejected_response": {"role": "assistant", "content": "{worse}"},
     "chosen_reward": |strength|, "rejected_reward": 0}

into `train_dpo.jsonl` / `val_dpo.jsonl` (by the `split` column). Message lists, as data_prep.helpsteer2 and
data_prep.sdg write their pairs, so training renders them in the policy's own template (docs/data_prep.md);
a prompt with HelpSteer2's embedded `<extra_id_1>Assistant` turns becomes those turns (schemas.split_turns).
The reward gap is the preference strength, so RPO fits its implicit reward gap to the annotators' strength (our choice: the card gives strengths, not
rewards). Same validation (`schemas.validate_helpsteer2_preference_row`), filters and report.json /
rejects.jsonl as every data-prep script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.daring_anteater import source_rows
from data_prep.filters import FilterConfig, Filters, add_filter_args, filter_config_from_args
from data_prep.inputs import DataPrepError
from data_prep.jsonl import Rejects
from data_prep.pairs import IDENTICAL, TIE, PromptGroup
from data_prep.report import Output, Report, print_summary, run_cli, write_output_set
from data_prep.schemas import (
    assistant_message,
    chat_messages,
    dpo_row,
    split_turns,
    validate_helpsteer2_preference_row,
)

HUB_ID = "nvidia/HelpSteer2"
WEAK = "weak_preference"  # 0 < |strength| < min_strength


def convert_helpsteer2_preference(input: str = HUB_ID, output_dir: str | Path = "data/hs2_preference",
                                  min_strength: float = 1.0, system: str = "", on_bad_row: str = "error",
                                  filters: FilterConfig | None = None, allow_empty: bool = False) -> dict:
    """Convert HelpSteer2-Preference rows (hub id, or a local file) into pairs; returns the report. A result
    with no pairs fails (data_prep/report.py: refuse_empty) unless `allow_empty`."""
    if not 0 <= min_strength <= 3:
        raise DataPrepError(f"min_strength must be in [0, 3], got {min_strength}")
    fcfg = filters or FilterConfig(dedup=False)  # every HelpSteer2 prompt appears once in the preference subset
    report = Report("data_prep.helpsteer2_preference", {"min_strength": min_strength, "system": system,
                                                         "on_bad_row": on_bad_row}, inputs=[str(input)])
    flt = Filters(fcfg)
    report.filters = flt.describe()
    bad = Rejects()
    source, it = source_rows(str(input), validate_helpsteer2_preference_row, on_bad_row, bad, data_dir="preference")
    rows = list(it)
    report.add_input(len(rows), bad)
    names = {"train": "train_dpo.jsonl", "validation": "val_dpo.jsonl"}
    for n in names.values():
        report.output(n, "pair")
    pairs: dict[str, list] = {n: [] for n in names.values()}
    texts = [r[k] for _, r in rows for k in ("response_1", "response_2")]
    resp_reason = flt.response_reasons(texts)
    for i, (line, r) in enumerate(rows):
        name = names[r.get("split", "train")]
        report.outputs[name].rows_in += 1
        s = r["preference_strength"]
        g = PromptGroup(source, system, [("User", r["prompt"])], lines=[line])
        why = flt.prompt_reason(r["prompt"], g.key) or resp_reason[2 * i] or resp_reason[2 * i + 1]
        if not why and s == 0:
            why = (TIE, "preference_strength 0: the responses are as good")
        elif not why and abs(s) < min_strength:
            why = (WEAK, f"|preference_strength| {abs(s):g} < min_strength {min_strength:g}")
        elif not why and r["response_1"] == r["response_2"]:
            why = (IDENTICAL, "response_1 and response_2 are the same text")
        if why:
            report.reject([name], why[0], source, [line], why[1])
            continue
        better, worse = (r["response_1"], r["response_2"]) if s < 0 else (r["response_2"], r["response_1"])
        pairs[name].append((g, better, worse, float(abs(s))))
        report.outputs[name].rows_out += 1
    files = {n: Output(lambda ps=ps: [dpo_row(chat_messages(g.system, split_turns(g.turns[0][1])),
                                              assistant_message(c), assistant_message(j), gap, 0.0)
                                      for g, c, j, gap in ps],
                       sum(len(g.turns[0][1]) + len(c) + len(j) + 200 for g, c, j, _ in ps))
             for n, ps in pairs.items()}
    return write_output_set(report, output_dir, files, allow_empty)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m data_prep.helpsteer2_preference",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=HUB_ID, help="hub id (its preference/ subset; default %(default)s) or a "
                                                   ".jsonl/.jsonl.gz/.parquet file of preference rows")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--min-strength", type=float, default=1.0, help="keep rows with |preference_strength| >= this")
    p.add_argument("--system", default="", help="system prompt of the pairs (default: empty)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    p.add_argument("--allow-empty", action="store_true",
                   help="write empty output files when the filters remove every pair (default: exit code 2)")
    add_filter_args(p, dedup_default=False)
    a = p.parse_args(argv)
    report = convert_helpsteer2_preference(a.input, a.output_dir, a.min_strength, a.system, a.on_bad_row,
                                           filter_config_from_args(a), a.allow_empty)
    print_summary(report, a.output_dir)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
