"""Evaluation hooks: IFEval, MT-Bench and RewardBench on a checkpoint or an endpoint.

`python launch.py stage=eval eval=[ifeval,mt_bench] eval.model=<checkpoint>` runs them
standalone; `eval=[...]` on a training stage runs them on its final checkpoint. Results
land in `<run dir>/eval/`: one folder per benchmark plus `results.json` and `results.md`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from data_prep.jsonl import atomic_write_text

log = logging.getLogger(__name__)


def enabled(cfg) -> list[str]:
    return [name for name in ("ifeval", "mt_bench", "reward_bench") if cfg.eval[name].enabled]


def hf_client(model_dir, template: str, batch_size: int, progress: bool, key: str = "eval.model", **kwargs):
    """HFClient on a checkpoint (an adapter-only one of ours too: recipe.json's base_model + adapter). With
    template `auto`, the template it was trained with (recipe.json), else its tokenizer's chat template;
    another value wins with a warning when it differs from the checkpoint's (models.resolve_template)."""
    from eval.hf_client import HFClient
    from recipes.models import load_causal_lm, load_hf_tokenizer, read_recipe, resolve_template

    tokenizer = load_hf_tokenizer(str(model_dir), key)
    template = resolve_template(template, read_recipe(model_dir), tokenizer, model_dir)
    model = load_causal_lm(str(model_dir), key=key)
    return HFClient(model, tokenizer=tokenizer, template=template, batch_size=batch_size, progress=progress, **kwargs)


def served_kwargs(node, cache_file: Path | None, progress: bool) -> dict:
    """Constructor arguments of an HTTP client from a GeneratorConfig/JudgeConfig node: its limits, and
    its reply cache at `cache_file` unless `cache=false` (or no file is given)."""
    from dataclasses import asdict

    from eval.request_pool import Limits

    return {**asdict(Limits.from_config(node)), "cache": cache_file if node.cache else None, "progress": progress}


def eval_model_dir(cfg) -> str | None:
    """What the benchmarks run on with eval.generator.kind=hf: eval.model, else the configured model (model.*)."""
    from recipes.models import model_dir, resolve_name

    if cfg.eval.model:
        return resolve_name(cfg.eval.model, "eval.model")
    if cfg.eval.generator.kind != "hf":
        return None
    found = model_dir(cfg.model)
    if found is None:
        raise ValueError("stage=eval needs a model: eval.model=<checkpoint directory or hub id> (model=tiny has none)")
    return found


def make_generator(cfg, model_dir: Path | str | None, cache_dir: Path | None = None):
    """The client that answers benchmark prompts: in-process HF model, OpenAI-compatible, or NeMo.
    Served clients cache their replies in `cache_dir/generator.jsonl` (when given and `cache` is on)."""
    g = cfg.eval.generator
    if g.kind == "hf":
        if model_dir is None:
            raise ValueError("eval.model must name a checkpoint directory when eval.generator.kind=hf")
        return hf_client(model_dir, cfg.data.prompt_template, g.batch_size, cfg.logger.progress_bar)
    if not g.base_url:
        raise ValueError(f"eval.generator.kind={g.kind} needs eval.generator.base_url")
    from eval.clients import NemoServerClient, OpenAIChatClient

    kwargs = served_kwargs(g, cache_dir / "generator.jsonl" if cache_dir else None, cfg.logger.progress_bar)
    if g.kind == "openai":
        if not g.model:
            raise ValueError("eval.generator.kind=openai needs eval.generator.model (the served model name)")
        return OpenAIChatClient(g.base_url, g.model, api_key_env=g.api_key_env, **kwargs)
    if g.kind == "nemo":
        return NemoServerClient(g.base_url, batch_size=g.batch_size, **kwargs)
    raise ValueError(f"eval.generator.kind must be hf, openai or nemo, got {g.kind!r}")


def _resume(cfg) -> bool:
    """Reuse answers already in the output dir only for served models: an in-process checkpoint may have
    been retrained into the same run directory since."""
    return cfg.eval.generator.kind != "hf"


def _ifeval(cfg, generator, out: Path) -> dict:
    from eval.clients import SamplingParams
    from eval.ifeval import load_prompts, run_ifeval

    prompts = load_prompts(cfg.eval.ifeval.prompts, key="eval.ifeval.prompts")
    if cfg.eval.ifeval.limit:
        prompts = prompts[: cfg.eval.ifeval.limit]
    params = SamplingParams(max_new_tokens=cfg.eval.ifeval.max_new_tokens, temperature=0.0)
    return run_ifeval(generator.generate, prompts, params, out, resume=_resume(cfg))


def _mt_bench(cfg, generator, out: Path, model_id: str, cache_dir: Path) -> dict:
    from eval.clients import OpenAIChatClient
    from eval.mt_bench import load_data, run_mt_bench

    j = cfg.eval.mt_bench.judge
    if not j.base_url:
        log.warning("MT-Bench skipped: set eval.mt_bench.judge.base_url (an OpenAI-compatible judge endpoint)")
        return {"skipped": "no judge endpoint (eval.mt_bench.judge.base_url)"}
    judge = OpenAIChatClient(j.base_url, j.model, api_key_env=j.api_key_env,
                             **served_kwargs(j, cache_dir / "judge.jsonl", cfg.logger.progress_bar))
    data = load_data(cfg.eval.mt_bench.data)
    if cfg.eval.mt_bench.limit:
        data.questions = data.questions[: cfg.eval.mt_bench.limit]
    return run_mt_bench(generator.generate, judge, out, model_id, data=data,
                        max_new_tokens=cfg.eval.mt_bench.max_new_tokens, resume=_resume(cfg))


def _reward_bench(cfg, model_dir: Path, out: Path) -> dict:
    from eval.reward_bench import run_reward_bench

    rb = cfg.eval.reward_bench
    return run_reward_bench(str(model_dir), rb.data, str(out), list(rb.attribute_weights), rb.batch_size, rb.limit)


def run_hooks(cfg, model_dir: Path | None, out_dir: Path) -> dict:
    """Run every enabled benchmark on `model_dir` (or the configured endpoint); save and return results."""
    names = enabled(cfg)
    results: dict = {}
    generator = None
    model_id = Path(model_dir).parent.parent.name if model_dir else (cfg.eval.generator.model or "endpoint")
    for name in names:
        out = out_dir / name
        if name == "reward_bench":
            results[name] = _reward_bench(cfg, model_dir, out)
            continue
        cache_dir = out_dir / "request_cache"
        generator = generator or make_generator(cfg, model_dir, cache_dir)
        results[name] = (_ifeval(cfg, generator, out) if name == "ifeval"
                         else _mt_bench(cfg, generator, out, model_id, cache_dir))
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    return results


def results_markdown(results: dict) -> str:
    lines = ["| benchmark | metric | value |", "|---|---|---|"]
    for bench, res in results.items():
        for key, value in res.items():
            if isinstance(value, int) and not isinstance(value, bool):  # counts
                lines.append(f"| {bench} | {key} | {value} |")
            elif isinstance(value, (int, float)):
                lines.append(f"| {bench} | {key} | {value:.4f} |")
            elif isinstance(value, str):
                lines.append(f"| {bench} | {key} | {value} |")
    return "\n".join(lines) + "\n"


def run(cfg, run_dir: Path) -> Path:
    """stage=eval: benchmarks on `eval.model` (a checkpoint) or the configured endpoint."""
    if not enabled(cfg):
        raise ValueError("stage=eval needs at least one benchmark, e.g. eval=[ifeval,mt_bench]")
    model_dir = eval_model_dir(cfg)
    out = run_dir / "eval"
    run_hooks(cfg, model_dir, out)  # launch.py prints results.md at the end, as after a training stage
    return out
