"""Data prep as Hydra stages: `stage=prep_helpsteer2` and `stage=prep_sdg`.

Thin wrappers over data_prep/helpsteer2.py and data_prep/sdg.py (the same code as
`python -m data_prep.helpsteer2|sdg`). `prep.*` keys left null take the converter's
own defaults, so each default still lives in one place. Outputs, report.json and
rejects.jsonl go to `prep.output_dir`, or the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def _overrides(cfg) -> dict:
    p = cfg.prep
    selection = ("sft_min_reward", "pair_mode", "min_gap", "min_chosen_reward")
    out = {k: v for k, v in OmegaConf.to_container(p, resolve=True).items()
           if k not in ("input", "output_dir", "decontaminate", "tokenizer", *selection) and v is not None}
    if p.sft_min_reward is not None:
        out["sft"] = {"min_reward": p.sft_min_reward}
    pairs = {k: v for k, v in (("mode", p.pair_mode), ("min_gap", p.min_gap),
                                ("min_chosen_reward", p.min_chosen_reward)) if v is not None}
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
