"""Run a NeMo command here, or on Slurm in the NeMo container (executor=local|slurm|nemo_run).

A Job is one command inside the container: `python -u <script> <args>` run from <workdir>.
  local     runs it in this environment (you are inside the NeMo container), on one node.
  slurm     writes <run dir>/<job>.sbatch, whose srun starts the command in backend.nemo.container_image
            with pyxis (--container-image, --container-mounts), one task per GPU, as NeMo-Aligner's docs
            and the Nemotron-4-340B model cards do (NEMO_ALIGNER.md §4); executor.submit=true sbatches it.
  nemo_run  hands the same command to NeMo-Run's SlurmExecutor (optional: pip install nemo-run "leptonai<0.47").
dry_run=true runs nothing: it prints the command (and sbatch script) and writes <run dir>/nemo_command.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    name: str  # sft, rpo_iter2, convert ...: names the sbatch file and the logs
    script: str  # path inside the container
    args: list  # Hydra overrides (training) or argparse flags (converters)
    workdir: str  # cd here first (NeMo-Aligner's root: its scripts import their own conf/)
    log_dir: Path  # NeMo's explicit_log_dir; Slurm task logs go here too
    checkpoint: Path  # what the job leaves behind (.nemo, or an HF directory)
    run_dir: Path = Path(".")  # launch.py's run directory: holds log_dir, the sbatch files; mounted as itself
    inputs: list = field(default_factory=list)  # other host paths it reads or writes; their directories are mounted
    distributed: bool = True  # one rank per GPU on every node (training) vs one process (converters)
    arg_name: str = "overrides"  # how nemo_command.json names `args`


def launch(jobs: list[Job], cfg, run_dir: Path) -> Path:
    """Write nemo_command.json, then run, write or submit the jobs (in order; each waits for the last)."""
    ex = cfg.executor
    if ex.launcher == "torchrun" and ex.name != "local":
        raise ValueError("executor.launcher=torchrun is for executor=local; on Slurm srun starts one task per GPU")
    if ex.name == "local" and cfg.trainer.num_nodes > 1 and any(j.distributed for j in jobs):
        raise ValueError(f"executor=local runs on this node only, but trainer.num_nodes={cfg.trainer.num_nodes}: "
                         "use executor=slurm")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    records = []
    for job in jobs:
        record = {"script": job.script, job.arg_name: list(job.args), "sbatch": None,
                  "command": shell_command(job, cfg), "checkpoint": str(job.checkpoint)}
        if ex.name == "slurm":
            path = Path(run_dir) / f"{job.name}.sbatch"
            path.write_text(sbatch_script(job, cfg))
            record["sbatch"] = str(path)
        records.append(record)
    # One job: an object. Several (iterative RPO): a list of objects in the order they run.
    manifest = Path(run_dir) / "nemo_command.json"
    manifest.write_text(json.dumps(records[0] if len(records) == 1 else records, indent=2) + "\n")

    for i, (job, record) in enumerate(zip(jobs, records), 1):
        head = f"job {i}/{len(jobs)}: {job.name}" if len(jobs) > 1 else job.name
        print(f"\n# {head} ({ex.name}) -> {job.checkpoint}\n{record['command']}")
        if record["sbatch"]:
            print(f"\n# {record['sbatch']}\n{Path(record['sbatch']).read_text()}")
    print(f"\nwrote {manifest}")
    if cfg.dry_run:
        if ex.name == "slurm":
            submit_scripts([Path(r["sbatch"]) for r in records], submit=False)
        print("dry run: nothing was run or submitted")
        return jobs[-1].checkpoint
    if ex.name == "local":
        for job in jobs:
            _run_local(job, cfg)
    elif ex.name == "slurm":
        submit_scripts([Path(r["sbatch"]) for r in records], submit=ex.submit)
    else:
        _nemo_run(jobs, cfg, Path(run_dir))
    return jobs[-1].checkpoint


# ---------------------------------------------------------------- the command
def argv(job: Job, cfg) -> list[str]:
    if job.distributed and cfg.executor.launcher == "torchrun":
        return ["torchrun", f"--nproc_per_node={cfg.trainer.devices}", job.script, *job.args]
    return ["python", "-u", job.script, *job.args]


def job_env(job: Job, cfg) -> dict:
    env = {"HYDRA_FULL_ERROR": "1"}  # NeMo's docs set it: full tracebacks from the Hydra scripts
    if cfg.logger.wandb.enabled and job.distributed:
        env["WANDB_MODE"] = cfg.logger.wandb.mode  # offline unless asked; online needs WANDB_API_KEY
    return {**env, **{str(k): str(v) for k, v in cfg.backend.nemo.env.items()}}


def shell_command(job: Job, cfg) -> str:
    """The command as one shell line, split the way NeMo's docs write it."""
    steps = [f"cd {shell_word(job.workdir)}", f"export PYTHONPATH={shell_word(job.workdir)}:${{PYTHONPATH:-}}"]
    steps += [f"export {k}={shell_word(v)}" for k, v in job_env(job, cfg).items()]
    words = [shell_word(w) for w in argv(job, cfg)]
    head = len(words) - len(job.args)
    lines, rest = [], words[head:]
    while rest:  # one override per line; a converter flag stays on the line of its value
        take = 2 if rest[0].startswith("--") and len(rest) > 1 and not rest[1].startswith("--") else 1
        lines.append(" ".join(rest[:take]))
        rest = rest[take:]
    steps.append(" ".join(words[:head]) + "".join(f" \\\n    {line}" for line in lines))
    return " \\\n&& ".join(steps)


