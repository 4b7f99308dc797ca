"""Helpers every training stage shares: device and precision, optimiser and schedule,
batch order, metrics logging, and atomic safetensors checkpoints with exact resume.

Plain functions (and one small logger class); each stage writes its own loop.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from data_prep.jsonl import append_bytes, atomic_write_text, write_error
from recipes import distributed
from recipes.models import RECIPE_FILE, is_peft, save_hf

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- device, precision, seeds
def pick_device(trainer_cfg) -> torch.device:
    want = trainer_cfg.accelerator
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def uses_bf16(device: torch.device, precision: str) -> bool:
    return precision in ("bf16", "bf16-mixed") or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (weights stay fp32), plain fp32 on CPU unless bf16 is asked for."""
    if uses_bf16(device, precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- optimiser and schedule
def build_optimizer(model, optim_cfg) -> torch.optim.Optimizer:
    if optim_cfg.name.lower() not in ("adamw", "distributed_fused_adam", "fused_adam"):
        raise ValueError(f"model.optim.name: only adamw is supported on the torch backend, got {optim_cfg.name!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    # NeMo-Aligner's distributed_fused_adam is AdamW; the torch backend uses torch's.
    return torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay, betas=tuple(optim_cfg.betas))


def lr_factor(step: int, total_steps: int, sched_cfg, base_lr: float) -> float:
    """Linear warmup from 0, then constant or cosine decay to `min_lr` at `total_steps`."""
    warmup = sched_cfg.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if sched_cfg.name == "constant":
        return 1.0
    if sched_cfg.name != "cosine":
        raise ValueError(f"model.optim.sched.name must be constant or cosine, got {sched_cfg.name!r}")
    min_factor = sched_cfg.min_lr / base_lr if base_lr > 0 else 0.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, step: int, total_steps: int, optim_cfg) -> float:
    lr = optim_cfg.lr * lr_factor(step, total_steps, optim_cfg.sched, optim_cfg.lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


# ---------------------------------------------------------------- batch order
def steps_per_epoch(n_examples: int, global_batch_size: int) -> int:
    return math.ceil(n_examples / global_batch_size)


def total_steps(trainer_cfg, n_examples: int, global_batch_size: int) -> int:
    if trainer_cfg.max_steps and trainer_cfg.max_steps > 0:
        return trainer_cfg.max_steps
    return trainer_cfg.max_epochs * steps_per_epoch(n_examples, global_batch_size)


def global_batch_indices(step: int, n_examples: int, global_batch_size: int, seed: int, shuffle: bool) -> list[int]:
    """Example indices of optimizer step `step`: a fixed permutation per epoch, so a resumed
    run sees exactly the batches an uninterrupted run would."""
    per_epoch = steps_per_epoch(n_examples, global_batch_size)
    epoch, k = divmod(step, per_epoch)
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n_examples, generator=g).tolist()
    else:
        order = list(range(n_examples))
    return order[k * global_batch_size : (k + 1) * global_batch_size]


def due(interval: int, done: int, total: int) -> bool:
    """Whether a periodic action (validation, checkpoint) falls after step `done`. An interval of 0
    disables it, and the last step is excluded: every stage validates and saves `final` at the end."""
    return bool(interval) and done % interval == 0 and done < total


def micro_batches(indices: list[int], micro_batch_size: int) -> list[list[int]]:
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]


def progress(cfg, start: int, steps: int, desc: str):
    """The steps of a training loop, with a progress bar (rank 0 only, unless logger.progress_bar=false)."""
    return tqdm(range(start, steps), initial=start, total=steps, desc=desc,
                disable=not cfg.logger.progress_bar or not distributed.is_main())


def save_rejects(rejects, run_dir: Path) -> bool:
    """Write (or clear) `<run dir>/rejects.jsonl` on rank 0; whether there are rejects, on every rank."""
    if distributed.is_main():
        rejects.save(run_dir / "rejects.jsonl")  # also removes a stale one from an earlier run
    return len(rejects) > 0


