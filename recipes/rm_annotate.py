"""Score synthetic data with a trained reward model: `python launch.py stage=rm_annotate annotate.*=...`.

Input rows (docs/sdg_format.md, `data_prep.schemas.validate_sdg_row`): SDG records,
`prompt` (a string) or `conversations` (turns ending with User) + `responses: [{text, ...}]`,
or flat rows with one `response`. Each response gets

    "attributes": {helpfulness: 3.1, correctness: ..., ...}   # the attributes the RM was trained on
    "reward": Σ_i w_i · output_i                               # over all outputs, weights below

rendered for scoring exactly as the RM was trained (`reward_model.rm_text`: the
SteerLM system prompt, the turns, the response, then `<extra_id_2>`; like
NeMo-Aligner's attribute_annotate.py, a row's own `system` is not used). The weights
are the checkpoint's `rm_config.json` ones unless given. data_prep.sdg then turns the
scored file into SFT rows and DPO/RPO pairs: generate -> annotate -> data_prep -> train.

Resumable on big files: rows are appended (and flushed) to `<output>.partial` in input
order as they are scored; a rerun checks that file against the input, skips the rows
already there and goes on. When every row is scored the file is renamed to `<output>`,
so `<output>` only ever exists complete. Rerunning on a complete output scores nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from data_prep.jsonl import Rejects, RowError, append_synced, read_jsonl
from data_prep.schemas import ALL_STEERLM_ATTRIBUTES, SDG_ATTRIBUTE_RANGE, validate_sdg_row
from recipes import loop
from recipes.config import RegressionConfig
from recipes.reward_model import load_reward_model, rewards, rm_text, score_texts

log = logging.getLogger(__name__)
SCORE_KEYS = ("attributes", "reward")


def _input_problems(row: dict) -> list[tuple[str, str]]:
    """The SDG schema, minus the scores this stage is about to (re)write."""
    probe = dict(row)
    if isinstance(row.get("responses"), list):
        probe["responses"] = [{**{k: v for k, v in r.items() if k not in SCORE_KEYS}, "reward": 0.0}
                              if isinstance(r, dict) else r for r in row["responses"]]
    elif "response" in row:
        probe = {k: v for k, v in row.items() if k not in (*SCORE_KEYS, *ALL_STEERLM_ATTRIBUTES)}
        probe["reward"] = 0.0
    return validate_sdg_row(probe)


def prompt_turns(row: dict) -> list[tuple[str, str]]:
    if "prompt" in row:
        return [("User", row["prompt"])]
    return [(t["from"], t["value"]) for t in row["conversations"]]


def response_texts(row: dict) -> list[str]:
    return [r["text"] for r in row["responses"]] if "responses" in row else [row["response"]]


def fingerprint(row: dict) -> str:
    """Identifies a row by its prompt and responses, to check that a partial output belongs to the input."""
    key = json.dumps([prompt_turns(row), response_texts(row)], ensure_ascii=False)
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def with_scores(row: dict, attrs: list[list[float]], rewards_: list[float], names: list[str], keep: list[int]) -> dict:
    """A copy of `row` whose responses carry `attributes` and `reward` (6 decimals)."""
    def scored(obj: dict, a: list[float], r: float) -> dict:
        return {**obj, "attributes": {names[i]: round(a[i], 6) for i in keep}, "reward": round(r, 6)}

    if "responses" in row:
        return {**row, "responses": [scored(resp, a, r) for resp, a, r in zip(row["responses"], attrs, rewards_)]}
    return scored(row, attrs[0], rewards_[0])


def _done_rows(partial: Path) -> list[str]:
    """Fingerprints of the complete rows of a partial output; a torn last line (crash mid-write) is cut off."""
    if not partial.exists():
        return []
    data = partial.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(partial, "r+b") as f:
            f.truncate(cut)
    return [fingerprint(row) for _, row in read_jsonl(partial)]


def _count_lines(path: Path) -> int | None:
    """Lines of a plain JSONL (the progress bar's total); None for .gz."""
    if path.suffix == ".gz" or not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def annotate_file(input_file: str | Path, output_file: str | Path, reward_model_dir: str | Path, batch_size: int = 8,
                  weights=None, device=None, precision: str = "auto", on_bad_row: str = "error",
                  progress: bool = True) -> dict:
    """Score every response of `input_file` with the reward model in `reward_model_dir`; write `output_file`.

    weights: one per RM output (default: the checkpoint's rm_config.json attribute_weights).
    Returns counts: {"rows", "skipped" (already scored by an earlier run), "scored", "responses",
    "rejected", "output"}. Raises RowError (file:line: field: problem) on a bad input row.
    """
    input_file, output_file = Path(input_file), Path(output_file)
    partial = output_file.with_name(output_file.name + ".partial")
    device = torch.device(device or "cpu")
    rm, tokenizer, meta = load_reward_model(reward_model_dir, device)
    weights = list(weights if weights is not None else meta["attribute_weights"])
    if len(weights) != meta["num_attributes"]:
        raise ValueError(f"{len(weights)} attribute weights for a reward model with {meta['num_attributes']} outputs")
    names = meta["attribute_names"]
    keep = [i for i, n in enumerate(names) if n in meta["trained_attributes"]]

    # An earlier complete output is the progress file of this run: re-checked, then renamed back.
    if output_file.exists() and not partial.exists():
        os.replace(output_file, partial)
    done = _done_rows(partial)
    rejects = Rejects()
    stats = {"rows": 0, "skipped": 0, "scored": 0, "responses": 0, "out_of_range": 0}
    lo, hi = SDG_ATTRIBUTE_RANGE

    pending: list[dict] = []
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a", encoding="utf-8") as out:

        def flush() -> None:
            texts = [rm_text(prompt_turns(r), t, meta["system_prompt"]) for r in pending for t in response_texts(r)]
            attrs = score_texts(rm, tokenizer, texts, batch_size, meta["max_seq_length"], device, precision)
            rs = rewards(attrs, weights).tolist()
            attrs_l = attrs.tolist()
            k, lines = 0, []
            for row in pending:
                n = len(response_texts(row))
                scored = with_scores(row, attrs_l[k:k + n], rs[k:k + n], names, keep)
                lines.append(json.dumps(scored, ensure_ascii=False) + "\n")
                stats["out_of_range"] += sum(not lo <= a[i] <= hi for a in attrs_l[k:k + n] for i in keep)
                k += n
            append_synced(out, "".join(lines), partial)  # a crash loses at most this batch (_done_rows)
            stats["scored"] += len(pending)
            stats["responses"] += len(texts)
            pending.clear()

        rows = read_jsonl(input_file, _input_problems, on_bad_row=on_bad_row, rejects=rejects)
        bar = tqdm(rows, desc="annotate", unit="row", total=_count_lines(input_file), disable=not progress)
        for line, row in bar:
            i = stats["rows"]
            stats["rows"] += 1
            if i < len(done):
                if done[i] != fingerprint(row):
                    raise RowError(input_file, line, "<row>", f"differs from row {i + 1} of {partial}, left by an "
                                   "earlier run on other input; delete that file or choose another output_file")
                stats["skipped"] += 1
                continue
            pending.append(row)
            if sum(len(response_texts(r)) for r in pending) >= batch_size:
                flush()
        if pending:
            flush()
    if stats["rows"] == 0:
        partial.unlink(missing_ok=True)
        raise ValueError(f"{input_file}: no rows to score ({len(rejects)} bad rows skipped)")
    if stats["rows"] < len(done):
        raise ValueError(f"{partial} has {len(done)} rows but {input_file} only {stats['rows']}: "
                         "not an output of this input; delete it or choose another output_file")
    os.replace(partial, output_file)
    rejects.save(output_file.with_name(output_file.stem + ".rejects.jsonl"))
    if stats["out_of_range"]:
        log.warning("%d attribute values outside [%g, %g]; data_prep.sdg rejects those rows (is the reward model "
                    "trained on the 0-4 HelpSteer scale?)", stats["out_of_range"], lo, hi)
    log.info("annotated %s: %d rows scored, %d already done, %d responses", output_file, stats["scored"],
             stats["skipped"], stats["responses"])
    return {**stats, "rejected": len(rejects), "output": str(output_file)}


def run(cfg, run_dir: Path) -> Path:
    """stage=rm_annotate: annotate.input_file -> annotate.output_file (default <run dir>/annotated.jsonl)."""
    a = cfg.annotate
    if not a.input_file or not a.reward_model:
        raise ValueError("stage=rm_annotate needs annotate.input_file and annotate.reward_model "
                         "(a checkpoint directory written by stage=rm)")
    if not Path(a.reward_model).is_dir():
        raise ValueError(f"annotate.reward_model: no reward-model checkpoint at {a.reward_model} (a directory "
                         "written by stage=rm, e.g. <run dir>/checkpoints/final)")
    output = Path(a.output_file) if a.output_file else run_dir / "annotated.jsonl"
    # model.regression.attribute_weights overrides the checkpoint's weights only when set to something
    # other than its default.
    given = list(cfg.model.regression.attribute_weights)
    weights = None if given == RegressionConfig().attribute_weights else given
    annotate_file(a.input_file, output, a.reward_model, a.batch_size, weights=weights,
                  device=loop.pick_device(cfg.trainer), precision=cfg.trainer.precision,
                  on_bad_row=cfg.data.on_bad_row, progress=cfg.logger.progress_bar)
    return output
