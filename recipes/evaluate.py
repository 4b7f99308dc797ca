"""Evaluation hooks on a checkpoint or an endpoint: IFEval, MT-Bench, RewardBench, AlpacaEval 2.0, Arena-Hard,
MMLU, GSM8K, HumanEval and MBPP (eval/*.py, one module each; MMLU, GSM8K and MBPP run through lm-eval), and two
that judge a policy with the pipeline's own data: policy_reward (its reward model scores replies to held-out
prompts) and preference_accuracy (held-out preference pairs).

`python launch.py stage=eval eval=[ifeval,mt_bench] eval.model=<checkpoint>` runs them
standalone; `eval=[...]` on a training stage runs them on its final checkpoint. Results
land in `<run dir>/eval/`: one folder per benchmark plus `results.json` and `results.md`.
Judge-based benchmarks are skipped (with the reason in the results) when no judge endpoint is set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from data_prep.jsonl import atomic_write_text

log = logging.getLogger(__name__)


BENCHMARKS = ("ifeval", "mt_bench", "reward_bench", "alpaca_eval", "arena_hard", "mmlu", "gsm8k", "humaneval", "mbpp",
              "policy_reward", "preference_accuracy")


def enabled(cfg) -> list[str]:
    return [name for name in BENCHMARKS if cfg.eval[name].enabled]


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
        # seed: sampled generations (sdg_generate) follow the run's seed; greedy ones do not depend on it
        return hf_client(model_dir, cfg.data.prompt_template, g.batch_size, cfg.logger.progress_bar, seed=cfg.seed)
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


class _Run:
    """What the hooks of one run share, built when a hook first needs it: the generation client, lm-eval's
    model, and for a checkpoint its model and tokenizer (loaded once for both)."""

    def __init__(self, cfg, model_dir: Path | str | None, out_dir: Path):
        self.cfg, self.model_dir, self.cache_dir = cfg, model_dir, out_dir / "request_cache"
        self.model_id = Path(model_dir).parent.parent.name if model_dir else (cfg.eval.generator.model or "endpoint")
        self._generator = self._lm = None

    def generator(self):
        if self._generator is None:
            self._generator = make_generator(self.cfg, self.model_dir, self.cache_dir)
        return self._generator

    def template(self) -> str:
        """How prompts reach the model: the checkpoint's template (models.resolve_template), or the endpoint's
        own chat API."""
        if self.cfg.eval.generator.kind != "hf":
            return "chat-api"
        return self.generator().template

    def lm(self):
        from eval.lm_harness import make_lm

        if self._lm is None:
            hf = self.generator() if self.cfg.eval.generator.kind == "hf" else None
            self._lm = make_lm(self.cfg.eval.generator, self.model_dir, self.template(),
                               model=hf.model if hf else None, tokenizer=hf.tokenizer if hf else None)
        return self._lm


def _resume(cfg) -> bool:
    """Reuse answers already in the output dir only for served models: an in-process checkpoint may have
    been retrained into the same run directory since."""
    return cfg.eval.generator.kind != "hf"


def _judge(run: _Run, j, name: str):
    from eval.clients import OpenAIChatClient

    return OpenAIChatClient(j.base_url, j.model, api_key_env=j.api_key_env,
                            **served_kwargs(j, run.cache_dir / f"{name}.jsonl", run.cfg.logger.progress_bar))


def _no_judge(name: str, key: str) -> dict:
    log.warning("%s skipped: set %s (an OpenAI-compatible judge endpoint)", name, key)
    return {"skipped": f"no judge endpoint ({key})"}


def _ifeval(run: _Run, out: Path) -> dict:
    from eval.clients import SamplingParams
    from eval.ifeval import load_prompts, run_ifeval

    c = run.cfg.eval.ifeval
    prompts = load_prompts(c.prompts, key="eval.ifeval.prompts")
    if c.limit:
        prompts = prompts[: c.limit]
    params = SamplingParams(max_new_tokens=c.max_new_tokens, temperature=0.0)
    return run_ifeval(run.generator().generate, prompts, params, out, resume=_resume(run.cfg))


def _mt_bench(run: _Run, out: Path) -> dict:
    from eval.mt_bench import load_data, run_mt_bench

    c = run.cfg.eval.mt_bench
    if not c.judge.base_url:
        return _no_judge("MT-Bench", "eval.mt_bench.judge.base_url")
    data = load_data(c.data)
    if c.limit:
        data.questions = data.questions[: c.limit]
    return run_mt_bench(run.generator().generate, _judge(run, c.judge, "judge"), out, run.model_id,
                        data=data, max_new_tokens=c.max_new_tokens, resume=_resume(run.cfg))


def _reward_bench(run: _Run, out: Path) -> dict:
    from eval.reward_bench import run_reward_bench

    rb = run.cfg.eval.reward_bench
    return run_reward_bench(str(run.model_dir), rb.data, str(out), list(rb.attribute_weights), rb.batch_size, rb.limit)


def _alpaca_eval(run: _Run, out: Path) -> dict:
    from eval.alpaca_eval import load_annotator, load_eval_set, run_alpaca_eval

    c = run.cfg.eval.alpaca_eval
    if not c.judge.base_url:
        return _no_judge("AlpacaEval", "eval.alpaca_eval.judge.base_url")
    eval_set = load_eval_set(c.eval_set)[: c.limit or None]
    return run_alpaca_eval(run.generator().generate, _judge(run, c.judge, "judge_alpaca_eval"), out, run.model_id,
                           eval_set, c.max_new_tokens, load_annotator(c.annotator_config), c.df_gamed,
                           c.judge.max_failed_fraction)


def _arena_hard(run: _Run, out: Path) -> dict:
    from eval.arena_hard import run_arena_hard

    c = run.cfg.eval.arena_hard
    if not c.judge.base_url:
        return _no_judge("Arena-Hard", "eval.arena_hard.judge.base_url")
    if not c.data:
        raise ValueError("eval.arena_hard.data: give a folder in arena-hard-auto's layout (question.jsonl, "
                         "model_answer/gpt-4-0314.jsonl, judge_config.yaml)")
    return run_arena_hard(run.generator().generate, _judge(run, c.judge, "judge_arena_hard"), out, run.model_id,
                          c.data, c.judge_config, c.limit, c.max_new_tokens, c.judge.max_failed_fraction, c.bootstrap_rounds)


def _humaneval(run: _Run, out: Path) -> dict:
    from eval.humaneval import require_opt_in, run_humaneval

    c = run.cfg.eval.humaneval
    require_opt_in(c.allow_code_execution, "eval.humaneval.allow_code_execution=true")
    return run_humaneval(run.generator(), out, c.allow_code_execution, c.mode, c.limit, c.max_new_tokens, c.timeout_s,
                         c.problems)


def _lm_eval(name: str):
    """The hook of one lm-eval benchmark (mmlu, gsm8k, mbpp): its task through lm-eval's model of this run."""

    def hook(run: _Run, out: Path) -> dict:
        from eval.humaneval import require_opt_in
        from eval.lm_harness import BENCHMARKS as LM_EVAL_BENCHMARKS
        from eval.lm_harness import run_lm_eval

        c = run.cfg.eval[name]
        if name == "mbpp":
            require_opt_in(c.allow_code_execution, "eval.mbpp.allow_code_execution=true")
        template = run.template()
        return run_lm_eval(LM_EVAL_BENCHMARKS[name], c, run.lm(), out, chat=c.apply_chat_template,
                           nemotron=template == "nemotron", allow_unsafe=name == "mbpp" and c.allow_code_execution)

    return hook


