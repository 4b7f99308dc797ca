"""The pipeline runner: `python launch.py pipeline=demo` runs a list of stages, each in its own directory.

A pipeline (conf/pipeline/<name>.yaml) is an ordered dict of stages. Each names what runs — a launch.py
stage (prep_helpsteer2, rm, sdg_prompts, sdg_generate, sdg_dialogue, rm_annotate, prep_sdg, sft, dpo, rpo,
eval) with its Hydra
overrides, or a data step called in-process with keyword args (convert_helpsteer2, convert_sdg: the
data_prep functions with every option; concat). `${stages:<stage>.<output>}` in an override is the path of an earlier
stage's output (`checkpoint`/`output`, `dir`, or a data step's file by stem, e.g. `train_dpo`);
`${stages:base.checkpoint}` is the starting model. Each stage's config is composed with Hydra's compose
API from, lowest precedence first: `stage=<stage>`, `pipeline.overrides` (shared by every stage), the
stage's own settings, the command line (so `trainer.max_steps=2` shortens every stage), the stage's wiring
(its overrides that name another stage's output, so `model.name_or_path=<base>` on the command line cannot
cut the chain), and the runner's own (run directory, resume, eval hooks).

    <pipeline dir>/manifest.json   per stage: status, config hash, inputs and outputs (paths + content
                                   hashes), timings, metrics, eval results (docs/pipeline.md)
    <pipeline dir>/<stage>/        the stage's run directory (config.yaml, metrics.jsonl, checkpoints/, eval/)
    <pipeline dir>/report.md       rewritten after every stage (recipes/report.py)

Re-running skips a finished stage whose config hash and input hashes are unchanged, resumes an
interrupted one (resume=true in the same directory), and runs the rest from scratch. Because inputs are
hashed, a changed stage re-runs exactly the stages that consume its outputs, directly or not.
`pipeline.only` / `pipeline.from` / `pipeline.until` select stages (`only` and `from` re-run what they
select, done or not); `dry_run=true` prints the plan and writes nothing. Logs: <pipeline dir>/pipeline.log
(all of it) and <stage dir>/launch.log (recipes/runlog.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from data_prep.jsonl import atomic_write_text
from recipes.config import REPO_ROOT


DATA_STEPS = ("convert_helpsteer2", "convert_sdg", "concat")  # in-process, configured by `args`
PREP_STAGES = ("prep_helpsteer2", "prep_sdg")  # launch.py stages whose outputs are files in one directory
POLICY_STAGES = ("sft", "dpo", "rpo", "eval")  # they get IFEval, MMLU, GSM8K (+ judged and code benchmarks)
TRAINING_STAGES = ("sft", "rm", "dpo", "rpo")
POLICY_TRAINING = ("sft", "dpo", "rpo")  # the last of them keeps a merged checkpoint; the others an adapter
HASH_LIMIT = 4 << 30  # bytes: bigger inputs/outputs are identified by names, sizes and mtimes
REF = re.compile(r"\$\{stages:([A-Za-z0-9_\-]+)\.([A-Za-z0-9_\-]+)\}")
# Not passed from the command line to the stages: the runner sets them per stage.
RUNNER_KEYS = ("exp_manager.explicit_log_dir", "resume", "dry_run")
# The config a stage reads, and so what its config hash covers: a setting another stage reads (given
# on the command line for all) does not re-run it. Where it runs and how it logs are never hashed, and
# eval hooks have their own hash (a change re-runs only the hooks).
READS = {
    "sdg_generate": ("stage", "sdg", "data.prompt_template", "seed"),  # + model when sdg.model is null
    "sdg_prompts": ("stage", "sdg_prompts", "data.prompt_template", "seed"),  # + model, as sdg_generate
    "sdg_dialogue": ("stage", "sdg_dialogue", "data.prompt_template", "model.regression", "trainer.precision",
                     "trainer.accelerator", "seed"),
    "rm_annotate": ("stage", "annotate", "model.regression", "data.on_bad_row", "trainer.precision",
                    "trainer.accelerator"),
    "eval": ("stage", "eval", "data.prompt_template", "seed"),
    "prep_helpsteer2": ("stage", "prep", "data.on_bad_row", "data.max_seq_length"),
    "prep_sdg": ("stage", "prep", "data.on_bad_row", "data.max_seq_length"),
}
TRAINING_READS = ("stage", "model", "data", "trainer", "seed")  # + backend/executor for backend=nemo
NOT_READ = {"sft": ("dpo", "rpo", "regression", "reward_model_type"), "rm": ("dpo", "rpo"),
            "dpo": ("regression", "reward_model_type"), "rpo": ("regression", "reward_model_type")}


def picks_stage(overrides: list[str]) -> bool:
    """A command line that names a stage (stage=..., experiment=...) runs that stage, not the pipeline."""
    return any(_key(o) in ("stage", "experiment") for o in overrides)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def rerun_selector(p) -> str | None:
    """`pipeline.from` and `pipeline.only` name stages to re-run: they run even when done and unchanged
    (`pipeline.until` alone only shortens the pipeline). Returns the selector as typed, for the plan."""
    if p.only is not None and p.only != []:
        only = p.only if isinstance(p.only, str) else ",".join(p.only)
        return f"pipeline.only={only}"
    return f"pipeline.from={p.get('from')}" if p.get("from") else None


def pipeline_dir(cfg) -> Path:
    p = cfg.pipeline
    return Path(p.dir or cfg.exp_manager.explicit_log_dir or Path("runs") / "pipeline" / p.name).absolute()


def select(names: list[str], p) -> list[str]:
    """The stages pipeline.only / pipeline.from / pipeline.until pick, in pipeline order."""
    only = p.only if p.only is None or isinstance(p.only, str) else list(p.only)
    only = [only] if isinstance(only, str) else only
    start, stop = p.get("from"), p.until
    for key, value in (("only", only or []), ("from", [start] if start else []), ("until", [stop] if stop else [])):
        for v in value:
            if v not in names:
                raise ValueError(f"pipeline.{key}={v}: no such stage (stages: {', '.join(names)})")
    if only:
        return [n for n in names if n in only]
    lo = names.index(start) if start else 0
    hi = names.index(stop) + 1 if stop else len(names)
    return names[lo:hi]


# ---------------------------------------------------------------- hashing
def _sig(path: Path) -> str:
    """Cheap signature (names, sizes, mtimes): a content hash is recomputed only when it changes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    parts = [f"{f.relative_to(path) if f != path else ''}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


def content_hash(path: Path, cache: dict) -> str:
    """blake2b over a file, or over a directory's relative paths and file contents. Past HASH_LIMIT bytes
    (a 340B checkpoint) the signature stands in for the content: reading it all would take too long."""
    path = Path(path)
    sig = _sig(path)
    hit = cache.get(str(path))
    if hit and hit["sig"] == sig:
        return hit["hash"]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if sum(f.stat().st_size for f in files) > HASH_LIMIT:
        cache[str(path)] = {"sig": sig, "hash": f"sig:{sig}"}
        return cache[str(path)]["hash"]
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(str(f.relative_to(path) if f != path else "").encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    cache[str(path)] = {"sig": sig, "hash": h.hexdigest()}
    return cache[str(path)]["hash"]


def text_hash(obj) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def local_paths(obj, own_dir: Path) -> list[str]:
    """Existing files/directories named by the string leaves of `obj`, outside the stage's own directory."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and os.sep in x and len(x) < 4096:
            p = Path(x).absolute()
            if p.exists() and own_dir not in (p, *p.parents) and str(p) not in found:
                found.append(str(p))

    walk(obj)
    return found


# ---------------------------------------------------------------- one stage
@dataclass
class Job:
    name: str
    kind: str  # what runs: a launch.py stage or a data step
    dir: Path
    spec: dict
    deps: list[str]  # stages whose outputs it reads
    eval_deps: list[str] = field(default_factory=list)  # ... only in its eval hooks' settings (policy_reward.previous)
    overrides: list[str] = field(default_factory=list)  # resolved, as composed (launch.py stages)
    args: dict = field(default_factory=dict)  # resolved (data steps)
    cfg: object = None  # the composed stage config (launch.py stages)
    config_hash: str = ""
    eval_hash: str = ""  # eval hooks' settings; a change re-runs only the hooks
    inputs: dict = field(default_factory=dict)  # path -> content hash
    outputs: dict = field(default_factory=dict)  # name -> path (predicted before it runs)


def resolve_refs(value, known: dict, deps: list[str]):
    """Replace ${stages:X.Y} by the path of stage X's output Y (recursively in lists and dicts)."""
    if isinstance(value, dict):
        return {k: resolve_refs(v, known, deps) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, known, deps) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        stage, out = m.group(1), m.group(2)
        if stage not in known:
            raise ValueError(f"${{stages:{stage}.{out}}}: no earlier stage {stage!r} (earlier: {', '.join(known)})")
        if out not in known[stage] and "*" in known[stage]:  # a data step that has not run: files by stem
            path = Path(known[stage]["*"]) / f"{out}.jsonl"
        elif out not in known[stage]:
            raise ValueError(f"${{stages:{stage}.{out}}}: stage {stage} has no output {out!r} "
                             f"(outputs: {', '.join(k for k in known[stage] if k != '*')})")
        else:
            path = known[stage][out]
        if stage != "base" and stage not in deps:
            deps.append(stage)
        return str(path)

    return REF.sub(sub, value)


def _quote(override: str) -> str:
    """Quote an override's value when a resolved path holds characters Hydra's grammar reserves."""
    key, eq, value = override.partition("=")
    if eq and value and not re.fullmatch(r"[\w/.\-+:@%~\[\],=]*", value) and value[0] not in "'\"[{":
        return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return override


def compose(overrides: list[str]):
    """The config `python launch.py <overrides>` would get, inside launch.py's Hydra app or outside it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recipes.config import explain

    try:
        if GlobalHydra.instance().is_initialized():
            return hydra_compose("config", overrides=overrides)
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - every composition error becomes one line
        raise ValueError(explain(err, REPO_ROOT / "conf")) from None


def predicted_outputs(job: Job) -> dict:
    """Where a stage's outputs will be, known before it runs (so plans and hashes need no run)."""
    d, c = job.dir, job.cfg
    if job.kind in DATA_STEPS:
        # A data step's files are named by stem: ${stages:data.train_dpo} = <dir>/train_dpo.jsonl.
        return {"dir": d, "report": d / "report.json", "output": d / job.args.get("output", "output.jsonl"), "*": d}
    if job.kind in ("sdg_prompts", "sdg_dialogue"):  # a data file plus report.json (counts at every filter)
        name = "prompts.jsonl" if job.kind == "sdg_prompts" else "dialogues.jsonl"
        out = Path(c[job.kind].output_file) if c[job.kind].output_file else d / name
        return {"dir": d, "output": out, "report": d / "report.json"}
    if job.kind == "sdg_generate":
        out = Path(c.sdg.output_file) if c.sdg.output_file else d / "generations.jsonl"
    elif job.kind == "rm_annotate":
        out = Path(c.annotate.output_file) if c.annotate.output_file else d / "annotated.jsonl"
    elif job.kind == "eval":
        out = d / "eval"
    elif job.kind in PREP_STAGES:  # files by stem, as for the data steps
        out = Path(c.prep.output_dir) if c.prep.output_dir else d
        return {"dir": d, "report": out / "report.json", "output": out, "*": out}
    elif c.backend.name == "nemo":
        from recipes.backends.nemo_backend import final_checkpoint

        n = c.model.rpo.iterations if job.kind == "rpo" else 1
        out = final_checkpoint(job.kind, d if n == 1 else d / f"iter{n}")
    else:
        n = c.model.rpo.iterations if job.kind in ("dpo", "rpo") else 1
        out = (d if n == 1 else d / f"iter_{n}") / "checkpoints" / "final"
    if job.kind not in TRAINING_STAGES:
        return {"dir": d, "output": out}
    return {"dir": d, "output": out, "checkpoint": out}


def passed_to_stages(cli: list[str]) -> list[str]:
    """The command line's overrides every stage gets (not the runner's own, not the pipeline's selectors)."""
    return [o for o in cli if _key(o) not in (*RUNNER_KEYS, "stage", "experiment") and not _key(o).startswith("pipeline.")]


def base_model(cfg, shared: list[str], cli: list[str]) -> str | None:
    """${stages:base.checkpoint}: pipeline.base, else the model the stages are configured with (pipeline.overrides
    and the command line on the model preset: model.name_or_path, else the preset's GGUF), resolved as a stage
    resolves it (recipes/models.py). Checked (one line naming the key) only where it runs here: backend=torch,
    not a dry run; None for model=tiny."""
    from recipes.models import model_dir, resolve_name

    check, convert = cfg.backend.name == "torch" and not cfg.dry_run, not cfg.dry_run
    if cfg.pipeline.base:
        return resolve_name(cfg.pipeline.base, "pipeline.base", convert=convert, check=check)
    return model_dir(compose([*shared, *passed_to_stages(cli)]).model, convert=convert, check=check)


def plan_job(name: str, spec: dict, known: dict, cli: list[str], pdir: Path, hashes: dict,
             shared: list[str] = (), lowest: list[str] = ()) -> Job:
    """Resolve references, compose the stage's config, hash it and its inputs. `lowest`: the runner's defaults
    for this stage, below everything else (model.peft.save_merged=false on intermediate policy stages)."""
    kind, deps = spec["stage"], []
    job = Job(name, kind, pdir / name, spec, deps)
    if kind in DATA_STEPS:
        job.args = resolve_refs(spec.get("args") or {}, known, deps)
        job.config_hash = text_hash({"stage": kind, "args": job.args})
        job.inputs = {p: content_hash(Path(p), hashes) for p in local_paths(job.args, job.dir)}
        job.outputs = predicted_outputs(job)
        return job
    # Precedence, lowest first: pipeline.overrides, the stage's settings, the command line (it applies to
    # every stage), the stage's wiring (overrides naming another stage's output), the runner's own.
    raw = list(spec.get("overrides") or [])
    plain = [o for o in raw if "${stages:" not in o]
    # A training stage's eval hooks may read another stage's output (eval.policy_reward.previous): if that one
    # re-runs, only these hooks do (their eval_hash covers the file), not the training.
    hooks_only = lambda o: kind != "eval" and _key(o).startswith("eval.")  # noqa: E731
    wiring = [_quote(o) for o in resolve_refs([o for o in raw if "${stages:" in o and not hooks_only(o)], known, deps)
              + resolve_refs([o for o in raw if "${stages:" in o and hooks_only(o)], known, job.eval_deps)]
    overrides = [f"stage={kind}", *lowest, *shared, *plain, *passed_to_stages(cli), *wiring,
                 f"exp_manager.explicit_log_dir={job.dir}"]
    cfg = compose(overrides)
    from recipes.backends.nemo_backend import STAGES as NEMO_STAGES

    if cfg.backend.name == "nemo" and kind not in NEMO_STAGES:
        overrides.append("backend=torch")  # generation, annotation and eval run here, in-process
        cfg = compose(overrides)
    if spec.get("seed_offset"):
        cfg.seed += spec["seed_offset"]
        overrides.append(f"seed={cfg.seed}")  # shown in the plan and the manifest
    job.overrides, job.cfg = overrides, cfg
    _eval_hooks(job)
    from recipes.config import validate

    problems = validate(cfg)
    if problems:
        raise ValueError(f"stage {name}: " + "; ".join(problems))
    hashed = read_config(kind, cfg)
    job.config_hash = text_hash(hashed)
    # The hooks' settings: the enabled benchmarks and, when one generates, the generator.
    from recipes.evaluate import BENCHMARKS

    on = [b for b in BENCHMARKS if cfg.eval[b].enabled]
    evals = {b: OmegaConf.to_container(cfg.eval[b], resolve=True) for b in on}
    if set(on) - {"reward_bench"}:
        evals["generator"] = OmegaConf.to_container(cfg.eval.generator, resolve=True)
    files = {p: content_hash(Path(p), hashes) for p in local_paths(evals, job.dir)}
    job.eval_hash = text_hash([evals, files]) if on else ""
    job.inputs = {p: content_hash(Path(p), hashes) for p in local_paths(hashed, job.dir)}
    job.outputs = predicted_outputs(job)
    return job


def read_config(kind: str, cfg) -> dict:
    """The parts of a stage's config it reads (READS), resolved: what its config hash covers."""
    keys = list(READS.get(kind, TRAINING_READS))
    gen = {"sdg_generate": "sdg", "sdg_prompts": "sdg_prompts", "sdg_dialogue": "sdg_dialogue"}.get(kind)
    if gen and not cfg[gen].model and cfg[gen].generator.kind == "hf":
        keys.append("model")  # generates with the configured model
    if kind in TRAINING_STAGES:
        keys += ["backend", "executor"] if cfg.backend.name == "nemo" else ["backend.name"]
    out = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
           for k in keys for v in [OmegaConf.select(cfg, k)]}
    for sub in NOT_READ.get(kind, ()):
        out["model"].pop(sub, None)
    return out


def _eval_hooks(job: Job) -> None:
    """Evaluation after the stage. On every policy: IFEval, MMLU and GSM8K (the report's per-stage table);
    MT-Bench, AlpacaEval and Arena-Hard (with its data) when their judge endpoint is set; HumanEval and MBPP when
    code execution is allowed; policy_reward when its prompts and reward model are given, preference_accuracy
    when its pairs are. RewardBench on a reward model when its data is given (a local file, or
    eval.reward_bench.enabled in the overrides)."""
    c = job.cfg
    if not job.spec.get("evaluate", True) or c.backend.name != "torch":
        return  # backend=nemo checkpoints are .nemo files: export them to HF first (stage=convert)
    on = []
    if job.kind in POLICY_STAGES:
        on += ["ifeval", "mmlu", "gsm8k"]
        on += [b for b in ("mt_bench", "alpaca_eval", "arena_hard") if c.eval[b].judge.base_url and
               (b != "arena_hard" or c.eval.arena_hard.data)]
        on += [b for b in ("humaneval", "mbpp") if c.eval[b].allow_code_execution]
        # The pipeline's own judges, once the stage names their inputs (the demo: its RM, held-out prompts/pairs).
        if c.eval.policy_reward.prompts and c.eval.policy_reward.reward_model:
            on.append("policy_reward")
        if c.eval.preference_accuracy.data:
            on.append("preference_accuracy")
    if job.kind == "rm" and Path(c.eval.reward_bench.data).is_file():
        on.append("reward_bench")
    for bench in on:
        c.eval[bench].enabled = True
        job.overrides.append(f"eval.{bench}.enabled=true")  # shown in the plan and the manifest


def decide(entry: dict, job: Job, upstream_runs: bool, rerun: str | None = None) -> tuple[str, str]:
    """(action, reason): skip | eval (hooks only) | resume | run. `rerun` (the selector that picked the
    stage, e.g. pipeline.from=dpo) makes it run from scratch whatever the manifest says."""
    if rerun:
        return "run", f"selected by {rerun}"
    if upstream_runs:
        return "run", "an input stage runs first"
    same = entry.get("config_hash") == job.config_hash and entry.get("inputs") == job.inputs
    status = entry.get("status", "pending")
    if status == "done" and same:
        missing = [k for k, o in entry.get("outputs", {}).items() if not Path(o["path"]).exists()]
        if missing:
            return "run", f"output {missing[0]} is missing"
        if job.eval_hash and entry.get("eval_hash") != job.eval_hash:
            return "eval", "eval settings changed"
        return "skip", "done; config and inputs unchanged"
    if status == "submitted" and same:
        if Path(entry["outputs"]["output"]["path"]).exists():
            return "collect", "its NeMo job has finished"
        return "wait", "submitted to NeMo; its checkpoint is not there yet"
    if status in ("running", "failed") and same:
        return "resume", f"{status} earlier; resume in the same directory"
    if status == "pending" or "config_hash" not in entry:
        return "run", "not run yet"
    return "run", "config changed" if entry.get("config_hash") != job.config_hash else "inputs changed"


# ---------------------------------------------------------------- running
def run_data_step(job: Job) -> dict:
    """The in-process data steps; returns their report (with `outputs`: file name -> counts)."""
    a = dict(job.args)
    job.dir.mkdir(parents=True, exist_ok=True)
    if job.kind == "convert_helpsteer2":
        from data_prep.helpsteer2 import convert_helpsteer2

        return convert_helpsteer2(a.pop("input"), job.dir, **a)
    if job.kind == "convert_sdg":
        from data_prep.sdg import convert_sdg

        return convert_sdg(a.pop("inputs", None) or a.pop("input"), job.dir, **a)
    # concat: a blend of JSONL files (the General SFT blend keeps a share of the Code SFT data), committed
    # with its report.json as one set like every data step's output (data_prep/output_set.py).
    from data_prep.jsonl import write_all, write_error
    from data_prep.output_set import OutputSet

    name = job.outputs["output"].name
    with OutputSet(job.dir) as staged:
        fd = os.open(staged.dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        rows = {}
        try:
            for path in a["inputs"]:  # a missing or unreadable input raises as it is
                lines = [line + "\n" for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
                try:
                    write_all(fd, "".join(lines).encode("utf-8"))
                except OSError as err:
                    raise write_error(job.outputs["output"], err) from None
                rows[str(path)] = len(lines)
        finally:
            os.close(fd)
        report = {"outputs": {name: {"rows_in": sum(rows.values()), "rows_out": sum(rows.values()), "rejected": {}}},
                  "inputs": rows}
        atomic_write_text(staged.dir / "report.json", json.dumps(report, indent=1) + "\n")
        staged.commit()
    return report


def execute(job: Job, action: str) -> Path:
    if action == "collect":  # a NeMo job written or submitted by an earlier run has finished
        return Path(job.outputs["output"])
    if job.kind in DATA_STEPS:
        run_data_step(job)
        _files_by_stem(job)
        return job.outputs["output"] if job.kind == "concat" else job.dir
    if action == "eval":  # only the hooks, on the checkpoint already there
        from recipes.evaluate import run_hooks

        run_hooks(job.cfg, Path(job.outputs["checkpoint"]), job.dir / "eval")
        return Path(job.outputs["output"])
    job.cfg.resume = action == "resume"
    from recipes.resume import accept

    finished = accept(job.cfg, job.dir, job.inputs)  # checks a resume; writes config.yaml
    if finished is not None:  # training had finished (it failed after, e.g. in its eval hooks)
        from recipes.evaluate import enabled, run_hooks

        if enabled(job.cfg):
            run_hooks(job.cfg, finished, job.dir / "eval")
        return finished
    if job.cfg.backend.name == "nemo":
        from recipes.backends import nemo_backend as backend
    else:
        from recipes.backends import torch_backend as backend
    out = Path(backend.run(job.cfg, job.dir))
    if job.kind in PREP_STAGES:
        _files_by_stem(job)
    return out


def _files_by_stem(job: Job) -> None:
    """A data step's outputs: every file its report.json lists, as ${stages:<name>.<stem>}."""
    report = json.loads(Path(job.outputs["report"]).read_text())
    for name in report.get("outputs", {}):
        job.outputs[name.rsplit(".jsonl", 1)[0]] = Path(job.outputs["report"]).parent / name


def run(cfg, cli_overrides: list[str]) -> Path:
    """Run (or with dry_run=true, plan) the pipeline `cfg.pipeline`; returns report.md's path. A run holds
    the pipeline directory's lock throughout (recipes/run_lock.py); everything logged goes to
    <pipeline dir>/pipeline.log, each stage's own log to <stage dir>/launch.log. A dry run takes no lock and
    writes nothing."""
    from recipes import run_lock, runlog

    if cfg.dry_run:
        return _run(cfg, cli_overrides)
    # The lock first: a refused pipeline never writes into the holder's log.
    with run_lock.hold(pipeline_dir(cfg), "pipeline"), runlog.log_file(pipeline_dir(cfg) / "pipeline.log"):
        return _run(cfg, cli_overrides)


def _run(cfg, cli_overrides: list[str]) -> Path:
    from recipes import report, runlog

    p = cfg.pipeline
    specs = OmegaConf.to_container(p.stages, resolve=True)  # ${stages:...} stay as written (config.py)
    shared = [_quote(o) for o in OmegaConf.to_container(p.overrides, resolve=True)]
    if not specs:
        raise ValueError(f"pipeline {p.name}: no stages (pipeline.stages is empty)")
    for name, spec in specs.items():
        if name == "base":
            raise ValueError("pipeline stage name 'base' is reserved (${stages:base.checkpoint} is the starting model)")
        if spec["stage"] in DATA_STEPS and spec.get("overrides"):
            raise ValueError(f"stage {name}: a {spec['stage']} data step takes args, not overrides")
    names = list(specs)
    chosen, rerun = select(names, p), rerun_selector(p)
    pdir = pipeline_dir(cfg)
    manifest = load_manifest(pdir, p.name, cfg)
    base = base_model(cfg, shared, cli_overrides)
    known: dict[str, dict] = {"base": {"checkpoint": base or "<no base checkpoint: set pipeline.base>"}}
    # Every policy stage but the last saves only its LoRA adapter (the next stage merges it on load): a merged
    # 135M model is ~0.5 GB a stage. The command line's model.peft.save_merged=true overrides it.
    policies = [n for n in names if specs[n]["stage"] in POLICY_TRAINING]
    lowest = {n: ["model.peft.save_merged=false"] for n in policies[:-1]}
    will_run: set[str] = set()
    hooks_run: set[str] = set()  # dry run: stages whose eval hooks would run (their outputs under eval/ change)
    plan = []
    for name in names:  # every stage is listed from the start, in pipeline order
        manifest["stages"].setdefault(name, {"stage": specs[name]["stage"], "status": "pending"})
    for i, name in enumerate(names, 1):
        entry = manifest["stages"][name]
        job = plan_job(name, specs[name], known, cli_overrides, pdir, manifest["hashes"], shared, lowest.get(name, ()))
        entry["stage"], entry["paper"] = job.kind, specs[name].get("paper")
        known[name] = {k: str(v) for k, v in job.outputs.items()}
        if name not in chosen:
            if entry.get("status") == "done":
                known[name].update({k: o["path"] for k, o in entry["outputs"].items()})
            plan.append((job, "-", "not selected"))
            continue
        missing = [d for d in job.deps + job.eval_deps if d not in chosen and manifest["stages"][d].get("status") != "done"]
        if missing:
            raise ValueError(f"stage {name} reads the output of {missing[0]}, which has not run: "
                             f"select it too (e.g. pipeline.until={name} without pipeline.only/from)")
        action, reason = decide(entry, job, any(d in will_run for d in job.deps), rerun)
        if action == "skip" and any(d in hooks_run for d in job.eval_deps):
            action, reason = "eval", "an input of its eval hooks is re-made first"
        plan.append((job, action, reason))
        if cfg.dry_run:
            if action not in ("skip", "eval"):  # re-running only the hooks leaves the outputs as they are
                will_run.add(name)
            if action != "skip":
                hooks_run.add(name)
            continue
        if action == "wait":
            runlog.say(f"\n{name}: {reason} ({job.outputs['output']}); re-run the pipeline when the job has finished.")
            break
        run_one(job, action, reason, entry, manifest, pdir, f"{i}/{len(names)}")
        known[name] = {k: o["path"] for k, o in entry["outputs"].items()}
        if entry["status"] == "submitted":
            runlog.say(f"\n{name}: submitted/written for NeMo; its checkpoint {job.outputs['output']} does not exist "
                       "yet. Re-run the pipeline when the job has finished.")
            break
    if cfg.dry_run:
        print_plan(p.name, pdir, cfg, plan)
        return pdir / "report.md"
    path = report.write_report(pdir, manifest)
    runlog.say(report.summary(p.name, pdir, manifest, [(j.name, j.kind, action) for j, action, _ in plan], path))
    return path


def run_one(job: Job, action: str, reason: str, entry: dict, manifest: dict, pdir: Path, step: str = "") -> None:
    from recipes import report, runlog

    runlog.say(f"\n=== [{step}] {job.name} ({job.kind}): {action} ({reason})")
    if action == "skip":
        return
    from recipes import run_lock

    run_lock.check_free(job.dir)  # a standalone run working in this stage's directory: stop, touch nothing
    if action == "run" and job.dir.exists():
        shutil.rmtree(job.dir)  # a fresh run never mixes with an older one's files
    entry.update(status="running", config_hash=job.config_hash, inputs=job.inputs, overrides=job.overrides,
                 args=job.args, error=None, started=_now(), resumed=action == "resume",
                 attempts=entry.get("attempts", 0) + 1, dir=str(job.dir))
    save_manifest(pdir, manifest)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with runlog.log_file(job.dir / "launch.log"):
            out = execute(job, action)
    except BaseException as err:  # a crash or Ctrl-C: recorded, then re-raised
        entry.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                     seconds=round(entry.get("seconds", 0) * (action == "resume") + time.perf_counter() - t0, 1))
        save_manifest(pdir, manifest)
        report.write_report(pdir, manifest)
        raise
    # CPU seconds (all threads) as well as wall seconds: on a shared machine the wall time says little.
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    outputs = {k: Path(v) for k, v in job.outputs.items() if k not in ("output", "*")}
    outputs["output"] = out
    hashes = manifest["hashes"]
    entry["outputs"] = {k: {"path": str(v), "hash": content_hash(v, hashes) if v.exists() else None}
                        for k, v in outputs.items() if k != "dir"}
    entry["outputs"]["dir"] = {"path": str(job.dir), "hash": None}
    pending = job.cfg is not None and job.cfg.backend.name == "nemo" and not out.exists()
    before = entry.get("seconds", 0) if action in ("resume", "eval", "collect") else 0  # wall time adds up
    entry.update(status="submitted" if pending else "done", finished=_now(), eval_hash=job.eval_hash,
                 seconds=round(before + seconds, 1),
                 cpu_seconds=round(cpu, 1),
                 metrics=report.stage_metrics(job.kind, job.dir, out, job.outputs.get("report")))
    save_manifest(pdir, manifest)
    report.write_report(pdir, manifest)
    result = report.brief(job.name, entry)
    runlog.say(f"=== {job.name}: {entry['status']} in {seconds:.0f} s -> {out}" + (f" ({result})" if result else ""))


# ---------------------------------------------------------------- metrics and manifest
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_manifest(pdir: Path, name: str, cfg) -> dict:
    path = pdir / "manifest.json"
    if path.is_file():
        m = json.loads(path.read_text())
        if m.get("pipeline") != name:
            raise ValueError(f"{pdir} holds pipeline {m.get('pipeline')!r}, not {name!r}: choose another pipeline.dir")
        return m
    return {"pipeline": name, "dir": str(pdir), "backend": cfg.backend.name, "created": _now(), "stages": {},
            "hashes": {}}


def save_manifest(pdir: Path, manifest: dict) -> None:
    manifest["updated"] = _now()
    atomic_write_text(pdir / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def print_plan(name: str, pdir: Path, cfg, plan: list) -> None:
    print(f"\npipeline {name}: plan (dry_run: nothing runs); directory {pdir}; backend {cfg.backend.name}")
    for i, (job, action, reason) in enumerate(plan, 1):
        print(f"{i:>3}. {job.name:<16} {job.kind:<16} {action:<7} {reason}")
        for o in job.overrides or [f"{k}={v}" for k, v in job.args.items()]:
            print(f"        {o}")
        if job.cfg is not None:
            from recipes.sdg_plan import describe

            line = describe(job)  # SDG stages: the requests they will send
            if line:
                print(f"      {line}")
        if job.cfg is not None and job.cfg.backend.name == "nemo":
            from recipes.backends.nemo_backend import overrides_for

            try:  # what NeMo-Aligner would be given (for iterative RPO: the first iteration's)
                script, args = overrides_for(job.cfg, log_dir=job.dir)
                print(f"      NeMo-Aligner: python {script} " + " ".join(args))
            except ValueError as err:
                print(f"      NeMo-Aligner: cannot build the command yet: {err}")
