"""Synthetic data generation: `python launch.py stage=sdg_generate sdg.prompts=... sdg.n_responses=...`.

Nemotron-4's preference data has several responses per prompt from one or more generator models,
later ranked by the reward model (report §3.2.3). This stage is the first half of that loop:

    prompts (JSONL or a hub dataset) -> dedup -> N sampled responses each -> SDG records
    -> stage=rm_annotate (attributes + reward) -> data_prep.sdg (SFT rows, DPO/RPO pairs)

Each output line is an SDG record (docs/sdg_format.md) without scores yet:

    {"id": ..., "prompt": "...", "responses": [{"text": "...", "model": "..."}, ...]}

(`conversations` instead of `prompt` for multi-turn prompts; `system` and `category` are kept.)
The generator is any client of eval/clients.py, picked by `sdg.generator.kind`: the in-process HF
model (`sdg.model`, default the configured model), an OpenAI-compatible endpoint, or a NeMo server.
The HTTP clients retry transient failures themselves, cache every reply in `request_cache/` next to
the output (`sdg.generator.cache`), and count what still fails: a prompt with a failed response gets
no record (its other responses stay cached), is listed in `sdg_failures.jsonl` and is asked again by
a rerun; more than `sdg.generator.max_failed_fraction` failed requests stop the run in one line.

Resumable: records are appended and flushed chunk by chunk (`sdg.chunk_size` prompts); a rerun
reads the output, skips the prompts already there and generates the rest. Prompts are
deduplicated on their normalised text (case and whitespace, as data_prep's dedup does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf
from tqdm import tqdm

from data_prep.jsonl import append_synced, atomic_write_text, cut_torn_tail, read_jsonl
from data_prep.pairs import PromptGroup
from data_prep.schemas import ROLES

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- prompts
def _prompt_problems(row: dict) -> list[tuple[str, str]]:
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return []
    convs = row.get("conversations")
    if isinstance(convs, list) and convs and all(isinstance(t, dict) and t.get("from") in ROLES
                                                   and isinstance(t.get("value"), str) for t in convs):
        if convs[-1]["from"] != "User":
            return [("conversations", "the last turn must be 'User' (the prompt to answer)")]
        return []
    return [("prompt", "give a non-empty 'prompt' string or 'conversations' ending with a User turn")]


def load_prompts(spec: str, split: str = "train", field: str = "prompt") -> list[dict]:
    """Prompt rows from a JSONL file, or from a Hugging Face dataset id (column `field`)."""
    if Path(spec).exists():
        return [row for _, row in read_jsonl(spec, _prompt_problems)]
    import datasets  # hub path only: never used by the tests (they run offline)

    ds = datasets.load_dataset(spec, split=split)
    if field not in ds.column_names:
        raise ValueError(f"sdg.prompt_field={field!r} is not a column of {spec} "
                         f"(columns: {', '.join(ds.column_names)})")
    return [{"id": f"{spec}:{i}", "prompt": row[field]} for i, row in enumerate(ds) if isinstance(row[field], str)]


def turns_of(row: dict) -> list[tuple[str, str]]:
    if "prompt" in row:
        return [("User", row["prompt"])]
    return [(t["from"], t["value"]) for t in row["conversations"]]


def prompt_key(row: dict) -> str:
    """Normalised system + turns: the same key as data_prep's duplicate-prompt filter."""
    return PromptGroup("", row.get("system", ""), turns_of(row)).key


def dedup(rows: list[dict]) -> tuple[list[dict], int]:
    seen, out = set(), []
    for row in rows:
        key = prompt_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, len(rows) - len(out)


def conversation(row: dict) -> list[dict]:
    """The OpenAI-style messages the clients take."""
    msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return msgs + [{"role": role.lower(), "content": value} for role, value in turns_of(row)]


# ---------------------------------------------------------------- the generator
def generator_model_dir(cfg, model: str | None, key: str = "sdg") -> str:
    """The checkpoint an in-process generator loads: `model` (a directory, hub id or GGUF; `<key>.model`), else the
    configured model (model.*); either refused in one line when it cannot load."""
    from recipes.models import model_dir as configured_model, resolve_name

    found = resolve_name(model, f"{key}.model") if model else configured_model(cfg.model)
    if not found:
        raise ValueError(f"stage={cfg.stage.name} with {key}.generator.kind=hf needs {key}.model (a checkpoint "
                         "directory)")
    return found


