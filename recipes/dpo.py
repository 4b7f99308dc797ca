"""Preference optimisation on NeMo DPO/RPO JSONL: DPO, IPO and RPO (torch backend).

Read top to bottom: load pairs -> load model/tokenizer (+LoRA) -> tokenise (labels on the
response tokens only; recipes/preference_data.py) -> reference log-probs, once, from the on-disk
cache or one no-grad pass (recipes/ref_cache.py) -> loop over global batches (gradient
accumulation over micro-batches) -> validate, log, checkpoint -> `<run dir>/checkpoints/final/`.

`stage=rpo` is this stage with `model.dpo.preference_loss=rpo_bwd_kl` (conf/stage/rpo.yaml).
`model.rpo.iterations=N` runs N passes in `<run dir>/iter_<k>/`; pass k starts from, and is
referenced to, the final checkpoint of pass k-1 (Nemotron-4 report §3.3.2).

The loss of a global batch of B pairs is NeMo-Aligner's (recipes/losses.py):

    preference_loss_weight · (1/B) Σ_b pref_b  +  sft_loss_weight · (1/B) Σ_b −logp_chosen_b

Each micro-batch backpropagates its per-pair terms divided by the *global* B, so accumulation
4 x micro-batch 1 gives the same update as 1 x 4 (NeMo-RL's rule).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
from pathlib import Path

import torch

from data_prep.jsonl import Rejects
from recipes import distributed, logprobs, loop, ref_cache
from recipes.chat import IGNORE_INDEX
from recipes.losses import REWARD_AWARE, preference_loss, preference_metrics
from recipes.models import (RECIPE_FILE, final_merged, is_peft, load_causal_lm, load_hf_tokenizer, load_policy,
                            recipe_meta, resolve_name)
from recipes.preference_data import Pair, encode_pairs, load_pairs, pair_texts, pairs_digest

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- forward pass
def batch_logps(model, pairs: list[Pair], pad_id: int, device, precision, chunk_tokens: int) -> tuple[torch.Tensor, ...]:
    """Summed response log-probs and token counts, (B,) each: (chosen, rejected, n_chosen, n_rejected).

    Chosen and rejected go through one forward pass, concatenated along the batch (as NeMo does);
    only response positions reach the output head, `model.logprob_chunk_tokens` at a time.
    """
    batch = logprobs.collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    with loop.autocast(device, precision):
        logps, n = logprobs.sequence_logps(model, batch, chunk_tokens)  # sums; means are derived where asked for
    b = len(pairs)
    return logps[:b], logps[b:], n[:b], n[b:]


# ---------------------------------------------------------------- reference log-probs
def load_reference(path: str, tokenizer, device):
    """The frozen reference policy `model.dpo.reference`: a checkpoint (an adapter-only one of ours too, a hub
    id or a GGUF) with the policy's tokenizer."""
    key = "model.dpo.reference"
    path = resolve_name(path, key)
    if any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        if load_hf_tokenizer(path, key).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"model.dpo.reference={path}: its tokenizer differs from the policy's")
    model = load_causal_lm(path, torch.float32, key)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(f"model.dpo.reference={path}: vocabulary smaller than the policy tokenizer's")
    return model