_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./\-]+")


def shell_word(word) -> str:
    """Quote for bash, readably: bare when safe, "double quotes" like NeMo's docs, else single quotes."""
    word = str(word)
    if _SAFE.fullmatch(word):
        return word
    if not re.search(r"[$`\\\"!]", word):
        return f'"{word}"'
    return shlex.quote(word)


# ---------------------------------------------------------------- local
def _run_local(job: Job, cfg) -> None:
    if not Path(job.script).exists():
        raise FileNotFoundError(f"{job.script} not found: executor=local runs inside the NeMo container "
                                f"({cfg.backend.nemo.container_image}); elsewhere use executor=slurm, or point "
                                "backend.nemo.aligner_dir / nemo_dir at your checkouts")
    env = {**os.environ, **job_env(job, cfg)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (job.workdir, os.environ.get("PYTHONPATH")) if p)
    Path(job.log_dir).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(argv(job, cfg), cwd=job.workdir, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"error: {job.name} failed with exit code {done.returncode} (its log is above)")


# ---------------------------------------------------------------- slurm
def mounts(job: Job, cfg) -> list[str]:
    """--container-mounts: the user's, then every directory the job touches, mounted at the same path
    (so the paths in the command mean the same inside the container)."""
    dirs = [Path(job.run_dir).absolute()]
    for p in map(Path, job.inputs):
        # A file's directory; a directory's parent (a .nemo may be a file or an extracted directory),
        # but never "/" itself.
        dirs.append(p if p.parent == Path(p.anchor) else p.parent)
    kept: list[Path] = []
    for d in sorted(set(dirs), key=lambda d: (len(d.parts), str(d))):  # parents first, then by name
        if not any(d == k or k in d.parents for k in kept):
            kept.append(d)
    return [*cfg.executor.mounts, *(f"{d}:{d}" for d in kept)]


