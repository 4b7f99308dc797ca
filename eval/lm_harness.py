"""MMLU, GSM8K and MBPP through lm-evaluation-harness: its task configs (prompts, stop strings, answer filters,
metrics), its models (`HFLM` on our checkpoints, `local-chat-completions` for served ones) and its evaluator.

What this module adds around `lm_eval.simple_evaluate`:

- the task's YAML is read from lm-eval's own folder for that benchmark (indexing only that folder: ~1 s instead
  of ~15 s for all of lm-eval's tasks; any other lm-eval task name works too, found in the full index) and a
  group (`mmlu`) expanded into its tasks;
- `data`: a local JSONL in the hub dataset's row layout replaces the hub (`dataset_path: json`), every split the
  task names reading that file; MMLU rows go to the task of their `subject`;
- our checkpoints trained with the Nemotron template get it as their chat template (`NEMOTRON_CHAT_TEMPLATE`,
  the same text as recipes/chat.py), and `<extra_id_1>` as a stop string;
- MBPP: lm-eval's scoring calls `evaluate.load("code_eval")`, a hub download, when its task module is imported;
  the task is read without importing it, its `pass_at_1` replaced by one that runs
  `completion + "\\n" + tests` (code_eval's program) in eval/code_exec.py and its code-block filter by the same
  extraction written here;
- the headline metric, micro-averaged over a group's tasks (lm-eval's `weight_by_size`), per-sample logs and a
  summary in the benchmark's output folder.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from data_prep.jsonl import atomic_write_text, read_jsonl, write_jsonl

# The Nemotron-4 model-card format for HF's apply_chat_template, rendering exactly as recipes.chat.nemotron_prompt.
NEMOTRON_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
    "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{- '<extra_id_0>System\\n' + system + '\\n' -}}"
    "{%- for m in turns -%}"
    "{{- '<extra_id_1>' + ('User' if m['role'] == 'user' else 'Assistant') + '\\n' + m['content'] + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<extra_id_1>Assistant\\n' -}}{%- endif -%}")
NEMOTRON_STOP = "<extra_id_1>"
LOGLIKELIHOOD = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")


@dataclass
class Benchmark:
    """What differs between the lm-eval benchmarks."""

    name: str  # hook name, e.g. mmlu
    folders: tuple[str, ...]  # lm-eval task folders (under lm_eval/tasks) to look the task up in, first hit wins
    subset_field: str | None = None  # local rows: the field naming the task's dataset_name (MMLU: subject)
    functions: Callable[[dict], dict] = field(default=lambda settings: {})  # !function name -> ours


def _tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@functools.lru_cache(maxsize=None)
def _index(folder: str | None):
    from lm_eval.tasks import TaskManager

    if folder is None:
        return TaskManager()  # all of lm-eval's tasks (~15 s)
    return TaskManager(include_defaults=False, include_path=str(_tasks_dir() / folder))


def task_manager(bench: "Benchmark", task: str):
    """An lm-eval TaskManager that knows `task`, indexing as little as possible."""
    for folder in (*bench.folders, None):
        tm = _index(folder)
        if task in tm.task_index:
            return tm
    raise KeyError(f"lm-eval {_lm_eval_version()} has no task {task!r}")


def _lm_eval_version() -> str:
    import lm_eval

    return lm_eval.__version__


def leaf_tasks(tm, name: str) -> list[str]:
    """A task name, or a group's / tag's tasks in lm-eval's order."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = tm.task_index.get(name)
    if entry is None:
        raise KeyError(f"lm-eval has no task {name!r} under {tm.include_path}")
    if entry.kind == Kind.TAG:
        return sorted(n for n, e in tm.task_index.items() if name in e.tags)
    if entry.kind != Kind.GROUP:
        return [name]
    return _member_leaves(tm, entry.cfg or load_yaml(entry.yaml_path, resolve_func=False))


