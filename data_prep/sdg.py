"""Synthetic data (SDG) -> SFT chat rows and DPO/RPO preference pairs.

    python -m data_prep.sdg --input sdg.jsonl --output-dir data/sdg --preset rpo

The input format (records with scored `responses`, or flat one-response rows) is
defined in docs/sdg_format.md and validated by `data_prep.schemas.validate_sdg_row`.
A response's reward is its `reward`, or the weighted sum of its `attributes`
(default weights: Nemotron-4-340B-Reward's). Per prompt:

* `train_sft.jsonl`      the best response, kept when its reward >= sft.min_reward;
* `train_dpo.jsonl`      pairs (`best_vs_worst` or `all_pairs`) with chosen - rejected >= pairs.min_gap and
                         chosen >= pairs.min_chosen_reward; chosen_reward / rejected_reward written
                         (`DPOModelDataset` format with message-list prompts, used by both DPO and RPO,
                         rendered at training time in the policy's own template);
* `train_rm_pairs.jsonl` the same pairs as adjacent pairwise reward-model lines;
* `val_*.jsonl` likewise for a held-out share of prompts when val_fraction > 0;
* `report.json`, `rejects.jsonl` (units: one prompt per row of every file; see data_prep/report.py).

Presets: the Nemotron-4 report filters DPO pairs "harshly" on the chosen response's reward and RPO pairs
"less harshly" but gives no numbers; the values in PAIR_PRESETS are our choice (docs/data_prep.md).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from data_prep.filters import FilterConfig, Filters, add_filter_args, filter_config_from_args
from data_prep.inputs import DataPrepError, iter_file
from data_prep.jsonl import Rejects
from data_prep.pairs import IDENTICAL, TOO_FEW, PromptGroup, Response, in_validation, parse_weights, select_pairs
from data_prep.report import Output, Report, print_summary, run_cli, with_overrides, write_output_set
from data_prep.schemas import (
    ALL_STEERLM_ATTRIBUTES,
    NEMOTRON_340B_REWARD_WEIGHTS,
    STEERLM_SYSTEM_PROMPT,
    TURN_START,
    assistant_message,
    chat_messages,
    dpo_row,
    pairwise_rm_rows,
    regression_text,
    render_turns,
    sdg_attributes,
    sft_chat_row,
    validate_sdg_row,
    weighted_reward,
)

BELOW_MIN = "below_min_reward"
NO_RESPONSE = "no_response_left"  # every response of the prompt was dropped by a response-level filter


@dataclass
class SFTSelect:
    # Under the default weights a response rated L on all five attributes scores 1.64 L; 4.9 ~ "3 everywhere".
    min_reward: float | None = 4.9  # None: keep every prompt's best response


@dataclass
class PairSelect:
    mode: str = "best_vs_worst"  # or "all_pairs"
    min_gap: float | None = 0.0  # chosen - rejected must reach this (and always be > 0); None: 0
    min_chosen_reward: float | None = None  # None: no threshold


# Our choice (the report gives no values), for rewards on the default weights' scale:
# dpo: only clearly good chosen responses (~3.5 on every attribute) and a clear margin;
# rpo: chosen ~3 on every attribute, any margin (RPO's target scales with the reward gap itself).
PAIR_PRESETS = {
    "dpo": PairSelect("best_vs_worst", min_gap=0.5, min_chosen_reward=5.7),
    "rpo": PairSelect("best_vs_worst", min_gap=0.0, min_chosen_reward=4.9),
}


@dataclass
class SDGConfig:
    preset: str = "dpo"
    sft: SFTSelect = field(default_factory=SFTSelect)
    pairs: PairSelect | None = None  # None: the preset's values
    weights: tuple[float, ...] = NEMOTRON_340B_REWARD_WEIGHTS
    system: str = ""  # system prompt for records without one (Nemotron-4-340B-Instruct recommends empty)
    val_fraction: float = 0.0
    seed: int = 1234
    on_bad_row: str = "error"
    allow_empty: bool = False  # write empty output files instead of failing when the filters remove every row
    filters: FilterConfig = field(default_factory=FilterConfig)


def convert_sdg(inputs: str | Path | list, output_dir: str | Path, config: SDGConfig | None = None, **overrides) -> dict:
    """Convert SDG files into SFT + preference JSONL; returns the report (also in output_dir/report.json).

    `overrides` set SDGConfig fields; `sft`, `pairs` and `filters` may be dicts, and a `pairs` dict is
    applied on top of the preset. Raises RowError / DataPrepError / FileNotFoundError on bad input.
    """
    cfg = _make_config(config, overrides)
    paths = [str(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    out = Path(output_dir)
    report = Report("data_prep.sdg", _config_dict(cfg), inputs=paths)
    filters = Filters(cfg.filters)
    report.filters = filters.describe()

    groups = _read_groups(paths, cfg, report)
    splits: dict[str, list[PromptGroup]] = {"train": [], "val": []}
    for g in groups:
        splits["val" if cfg.val_fraction > 0 and in_validation(g.key, cfg.seed, cfg.val_fraction) else "train"].append(g)
    files: dict[str, Output] = {}
    for split, gs in splits.items():
        if split == "val" and cfg.val_fraction <= 0:
            continue
        _convert_split(split, gs, cfg, filters, report, files)
    return write_output_set(report, out, files, cfg.allow_empty)


def _make_config(config: SDGConfig | None, overrides: dict) -> SDGConfig:
    cfg = config or SDGConfig()
    preset = overrides.get("preset", cfg.preset)
    if preset not in PAIR_PRESETS:
        raise DataPrepError(f"preset must be one of {', '.join(PAIR_PRESETS)}, got {preset!r}")
    if cfg.pairs is None:  # the preset's values, which a `pairs` mapping then overrides field by field
        cfg = replace(cfg, pairs=PAIR_PRESETS[preset])
    cfg = with_overrides(cfg, overrides, "SDG")
    cfg = replace(cfg, weights=parse_weights(cfg.weights))
    if cfg.pairs.min_gap is None:  # no gap threshold: any positive gap (equal rewards never make a pair)
        cfg = replace(cfg, pairs=replace(cfg.pairs, min_gap=0.0))
    if cfg.pairs.mode not in ("best_vs_worst", "all_pairs"):
        raise DataPrepError(f"pairs.mode must be 'best_vs_worst' or 'all_pairs', got {cfg.pairs.mode!r}")
    if not 0 <= cfg.val_fraction < 1:
        raise DataPrepError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    return cfg


def _config_dict(cfg: SDGConfig) -> dict:
    d = asdict(cfg)
    d["weights"] = list(cfg.weights)
    return d


# --- Input -------------------------------------------------------------------------------------------------


def _validator(weights):
    """Schema check plus: every attribute with a non-zero weight must be given (else no reward exists)."""
    needed = [a for a, w in zip(ALL_STEERLM_ATTRIBUTES, weights) if w]

    def validate(row: dict):
        problems = validate_sdg_row(row)
        if problems:
            return problems
        scored = [(f"responses[{i}].", r) for i, r in enumerate(row["responses"])] if "responses" in row else [("", row)]
        for where, obj in scored:
            if "reward" in obj:
                continue
            attrs = sdg_attributes(obj)
            for a in needed:
                if a not in attrs:
                    w = weights[ALL_STEERLM_ATTRIBUTES.index(a)]
                    return [(f"{where}attributes", f"missing {a!r}, which has weight {w:g} (give it, a 'reward', or other --weights)")]
        return []

    return validate


def _reward(obj: dict, weights) -> float:
    if "reward" in obj:
        return float(obj["reward"])
    return round(weighted_reward(sdg_attributes(obj), weights), 6)


def _read_groups(paths: list[str], cfg: SDGConfig, report: Report) -> list[PromptGroup]:
    """Records become one group each; flat rows are grouped by exact (system, turns) within a file, first
    appearance first (the same prompt in two files makes two groups, which dedup then catches)."""
    validate, bad = _validator(cfg.weights), Rejects()
    groups: list[PromptGroup] = []
    flat: dict[tuple, PromptGroup] = {}
    for path in paths:
        first_bad, n_ok = len(bad), 0
        for line, row in iter_file(path, validate, cfg.on_bad_row, bad):
            n_ok += 1
            report.count_unknown(path, (row,), "sdg")
            system = row.get("system", cfg.system)
            turns = [("User", row["prompt"])] if "prompt" in row else [(t["from"], t["value"]) for t in row["conversations"]]
            if "responses" in row:
                g = PromptGroup(path, system, turns, lines=[line])
                g.responses = [Response(r["text"], _reward(r, cfg.weights), line, r) for r in row["responses"]]
                groups.append(g)
                continue
            key = (path, system, tuple(turns))  # per file, so a group's lines all refer to one file
            g = flat.get(key)
            if g is None:
                g = flat[key] = PromptGroup(path, system, turns)
                groups.append(g)
            g.responses.append(Response(row["response"], _reward(row, cfg.weights), line, row))
            g.lines.append(line)
        report.add_input(n_ok, bad, first_bad)
    return groups


# --- Selection ---------------------------------------------------------------------------------------------


def _convert_split(split: str, groups: list[PromptGroup], cfg: SDGConfig, filters: Filters, report: Report,
                   files: dict[str, Output]) -> None:
    """Decide (and count) what goes where; the rows themselves are built when their file is written."""
    names = [f"{split}_sft.jsonl", f"{split}_dpo.jsonl", f"{split}_rm_pairs.jsonl"]
    sft_name, dpo_name, rm_name = names
    for n in names:
        report.output(n, "prompt").rows_in = len(groups)

    # Response-level filters, all responses of the split at once (one batched tokenizer call).
    flat = [(g, r) for g in groups for r in g.responses]
    rendered = [render_turns(g.system, g.turns + [("Assistant", r.text)]) + TURN_START for g, r in flat] if filters.tokens else None
    reasons = iter(filters.response_reasons([r.text for _, r in flat], rendered))

    sft: list[tuple[PromptGroup, Response]] = []
    pairs: list[tuple[PromptGroup, Response, Response]] = []
    for g in groups:
        resp_reasons = [next(reasons) for _ in g.responses]
        why = filters.prompt_reason(g.prompt_text, g.key)
        if why:
            report.reject(names, why[0], g.source, g.lines, why[1])
            continue
        usable = []
        for i, (r, rr) in enumerate(zip(g.responses, resp_reasons)):
            if rr:
                report.drop_response(rr[0], g.source, r.line, f"responses[{i}]: {rr[1]}" if len(set(g.lines)) == 1 else rr[1])
            else:
                usable.append(r)

        # SFT: the best response (the first of equals), if good enough.
        if not usable:
            report.reject([sft_name], NO_RESPONSE, g.source, g.lines, "no response left after filters")
        else:
            best = max(usable, key=lambda r: r.reward)  # max() keeps the first of equal rewards
            if best.reward < _or_inf(cfg.sft.min_reward):
                report.reject([sft_name], BELOW_MIN, g.source, g.lines,
                              f"best reward {best.reward:g} < sft.min_reward {cfg.sft.min_reward:g}")
            else:
                sft.append((g, best))

        # Pairs.
        picked, why_not = select_pairs([r.reward for r in usable], cfg.pairs.mode, cfg.pairs.min_gap,
                                      _or_inf(cfg.pairs.min_chosen_reward), texts=[r.text for r in usable])
        if why_not:
            report.reject([dpo_name, rm_name], why_not, g.source, g.lines, _pair_detail(why_not, usable, cfg.pairs))
            continue
        pairs += [(g, usable[c], usable[j]) for c, j in picked]
        report.outputs[dpo_name].rows_out += 1
        report.outputs[rm_name].rows_out += 1
    report.outputs[sft_name].rows_out = len(sft)
    size = sum(len(g.prompt_text) + len(r.text) + 200 for g, r in sft)
    files[sft_name] = Output(partial(_sft_rows, sft), int(1.1 * size))
    size = sum(len(g.prompt_text) + len(c.text) + len(r.text) + 200 for g, c, r in pairs)
    files[dpo_name] = Output(partial(_dpo_rows, pairs), int(0.7 * size))
    files[rm_name] = Output(partial(_rm_pair_rows, pairs), size + 400 * len(pairs))


def _sft_rows(picked: list[tuple[PromptGroup, Response]]) -> list[dict]:
    return [sft_chat_row(g.system, g.turns, best.text) for g, best in picked]


def _dpo_rows(pairs: list[tuple[PromptGroup, Response, Response]]) -> list[dict]:
    """DPO/RPO rows: message-list prompts (system, then the turns) and assistant-message responses, with
    their rewards; training renders them in the policy's template (docs/data_prep.md, "One template")."""
    return [dpo_row(chat_messages(g.system, g.turns), assistant_message(c.text), assistant_message(r.text),
                    c.reward, r.reward) for g, c, r in pairs]