def _policy_reward(run: _Run, out: Path) -> dict:
    from eval.policy_reward import run_policy_reward
    from recipes.loop import pick_device

    c = run.cfg.eval.policy_reward
    if not c.prompts or not c.reward_model:
        raise ValueError("policy_reward needs eval.policy_reward.prompts (held-out prompts) and "
                         "eval.policy_reward.reward_model (a stage=rm checkpoint)")
    return run_policy_reward(run.generator().generate, c.prompts, c.reward_model, out, c.max_new_tokens, c.previous,
                             c.limit, c.batch_size, pick_device(run.cfg.trainer))


def _preference_accuracy(run: _Run, out: Path) -> dict:
    from eval.preference_accuracy import run_preference_accuracy

    c = run.cfg.eval.preference_accuracy
    if run.cfg.eval.generator.kind != "hf":
        return {"skipped": "needs log-probabilities: a checkpoint (eval.generator.kind=hf)"}
    if not c.data:
        raise ValueError("preference_accuracy needs eval.preference_accuracy.data (a DPO JSONL of held-out pairs)")
    hf = run.generator()
    return run_preference_accuracy(hf.model, hf.tokenizer, hf.template, c.data, run.cfg.data, run.cfg.model.data, out,
                                   c.batch_size, c.limit, hf.device, run.cfg.trainer.precision,
                                   run.cfg.model.logprob_chunk_tokens)


HOOKS = {"ifeval": _ifeval, "mt_bench": _mt_bench, "reward_bench": _reward_bench, "alpaca_eval": _alpaca_eval,
         "arena_hard": _arena_hard, "mmlu": _lm_eval("mmlu"), "gsm8k": _lm_eval("gsm8k"), "humaneval": _humaneval,
         "mbpp": _lm_eval("mbpp"), "policy_reward": _policy_reward, "preference_accuracy": _preference_accuracy}


def run_hooks(cfg, model_dir: Path | None, out_dir: Path) -> dict:
    """Run every enabled benchmark on `model_dir` (or the configured endpoint); save and return results."""
    run = _Run(cfg, model_dir, out_dir)
    results: dict = {}
    for name in enabled(cfg):
        results[name] = HOOKS[name](run, out_dir / name)
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