def pad_batch(seqs: list[list[int]], pad_value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad_value] * (width - len(s)) for s in seqs], dtype=torch.long)


# ---------------------------------------------------------------- metrics
class MetricsLogger:
    """Appends metrics to `<run dir>/metrics.jsonl` and `metrics.csv`, and to wandb when enabled.

    Each row is written whole or not at all (a full disk leaves no torn row). A resumed run first cuts
    both files back to the step of the checkpoint it resumes from, so every step appears once, and
    continues the same wandb run (online: rewound to that step with wandb's `resume_from`).
    """

    def __init__(self, run_dir: Path, cfg, resume: bool):
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.fields: list[str] | None = None
        self.wandb = None
        self.enabled = distributed.is_main()  # one process writes the metrics: rank 0
        if not self.enabled:
            return
        ckpt = latest_checkpoint(run_dir) if resume else None
        step = int(ckpt.name.split("_")[1]) if ckpt is not None else 0
        if ckpt is None:
            for p in (self.jsonl, self.csv):
                p.unlink(missing_ok=True)
        else:
            cut_metrics(run_dir, step)
        wcfg = cfg.logger.wandb
        if wcfg.enabled and wcfg.mode != "disabled":
            import wandb

            safe_cfg = OmegaConf.to_container(cfg, resolve=True)
            run_id = _wandb_run_id(run_dir, fresh=ckpt is None)
            where = ({"resume_from": f"{run_id}?_step={step}"} if ckpt is not None and wcfg.mode == "online"
                     else {"id": run_id, "resume": "allow"})
            self.wandb = wandb.init(
                project=wcfg.project, name=wcfg.name or run_dir.name, mode=wcfg.mode, dir=str(run_dir),
                config=safe_cfg, **where,
            )

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}}
        append_bytes(self.jsonl, (json.dumps(row) + "\n").encode())
        self._csv_row(row)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def _csv_row(self, row: dict) -> None:
        # One CSV for train and validation rows: append, and rewrite with the union of
        # columns only when a new column appears (rare: the first validation row).
        if self.fields is None and self.csv.exists():
            with open(self.csv, newline="") as f:
                self.fields = next(csv.reader(f), None)
        if self.fields is not None and set(row) <= set(self.fields):
            append_bytes(self.csv, _csv_text([row], self.fields, header=False).encode())
            return
        rows = _csv_rows(self.csv)
        rows.append(row)
        self.fields = list(dict.fromkeys([*(self.fields or []), *row]))
        atomic_write_text(self.csv, _csv_text(rows, self.fields))

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _csv_text(rows: list[dict], fields: list[str], header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\r\n")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _csv_rows(path: Path) -> list[dict]:
    """The complete rows of metrics.csv (a row torn by an older version's crash is left out)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    if not lines:
        return []
    head = lines[0]
    return [dict(zip(head, r)) for r in lines[1:] if len(r) == len(head)]


def cut_metrics(run_dir: Path, step: int) -> None:
    """Drop the metric rows after `step` (and any torn row): what a resume from step_<step> re-logs."""
    jsonl, csv_path = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
    if jsonl.exists():
        kept = []
        for line in jsonl.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(jsonl, "".join(kept))
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            head = next(csv.reader(f), None)
        rows = [r for r in _csv_rows(csv_path) if _step_of(r) is not None and _step_of(r) <= step]
        atomic_write_text(csv_path, _csv_text(rows, head) if head else "")


def _step_of(row: dict) -> int | None:
    try:
        return int(float(row["step"]))
    except (KeyError, ValueError, TypeError):
        return None


def _wandb_run_id(run_dir: Path, fresh: bool) -> str:
    """The run's wandb id, kept in <run dir>/wandb/run_id so that a resume continues the same wandb run."""
    path = run_dir / "wandb" / "run_id"
    if not fresh and path.is_file():
        return path.read_text().strip()
    run_id = os.urandom(6).hex()
    atomic_write_text(path, run_id + "\n")
    return run_id


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- checkpoints
def save_config(cfg, run_dir: Path) -> None:
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    """Split an optimizer state dict into safetensors-able tensors and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, name: str, model, tokenizer, optimizer=None, state: dict | None = None,
                    merged: bool = False, extra_files: dict | None = None, extra_tensors: dict | None = None,
                    recipe: dict | None = None) -> Path:
    """Write `<run dir>/checkpoints/<name>/` atomically: build it in a temp dir, then rename.

    Holds a loadable HF checkpoint (safetensors + tokenizer + config; a LoRA run without `merged`: the
    adapter, loaded on recipe.json's base_model), `recipe.json` (models.recipe_meta, plus `adapter_only`),
    and for resumable checkpoints the optimizer state (`optimizer.safetensors`) and `trainer_state.json`.
    A model sharded over several processes is written by recipes/distributed.py: resumable checkpoints
    sharded (torch.distributed.checkpoint), the final one gathered on rank 0 and written here.
    """
    if distributed.is_sharded(model):
        return distributed.save(run_dir, name, model, optimizer, state, lambda plain: save_checkpoint(
            run_dir, name, plain, tokenizer, merged=merged, extra_files=extra_files, extra_tensors=extra_tensors,
            recipe=recipe))
    ckpt_root = run_dir / "checkpoints"
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_hf(model, tokenizer, tmp, merged=merged)
        if recipe is not None:
            meta = {**recipe, "adapter_only": is_peft(model) and not merged}
            atomic_write_text(tmp / RECIPE_FILE, json.dumps(meta, indent=1) + "\n")
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file({"cpu": torch.get_rng_state()}, str(tmp / "rng_state.safetensors"))
            atomic_write_text(tmp / "trainer_state.json", json.dumps({**(state or {}), **meta}, indent=1))
        for fname, text in (extra_files or {}).items():
            atomic_write_text(tmp / fname, text)
        for fname, tensors in (extra_tensors or {}).items():  # e.g. a reward model's head
            save_file(tensors, str(tmp / fname))
    except BaseException as err:
        # A full disk (or Ctrl-C) mid-save: the partial copy goes, so it does not keep the disk full; the
        # checkpoints already there stay as they were. The message gives the space left when it failed.
        failure = checkpoint_failure(final, err)
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from None
        raise
    replace_dir(tmp, final)
    return final


def checkpoint_failure(final: Path, err: BaseException) -> OSError | None:
    """The one-line error for a failed checkpoint write (a full disk: with the space left), or None."""
    if "No space left" in str(err) and not isinstance(err, OSError):  # safetensors' (or DCP's) own error
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write_error(final, err) if isinstance(err, OSError) else None


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a complete `tmp` to `final`; an older `final` goes only once the new one is in place."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    return ckpts[-1] if ckpts else None


def load_checkpoint(ckpt: Path, model, optimizer) -> dict:
    """Restore trainable weights, optimizer and RNG from a checkpoint written by save_checkpoint."""
    if distributed.is_sharded(model):
        return distributed.load(ckpt, model, optimizer)
    if (ckpt / "dcp").is_dir():
        n = json.loads((ckpt / "trainer_state.json").read_text()).get("world_size", "several")
        raise ValueError(f"{ckpt} was written by {n} processes; resume it with several processes "
                         f"(torchrun --nproc_per_node=N or trainer.devices=N, N > 1)")
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    else:
        weights = {}
        for f in sorted(ckpt.glob("model*.safetensors")):
            weights.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")} if model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"{ckpt}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    _load_optimizer(optimizer, load_file(str(ckpt / "optimizer.safetensors")), meta)
    torch.set_rng_state(load_file(str(ckpt / "rng_state.safetensors"))["cpu"])
    return meta


class Throughput:
    """Tokens per second over the last step."""

    def __init__(self):
        self.t = time.perf_counter()
        self.last_dt = 0.0

    def tick(self, n_tokens: int) -> float:
        now = time.perf_counter()
        self.last_dt = max(now - self.t, 1e-9)
        self.t = now
        return n_tokens / self.last_dt