def make_client(cfg, cache_dir: Path | None = None, gen=None, model: str | None = None, key: str = "sdg"):
    """(client, model name for the records): recipes.evaluate.make_generator on `sdg.generator` (or the
    GeneratorConfig `gen` with checkpoint `model`, for the stages named by `key`: sdg_prompts, sdg_dialogue);
    a served generator caches its replies in `cache_dir`."""
    from recipes.evaluate import make_generator

    g = cfg.sdg.generator if gen is None else gen
    model = cfg.sdg.model if gen is None else model
    model_dir = None
    if g.kind == "hf":
        model_dir = generator_model_dir(cfg, model, key)
    gen_cfg = OmegaConf.merge(cfg, {"eval": {"generator": OmegaConf.to_container(g)}})
    client = make_generator(gen_cfg, model_dir, cache_dir)
    name = g.model if g.kind != "hf" else Path(model_dir).name
    return client, name or g.kind


# ---------------------------------------------------------------- resumable output
def done_keys(path: Path) -> set[str]:
    """Prompt keys already in a (possibly interrupted) output; a torn last line is cut off."""
    if not path.exists():
        return set()
    cut_torn_tail(path)
    return {prompt_key(row) for _, row in read_jsonl(path)}


def record(row: dict, texts: list[str], model: str) -> dict:
    # IFEval instructions and provenance (stage=sdg_prompts) travel with the prompt.
    out = {k: row[k] for k in ("id", "category", "system", "prompt", "conversations", "instruction_id_list",
                               "kwargs", "provenance") if k in row}
    out["responses"] = [{"text": t, "model": model} for t in texts]
    return out


def generate_file(rows: list[dict], output: Path, generate, params, n: int, model: str, chunk_size: int = 16,
                  progress: bool = True, failures_file: Path | None = None) -> dict:
    """Append one record per prompt of `rows` not yet in `output`; returns counts. A prompt with a failed
    response (None from the client) gets no record; it is counted and listed in `failures_file`."""
    from eval.clients import failure_reasons, write_failures

    if n < 1:
        raise ValueError(f"sdg.n_responses must be >= 1, got {n}")
    output.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(output)
    todo = [r for r in rows if prompt_key(r) not in done]
    stats = {"prompts": len(rows), "already_done": len(rows) - len(todo), "generated": 0, "responses": 0,
             "empty_responses": 0, "failed_prompts": 0}
    failures = []
    bar = tqdm(total=len(todo), desc="sdg", unit="prompt", disable=not progress)
    with open(output, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), max(chunk_size, 1)):
            chunk = todo[start:start + max(chunk_size, 1)]
            # n copies of every prompt in one call: the client batches them, sampling makes them differ.
            texts = generate([conversation(r) for r in chunk for _ in range(n)], params)
            if len(texts) != n * len(chunk):
                raise RuntimeError(f"generator returned {len(texts)} responses for {n * len(chunk)} requests")
            reasons = failure_reasons(generate, len(texts))
            lines = []
            for i, row in enumerate(chunk):
                mine = texts[i * n:(i + 1) * n]
                if any(t is None for t in mine):
                    why = next((r for r in reasons[i * n:(i + 1) * n] if r), "no response")
                    failures.append({**{k: row[k] for k in ("id", "prompt", "conversations") if k in row},
                                     "failed_responses": sum(t is None for t in mine), "error": why})
                    continue
                lines.append(json.dumps(record(row, mine, model), ensure_ascii=False) + "\n")
                stats["empty_responses"] += sum(not t.strip() for t in mine)
                stats["generated"] += 1
                stats["responses"] += n
            append_synced(f, "".join(lines), output)  # a crash loses at most this chunk (done_keys)
            bar.update(len(chunk))
    bar.close()
    stats["failed_prompts"] = len(failures)
    if failures_file is not None:
        write_failures(failures_file, failures)
    if failures:
        log.warning("sdg: %d prompts got no record (a response failed; %s); rerun to ask them again",
                    len(failures), failures_file)
    return stats


def run(cfg, run_dir: Path) -> Path:
    from eval.clients import SamplingParams

    s = cfg.sdg
    if not s.prompts:
        raise ValueError("stage=sdg_generate needs sdg.prompts (a JSONL of prompts, or a Hugging Face dataset id)")
    output = Path(s.output_file) if s.output_file else Path(run_dir) / "generations.jsonl"
    rows, dropped = dedup(load_prompts(s.prompts, s.split, s.prompt_field))  # a bad row: RowError (a ValueError)
    if s.limit:
        rows = rows[: s.limit]
    if not rows:
        raise ValueError(f"sdg.prompts={s.prompts}: no prompts")
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    client, model = make_client(cfg, output.parent / "request_cache")
    stats = generate_file(rows, output, client.generate, params, s.n_responses, model, s.chunk_size,
                          cfg.logger.progress_bar, Path(run_dir) / "sdg_failures.jsonl")
    stats["duplicates_dropped"] = dropped
    atomic_write_text(Path(run_dir) / "sdg_stats.json", json.dumps(stats, indent=1) + "\n")
    log.info("sdg: %d prompts (%d duplicates dropped, %d already done), %d responses -> %s", len(rows), dropped,
             stats["already_done"], stats["responses"], output)
    return output