def compute_reference(model, pairs: list[Pair], cfg, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Reference log-probs of every pair: a forward pass and nothing else. Eval mode (no dropout),
    no_grad, no KV cache, only response positions through the output head (bench/bench_ref_pass.py:
    at a 128k vocabulary the head over every position was half the cost); pairs go in order of
    length, so a micro-batch carries little padding (values are per pair, written back in input
    order). Not inference_mode: it gains nothing measurable, and a buffer a model caches lazily
    during the pass (some rotary tables) would then be an inference tensor that training cannot use.
    Several processes: each computes its share of the micro-batches, and every rank gets all values."""
    was_training = model.training
    model.eval()
    n = len(pairs)
    names = ("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens")
    order = sorted(range(n), key=lambda i: max(len(pairs[i].chosen.input_ids), len(pairs[i].rejected.input_ids)))
    batches = loop.micro_batches(order, cfg.model.micro_batch_size)
    mine, per = distributed.share(batches)
    done, parts = [], {k: [] for k in names}
    with torch.no_grad():
        for mb in mine + [[]] * (per - len(mine)):  # an empty one: a stand-in, as many passes on every rank
            values = batch_logps(model, [pairs[i] for i in mb or batches[0]], pad_id, device, cfg.trainer.precision,
                                 cfg.model.logprob_chunk_tokens)
            if mb:
                done += mb
                for name, v in zip(names, values):
                    parts[name].append(v.double().cpu())
    model.train(was_training)
    if distributed.is_sharded(model):
        distributed.reshard(model)  # before the optimizer is built from the parameters
    where = distributed.gather_cat(torch.tensor(done, dtype=torch.long))
    out = {}
    for name in names:
        dtype = torch.long if name.endswith("tokens") else torch.float32
        values = distributed.gather_cat(torch.cat(parts[name]) if parts[name] else torch.zeros(0, dtype=torch.float64))
        out[name] = torch.zeros(n, dtype=dtype)
        out[name][where] = values.to(dtype)
    return out


def attach_reference_logps(cfg, policy, tokenizer, datasets: list[tuple[str, list[Pair]]], device) -> None:
    """Fill `pair.ref_chosen/ref_rejected` from the cache, computing (and caching) what is missing.

    Called before any training step (and before a resume checkpoint is loaded), so with
    `model.dpo.reference=null` the policy itself is still the initial policy; with LoRA the
    reference is the policy with its adapters disabled. A reference checkpoint is loaded only
    on a cache miss, and freed before training starts.
    """
    reference = cfg.model.dpo.reference
    identity = ref_cache.reference_identity(cfg.model, reference, len(tokenizer), cfg.seed)
    numerics = {"device": device.type, "precision": cfg.trainer.precision}
    if distributed.world_size() > 1 and loop.uses_bf16(device, cfg.trainer.precision):
        numerics["fsdp_params"] = "bf16"  # FSDP computes with bf16 weights, one GPU with float32 ones
    todo = []
    for path, pairs in datasets:
        if not pairs:
            continue
        parts = ref_cache.entry_parts(identity, path, pairs_digest(pairs), cfg.data, numerics)
        key = ref_cache.key_of(parts)
        cached = ref_cache.load(key, len(pairs))
        if distributed.sum_all(int(cached is None)):  # all ranks compute, or none (a cache may be node-local)
            todo.append((path, pairs, key, parts))
        else:
            log.info("reference log-probs for %s: cache hit (%s)", Path(path).name, key)
            _attach(pairs, cached)
    if not todo:
        return
    model = distributed.prepare(load_reference(reference, tokenizer, device), cfg, device) if reference else policy
    no_adapter = policy.disable_adapter() if not reference and is_peft(policy) else contextlib.nullcontext()
    done: dict[str, dict] = {}  # validation_ds may be the training file: compute it once
    with no_adapter:
        for path, pairs, key, parts in todo:
            if key not in done:
                log.info("reference log-probs for %s: computing %d pairs (cached as %s)", Path(path).name, len(pairs), key)
                done[key] = compute_reference(model, pairs, cfg, tokenizer.pad_token_id, device)
                if distributed.local_rank() == 0:  # one writer per node (the cache may be node-local)
                    ref_cache.save(key, done[key], parts)
            _attach(pairs, done[key])
    if reference:  # free the reference model: training never needs it again
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _attach(pairs: list[Pair], values: dict[str, torch.Tensor]) -> None:
    n_c, n_r = values["chosen_tokens"].tolist(), values["rejected_tokens"].tolist()
    for p, c, r, nc, nr in zip(pairs, values["chosen_logps"].tolist(), values["rejected_logps"].tolist(), n_c, n_r):
        if (nc, nr) != (_n_scored(p.chosen.labels), _n_scored(p.rejected.labels)):
            raise RuntimeError(f"reference log-probs do not match line {p.line}; delete {ref_cache.entry_dir()}")
        p.ref_chosen, p.ref_rejected = c, r


def _n_scored(labels: list[int]) -> int:
    return sum(1 for x in labels[1:] if x != IGNORE_INDEX)  # sequence_logps never scores label 0


# ---------------------------------------------------------------- loss
def pair_terms(dpo_cfg, pairs: list[Pair], lc, lr, nc, nr) -> dict[str, torch.Tensor]:
    """Per-pair loss terms and the log-probs they used, (B,) each."""
    def as_used(x, n, average):  # NeMo: sum over response tokens, or the per-token mean
        return x / n.clamp(min=1) if average else x

    dev = lc.device
    avg = dpo_cfg.preference_average_log_probs
    ref_c = torch.tensor([p.ref_chosen for p in pairs], device=dev)
    ref_r = torch.tensor([p.ref_rejected for p in pairs], device=dev)
    t = {"pc": as_used(lc, nc, avg), "pr": as_used(lr, nr, avg), "rc": as_used(ref_c, nc, avg), "rr": as_used(ref_r, nr, avg),
         "rew_c": torch.tensor([p.chosen_reward for p in pairs], device=dev),
         "rew_r": torch.tensor([p.rejected_reward for p in pairs], device=dev)}
    t["pref"] = preference_loss(dpo_cfg.preference_loss, t["pc"], t["pr"], t["rc"], t["rr"], t["rew_c"], t["rew_r"],
                                beta=dpo_cfg.ref_policy_kl_penalty, eta=dpo_cfg.gt_reward_scale)
    t["sft"] = -as_used(lc, nc, dpo_cfg.sft_average_log_probs)  # losses.sft_loss, per pair
    t["loss"] = dpo_cfg.preference_loss_weight * t["pref"] + dpo_cfg.sft_loss_weight * t["sft"]
    return t


def summarise(parts: list[dict], dpo_cfg) -> dict[str, float]:
    """Global-batch metrics: losses, NeMo's acc/rewards_*, margin, and for RPO the gap fit (several processes:
    over every rank's pairs, gathered in batch order)."""
    t = {k: distributed.gather_cat(torch.cat([p[k].detach().float() for p in parts])) for k in parts[0]}
    m = {"loss": t["loss"].mean(), "preference_loss": t["pref"].mean(), "sft_loss": t["sft"].mean()}
    m.update(preference_metrics(t["pc"], t["pr"], t["rc"], t["rr"]))
    delta = (t["pc"] - t["rc"]) - (t["pr"] - t["rr"])  # implicit reward gap Δ, unscaled
    m["margin"] = delta.mean()
    if dpo_cfg.preference_loss in REWARD_AWARE:
        target = dpo_cfg.gt_reward_scale * (t["rew_c"] - t["rew_r"])  # η·Δr
        fitted = dpo_cfg.ref_policy_kl_penalty * delta  # β·Δ
        m.update(target_gap=target.mean(), beta_delta=fitted.mean(), gap_abs_err=(fitted - target).abs().mean())
    return {k: float(v) for k, v in m.items()}


# ---------------------------------------------------------------- steps
def terms(model, pairs: list[Pair], cfg, pad_id: int, device) -> dict[str, torch.Tensor]:
    """pair_terms of one micro-batch, from a forward pass of the policy."""
    return pair_terms(cfg.model.dpo, pairs, *batch_logps(model, pairs, pad_id, device, cfg.trainer.precision,
                                                         cfg.model.logprob_chunk_tokens))


def train_step(model, optimizer, pairs: list[Pair], indices: list[int], cfg, pad_id: int, device) -> dict:
    """One optimizer step over a global batch, accumulating micro-batch gradients (several processes: each
    its share of the batch, recipes/distributed.py)."""
    parts, n_tokens = [], 0
    for mb in distributed.micro_batches(indices, cfg.model.micro_batch_size):
        t = terms(model, [pairs[i] for i in mb or indices[:1]], cfg, pad_id, device)  # empty: a zero-weight stand-in
        (t["loss"].sum() / len(indices) * bool(mb)).backward()  # divided by the *global* batch size
        parts.append({k: v.detach()[:len(mb)] for k, v in t.items()})
        n_tokens += sum(len(pairs[i].chosen.input_ids) + len(pairs[i].rejected.input_ids) for i in mb)
    grad_norm = distributed.clip_grad_norm(model, cfg.trainer.gradient_clip_val)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**summarise(parts, cfg.model.dpo), "grad_norm": grad_norm, "tokens": distributed.sum_all(n_tokens)}


