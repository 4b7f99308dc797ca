"""Several processes, one model: torchrun + FSDP2 for the torch backend's training stages.

PyTorch's own engine, nothing of ours: processes are started by torchrun (`torchrun --nproc_per_node=N
launch.py ...`, or `trainer.devices=N`, which runs torchrun's launcher for you: run_workers), the model is
sharded with `torch.distributed.fsdp.fully_shard` (one unit per transformer block, plus the root), and
checkpoints go through `torch.distributed.checkpoint` (DCP). With one process (world size 1, no process
group) every function here is a no-op or calls the single-process code, so that path stays as it was.

How a global batch is split (exactness): every rank reads the whole data set and computes the same global
batch indices (recipes/loop.py global_batch_indices: same seed, shuffle and order as one process); rank r
takes the r-th contiguous share (`share`) and cuts it into micro-batches. The loss normaliser (trained
tokens, labels, pairs) is the count of the *global* batch, which every rank computes from those indices
(the sum an all-reduce of the per-rank counts would give), and FSDP sums the gradients across ranks
(`gradient divide factor 1`), so N processes x micro-batch m make the same update as one process with the
same global batch. A short last batch of an epoch leaves some ranks with empty micro-batches: they run a
zero-weight stand-in so that every rank makes the same collective calls. Metrics are summed (`sum_all`) or
gathered in rank order (`gather_cat`, which gives back the global batch order); clipping uses the global
gradient norm (DTensor).

Errors: a failing rank ends the job (torchrun stops the others); the process group has a timeout, so a
rank stuck in a collective ends too. Only rank 0 logs, writes files and draws progress bars.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import types
import weakref
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer ends the job (no hang)
ERROR_DIR_ENV = "RECIPES_RANK_ERRORS"  # run_workers: where each rank leaves its one-line error
_SKELETONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # sharded model -> unsharded meta copy


# ---------------------------------------------------------------- the process group
def launched() -> bool:
    """Started by torchrun (or srun with RANK/WORLD_SIZE set) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(trainer_cfg) -> None:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the
    environment): NCCL on CUDA, gloo on CPU. Ranks other than 0 log errors only. No-op for one process."""
    if not launched() or dist.is_initialized():
        return
    from recipes.loop import pick_device

    cuda = pick_device(trainer_cfg).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    if rank() > 0:  # one copy of every message: rank 0's
        quiet()
    log.info("torch backend: %d processes (%s, %s)", world_size(), dist.get_backend(), "cuda" if cuda else "cpu")


def quiet() -> None:
    import warnings

    import transformers

    logging.getLogger().setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_main(fn):
    """fn() on rank 0, its (picklable) result on every rank. When it raises, rank 0 re-raises and the others
    exit quietly (SystemExit 1): the error is reported once, by rank 0."""
    if world_size() == 1:
        return fn()
    box = [None, None]
    if is_main():
        try:
            box = [fn(), None]
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the others know
            box = [None, f"{type(err).__name__}: {err}"]
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise SystemExit(1)
    return box[0]


# ---------------------------------------------------------------- splitting a batch across ranks
def share(items: list, unit: int = 1) -> tuple[list, int]:
    """This rank's contiguous share of `items` in whole units of `unit` items, and the share size every rank
    has when `items` divides evenly (the last shares are shorter, or empty, when it does not). Concatenating
    the shares in rank order gives `items` back."""
    per = math.ceil(len(items) / unit / world_size()) * unit
    return items[rank() * per:(rank() + 1) * per], per


def micro_batches(indices: list[int], micro_batch_size: int, unit: int = 1) -> list[list[int]]:
    """This rank's micro-batches of a global batch, as many on every rank; a rank whose share is short gets
    empty ones, for which the caller runs a zero-weight stand-in. One process: today's micro-batches."""
    mine, per = share(indices, unit)
    out = [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
    return out + [[] for _ in range(math.ceil(per / micro_batch_size) - len(out))]


def check_batch(global_batch_size: int, micro_batch_size: int) -> None:
    """The global batch must split into whole micro-batches on every rank; logs how it is split."""
    w = world_size()
    if global_batch_size % (micro_batch_size * w):
        raise ValueError(f"model.global_batch_size={global_batch_size} must be a multiple of model.micro_batch_size="
                         f"{micro_batch_size} x {w} process{'es' if w > 1 else ''}")
    if w > 1:
        log.info("world size %d: %d ranks x micro-batch %d x %d accumulation steps (global batch %d)", w, w,
                 micro_batch_size, global_batch_size // (micro_batch_size * w), global_batch_size)


# ---------------------------------------------------------------- reductions
def sum_all(*values):
    """Each value (a number or a tensor) summed over the ranks, in float64; returned in the same form."""
    if world_size() == 1:
        return values if len(values) > 1 else values[0]
    flat = torch.cat([torch.as_tensor(v, dtype=torch.float64).detach().cpu().reshape(-1) for v in values])
    flat = _on_comm_device(flat)
    dist.all_reduce(flat)
    flat, out, at = flat.cpu(), [], 0
    for v in values:
        n = torch.as_tensor(v).numel()
        part = flat[at:at + n]
        at += n
        out.append(part.reshape(v.shape).to(v.dtype) if torch.is_tensor(v) else type(v)(part.item()))
    return tuple(out) if len(out) > 1 else out[0]


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The 1-D tensors of every rank concatenated in rank order (so shares of a batch come back in batch order)."""
    if world_size() == 1:
        return t
    t = _on_comm_device(t.detach().reshape(-1))
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([t.numel()], device=t.device))
    width = max(int(s) for s in sizes)
    parts = [torch.empty(width, dtype=t.dtype, device=t.device) for _ in sizes]
    dist.all_gather(parts, torch.cat([t, t.new_zeros(width - t.numel())]))
    return torch.cat([p[:int(n)] for p, n in zip(parts, sizes)]).cpu()


def _on_comm_device(t: torch.Tensor) -> torch.Tensor:
    return t.cuda() if dist.get_backend() == "nccl" else t.cpu()


# ---------------------------------------------------------------- sharding
def prepare(model, cfg, device, keep_fp32=()):
    """The model ready to train on `device`: moved there (one process), or sharded with FSDP2 (several).

    One FSDP unit per transformer block (the classes in the model's `_no_split_modules`), one per module of
    `keep_fp32` (a reward head, which computes in float32 as NeMo's force_head_dtype), and the root for the
    rest (embeddings, final norm, output head). On CUDA the units compute in bf16 and reduce gradients in
    float32 (MixedPrecisionPolicy; the sharded master weights stay float32); on CPU all is float32.
    `model.fsdp.cpu_offload` keeps the shards and the optimizer step on the CPU, `reshard_after_forward`
    frees each block's gathered weights after its forward (less memory, one more all-gather in backward).
    """
    if world_size() == 1:
        return model.to(device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

    from recipes.loop import uses_bf16

    if is_main():  # what the final checkpoint is written from (save)
        _SKELETONS[model] = _meta_copy(model)
    fcfg = cfg.model.fsdp
    mesh = init_device_mesh(device.type, (world_size(),))
    bf16 = uses_bf16(device, cfg.trainer.precision)
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy() if fcfg.cpu_offload and device.type == "cuda" else None
    if fcfg.cpu_offload and offload is None:
        log.warning("model.fsdp.cpu_offload=true does nothing on the CPU")
    common = {"mesh": mesh, "offload_policy": offload} if offload is not None else {"mesh": mesh}
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__}: no transformer blocks found to shard (_no_split_modules)")
    for block in blocks:
        fully_shard(block, mp_policy=mp, reshard_after_forward=fcfg.reshard_after_forward, **common)
    for module in keep_fp32:
        fully_shard(module, mp_policy=MixedPrecisionPolicy(), **common)
    fully_shard(model, mp_policy=mp, **common)
    for m in model.modules():  # gradients are summed, not averaged: the loss is already normalised globally
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
    # Code that reads root-level weights outside forward (recipes/logprobs.py: the output head's weight,
    # chunk by chunk) runs through this method, which FSDP treats as a forward (all-gathers the root).
    model.fsdp_call = types.MethodType(lambda self, fn, *args: fn(*args), model)
    from torch.distributed.fsdp import register_fsdp_forward_method

    register_fsdp_forward_method(model, "fsdp_call")
    return model


def transformer_blocks(model) -> list:
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def as_forward(model, fn, *args):
    """fn(*args) as part of `model`'s forward: under FSDP the root's weights are gathered for it."""
    call = getattr(model, "fsdp_call", None)
    return call(fn, *args) if call is not None else fn(*args)


def reshard(model) -> None:
    """Free the gathered weights a forward without backward left behind. FSDP2 keeps the root's weights
    gathered after its forward (backward would need them at once), and while they are gathered the
    module's parameters *are* the full tensors: an optimizer built then would step those, not the shards."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def clip_grad_norm(model, max_norm: float) -> float:
    """Clip the trainable parameters' gradients to `max_norm` (0: no clipping) by their global norm; returns it."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _meta_copy(model):
    """A copy of `model` whose parameters are on the meta device (no memory): the same modules, names and
    ties, ready to receive the full weights (_load_full)."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def _load_full(plain, state: dict) -> None:
    """Put a full state dict into a meta copy, keeping tied parameters tied."""
    slots: dict[int, list] = {}
    for _, module in plain.named_modules(remove_duplicate=False):
        for name, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, name))
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    for group in slots.values():
        first = group[0][0]._parameters[group[0][1]]
        for module, name in group[1:]:
            module._parameters[name] = first
    left = [n for n, p in plain.named_parameters() if p.is_meta]
    if left or unexpected:
        raise RuntimeError(f"gathering the sharded model: missing {left or missing}, unexpected {unexpected}")


# ---------------------------------------------------------------- checkpoints
def save(run_dir: Path, name: str, model, optimizer, state: dict | None, write) -> Path:
    """`<run dir>/checkpoints/<name>/` of a sharded model. With an optimizer (resumable): sharded through
    torch.distributed.checkpoint (`dcp/`: trainable weights and optimizer state, each rank its shards),
    `trainer_state.json` (step, world size) and each rank's RNG state. Without (the final one): the full
    weights gathered on rank 0 into a plain copy, which `write(plain)` saves as one process would (HF
    safetensors, merged LoRA, recipe.json). Written to a temp directory, then renamed, by rank 0."""
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

        def write_plain():
            plain = _SKELETONS[model]
            _load_full(plain, full)
            return write(plain)

        return from_main(write_plain)
    return _save_sharded(run_dir, name, model, optimizer, state or {})


def _state_options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # LoRA: only the adapters (and a reward head) are saved; the frozen base is the model the run started from
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _save_sharded(run_dir: Path, name: str, model, optimizer, state: dict) -> Path:
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from data_prep.jsonl import atomic_write_text
    from recipes.loop import checkpoint_failure, replace_dir

    root = run_dir / "checkpoints"
    final, tmp = root / name, root / f".tmp-{name}"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    error = None
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_options())
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        save_file(_rng_state(), str(tmp / f"rng_state_rank{rank()}.safetensors"))
        if is_main():
            atomic_write_text(tmp / "trainer_state.json", json.dumps({**state, "world_size": world_size()}, indent=1))
    except Exception as err:  # noqa: BLE001 - every rank must learn that the checkpoint failed
        error = err
    if sum_all(int(error is not None)):
        if is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        failure = checkpoint_failure(final, error) if error is not None else None
        if failure is not None:
            raise failure from None
        if error is not None:
            raise error
        raise SystemExit(1)  # another rank failed and reports it
    if is_main():
        replace_dir(tmp, final)
    barrier()
    return final


def load(ckpt: Path, model, optimizer) -> dict:
    """Restore a checkpoint written by `save` (any number of processes > 1: DCP reshards); returns its state."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (ckpt / "dcp").is_dir():
        raise ValueError(f"{ckpt} was written by a 1-process run; resume it with one process (no torchrun, "
                         "trainer.devices=1)")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_options())
    loaded = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(loaded, checkpoint_id=str(ckpt / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"],
                   options=_state_options(strict=False))  # the frozen weights are not in it
    rng = ckpt / f"rng_state_rank{rank()}.safetensors"
    if rng.is_file():
        _set_rng_state(load_file(str(rng)))
    return json.loads((ckpt / "trainer_state.json").read_text())


def _rng_state() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------- starting the processes
def run_workers(cfg, run_dir: Path) -> None:
    """trainer.devices=N without torchrun on the command line: torchrun's own launcher (in this process)
    starts N workers on this node (recipes/backends/torch_worker.py), which train the stage of
    `<run dir>/config.yaml`. An error on any rank ends all of them; raised here as its one line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    n = cfg.trainer.devices
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={n}", "--module",
                                         "recipes.backends.torch_worker", str(run_dir)])
    repo = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="rank_errors_") as errors, _env(**{
            ERROR_DIR_ENV: errors, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    }), _quiet_launcher():
        log.info("starting %d processes (torchrun --standalone --nproc-per-node=%d)", n, n)
        try:
            torchrun(args)
        except ChildFailedError as err:
            raise WorkersFailed(first_error(Path(errors), err)) from None


