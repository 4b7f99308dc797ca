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

`annotate.reward_model` is a checkpoint directory, or an endpoint (`http(s)://host:port/v1`:
stage=rm_serve, NVIDIA's API for nvidia/nemotron-4-340b-reward, a NIM) asked over the
OpenAI-compatible reward API (eval/reward_client.py) with `annotate.endpoint.*` (model name, key,
max_concurrency, retries, rate limit; replies cached in `request_cache/reward.jsonl` next to the
output). A served checkpoint scores equal to the same checkpoint in-process.

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


def with_scores(row: dict, scores: list[tuple[dict, float]]) -> dict:
    """A copy of `row` whose responses carry `attributes` and `reward` (6 decimals); `scores` holds
    (attributes by name, reward) per response."""
    def scored(obj: dict, a: dict, r: float) -> dict:
        return {**obj, "attributes": {n: round(v, 6) for n, v in a.items()}, "reward": round(r, 6)}

    if "responses" in row:
        return {**row, "responses": [scored(resp, a, r) for resp, (a, r) in zip(row["responses"], scores)]}
    return scored(row, *scores[0])


def is_endpoint(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(("http://", "https://"))


class LocalScorer:
    """A stage=rm checkpoint in this process: (attributes it was trained on, Σ w·outputs) per response."""

    def __init__(self, ckpt, device, precision: str = "auto", batch_size: int = 8, weights=None):
        self.rm, self.tok, self.meta = load_reward_model(ckpt, device)
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.weights = list(weights if weights is not None else self.meta["attribute_weights"])
        if len(self.weights) != self.meta["num_attributes"]:
            raise ValueError(f"{len(self.weights)} attribute weights for a reward model with "
                             f"{self.meta['num_attributes']} outputs")
        names = self.meta["attribute_names"]
        self.keep = [(i, n) for i, n in enumerate(names) if n in self.meta["trained_attributes"]]

    def __call__(self, items: list[tuple[list, str]]) -> list[tuple[dict, float] | None]:
        texts = [rm_text(turns, response, self.meta["system_prompt"]) for turns, response in items]
        attrs = score_texts(self.rm, self.tok, texts, self.batch_size, self.meta["max_seq_length"], self.device,
                            self.precision)
        rs = rewards(attrs, self.weights).tolist()
        return [({n: a[i] for i, n in self.keep}, r) for a, r in zip(attrs.tolist(), rs)]


class EndpointScorer:
    """A reward model behind the OpenAI-compatible reward API: the attributes it returns, Σ w·attributes
    with the 9-slot `weights` (a non-zero weight on an attribute the server did not return is an error)."""

    def __init__(self, url: str, endpoint, weights, cache_file=None, progress: bool = True):
        from dataclasses import asdict

        from eval.request_pool import Limits
        from eval.reward_client import RewardClient

        limits = asdict(Limits.from_config(endpoint))
        self.client = RewardClient(url, endpoint.model, endpoint.api_key_env,
                                   cache=cache_file if endpoint.cache else None, progress=progress, **limits)
        self.weights = dict(zip(ALL_STEERLM_ATTRIBUTES, weights))

    def __call__(self, items: list[tuple[list, str]]) -> list[tuple[dict, float] | None]:
        from eval.reward_client import reward_messages

        out = []
        for scores in self.client.score([reward_messages(turns, response) for turns, response in items]):
            if scores is None:
                out.append(None)
                continue
            missing = [n for n, w in self.weights.items() if w and n not in scores]
            if missing:
                raise ValueError(f"{self.client.url} returned no {missing[0]!r} (returned: {', '.join(scores)}), "
                                 f"which has weight {self.weights[missing[0]]:g}; set model.regression.attribute_weights")
            known = {n: v for n, v in scores.items() if n in self.weights}
            out.append((known, sum(self.weights[n] * v for n, v in known.items())))
        return out


def make_scorer(spec, batch_size: int, weights, device, precision: str, endpoint=None, cache_dir: Path | None = None,
                progress: bool = True):
    """The reward model named by `spec`: a checkpoint directory (LocalScorer) or an endpoint URL
    (EndpointScorer; weights default to Nemotron-4-340B-Reward's)."""
    if is_endpoint(spec):
        if endpoint is None:
            from omegaconf import OmegaConf

            from recipes.config import RewardEndpointConfig

            endpoint = OmegaConf.structured(RewardEndpointConfig)
        w = list(weights if weights is not None else RegressionConfig().attribute_weights)
        cache = Path(cache_dir) / "reward.jsonl" if cache_dir else None
        return EndpointScorer(spec, endpoint, w, cache, progress)
    return LocalScorer(spec, torch.device(device or "cpu"), precision, batch_size, weights)


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
                  progress: bool = True, endpoint=None) -> dict:
    """Score every response of `input_file` with the reward model `reward_model_dir` (a checkpoint
    directory, or an endpoint URL asked with the RewardEndpointConfig `endpoint`); write `output_file`.

    weights: one per RM output (default: the checkpoint's rm_config.json attribute_weights; for an
    endpoint, Nemotron-4-340B-Reward's). Returns counts: {"rows", "skipped" (already scored by an earlier
    run), "scored", "responses", "rejected", "output"}. Raises RowError (file:line: field: problem) on a
    bad input row, GenerationError when an endpoint request failed after its retries (the rows before it
    are kept; a rerun asks only what is missing, the rest comes from the cache).
    """
    from eval.request_pool import GenerationError

    input_file, output_file = Path(input_file), Path(output_file)
    partial = output_file.with_name(output_file.name + ".partial")
    scorer = make_scorer(reward_model_dir, batch_size, weights, device, precision, endpoint,
                         output_file.parent / "request_cache", progress)

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
            items = [(prompt_turns(r), t) for r in pending for t in response_texts(r)]
            scores = scorer(items)
            k, failed, lines = 0, None, []
            for row in pending:
                n = len(response_texts(row))
                mine = scores[k:k + n]
                if any(x is None for x in mine):  # rows are written in input order: stop at the first gap
                    failed = next((e for e in scorer.client.pool.last_errors[k:k + n] if e), "no reply")
                    break
                lines.append(json.dumps(with_scores(row, mine), ensure_ascii=False) + "\n")
                stats["out_of_range"] += sum(not lo <= v <= hi for a, _ in mine for v in a.values())
                stats["scored"] += 1
                stats["responses"] += n
                k += n
            append_synced(out, "".join(lines), partial)  # a crash loses at most this batch (_done_rows)
            pending.clear()
            if failed:
                raise GenerationError(f"annotate: a request failed after its retries ({failed}); {stats['scored']} "
                                      f"rows of this run are in {partial}: rerun to go on (replies already got are "
                                      "cached)")

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
                         "(a checkpoint directory written by stage=rm, or an endpoint http://host:port/v1)")
    if not is_endpoint(a.reward_model) and not Path(a.reward_model).is_dir():
        raise ValueError(f"annotate.reward_model: no reward-model checkpoint at {a.reward_model} (a directory "
                         "written by stage=rm, e.g. <run dir>/checkpoints/final, or an endpoint http://host:port/v1)")
    output = Path(a.output_file) if a.output_file else run_dir / "annotated.jsonl"
    annotate_file(a.input_file, output, a.reward_model, a.batch_size, weights=given_weights(cfg),
                  device=None if is_endpoint(a.reward_model) else loop.pick_device(cfg.trainer),
                  precision=cfg.trainer.precision, on_bad_row=cfg.data.on_bad_row, progress=cfg.logger.progress_bar,
                  endpoint=a.endpoint)
    return output


def given_weights(cfg):
    """model.regression.attribute_weights when set to something other than its default, else None (the
    checkpoint's own weights; for an endpoint, Nemotron-4-340B-Reward's, which are that default)."""
    given = list(cfg.model.regression.attribute_weights)
    return None if given == RegressionConfig().attribute_weights else given