@torch.no_grad()
def validate(model, pairs: list[Pair], cfg, pad_id: int, device) -> dict:
    model.eval()
    limit = cfg.trainer.limit_val_batches or None
    batches = loop.micro_batches(list(range(len(pairs))), cfg.model.micro_batch_size)[:limit]
    mine, per = distributed.share(batches)  # each rank its share (one process: all of them)
    parts = []
    for mb in mine + [[]] * (per - len(mine)):  # an empty one: a stand-in, as many passes on every rank
        t = terms(model, [pairs[i] for i in mb or batches[0]], cfg, pad_id, device)
        parts.append({k: v[:len(mb)] for k, v in t.items()})
    model.train()
    return {f"val_{k}": v for k, v in summarise(parts, cfg.model.dpo).items()}


# ---------------------------------------------------------------- one training pass
def check_settings(cfg) -> None:
    d = cfg.model.dpo
    if d.preference_loss_weight == 0 and d.sft_loss_weight == 0:
        raise ValueError("model.dpo.preference_loss_weight and model.dpo.sft_loss_weight are both 0: nothing to train")
    distributed.check_batch(cfg.model.global_batch_size, cfg.model.micro_batch_size)
    if cfg.stage.name == "rpo" and d.preference_loss not in REWARD_AWARE:
        log.warning("stage=rpo with model.dpo.preference_loss=%s ignores the rewards", d.preference_loss)