def _rm_pair_rows(pairs: list[tuple[PromptGroup, Response, Response]]) -> list[dict]:
    """Pairwise RM lines, rendered like regression rows (the record's system prompt, else the SteerLM one)."""
    return [row for g, c, r in pairs
            for row in pairwise_rm_rows(*(regression_text(g.system or STEERLM_SYSTEM_PROMPT, g.turns + [("Assistant", x.text)])
                                          for x in (c, r)))]


def _or_inf(x: float | None) -> float:
    return float("-inf") if x is None else x


def _pair_detail(why: str, usable: list[Response], p: PairSelect) -> str:
    rewards = [r.reward for r in usable]
    if why == TOO_FEW:
        return f"{len(usable)} response(s) left after filters"
    if why == IDENTICAL:
        return "every candidate pair has two identical texts"
    if why == "tie":
        return f"every response has reward {rewards[0]:g}"
    if why == "chosen_below_min_reward":
        return f"best reward {max(rewards):g} < pairs.min_chosen_reward {p.min_chosen_reward:g}"
    return f"no pair reaches pairs.min_gap {p.min_gap:g}"


# --- CLI ---------------------------------------------------------------------------------------------------

PRESET = object()  # an option not given on the command line: the preset's value


def threshold(text: str) -> float | None:
    """A threshold on the command line: a number, or none / null / off (no threshold)."""
    return None if text.strip().lower() in ("none", "null", "off") else float(text)



