"""Data prep as Hydra stages: `stage=prep_helpsteer2` and `stage=prep_sdg`.

Thin wrappers over data_prep/helpsteer2.py and data_prep/sdg.py (the same code as
`python -m data_prep.helpsteer2|sdg`). `prep.*` keys left null take the converter's
own defaults, so each default still lives in one place; the SDG thresholds
(`prep.sft_min_reward`, `prep.min_gap`, `prep.min_chosen_reward`) tell apart `default`
(data_prep's value, the preset's for pairs), null (the filter off) and a number.
Outputs, report.json and rejects.jsonl go to `prep.output_dir`, or the run directory;
filters that remove every row stop the stage (prep.allow_empty=true writes empty files).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


DEFAULT = "default"  # a prep.* threshold left as it is: data_prep's value (sft: 4.9; pairs: the preset's)


def threshold(cfg, key: str):
    """prep.<key>: DEFAULT (not set), None (off) or a number; anything else is refused in one line."""
    value = cfg.prep[key]
    if value == DEFAULT or value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise ValueError(f"prep.{key}={value!r}: give a number, null (no threshold) or {DEFAULT} (data_prep's)")


def _overrides(cfg) -> dict:
    p = cfg.prep
    selection = ("sft_min_reward", "pair_mode", "min_gap", "min_chosen_reward")
    out = {k: v for k, v in OmegaConf.to_container(p, resolve=True).items()
           if k not in ("input", "output_dir", "decontaminate", "tokenizer", *selection) and v is not None}
    # The thresholds: `default` keeps data_prep's value, null turns the filter off, a number sets it.
    sft_min = threshold(cfg, "sft_min_reward")
    if sft_min != DEFAULT:
        out["sft"] = {"min_reward": sft_min}
    pairs = {k: v for k, v in (("min_gap", threshold(cfg, "min_gap")),
                                ("min_chosen_reward", threshold(cfg, "min_chosen_reward"))) if v != DEFAULT}
    if p.pair_mode is not None:
        pairs["mode"] = p.pair_mode
    if pairs:
        out["pairs"] = pairs  # applied on top of the preset's values
    out["on_bad_row"] = cfg.data.on_bad_row
    filters = {"max_seq_length": cfg.data.max_seq_length, "decontaminate": list(p.decontaminate)}
    if p.tokenizer:
        filters["tokenizer"] = p.tokenizer
    out["filters"] = filters
    return out


def run(cfg, run_dir: Path) -> Path:
    from data_prep.helpsteer2 import HUB_ID, convert_helpsteer2
    from data_prep.sdg import convert_sdg

    out = Path(cfg.prep.output_dir or run_dir)
    kwargs = _overrides(cfg)
    if cfg.stage.name == "prep_helpsteer2":
        for key in ("preset", "sft", "pairs"):
            kwargs.pop(key, None)
        report = convert_helpsteer2(cfg.prep.input or HUB_ID, out, **kwargs)
    else:
        if not cfg.prep.input:
            raise ValueError("stage=prep_sdg needs prep.input (an SDG JSONL file; see docs/sdg_format.md)")
        for key in ("only_helpfulness", "epochs", "preference", "rm_pairs"):
            kwargs.pop(key, None)
        report = convert_sdg(cfg.prep.input, out, **kwargs)
    counts = {name: o.get("rows_out", o) if isinstance(o, dict) else o for name, o in report.get("outputs", {}).items()}
    log.info("wrote %s: %s", out, json.dumps(counts))
    return out