def sbatch_script(job: Job, cfg) -> str:
    ex, t, nemo = cfg.executor, cfg.trainer, cfg.backend.nemo
    nodes, gpus = (t.num_nodes, t.devices) if job.distributed else (1, 1)
    tasks = gpus if job.distributed else 1  # one task per GPU: Lightning reads its rank from SLURM_* (sft.rst)
    name = ex.job_name or f"nemotron-{job.name}"
    log_dir = Path(job.log_dir)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={shell_word(name)}", f"#SBATCH --nodes={nodes}",
             f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --gpus-per-node={gpus}", f"#SBATCH --time={ex.time}"]
    lines += [f"#SBATCH --account={shell_word(ex.account)}"] if ex.account else []
    lines += [f"#SBATCH --partition={shell_word(ex.partition)}"] if ex.partition else []
    # Slurm opens --output before the script runs, so it goes in the run directory, which exists.
    lines += [f"#SBATCH --output={shell_word(ex.output or Path(job.run_dir).absolute() / (job.name + '-slurm-%j.out'))}"]
    lines += ["#SBATCH --exclusive"] if ex.exclusive else []
    lines += ["#SBATCH --overcommit"] if job.distributed else []  # as NeMo-Aligner's sbatch examples
    lines += [
        "",
        f"# {job.name}: written by launch.py (backend=nemo executor=slurm). Needs pyxis/enroot for --container-*.",
        f"# Output: {job.checkpoint}",
        f"CONTAINER={shell_word(nemo.container_image)}",
        f"MOUNTS={shell_word(','.join(mounts(job, cfg)))}",
        f"mkdir -p {shell_word(log_dir)}",
        "",
        "# The command runs inside the container; the quoted heredoc keeps ${PYTHONPATH} for it to expand.",
        "read -r -d '' CMD <<'NEMO_CMD'",
        shell_command(job, cfg),
        "NEMO_CMD",
        "",
        'srun --no-container-mount-home --container-image="$CONTAINER" --container-mounts="$MOUNTS" \\',
        f"    -o {shell_word(log_dir / (job.name + '-%j_%t.out'))} -e {shell_word(log_dir / (job.name + '-%j_%t.err'))} \\",
        '    bash -c "$CMD"',
        "",
    ]
    return "\n".join(lines)


def submit_scripts(scripts: list[Path], submit: bool) -> None:
    """sbatch the scripts in order, each after the previous one succeeds (afterok), or say how to."""
    if not submit:
        chain = [f"J1=$(sbatch --parsable {shell_word(scripts[0])})"]
        chain += [f"J{i}=$(sbatch --parsable --dependency=afterok:$J{i - 1} {shell_word(s)})"
                  for i, s in enumerate(scripts[1:], 2)]
        print("to submit (or set executor.submit=true):\n  " +
              (f"sbatch {shell_word(scripts[0])}" if len(scripts) == 1 else " && \\\n  ".join(chain)))
        return
    if not shutil.which("sbatch"):
        raise FileNotFoundError("sbatch not found: submit from a Slurm login node, or set executor.submit=false "
                                "and submit the written script yourself")
    previous = None
    for script in scripts:
        cmd = ["sbatch", "--parsable", *([f"--dependency=afterok:{previous}"] if previous else []), str(script)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"error: {' '.join(cmd)} failed: {done.stderr.strip()}")
        previous = done.stdout.strip().split(";")[0]
        print(f"submitted {script.name}: Slurm job {previous}")


# ---------------------------------------------------------------- nemo_run
def _nemo_run(jobs: list[Job], cfg, run_dir: Path) -> None:
    """The same commands through NeMo-Run's SlurmExecutor, run from the login node (LocalTunnel)."""
    try:
        import nemo_run as run
    except ImportError as err:
        raise ValueError("executor=nemo_run needs NeMo-Run (an optional extra): "
                         "pip install nemo-run \"leptonai<0.47\"; or use executor=slurm") from err
    ex, t, nemo = cfg.executor, cfg.trainer, cfg.backend.nemo
    if not ex.account:
        raise ValueError("executor=nemo_run needs executor.account (NeMo-Run's SlurmExecutor requires one)")
    with run.Experiment(ex.job_name or f"nemotron-{cfg.stage.name}", log_level="WARN") as exp:
        previous = None
        for job in jobs:
            nodes, gpus = (t.num_nodes, t.devices) if job.distributed else (1, 1)
            executor = run.SlurmExecutor(
                account=ex.account, partition=ex.partition, job_name_prefix="nemotron-",
                nodes=nodes, ntasks_per_node=gpus,
                gpus_per_node=gpus, time=ex.time, exclusive=ex.exclusive,
                container_image=nemo.container_image, container_mounts=mounts(job, cfg),
                env_vars=job_env(job, cfg), tunnel=run.LocalTunnel(job_dir=str(run_dir / "nemo_run")))
            task = run.Script(inline=shell_command(job, cfg))
            previous = exp.add(task, executor=executor, name=job.name,
                               dependencies=[previous] if previous else None)
        if ex.submit:
            exp.run(detach=True)
        else:
            exp.dryrun()
            print("not submitted (executor.submit=false)")
