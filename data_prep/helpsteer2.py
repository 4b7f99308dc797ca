"""HelpSteer2 -> NeMo JSONL: attribute-conditioned SFT, regression RM, DPO/RPO pairs, pairwise RM.

    python -m data_prep.helpsteer2 --input nvidia/HelpSteer2 --output-dir data/helpsteer2 --epochs 2

Outputs per split (`train`, `val`) in --output-dir:

* `{split}.jsonl`          SteerLM SFT chat rows     } equal, row for row, to NeMo-Aligner's
* `{split}_reg.jsonl`      regression RM rows        } preprocess_helpsteer2_data.py +
* `train_reg_{N}_epoch.jsonl`  train_reg repeated N times (--epochs N > 1)  } process_to_regression_format.py
* `{split}_dpo.jsonl`      DPO/RPO pairs: per prompt, chosen = higher helpfulness; ties dropped
                           (HelpSteer2 §4.3: 7,221 pairs from the train split); rewards = weighted attributes;
                           message-list prompts, rendered at training time in the policy's own template
* `{split}_rm_pairs.jsonl` with --rm-pairs: the same pairs as adjacent pairwise-RM lines (rendered like the
                           regression rows, so a Bradley-Terry head can start from the regression RM)
* `report.json`, `rejects.jsonl`  (see data_prep/report.py)

With --preference (HelpSteer2-Preference rows: response_1, response_2, preference_strength, split) only the
regression files are written: two adjacent rows per preference row, label [strength, -100 x 8], as
`preprocess_helpsteer2_data.py -pref` + `process_to_regression_format.py` make them.

Responses are grouped by exact prompt text over the whole split (not by row parity), so a skipped bad row
never shifts the pairing of the rows after it. Filters default to none that alter real HelpSteer2 data
(empty texts only), which keeps the SFT/regression files equal to NeMo-Aligner's.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from data_prep.filters import FilterConfig, Filters, add_filter_args, filter_config_from_args
from data_prep.inputs import DataPrepError, find_split_files, has_table_suffix, is_hub_id, iter_file, load_hub_split_rows, validated
from data_prep.jsonl import Rejects, atomic_write_bytes
from data_prep.pairs import IDENTICAL, TIE, TOO_FEW, PromptGroup, Response, in_validation, parse_weights, select_pairs
from data_prep.report import Output, Report, print_summary, run_cli, with_overrides, write_output_set
from data_prep.schemas import (
    END_OF_NAME,
    END_OF_TURN,
    LABEL_START,
    NEMOTRON_340B_REWARD_WEIGHTS,
    OPEN_ASSISTANT_ATTRIBUTES,
    STEERLM_SYSTEM_PROMPT,
    TURN_START,
    assistant_message,
    chat_messages,
    dpo_row,
    pairwise_rm_rows,
    regression_label,
    regression_row,
    regression_text,
    render_turns,
    sft_chat_row,
    split_turns,
    steerlm_label,
    validate_helpsteer2_preference_row,
    validate_helpsteer2_row,
    weighted_reward,
)

HUB_ID = "nvidia/HelpSteer2"
SPLIT_PREFIX = {"train": "train", "validation": "val"}  # NeMo-Aligner's file names


@dataclass
class HelpSteer2Config:
    only_helpfulness: bool = False  # SteerLM labels / regression targets: helpfulness only (HS2-Preference recipe)
    epochs: int = 1  # >1 also writes train_reg_{N}_epoch.jsonl (NeMo recipe: 2, by concatenation)
    preference: bool = False  # input is HelpSteer2-Preference
    weights: tuple[float, ...] = NEMOTRON_340B_REWARD_WEIGHTS  # chosen_reward / rejected_reward of DPO pairs
    dpo_system: str = ""  # Nemotron-4-340B-Instruct's recommended (empty) system prompt
    rm_pairs: bool = False  # also write the pairs as pairwise (Bradley-Terry) RM lines
    val_fraction: float = 0.05  # only for one local file without a `split` column (HelpSteer2's own 95/5)
    seed: int = 1234
    on_bad_row: str = "error"
    allow_empty: bool = False  # write empty output files instead of failing when the filters remove every row
    # Dedup is off: HelpSteer2 is already deduplicated and NeMo-Aligner keeps every row.
    filters: FilterConfig = field(default_factory=lambda: FilterConfig(dedup=False))


def convert_helpsteer2(input: str = HUB_ID, output_dir: str | Path = "data/helpsteer2",
                       config: HelpSteer2Config | None = None, **overrides) -> dict:
    """Convert HelpSteer2 (hub id, directory of split files, or one JSONL/JSONL.GZ/Parquet file).

    `overrides` set HelpSteer2Config fields (`filters` may be a dict). Returns the report (also written to
    output_dir/report.json). Raises RowError / DataPrepError / FileNotFoundError on bad input.
    """
    cfg = _make_config(config, overrides)
    out = Path(output_dir)
    report = Report("data_prep.helpsteer2", _config_dict(cfg), inputs=[str(input)])
    filters = Filters(cfg.filters)
    report.filters = filters.describe()
    splits = _load_splits(str(input), cfg, report)

    files: dict[str, Output] = {}
    for split, rows in splits.items():
        prefix = SPLIT_PREFIX[split]
        if cfg.preference:
            _preference_split(prefix, rows, cfg, filters, report, files)
        else:
            _regular_split(prefix, rows, cfg, filters, report, files)

    def repeat_train_reg(staged: Path) -> None:  # the NeMo recipe's `cat train_reg.jsonl train_reg.jsonl > ...`
        name, base = f"train_reg_{cfg.epochs}_epoch.jsonl", report.outputs["train_reg.jsonl"]
        atomic_write_bytes(staged / name, (staged / "train_reg.jsonl").read_bytes() * cfg.epochs)
        c = report.output(name, f"train_reg.jsonl row, repeated {cfg.epochs}x")
        c.rows_in = c.rows_out = base.rows_out
        c.lines = base.lines * cfg.epochs

    return write_output_set(report, out, files, cfg.allow_empty, repeat_train_reg if cfg.epochs > 1 else None)


def _make_config(config: HelpSteer2Config | None, overrides: dict) -> HelpSteer2Config:
    cfg = with_overrides(config or HelpSteer2Config(), overrides, "HelpSteer2")
    cfg = replace(cfg, weights=parse_weights(cfg.weights))
    if cfg.epochs < 1:
        raise DataPrepError(f"epochs must be >= 1, got {cfg.epochs}")
    if not 0 <= cfg.val_fraction < 1:
        raise DataPrepError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.preference and cfg.only_helpfulness:
        # NeMo-Aligner would label every preference row with an empty string and write no regression rows.
        raise DataPrepError("--only-helpfulness does not apply to --preference (its label is the preference strength)")
    if any(cfg.weights[: len(OPEN_ASSISTANT_ATTRIBUTES)]):
        raise DataPrepError(f"HelpSteer2 has no {', '.join(OPEN_ASSISTANT_ATTRIBUTES)} attributes: "
                            f"their weights (the first 4) must be 0, got {list(cfg.weights)}")
    return cfg


def _config_dict(cfg: HelpSteer2Config) -> dict:
    d = asdict(cfg)
    d["weights"] = list(cfg.weights)
    return d


# --- Input -------------------------------------------------------------------------------------------------

Rows = list[tuple[str, int, dict]]  # (source, line, row)


def _load_splits(spec: str, cfg: HelpSteer2Config, report: Report) -> dict[str, Rows]:
    """{"train": rows, "validation": rows} from a hub id, a directory of split files or one file."""
    validate = validate_helpsteer2_preference_row if cfg.preference else validate_helpsteer2_row
    kind = "helpsteer2_preference" if cfg.preference else "helpsteer2"  # schemas.KNOWN_FIELDS
    bad = Rejects()
    path = Path(spec)

    def take(source: str, it) -> Rows:
        first_bad = len(bad)
        rows = [(source, line, row) for line, row in it]
        report.add_input(len(rows), bad, first_bad)
        report.count_unknown(source, (r for _, _, r in rows), kind)
        return rows

    if is_hub_id(spec):
        if cfg.preference:  # one `train` split whose rows carry their own `split`
            raw = load_hub_split_rows(spec, data_dir="preference")["train"]
            return _split_by_column(take(f"{spec}:preference", validated(raw, f"{spec}:preference", validate, cfg.on_bad_row, bad)))
        hub = load_hub_split_rows(spec)
        return {split: take(f"{spec}:{split}", validated(hub[split], f"{spec}:{split}", validate, cfg.on_bad_row, bad))
                for split in ("train", "validation")}
    if path.is_dir():
        if cfg.preference:
            cands = [p for p in (path / "preference").glob("preference.*") if has_table_suffix(p)] if (path / "preference").is_dir() else []
            cands += [p for p in path.glob("preference.*") if has_table_suffix(p)]
            if not cands:
                raise DataPrepError(f"{path}: no preference.jsonl[.gz] (or preference/preference.jsonl.gz) inside")
            path = sorted(cands)[0]
        else:
            found = find_split_files(path)
            splits = {s: take(str(p), iter_file(p, validate, cfg.on_bad_row, bad)) for s, p in found.items()}
            splits.setdefault("validation", [])
            return splits
    rows = take(str(path), iter_file(path, validate, cfg.on_bad_row, bad))
    if rows and all("split" in r for _, _, r in rows):
        return _split_by_column(rows)
    # One file, no split column: split by prompt hash so both responses of a prompt stay together.
    out: dict[str, Rows] = {"train": [], "validation": []}
    is_val: dict[str, bool] = {}
    for item in rows:
        prompt = item[2]["prompt"]
        if prompt not in is_val:
            is_val[prompt] = in_validation(prompt, cfg.seed, cfg.val_fraction)
        out["validation" if is_val[prompt] else "train"].append(item)
    return out


def _split_by_column(rows: Rows) -> dict[str, Rows]:
    out: dict[str, Rows] = {"train": [], "validation": []}
    for item in rows:
        out["train" if item[2].get("split", "train") == "train" else "validation"].append(item)
    return out


# --- Regular HelpSteer2 ------------------------------------------------------------------------------------


def _sft_text(prompt: str, response: str, label: str) -> str:
    """The SFT row as GPTSFTChatDataset renders it (what the max-seq-length filter measures)."""
    head = render_turns(STEERLM_SYSTEM_PROMPT, [("User", prompt)])
    return f"{head}{TURN_START}Assistant{END_OF_NAME}{LABEL_START}{label}{END_OF_NAME}{response}{END_OF_TURN}{TURN_START}"


def _regular_split(prefix: str, rows: Rows, cfg: HelpSteer2Config, filters: Filters, report: Report,
                   files: dict[str, Output]) -> None:
    """Decide (and count) what goes where; the rows themselves are built when their file is written."""
    only = ("helpfulness",) if cfg.only_helpfulness else None

    # Group by exact prompt text; dict order = first appearance.
    groups: dict[str, PromptGroup] = {}
    for source, line, r in rows:
        g = groups.get(r["prompt"])
        if g is None:
            g = groups[r["prompt"]] = PromptGroup(source, "", [("User", r["prompt"])])
        g.responses.append(Response(r["response"], r["helpfulness"], line, r))
        g.lines.append(line)
    prompt_reason = {p: filters.prompt_reason(p) for p in groups}
    rendered = [_sft_text(r["prompt"], r["response"], steerlm_label(r, only)) for _, _, r in rows] if filters.tokens else None
    resp_reason = filters.response_reasons([r["response"] for _, _, r in rows], rendered)

    # SFT + regression: one unit per input row, kept in input order (NeMo-Aligner's order).
    sft_name, reg_name = f"{prefix}.jsonl", f"{prefix}_reg.jsonl"
    sft, reg = report.output(sft_name, "response"), report.output(reg_name, "response")
    sft.rows_in = reg.rows_in = len(rows)
    kept, dropped = [], set()  # kept rows; ids of dropped rows
    for (source, line, r), rr in zip(rows, resp_reason):
        reason = prompt_reason[r["prompt"]] or rr
        if reason:
            report.reject([sft_name, reg_name], reason[0], source, [line], reason[1])
            dropped.add(id(r))
        else:
            kept.append(r)
    sft.rows_out = reg.rows_out = len(kept)
    size = sum(len(r["prompt"]) + len(r["response"]) + 300 for r in kept)
    files[sft_name] = Output(partial(_sft_rows, kept, only), int(1.1 * size))
    files[reg_name] = Output(partial(_reg_rows, kept, only), size)

    # Pairs: one unit per prompt; chosen = higher helpfulness, equal helpfulness = tie (dropped).
    names = [f"{prefix}_dpo.jsonl"] + ([f"{prefix}_rm_pairs.jsonl"] if cfg.rm_pairs else [])
    for n in names:
        report.output(n, "prompt").rows_in = len(groups)
    pairs, reversed_reward = [], 0  # (turns, chosen, rejected, chosen reward, rejected reward)
    for prompt, g in groups.items():
        if prompt_reason[prompt]:
            report.reject(names, *_reason(prompt_reason[prompt], g))
            continue
        usable = [x for x in g.responses if id(x.row) not in dropped]
        picked, why = select_pairs([x.reward for x in usable], "best_vs_worst", texts=[x.text for x in usable])
        if why:
            detail = {TOO_FEW: f"{len(usable)} of {len(g.responses)} responses left after filters",
                      TIE: f"every response has helpfulness {usable[0].reward if usable else None}",
                      IDENTICAL: "the best and worst responses have the same text"}[why]
            report.reject(names, why, g.source, g.lines, detail)
            continue
        (c, j), = picked
        rc, rj = (round(weighted_reward(usable[k].row, cfg.weights), 6) for k in (c, j))
        reversed_reward += rc < rj
        pairs.append((g.turns, usable[c].text, usable[j].text, rc, rj))
    size = sum(len(t[0][1]) + len(a) + len(b) + 200 for t, a, b, _, _ in pairs)
    files[names[0]] = Output(partial(_dpo_rows, pairs, cfg.dpo_system), int(0.7 * size))
    if cfg.rm_pairs:
        files[names[1]] = Output(partial(_rm_pair_rows, pairs, STEERLM_SYSTEM_PROMPT), size + 400 * len(pairs))
    for n in names:
        report.outputs[n].rows_out = len(pairs)
    if reversed_reward:
        report.notes.append(f"{names[0]}: {reversed_reward} pairs have chosen_reward < rejected_reward "
                            "(chosen is picked by helpfulness, the reward weighs all attributes)")


def _sft_rows(kept: list[dict], only: tuple[str, ...] | None) -> list[dict]:
    """preprocess_helpsteer2_data.py's rows: SteerLM system prompt, the whole prompt as one User turn."""
    return [sft_chat_row(STEERLM_SYSTEM_PROMPT, [("User", r["prompt"])], r["response"], steerlm_label(r, only))
            for r in kept]