class WorkersFailed(ValueError):
    """A rank of run_workers failed: its one-line error (printed by launch.py as every error is)."""


def first_error(errors: Path, err) -> str:
    """The error to report: the lowest rank's that is not a consequence of another rank's death (a broken
    connection), else the lowest rank's, else how the first process ended."""
    found = [json.loads(f.read_text()) for f in errors.glob("rank*.json")]
    if found:
        return min(found, key=lambda r: (r["comm"], r["rank"]))["message"]
    rank_, failure = min(err.failures.items())
    how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    return f"rank {rank_} ended ({how}) without an error message"


def launch_problem(cfg, one_stage: bool) -> str | None:
    """Why this run cannot start as asked (one line), or None. Under torchrun (or srun with RANK/WORLD_SIZE)
    only a training stage on backend=torch runs; trainer.num_nodes > 1 needs someone to start every node."""
    from recipes.backends.torch_backend import TRAINING_STAGES

    training = cfg.backend.name == "torch" and cfg.stage.name in TRAINING_STAGES
    if launched():
        if not one_stage:
            return ("a pipeline runs in one process: start it with python launch.py (its training stages with "
                    "trainer.devices=N start their own processes)")
        if not training:
            return (f"stage={cfg.stage.name} (backend={cfg.backend.name}) runs in one process: start it without "
                    f"torchrun; the training stages of backend=torch ({', '.join(TRAINING_STAGES)}) run on several")
        return None
    if training and one_stage and cfg.trainer.num_nodes > 1 and cfg.executor.name != "slurm" and not cfg.dry_run:
        return (f"trainer.num_nodes={cfg.trainer.num_nodes} on backend=torch: add executor=slurm (an sbatch that "
                "runs torchrun on every node), or start torchrun on each node yourself (docs/scaling.md)")
    if not one_stage and cfg.trainer.num_nodes > 1 and cfg.backend.name == "torch":
        return "a pipeline on backend=torch runs on one node: trainer.num_nodes must be 1 (backend=nemo runs on Slurm)"
    return None