def _member_leaves(tm, group: dict) -> list[str]:
    """The tasks of a group config, whose members are names or inline groups ({group, task: [...]})."""
    members = group["task"] if isinstance(group["task"], list) else [group["task"]]
    return [leaf for m in members
            for leaf in (leaf_tasks(tm, m) if isinstance(m, str) else _member_leaves(tm, m) if "group" in m
                         else leaf_tasks(tm, m["task"]))]


def _resolve_functions(value, ours: dict):
    """Walk a config read with resolve_func=False: `!function` references (a path under lm_eval/tasks ending in
    `.name`) become our replacement for `name`, else lm-eval's own function."""
    from lm_eval.tasks._yaml_loader import _import_fun_from_str

    if isinstance(value, dict):
        return {k: _resolve_functions(v, ours) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_functions(v, ours) for v in value]
    if isinstance(value, str) and value.startswith(str(_tasks_dir())):
        module, _, name = value.rpartition(".")
        if Path(module + ".py").is_file():
            return ours[name] if name in ours else _import_fun_from_str(value)
    return value


def task_configs(bench: Benchmark, settings, out_dir: Path, nemotron: bool) -> list[dict]:
    """The inline lm-eval config of every task to run, with our data, stop string and generation budget."""
    from lm_eval.tasks._yaml_loader import load_yaml

    tm = task_manager(bench, settings.task)
    rows = [r for _, r in read_jsonl(settings.data)] if settings.data else None
    configs = []
    for name in leaf_tasks(tm, settings.task):
        cfg = _resolve_functions(load_yaml(tm.task_index[name].yaml_path, resolve_func=False),
                                 bench.functions(settings))
        if rows is not None:
            mine = rows
            if bench.subset_field:
                mine = [r for r in rows if r.get(bench.subset_field) == cfg.get("dataset_name")]
                if not mine:
                    continue
                write_jsonl(out_dir / "data" / f"{name}.jsonl", mine)
                data_file = out_dir / "data" / f"{name}.jsonl"
            else:
                data_file = Path(settings.data)
            splits = {cfg[k] for k in ("test_split", "validation_split", "training_split", "fewshot_split")
                      if cfg.get(k)}
            cfg.update(dataset_path="json", dataset_name=None,
                       dataset_kwargs={"data_files": {s: str(Path(data_file).resolve()) for s in splits}})
        gen = dict(cfg.get("generation_kwargs") or {})
        if cfg.get("output_type") == "generate_until":
            if settings.max_gen_toks:
                gen["max_gen_toks"] = settings.max_gen_toks
            if nemotron:
                gen["until"] = [*(gen.get("until") or []), NEMOTRON_STOP]
            cfg["generation_kwargs"] = gen
        configs.append(cfg)
    if not configs:
        raise ValueError(f"{settings.data}: no rows for any task of {settings.task} (by {bench.subset_field})")
    return configs


def make_lm(generator, model_dir: Path | None, template: str, model=None, tokenizer=None):
    """lm-eval's model: HFLM on a checkpoint, or local-chat-completions on an OpenAI-compatible endpoint.
    `model`/`tokenizer`: the checkpoint already loaded (recipes.models.load_causal_lm, which also loads our
    adapter-only checkpoints), so lm-eval runs on the very weights the other hooks use."""
    if generator.kind == "hf":
        import torch
        from lm_eval.models.huggingface import HFLM

        if model_dir is None and model is None:
            raise ValueError("eval.model must name a checkpoint directory when eval.generator.kind=hf")
        if model is None:
            lm = HFLM(pretrained=str(model_dir), batch_size=generator.batch_size,
                      device="cuda" if torch.cuda.is_available() else "cpu")
        else:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=generator.batch_size)
        if template == "nemotron":
            lm.tokenizer.chat_template = NEMOTRON_CHAT_TEMPLATE
        return lm
    if generator.kind == "openai":
        from lm_eval.models.openai_completions import LocalChatCompletion

        if not (generator.base_url and generator.model):
            raise ValueError("eval.generator.kind=openai needs eval.generator.base_url and eval.generator.model")
        key = os.environ.get(generator.api_key_env) if generator.api_key_env else None
        if generator.api_key_env and not key:
            raise ValueError(f"environment variable {generator.api_key_env} (the API key) is not set")
        return LocalChatCompletion(base_url=f"{generator.base_url.rstrip('/')}/chat/completions",
                                   model=generator.model, num_concurrent=generator.max_concurrency,
                                   max_retries=generator.max_retries, timeout=int(generator.timeout_s),
                                   tokenizer_backend=None, tokenized_requests=False,
                                   header={"Authorization": f"Bearer {key}"} if key else None)
    raise ValueError(f"lm-eval has no client for eval.generator.kind={generator.kind}: serve the checkpoint with an "
                     "OpenAI-compatible server (eval.generator.kind=openai)")