def _reg_rows(kept: list[dict], only: tuple[str, ...] | None) -> list[dict]:
    """process_to_regression_format.py's rows for those SFT rows."""
    return [regression_row(regression_text(STEERLM_SYSTEM_PROMPT, [("User", r["prompt"]), ("Assistant", r["response"])]),
                           regression_label(r, only)) for r in kept]


def _dpo_rows(pairs: list[tuple], system: str) -> list[dict]:
    """DPO/RPO rows: message-list prompts (HelpSteer2's multi-turn prompts split into their turns) and
    assistant-message responses, weighted rewards; training renders them in the policy's template."""
    # A HelpSteer2 prompt is one User turn (earlier turns embedded with <extra_id_1> markers): split it.
    return [dpo_row(chat_messages(system, split_turns(turns[0][1])), assistant_message(chosen),
                    assistant_message(rejected), rc, rj)
            for turns, chosen, rejected, rc, rj in pairs]


def _rm_pair_rows(pairs: list[tuple], system: str) -> list[dict]:
    """Pairwise RM lines (chosen, rejected), rendered like regression rows so a BT head can start from that RM."""
    return [row for turns, chosen, rejected, *_ in pairs
            for row in pairwise_rm_rows(*(regression_text(system, turns + [("Assistant", x)]) for x in (chosen, rejected)))]