def build_parser() -> argparse.ArgumentParser:
    d = SDGConfig()
    p = argparse.ArgumentParser(
        prog="python -m data_prep.sdg",
        description="Turn SDG output (docs/sdg_format.md) into SFT chat and DPO/RPO preference JSONL, plus "
                    "report.json and rejects.jsonl. Exit code 2 on bad input.")
    p.add_argument("--input", nargs="+", required=True, help="SDG .jsonl/.jsonl.gz/.parquet file(s)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--preset", choices=sorted(PAIR_PRESETS), default=d.preset,
                   help="pair filtering: dpo (harsh on the chosen reward) or rpo (less harsh) (default: %(default)s)")
    p.add_argument("--pairing", choices=("best_vs_worst", "all_pairs"), default=None, help="override the preset's pair mode")
    p.add_argument("--min-gap", type=threshold, default=PRESET, help="override the preset's pairs.min_gap (none: 0)")
    p.add_argument("--min-chosen-reward", type=threshold, default=PRESET,
                   help="override the preset's pairs.min_chosen_reward (none: no threshold)")
    p.add_argument("--sft-min-reward", type=threshold, default=d.sft.min_reward,
                   help="keep a prompt's best response for SFT when its reward reaches this; none: keep every "
                        "prompt's best (default: %(default)s)")
    p.add_argument("--weights", default="nemotron-340b",
                   help="attribute weights: nemotron-340b, llama3-70b, or 9 (or 5) comma-separated numbers")
    p.add_argument("--system", default=d.system, help="system prompt for records without one (default: empty)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of prompts held out into val_*.jsonl, by a seeded hash (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the validation split (default: %(default)s)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default=d.on_bad_row,
                   help="stop at the first bad row (exit code 2), or skip it into rejects.jsonl (default: %(default)s)")
    p.add_argument("--allow-empty", action="store_true",
                   help="write empty output files when the filters remove every row (default: exit code 2)")
    add_filter_args(p, dedup_default=d.filters.dedup)
    return p


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    pairs = {k: v for k, v in (("mode", a.pairing or PRESET), ("min_gap", a.min_gap),
                               ("min_chosen_reward", a.min_chosen_reward)) if v is not PRESET}
    report = convert_sdg(a.input, a.output_dir, preset=a.preset, pairs=pairs, sft={"min_reward": a.sft_min_reward},
                         weights=a.weights, system=a.system, val_fraction=a.val_fraction, seed=a.seed,
                         on_bad_row=a.on_bad_row, allow_empty=a.allow_empty,
                         filters=filter_config_from_args(a))
    print_summary(report, a.output_dir)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
