"""stage=generate: answer prompts with a SteerLM model, steered by attribute values.

    python launch.py stage=generate model=hf model.name_or_path=<checkpoint> \\
        steer.helpfulness=4 steer.verbosity=1 steer.prompts='[Why is the sky blue?]'

Each prompt is rendered with the attribute line (recipes/steerlm.py) and continued until
`<extra_id_1>`. The values not given come from the checkpoint's steerlm.json (stage=steerlm_sft
writes it), else from the Nemotron-3-8B-SteerLM model card. The model answers in this process
(`eval.generator.kind=hf`, the default) or behind a server: `eval.generator.kind=nemo` (NeMo's
PUT /generate) or `openai` (an OpenAI-compatible `/completions` endpoint; chat completions cannot
carry the attribute line). Writes `{prompt, attributes, response}` rows to
`<run dir>/generations.jsonl` (or `steer.output_file`); a served generator caches its replies in
`request_cache/` beside it, and prompts whose request failed go to `failures.jsonl` in the run dir.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data_prep.jsonl import write_jsonl
from data_prep.schemas import STEERLM_SYSTEM_PROMPT
from recipes import steerlm

log = logging.getLogger(__name__)


def model_dir(cfg) -> Path | None:
    """The checkpoint to load in process (or to read steerlm.json from when answering through a server):
    model.name_or_path (refused in one line when it names nothing loadable), else the preset's model."""
    from recipes.models import model_dir as configured_model, resolve_source

    if not cfg.model.name_or_path and cfg.eval.generator.kind != "hf":
        return None  # a server answers; nothing to read steerlm.json from
    if resolve_source(cfg.model) == "tiny":
        raise ValueError("stage=generate needs a trained model: model.name_or_path=<checkpoint directory>")
    return Path(configured_model(cfg.model))


def run(cfg, run_dir: Path) -> Path:
    from eval.clients import SamplingParams, write_failures
    from recipes.evaluate import make_generator

    s = cfg.steer
    convs = steerlm.load_prompts(s)
    if not convs:
        raise ValueError("stage=generate needs prompts: steer.prompts='[...]' or steer.prompts_file=<.jsonl or .txt>")
    path = model_dir(cfg)
    if path is None and cfg.eval.generator.kind == "hf":
        raise ValueError("stage=generate needs model.name_or_path (a checkpoint directory or hub id), "
                         "or eval.generator.kind=openai|nemo with eval.generator.base_url")
    spec = steerlm.read_spec(path) if path is not None and path.is_dir() else None
    values = steerlm.resolve(s, spec)
    log.info("steering with %s", steerlm.attribute_line(values))
    out = Path(s.output_file) if s.output_file else run_dir / "generations.jsonl"
    client = make_generator(cfg, path, out.parent / "request_cache")
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
    rows = steerlm.generate(client, convs, values, params, s.system if s.system is not None else STEERLM_SYSTEM_PROMPT)
    failed = [r for r in rows if r["response"] is None]
    write_failures(run_dir / "failures.jsonl", failed)
    write_jsonl(out, [r for r in rows if r["response"] is not None])
    if failed:
        log.warning("%d of %d prompts got no response (%s)", len(failed), len(rows), run_dir / "failures.jsonl")
    log.info("wrote %d generations to %s", len(rows) - len(failed), out)
    return out