def train_once(cfg, run_dir: Path, desc: str) -> Path:
    """One DPO/RPO pass in `run_dir`; returns its final checkpoint."""
    check_settings(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    loop.seed_everything(cfg.seed)
    device = loop.pick_device(cfg.trainer)
    loss_name = cfg.model.dpo.preference_loss
    reward_aware = loss_name in REWARD_AWARE
    rejects = Rejects()
    train_path, val_path = cfg.model.data.train_ds.file_path, cfg.model.data.validation_ds.file_path
    if not train_path:
        raise ValueError(f"model.data.train_ds.file_path is required for stage={cfg.stage.name}")
    ds = cfg.model.data
    train_rows = load_pairs(train_path, cfg.data, rejects, reward_aware, loss_name, ds.train_ds.split)
    val_rows = load_pairs(val_path, cfg.data, rejects, reward_aware, loss_name, ds.validation_ds.split,
                          "validation_ds") if val_path else []

    # Template and LoRA/full choice: the starting checkpoint's unless given (models.inherit).
    tokenizer, model = load_policy(cfg, pair_texts(train_rows))
    model = distributed.prepare(model, cfg, device)  # to the device, or sharded over the processes
    model.train()
    recipe = recipe_meta(cfg)
    train, counts = encode_pairs(train_rows, train_path, tokenizer, cfg.data, cfg.model.data, rejects)
    val = encode_pairs(val_rows, val_path, tokenizer, cfg.data, cfg.model.data, rejects)[0] if val_rows else []
    if loop.save_rejects(rejects, run_dir):
        log.warning("%d rows rejected (%s); see %s", len(rejects), rejects.counts(), run_dir / "rejects.jsonl")
    if not train:
        raise ValueError(f"{train_path}: no trainable pairs after filtering")
    log.info("train: %s; validation: %d pairs", counts, len(val))
    # Before any step and before a resume checkpoint is loaded: the policy is still the initial one.
    attach_reference_logps(cfg, model, tokenizer, [(train_path, train), (val_path, val)], device)

    gbs = cfg.model.global_batch_size
    steps = loop.total_steps(cfg.trainer, len(train), gbs)
    optimizer = loop.build_optimizer(model, cfg.model.optim)
    start = 0
    ckpt = loop.latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        start = loop.load_checkpoint(ckpt, model, optimizer)["step"]
        log.info("resuming from %s at step %d", ckpt, start)
    logger = loop.MetricsLogger(run_dir, cfg, resume=ckpt is not None)
    pad_id = tokenizer.pad_token_id

    bar = loop.progress(cfg, start, steps, desc)
    speed = loop.Throughput()
    for step in bar:
        lr = loop.set_lr(optimizer, step, steps, cfg.model.optim)
        idx = loop.global_batch_indices(step, len(train), gbs, cfg.seed, cfg.data.shuffle)
        m = train_step(model, optimizer, train, idx, cfg, pad_id, device)
        m.update(lr=lr, tokens_per_s=speed.tick(m.pop("tokens")), step_time_s=speed.last_dt)
        done = step + 1
        if val and loop.due(cfg.trainer.val_check_interval, done, steps):
            m.update(validate(model, val, cfg, pad_id, device))
        logger.log(m, done)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['acc']:.2f}", margin=f"{m['margin']:.3f}")
        if loop.due(cfg.trainer.save_interval, done, steps):
            loop.save_checkpoint(run_dir, f"step_{done:06d}", model, tokenizer, optimizer, {"step": done},
                                 recipe=recipe)
    if val:
        logger.log(validate(model, val, cfg, pad_id, device), steps)
    logger.close()
    return loop.save_checkpoint(run_dir, "final", model, tokenizer, merged=final_merged(cfg), recipe=recipe)