def wants_slurm(cfg) -> bool:
    """backend=torch executor=slurm for a training stage, from outside a job: write an sbatch for it."""
    from recipes.backends.torch_backend import TRAINING_STAGES

    return (cfg.backend.name == "torch" and cfg.executor.name == "slurm" and cfg.stage.name in TRAINING_STAGES
            and not launched())


def speaks(message: str, comm: bool) -> bool:
    """Whether this rank prints its error line, so that a job prints one: rank 0 its own errors at once;
    another rank its own after a second (an error every rank has, rank 0 reports, and torchrun stops the
    rest meanwhile). A broken connection is usually another rank's death: rank 0 reports it only if
    nobody else did within seconds, other ranks never. Under run_workers the launcher picks (record_error)."""
    import time

    if record_error(message, comm):
        return False
    if is_main():
        if comm:
            time.sleep(3)
        return True
    time.sleep(5 if comm else 2)
    return not comm


def exit_now(message: str | None = None) -> None:
    """End this rank at once (after its error line): torchrun then stops the others within a tenth of a
    second, before they report the same error. The OS frees the run lock."""
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def record_error(message: str, comm: bool) -> bool:
    """In a worker of run_workers: leave this rank's error for the launcher to report. False elsewhere."""
    where = os.environ.get(ERROR_DIR_ENV)
    if not where:
        return False
    path = Path(where) / f"rank{rank()}.json"
    path.write_text(json.dumps({"rank": rank(), "message": message, "comm": comm}))
    return True