def _mean(rows: list[dict], metric: str) -> tuple[float | None, int]:
    name, _, filt = metric.partition(",")
    vals = [float(r[name]) for r in rows if r.get("filter", "none") == (filt or "none") and name in r]
    return (sum(vals) / len(vals) if vals else None), len(vals)


def run_lm_eval(bench: Benchmark, settings, lm, out_dir: str | os.PathLike, chat: bool, nemotron: bool,
                allow_unsafe: bool = False) -> dict:
    """simple_evaluate on the benchmark's tasks; results.json, samples.jsonl, summary.json/.md in `out_dir`."""
    import lm_eval

    out = Path(out_dir)
    if chat and getattr(getattr(lm, "tokenizer", None), "chat_template", "api") is None:
        raise ValueError(f"the checkpoint's tokenizer has no chat template: set eval.{bench.name}.apply_chat_template="
                         "false, or use a checkpoint trained with data.prompt_template=nemotron")
    configs = task_configs(bench, settings, out, nemotron)
    needs_ll = sorted({c["task"] for c in configs if c.get("output_type") in LOGLIKELIHOOD})
    if needs_ll and type(lm).__name__ == "LocalChatCompletion":
        raise ValueError(f"{settings.task} scores log-likelihoods, which chat endpoints do not return; use a "
                         f"generative task (e.g. eval.{bench.name}.task={bench.name}_generative) or a checkpoint")
    res = lm_eval.simple_evaluate(model=lm, tasks=configs, num_fewshot=settings.num_fewshot,
                                  limit=settings.limit or None, apply_chat_template=chat, log_samples=True,
                                  task_manager=task_manager(bench, settings.task), confirm_run_unsafe_code=allow_unsafe,
                                  bootstrap_iters=0)
    samples = [{"task": task, **s} for task in sorted(res["samples"]) for s in res["samples"][task]]
    write_jsonl(out / "samples.jsonl", json.loads(json.dumps(samples, default=str)))
    atomic_write_text(out / "results.json", json.dumps({k: res.get(k) for k in ("results", "n-samples", "versions")},
                                                       indent=2, default=str) + "\n")
    summary = summarize(samples, f"{settings.metric},{settings.filter}")
    summary.update(task=settings.task, num_fewshot=settings.num_fewshot, apply_chat_template=chat,
                   lm_eval_version=lm_eval.__version__, lm=type(lm).__name__)
    if len(res["samples"]) > 1:
        per_task = {t: _mean([s for s in samples if s["task"] == t], summary["metric"]) for t in sorted(res["samples"])}
        summary["tasks"] = {t: {"value": v, "n": n} for t, (v, n) in per_task.items()}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table(bench.name, summary))
    return summary