# ---------------------------------------------------------------- the stage, with iterative RPO
def iteration_cfg(cfg, k: int, previous_final: Path | None):
    """Pass k > 1 starts from the previous pass's final checkpoint (an HF model with its tokenizer, also
    for model.source=tiny; with LoRA and save_merged=false its adapter is merged on load, and a fresh one
    trained) and uses it as the reference; rows are reshuffled (seed + k - 1)."""
    if k == 1:
        return cfg
    c = copy.deepcopy(cfg)
    c.model.source = "hf"
    c.model.name_or_path = str(previous_final)
    c.model.dpo.reference = None  # the initial policy of this pass, i.e. previous_final
    c.seed = cfg.seed + k - 1
    return c


def run(cfg, run_dir: Path) -> Path:
    n = cfg.model.rpo.iterations
    if n < 1:
        raise ValueError(f"model.rpo.iterations must be >= 1, got {n}")
    if n == 1:
        return train_once(cfg, run_dir, cfg.stage.name)
    final = None
    for k in range(1, n + 1):
        it_dir = run_dir / f"iter_{k}"
        done = it_dir / "checkpoints" / "final"
        if cfg.resume and (done / RECIPE_FILE).is_file():  # written last, inside the atomic rename
            log.info("%s iteration %d/%d already finished (%s); skipping it", cfg.stage.name, k, n, done)
            final = done
            continue
        log.info("%s iteration %d/%d in %s", cfg.stage.name, k, n, it_dir)
        final = train_once(iteration_cfg(cfg, k, final), it_dir, f"{cfg.stage.name} {k}/{n}")
    return final