def _reason(reason: tuple[str, str], g: PromptGroup) -> tuple[str, str, list[int], str]:
    return reason[0], g.source, g.lines, reason[1]


# --- HelpSteer2-Preference ---------------------------------------------------------------------------------


def _preference_split(prefix: str, rows: Rows, cfg: HelpSteer2Config, filters: Filters, report: Report,
                      files: dict[str, Output]) -> None:
    name = f"{prefix}_reg.jsonl"
    c = report.output(name, "preference row")
    c.rows_in = len(rows)
    responses = [r[k] for _, _, r in rows for k in ("response_1", "response_2")]
    rendered = [render_turns(STEERLM_SYSTEM_PROMPT, [("User", r["prompt"]), ("Assistant", r[k])])
                for _, _, r in rows for k in ("response_1", "response_2")] if filters.tokens else None
    resp_reason = filters.response_reasons(responses, rendered)
    kept = []
    for i, (source, line, r) in enumerate(rows):
        g = PromptGroup(source, "", [("User", r["prompt"])], lines=[line])
        reason = filters.prompt_reason(r["prompt"]) or resp_reason[2 * i] or resp_reason[2 * i + 1]
        if reason:
            report.reject([name], *_reason(reason, g))
        else:
            kept.append(r)
    c.rows_out = len(kept)
    size = sum(2 * len(r["prompt"]) + len(r["response_1"]) + len(r["response_2"]) + 600 for r in kept)
    files[name] = Output(partial(_preference_rows, kept), size)