def summarize(samples: list[dict], metric: str) -> dict:
    """The headline metric over every sample row (lm-eval's per-sample logs): a group's weight_by_size mean."""
    score, n = _mean(samples, metric)
    if n == 0:
        have = sorted({f"{k},{r.get('filter', 'none')}" for r in samples for k in r.get("metrics", [])})
        raise ValueError(f"no sample row carries metric {metric!r} (they have: {', '.join(have) or 'none'}); set "
                         "the benchmark's `metric` and `filter` to lm-eval's for this task")
    return {"score": score, "metric": metric, "n_samples": n}


def markdown_table(name: str, s: dict) -> str:
    lines = [f"{name} through lm-eval {s.get('lm_eval_version', '')}: task {s.get('task', '-')}, "
             f"{s.get('num_fewshot', '-')}-shot, chat template {s.get('apply_chat_template', '-')}, {s['n_samples']} "
             f"samples", "", "| task | metric | n | % |", "|---|---|---|---|",
             f"| {s.get('task', '-')} | {s['metric']} | {s['n_samples']} | {100 * s['score']:.2f} |"]
    lines += [f"| {t} | {s['metric']} | {v['n']} | {100 * v['value']:.2f} |" for t, v in (s.get("tasks") or {}).items()]
    return "\n".join(lines) + "\n"


def score_files(paths: list[str], metric: str) -> dict:
    """`score` on existing per-sample logs: ours (samples.jsonl) or lm-eval's own (--log_samples)."""
    rows = [r for p in paths for f in (sorted(Path(p).glob("samples*.jsonl")) if Path(p).is_dir() else [Path(p)])
            for _, r in read_jsonl(f)]
    return summarize(rows, metric)


# --- MBPP's code execution ------------------------------------------------------------------------

FENCED = re.compile(r"```(?:\w+)?\n?(.*?)\n?```", re.DOTALL)


def first_code_block(text: str) -> str:
    """The code of an `mbpp_instruct` reply, which continues the "```python" fence its prompt's prefix opened:
    lm-eval's `extract_code_blocks` (first ```-block, matched with an opening fence put back before the reply;
    failing that, with `python` tags dropped; else ''), with two fixes.

    lm-eval 0.4.13 puts back a bare "```", so its optional language tag swallows the first word of the code
    ("def", "import") and every such reply fails (lm-eval issue #3447, open): we put back "```\n", the fix its
    PR #3769 proposes. A reply that opens a fence of its own (a chat endpoint answering in a new turn instead
    of continuing the prefix, as OpenAI's and vLLM's do by default) is searched as it is, and where the rules
    give no code that compiles (empty, or the reply's prose) but the reply holds a block that does, that block
    is taken. Compiling runs nothing."""
    if text.lstrip().startswith("```"):
        found = FENCED.findall(text)
    else:
        found = FENCED.findall("```\n" + text) or FENCED.findall(text.replace("```python", "```"))
    code = found[0] if found else ""
    if not _compiles(code):
        code = next((c for c in FENCED.findall(text) if _compiles(c)), code)
    return code


def _compiles(code: str) -> bool:
    try:
        compile(code, "<mbpp>", "exec")
    except (SyntaxError, ValueError):
        return False
    return bool(code.strip())


def mbpp_functions(settings) -> dict:
    """Ours for lm-eval's mbpp utils: pass_at_1 (executing), build_predictions, list_fewshot_samples."""
    from eval.code_exec import run_program
    from eval.humaneval import require_opt_in

    require_opt_in(settings.allow_code_execution, "eval.mbpp.allow_code_execution=true")
    if settings.num_fewshot:
        raise ValueError("MBPP runs 0-shot here: lm-eval's few-shot examples live in its task module, which "
                         "downloads code_eval from the hub when imported")

    def pass_at_1(references, predictions):
        code = predictions[0] if isinstance(predictions[0], str) else predictions[0][0]
        return float(run_program(code + "\n" + references[0], settings.timeout_s).passed)

    def build_predictions(resps, docs):
        return [[first_code_block(r) for r in resp] for resp in resps]

    return {"pass_at_1": pass_at_1, "build_predictions": build_predictions, "list_fewshot_samples": lambda: []}