COMM_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                 "NCCL communicator was aborted")


def is_comm_error(err: BaseException) -> bool:
    """An error of the process group itself (a peer died, a timeout), usually another rank's consequence."""
    return isinstance(err, getattr(dist, "DistError", ())) or any(m in str(err) for m in COMM_FAILURES)


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_launcher():
    """torchrun's agent logs its rendezvous and each failure at length; the stage's own log says what matters."""
    logger = logging.getLogger("torch.distributed.elastic")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def sbatch_script(cfg, overrides: list[str], run_dir: Path) -> str:
    """A Slurm batch script that runs this stage on trainer.num_nodes nodes x trainer.devices GPUs: one
    torchrun per node (srun, one task per node), rendezvous on the first node (c10d)."""
    from recipes.executors import shell_word

    ex, t = cfg.executor, cfg.trainer
    repo = Path(__file__).resolve().parents[1]
    name = ex.job_name or f"nemotron-{cfg.stage.name}"
    # Every node must write into the same run directory (a timestamped default would differ per node).
    args = [o for o in overrides if not o.startswith(("executor=", "exp_manager.explicit_log_dir="))]
    args += [f"exp_manager.explicit_log_dir={run_dir}", "executor=local"]
    lines = ["#!/bin/bash", f"#SBATCH --job-name={shell_word(name)}", f"#SBATCH --nodes={t.num_nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={t.devices}", f"#SBATCH --time={ex.time}"]
    lines += [f"#SBATCH --account={shell_word(ex.account)}"] if ex.account else []
    lines += [f"#SBATCH --partition={shell_word(ex.partition)}"] if ex.partition else []
    lines += [f"#SBATCH --output={shell_word(ex.output or run_dir / (cfg.stage.name + '-slurm-%j.out'))}"]
    lines += ["#SBATCH --exclusive"] if ex.exclusive else []
    lines += [
        "",
        f"# {cfg.stage.name} on backend=torch: written by launch.py (executor=slurm). One torchrun per node starts",
        f"# {t.devices} processes; the {t.num_nodes * t.devices} ranks meet at the first node (c10d rendezvous).",
        "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)",
        f"cd {shell_word(repo)}",
        f"srun --ntasks-per-node=1 {shell_word(sys.executable)} -m torch.distributed.run \\",
        f"    --nnodes={t.num_nodes} --nproc-per-node={t.devices} \\",
        "    --rdzv-id=$SLURM_JOB_ID --rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:29500 \\",
        "    launch.py" + "".join(f" \\\n    {shell_word(a)}" for a in args),
        "",
    ]
    return "\n".join(lines)