def _preference_rows(kept: list[dict]) -> list[dict]:
    """Two adjacent regression rows per preference row (response_1, then response_2), label [strength, -100 x 8]."""
    return [regression_row(regression_text(STEERLM_SYSTEM_PROMPT, [("User", r["prompt"]), ("Assistant", r[k])]),
                           regression_label({"quality": r["preference_strength"]}))
            for r in kept for k in ("response_1", "response_2")]


# --- CLI ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    d = HelpSteer2Config()
    p = argparse.ArgumentParser(
        prog="python -m data_prep.helpsteer2",
        description="Convert HelpSteer2 into NeMo JSONL: SteerLM SFT chat, regression RM and DPO/RPO pairs (and "
                    "with --rm-pairs pairwise RM rows), plus report.json and rejects.jsonl. Exit code 2 on bad input.")
    p.add_argument("--input", default=HUB_ID,
                   help="hub dataset id, a directory with train/validation files, or one .jsonl/.jsonl.gz/.parquet "
                        "file with HelpSteer2's columns (default: %(default)s)")
    p.add_argument("--output-dir", required=True, help="where the JSONL files, report.json and rejects.jsonl go")
    p.add_argument("--only-helpfulness", action="store_true", help="label and regress helpfulness only")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="also write train_reg_{N}_epoch.jsonl, train_reg repeated N times (NeMo recipe: 2)")
    p.add_argument("--preference", action="store_true",
                   help="input is HelpSteer2-Preference: write regression rows labelled with the preference strength")
    p.add_argument("--weights", default="nemotron-340b",
                   help="attribute weights for chosen/rejected rewards: nemotron-340b, llama3-70b, or 9 (or 5) "
                        "comma-separated numbers (default: %(default)s)")
    p.add_argument("--dpo-system", default=d.dpo_system, help="system prompt of the DPO pairs (default: empty)")
    p.add_argument("--rm-pairs", action="store_true",
                   help="also write {split}_rm_pairs.jsonl: the DPO pairs as adjacent pairwise reward-model lines")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="validation share when --input is one file without a split column (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of that split (default: %(default)s)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default=d.on_bad_row,
                   help="stop at the first bad row (exit code 2), or skip it into rejects.jsonl (default: %(default)s)")
    p.add_argument("--allow-empty", action="store_true",
                   help="write empty output files when the filters remove every row (default: exit code 2)")
    add_filter_args(p, dedup_default=d.filters.dedup)
    return p


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    report = convert_helpsteer2(a.input, a.output_dir, only_helpfulness=a.only_helpfulness, epochs=a.epochs,
                                preference=a.preference, weights=a.weights, dpo_system=a.dpo_system, rm_pairs=a.rm_pairs,
                                val_fraction=a.val_fraction, seed=a.seed, on_bad_row=a.on_bad_row,
                                allow_empty=a.allow_empty, filters=filter_config_from_args(a))
    print_summary(report, a.output_dir)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