MMLU = Benchmark("mmlu", ("mmlu/default", "mmlu/generative", "mmlu"), subset_field="subject")
GSM8K = Benchmark("gsm8k", ("gsm8k",))
MBPP = Benchmark("mbpp", ("mbpp",), functions=mbpp_functions)
BENCHMARKS = {b.name: b for b in (MMLU, GSM8K, MBPP)}


# --- command line shared by eval/mmlu.py, eval/gsm8k.py, eval/mbpp.py -------------------------------


def main(name: str, argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from eval.humaneval import CodeExecutionRefused
    from recipes.config import GeneratorConfig, GSM8KConfig, MBPPConfig, MMLUConfig

    defaults = {"mmlu": MMLUConfig, "gsm8k": GSM8KConfig, "mbpp": MBPPConfig}[name]()
    ap = argparse.ArgumentParser(prog=f"python -m eval.{name}", description=f"{name} through lm-evaluation-harness")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="the headline metric of per-sample logs (ours, or lm-eval's --log_samples)")
    sc.add_argument("--samples", required=True, nargs="+", help="samples*.jsonl files or folders holding them")
    rn = sub.add_parser("run", help="run the lm-eval task on a checkpoint or an OpenAI-compatible chat endpoint")
    rn.add_argument("--output-dir", required=True)
    rn.add_argument("--checkpoint", default=None, help="HF model directory (lm-eval's HFLM)")
    rn.add_argument("--template", choices=["hf", "nemotron"], default="hf", help="the checkpoint's chat template")
    rn.add_argument("--base-url", default=None, help="or an endpoint, e.g. http://localhost:8000/v1")
    rn.add_argument("--model", default=None, help="served model name")
    rn.add_argument("--api-key-env", default=None)
    rn.add_argument("--batch-size", type=int, default=8)
    rn.add_argument("--task", default=defaults.task)
    rn.add_argument("--num-fewshot", type=int, default=defaults.num_fewshot)
    rn.add_argument("--data", default=None, help="local JSONL in the hub dataset's layout")
    rn.add_argument("--limit", type=int, default=0, help="per lm-eval task")
    rn.add_argument("--max-gen-toks", type=int, default=defaults.max_gen_toks)
    rn.add_argument("--no-chat-template", action="store_true")
    if name == "mbpp":
        rn.add_argument("--allow-code-execution", action="store_true", help="required: this runs model-written code")
        rn.add_argument("--timeout", type=float, default=defaults.timeout_s)
    for p in (sc, rn):
        p.add_argument("--metric", default=defaults.metric, help="the lm-eval metric to report")
        p.add_argument("--filter", default=defaults.filter, help="the lm-eval filter it is read after")
        p.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "score":
            summary = score_files(args.samples, f"{args.metric},{args.filter}")
        else:
            s = type(defaults)(task=args.task, metric=args.metric, filter=args.filter, num_fewshot=args.num_fewshot,
                               data=args.data, limit=args.limit, max_gen_toks=args.max_gen_toks,
                               apply_chat_template=not args.no_chat_template)
            if name == "mbpp":
                s.allow_code_execution, s.timeout_s = args.allow_code_execution, args.timeout
            kind = "openai" if args.base_url else "hf"
            gen = GeneratorConfig(kind=kind, base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                                  batch_size=args.batch_size)
            template = "chat-api" if kind == "openai" else args.template
            summary = run_lm_eval(BENCHMARKS[name], s, make_lm(gen, Path(args.checkpoint) if args.checkpoint else None,
                                                                template), args.output_dir,
                                  chat=s.apply_chat_template, nemotron=template == "nemotron",
                                  allow_unsafe=name == "mbpp" and s.allow_code_execution)
    except (OSError, ValueError, KeyError, CodeExecutionRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else markdown_table(name, summary).rstrip("\n"))
    return 0
