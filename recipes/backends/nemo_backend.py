"""backend=nemo: translate a run config into NeMo-Aligner's entry point and Hydra overrides.

We never write a distributed engine. NeMo-Aligner already trains SFT, reward models and the
DPO family on Megatron at any scale; this module only says, in NeMo-Aligner's own key names,
what our config means, and hands the command to an executor (recipes/executors.py):

    overrides_for(cfg) -> (script, ["trainer.num_nodes=24", "model.optim.lr=7e-07", ...])

One function per stage plus the settings every script shares. A key that is not in the
v0.7.0 yaml of that script gets Hydra's `++` (add-or-override); every other key exists there,
which tests/test_nemo_backend.py checks against the v0.7.0 key list. Facts cited as §N are in
shared/reference/NEMO_ALIGNER.md.
"""

from __future__ import annotations

import re
from pathlib import Path

# stage -> (entry point under <aligner_dir>, the trainer.<algo> block of its yaml)
SCRIPTS = {
    "sft": ("examples/nlp/gpt/train_gpt_sft.py", "sft"),
    "rm": ("examples/nlp/gpt/train_reward_model.py", "rm"),
    "dpo": ("examples/nlp/gpt/train_gpt_dpo.py", "dpo"),
    "rpo": ("examples/nlp/gpt/train_gpt_dpo.py", "dpo"),  # RPO = the DPO script with an rpo_* loss (§2.4)
    # SteerLM attribute-conditioned SFT = NeMo-Aligner's SFT on labelled chat rows (steerlm.rst).
    "steerlm_sft": ("examples/nlp/gpt/train_gpt_sft.py", "sft"),
}
STAGES = (*SCRIPTS, "convert")

# The .nemo each script writes at the end of training: <explicit_log_dir>/checkpoints/<exp_manager.name>.nemo
# (exp_manager.name is megatron_gpt_sft in gpt_sft.yaml, megatron_gpt in training_rm/gpt_dpo.yaml).
NEMO_FILE = {"sft": "megatron_gpt_sft.nemo", "rm": "megatron_gpt.nemo", "dpo": "megatron_gpt.nemo",
             "rpo": "megatron_gpt.nemo", "steerlm_sft": "megatron_gpt_sft.nemo"}

# NeMo-Aligner's trainers validate/save every N steps and also at the last step, but an interval of 0
# *disables* validation or saving altogether, and validation must divide saving (check_progress in
# nemo_aligner/utils/trainer_utils.py, code-reading). Our 0 means "only at the end"; an interval longer
# than any run gives exactly that.
AT_END_ONLY = 1_000_000_000

# Our LoRA target modules (HF names) -> NeMo's lora_tuning.target_modules (fused Megatron layers).
LORA_TARGETS = {"q_proj": "attention_qkv", "k_proj": "attention_qkv", "v_proj": "attention_qkv",
                "o_proj": "attention_dense", "gate_proj": "mlp_fc1", "up_proj": "mlp_fc1",
                "down_proj": "mlp_fc2"}

# The Nemotron/SteerLM chat template (§1a, steerlm.rst); gpt_sft.yaml's defaults are control characters.
NEMOTRON_CHAT_TOKENS = {"system_turn_start": "<extra_id_0>", "turn_start": "<extra_id_1>",
                        "label_start": "<extra_id_2>"}


def script_path(cfg) -> str:
    return f"{cfg.backend.nemo.aligner_dir.rstrip('/')}/{SCRIPTS[cfg.stage.name][0]}"


def final_checkpoint(stage: str, log_dir) -> Path:
    return Path(log_dir) / "checkpoints" / NEMO_FILE[stage]


def overrides_for(cfg, log_dir=None, restore_from=None) -> tuple[str, list[str]]:
    """(entry point, Hydra overrides) for one NeMo-Aligner run of cfg.stage.name.

    log_dir (default exp_manager.explicit_log_dir) is where NeMo writes logs and checkpoints;
    restore_from (default backend.nemo.restore_from_path) is the checkpoint to start from.
    Raises ValueError, naming the key, for settings NeMo-Aligner cannot honour.
    """
    stage = cfg.stage.name
    if stage not in SCRIPTS:
        raise ValueError(f"stage={stage} has no NeMo-Aligner training script (backend=nemo trains {', '.join(SCRIPTS)})")
    log_dir = log_dir or cfg.exp_manager.explicit_log_dir
    if not log_dir:
        raise ValueError("backend=nemo needs a run directory: set exp_manager.explicit_log_dir")
    restore = restore_from or restore_path(cfg)
    _check_parallelism(cfg)
    cfg = without_auto(cfg)
    values = {**_shared(cfg, str(_abs(log_dir))), **STAGE_OVERRIDES[stage](cfg, restore)}
    overrides = [f"{key}={hydra_value(value)}" for key, value in values.items()]
    return script_path(cfg), merge_overrides(overrides, list(cfg.backend.nemo.extra_overrides))


def without_auto(cfg):
    """A copy with the torch backend's `auto` values made concrete. They mean "as the starting checkpoint's
    recipe.json says", and a .nemo carries none: NeMo renders the Nemotron tokens (§1a) and trains the
    full model unless LoRA is asked for."""
    import copy

    cfg = copy.deepcopy(cfg)
    if cfg.data.prompt_template == "auto":
        cfg.data.prompt_template = "nemotron"
    if cfg.model.peft.peft_scheme == "auto":
        cfg.model.peft.peft_scheme = "none"
    return cfg


# ---------------------------------------------------------------- shared by every script
def _shared(cfg, log_dir: str) -> dict:
    algo = SCRIPTS[cfg.stage.name][1]
    t, optim = cfg.trainer, cfg.model.optim
    val_every, save_every = _intervals(t.val_check_interval, t.save_interval)
    out = {
        "trainer.num_nodes": t.num_nodes,
        "trainer.devices": t.devices,
        # GPUs always have bf16; our "auto" means bf16 on CUDA (recipes/config.py TrainerConfig).
        "trainer.precision": "bf16" if t.precision == "auto" else t.precision,
        # The stage budget lives under trainer.<algo> in NeMo-Aligner (STYLE.md; §2.1, §2.3, §2.4).
        f"trainer.{algo}.max_epochs": t.max_epochs,
        f"trainer.{algo}.max_steps": t.max_steps,
        f"trainer.{algo}.val_check_interval": val_every,
        f"trainer.{algo}.save_interval": save_every,
        # Ours: 0 = the whole validation set. NeMo's: 0 disables validation, a float is a fraction.
        f"trainer.{algo}.limit_val_batches": t.limit_val_batches or 1.0,
        f"trainer.{algo}.gradient_clip_val": float(t.gradient_clip_val),
        "model.seed": cfg.seed,
        **_optim(optim),
        "exp_manager.explicit_log_dir": log_dir,
        # NeMo resumes from <log dir>/checkpoints whenever it finds one; ours resumes only when asked.
        "exp_manager.resume_if_exists": bool(cfg.resume),
    }
    wandb = cfg.logger.wandb
    out["exp_manager.create_wandb_logger"] = bool(wandb.enabled and wandb.mode != "disabled")
    if out["exp_manager.create_wandb_logger"]:
        out["exp_manager.wandb_logger_kwargs.project"] = wandb.project
        out["exp_manager.wandb_logger_kwargs.name"] = wandb.name or f"{cfg.stage.name}-{Path(log_dir).name}"
    if cfg.model.activations_checkpointing:  # = model.gradient_checkpointing unless set
        # Full uniform recompute, one layer per chunk: the steerlm.rst 70B recipe's setting.
        plus = "" if cfg.stage.name == "sft" else "++"  # only gpt_sft.yaml lists these keys
        out[f"{plus}model.activations_checkpoint_granularity"] = "full"
        out[f"{plus}model.activations_checkpoint_method"] = "uniform"
        out[f"{plus}model.activations_checkpoint_num_layers"] = 1
    return out


def _intervals(val_every: int, save_every: int) -> tuple[int, int]:
    """Our (val_check_interval, save_interval) -> NeMo-Aligner's, keeping save % val == 0 (see AT_END_ONLY)."""
    if val_every and save_every:
        if save_every % val_every:
            raise ValueError(f"trainer.save_interval={save_every} must be a multiple of trainer.val_check_interval="
                             f"{val_every}: NeMo-Aligner validates whenever it saves (trainer_utils.check_progress)")
        return val_every, save_every
    if val_every:  # checkpoint only at the end; AT_END_ONLY rounded up to a multiple of val_every
        return val_every, -(-AT_END_ONLY // val_every) * val_every
    if save_every:  # NeMo validates at every save (the checkpoint monitor is val_loss)
        return save_every, save_every
    return AT_END_ONLY, AT_END_ONLY


def _optim(optim) -> dict:
    """Our AdamW + cosine|constant schedule -> NeMo's distributed_fused_adam (AdamW) + CosineAnnealing.

    NeMo's CosineAnnealing warms up for warmup_steps, decays to min_lr, then holds min_lr for the last
    constant_steps (yaml default 1000). Ours decays over all remaining steps, so constant_steps=0. Our
    constant schedule is CosineAnnealing with min_lr = lr: a cosine between two equal values is flat,
    which is how steerlm.rst's HelpSteer2 RM recipe gets a constant LR (lr = min_lr, constant_steps=0).
    """
    constant = optim.sched.name == "constant"
    return {
        "model.optim.lr": float(optim.lr),
        "model.optim.weight_decay": float(optim.weight_decay),
        "model.optim.betas": [float(b) for b in optim.betas],
        "model.optim.sched.name": "CosineAnnealing",
        "model.optim.sched.warmup_steps": optim.sched.warmup_steps,
        "model.optim.sched.constant_steps": 0,
        "model.optim.sched.min_lr": float(optim.lr if constant else optim.sched.min_lr),
    }


def _check_parallelism(cfg) -> None:
    nemo, t, m = cfg.backend.nemo, cfg.trainer, cfg.model
    tp, pp = nemo.tensor_model_parallel_size, nemo.pipeline_model_parallel_size
    if tp < 1 or pp < 1 or t.devices < 1 or t.num_nodes < 1:
        raise ValueError("backend.nemo.tensor/pipeline_model_parallel_size, trainer.devices and trainer.num_nodes must be >= 1")
    world = t.devices * t.num_nodes
    if world % (tp * pp):
        raise ValueError(f"trainer.num_nodes x trainer.devices = {world} GPUs is not a multiple of "
                         f"tensor x pipeline parallel = {tp} x {pp}")
    dp = world // (tp * pp)
    if m.global_batch_size % (m.micro_batch_size * dp):
        raise ValueError(f"model.global_batch_size={m.global_batch_size} must be a multiple of "
                         f"model.micro_batch_size x data-parallel size = {m.micro_batch_size} x {dp} (Megatron)")


# ---------------------------------------------------------------- one function per stage
def _sft(cfg, restore: str) -> dict:
    """train_gpt_sft.py on NeMo chat JSONL (§1a, §2.3)."""
    data, nemo = cfg.model.data, cfg.backend.nemo
    if cfg.data.prompt_template != "nemotron":
        raise ValueError(f"data.prompt_template={cfg.data.prompt_template} is torch-only: NeMo's chat dataset renders "
                         "model.data.chat_prompt_tokens, i.e. data.prompt_template=nemotron (§1a)")
    out = {
        "model.restore_from_path": restore,  # SFT restores here; RM/DPO use pretrained_checkpoint.* (§2.3)
        "model.tensor_model_parallel_size": nemo.tensor_model_parallel_size,
        "model.pipeline_model_parallel_size": nemo.pipeline_model_parallel_size,
        "model.megatron_amp_O2": True,  # every sft.rst command sets it (bf16 master weights in the optimizer)
        "model.data.chat": True,
        **{f"model.data.chat_prompt_tokens.{k}": v for k, v in NEMOTRON_CHAT_TOKENS.items()},
        "model.data.train_ds.file_path": _data_path(data.train_ds.file_path, "model.data.train_ds.file_path"),
        "model.data.validation_ds.file_path": _data_path(data.validation_ds.file_path,
                                                          "model.data.validation_ds.file_path"),
        # SFT batch sizes live under train_ds (model.* and validation_ds.* interpolate them, §2.3).
        "model.data.train_ds.global_batch_size": cfg.model.global_batch_size,
        "model.data.train_ds.micro_batch_size": cfg.model.micro_batch_size,
        "model.data.train_ds.max_seq_length": cfg.data.max_seq_length,
        "model.data.train_ds.shuffle": bool(cfg.data.shuffle),
        # The chat renderer ends each answer with turn_start, which is trained on: steerlm.rst sets add_eos=False.
        "model.data.train_ds.add_eos": False,
        # gpt_sft.yaml does not write a .nemo at the end unless asked (sft.rst passes this).
        "exp_manager.checkpoint_callback_params.save_nemo_on_train_end": True,
    }
    return {**out, **_lora(cfg)}


def _rm(cfg, restore: str) -> dict:
    """train_reward_model.py: SteerLM regression RM (§1b, §2.1, §2.2)."""
    m, nemo = cfg.model, cfg.backend.nemo
    if m.peft.peft_scheme != "none":
        raise ValueError("model.peft.peft_scheme=lora: NeMo-Aligner v0.7.0's training_rm.yaml has no model.peft; "
                         "train the reward model with model.peft.peft_scheme=none")
    out = {
        "pretrained_checkpoint.restore_from_path": restore,
        "++model.tensor_model_parallel_size": nemo.tensor_model_parallel_size,  # not in training_rm.yaml
        "++model.pipeline_model_parallel_size": nemo.pipeline_model_parallel_size,
        "model.data.data_prefix": _data_prefix(cfg),
        "model.data.seq_length": cfg.data.max_seq_length,
        "model.global_batch_size": m.global_batch_size,
        "model.micro_batch_size": m.micro_batch_size,
        "trainer.rm.train_random_sampler": bool(cfg.data.shuffle),
        "model.reward_model_type": m.reward_model_type,
    }
    if m.reward_model_type == "regression":
        reg = m.regression
        out.update({
            "model.regression.num_attributes": reg.num_attributes,
            "model.regression.loss_func": reg.loss_func,
            "model.regression.loss_mask_val": float(reg.loss_mask_val),
            # §2.1 config-path bug: the model reads loss_func/loss_mask_val from model.*, not model.regression.*;
            # without these the *_bt losses silently train MSE.
            "++model.loss_func": reg.loss_func,
            "++model.loss_mask_val": float(reg.loss_mask_val),
        })
        # attribute_weights are not passed: they only matter with merge_attributes=True (serving one scalar).
        if reg.loss_func.endswith("_bt"):
            # BT losses read the two adjacent responses of a pair as one micro-batch (§2.2, steerlm.rst).
            if m.micro_batch_size != 2:
                raise ValueError(f"model.regression.loss_func={reg.loss_func} needs model.micro_batch_size=2 "
                                 f"(one preference pair per micro-batch), got {m.micro_batch_size}")
            out["trainer.rm.train_random_sampler"] = False
    return out


def _dpo(cfg, restore: str) -> dict:
    """train_gpt_dpo.py for DPO and RPO (§1c, §2.4)."""
    m, nemo, dpo = cfg.model, cfg.backend.nemo, cfg.model.dpo
    if dpo.reference:
        raise ValueError(f"model.dpo.reference={dpo.reference}: NeMo-Aligner's reference is always the initial weights "
                         "(§2.4); set model.dpo.reference=null and restore the checkpoint you want as the reference")
    out = {
        "pretrained_checkpoint.restore_from_path": restore,
        "++model.tensor_model_parallel_size": nemo.tensor_model_parallel_size,  # not in gpt_dpo.yaml
        "++model.pipeline_model_parallel_size": nemo.pipeline_model_parallel_size,
        "model.data.data_prefix": _data_prefix(cfg),
        "model.data.seq_length": cfg.data.max_seq_length,
        "model.global_batch_size": m.global_batch_size,
        "model.micro_batch_size": m.micro_batch_size,
        "model.dpo.ref_policy_kl_penalty": float(dpo.ref_policy_kl_penalty),
        "model.dpo.gt_reward_scale": float(dpo.gt_reward_scale),
        "model.dpo.preference_loss": dpo.preference_loss,
        "model.dpo.preference_loss_weight": float(dpo.preference_loss_weight),
        "model.dpo.sft_loss_weight": float(dpo.sft_loss_weight),
        "model.dpo.preference_average_log_probs": bool(dpo.preference_average_log_probs),
        "model.dpo.sft_average_log_probs": bool(dpo.sft_average_log_probs),
        # Rows without chosen_reward/rejected_reward get these; the keys are under model.data (§1c).
        "model.data.default_chosen_reward": float(m.data.default_chosen_reward),
        "model.data.default_rejected_reward": float(m.data.default_rejected_reward),
    }
    return {**out, **_lora(cfg)}


STAGE_OVERRIDES = {"sft": _sft, "rm": _rm, "dpo": _dpo, "rpo": _dpo, "steerlm_sft": _sft}


def _lora(cfg) -> dict:
    peft = cfg.model.peft
    if peft.peft_scheme == "none":
        return {}
    unknown = [t for t in peft.target_modules if t not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"model.peft.target_modules: {unknown} have no NeMo LoRA equivalent "
                         f"(known: {', '.join(LORA_TARGETS)})")
    targets = list(dict.fromkeys(LORA_TARGETS[t] for t in peft.target_modules))
    return {
        "model.peft.peft_scheme": "lora",
        "model.peft.lora_tuning.target_modules": targets,
        "model.peft.lora_tuning.adapter_dim": peft.lora_rank,
        "model.peft.lora_tuning.adapter_dropout": float(peft.lora_dropout),
        # NeMo's LoraPEFTConfig reads lora_tuning.alpha (default adapter_dim); the yaml does not list it.
        "++model.peft.lora_tuning.alpha": peft.lora_alpha,
    }


# ---------------------------------------------------------------- paths
def restore_path(cfg) -> str:
    nemo = cfg.backend.nemo
    path = nemo.restore_from_path or (cfg.model.name_or_path if str(cfg.model.name_or_path).endswith(".nemo") else None)
    if not path:
        raise ValueError("backend=nemo trains NeMo checkpoints: set backend.nemo.restore_from_path=<file.nemo or "
                         "extracted directory> (stage=convert backend=nemo makes one from a Hugging Face model)")
    return str(_abs(path))


def _data_path(path, key: str) -> str:
    if not path:
        raise ValueError(f"{key} is not set (NeMo-Aligner needs both a training and a validation file)")
    return str(_abs(path))


def _data_prefix(cfg) -> dict:
    """RM/DPO read "model.data.data_prefix={train: [..], validation: [..], test: [..]}" (§2.1, §4)."""
    d = cfg.model.data
    train = _data_path(d.train_ds.file_path, "model.data.train_ds.file_path")
    val = _data_path(d.validation_ds.file_path, "model.data.validation_ds.file_path")
    return {"train": [train], "validation": [val], "test": [val]}


def _abs(path) -> Path:
    # Absolute paths, so they mean the same inside the container (mounted at the same place).
    return Path(path).expanduser().absolute()


# ---------------------------------------------------------------- Hydra override syntax
_PLAIN = re.compile(r"[A-Za-z0-9_/.\-+:@%]+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def hydra_value(value) -> str:
    """A Python value written as a Hydra override value (§4: dict literals, quoted special tokens)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    # Paths and identifiers go bare, as in NeMo's docs; anything Hydra could read as another type, or
    # with characters its grammar reserves (<, >, =, comma, spaces...), goes in single quotes.
    if ("/" in text and _PLAIN.fullmatch(text)) or (
            _WORD.fullmatch(text) and text.lower() not in {"true", "false", "null", "none", "nan", "inf"}):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(ours: list[str], extra: list[str]) -> list[str]:
    """ours + extra, where an extra override of a key we already set replaces ours (no duplicate keys)."""
    replaced = {override_key(o) for o in extra}
    return [o for o in ours if override_key(o) not in replaced] + extra


# ---------------------------------------------------------------- jobs and run()
def jobs_for(cfg, run_dir: Path) -> list:
    """The executor jobs of a stage: one, or for iterative RPO one per iteration, chained.

    RPO iteration k restores iteration k-1's final .nemo, which NeMo-Aligner then uses as both the
    starting policy and the reference (the reference is always the initial weights, §2.4) — the
    report's "each iteration uses the previous iteration's checkpoint as init and reference".
    """
    from recipes.executors import Job

    stage, run_dir = cfg.stage.name, Path(run_dir)
    iterations = cfg.model.rpo.iterations if stage == "rpo" else 1
    if iterations < 1:
        raise ValueError(f"model.rpo.iterations={iterations} must be >= 1")
    jobs, restore = [], None
    for k in range(1, iterations + 1):
        log_dir = run_dir if iterations == 1 else run_dir / f"iter{k}"
        script, overrides = overrides_for(cfg, log_dir=log_dir, restore_from=restore)
        name = stage if iterations == 1 else f"{stage}_iter{k}"
        jobs.append(Job(name=name, script=script, args=overrides, workdir=cfg.backend.nemo.aligner_dir,
                        log_dir=log_dir, checkpoint=final_checkpoint(stage, log_dir), run_dir=run_dir,
                        inputs=_inputs(cfg, restore or restore_path(cfg))))
        restore = str(final_checkpoint(stage, log_dir))
    return jobs


def _inputs(cfg, restore: str) -> list[str]:
    """What a job reads from outside the run directory: the data files and the starting checkpoint."""
    d = cfg.model.data
    return [str(_abs(p)) for p in (d.train_ds.file_path, d.validation_ds.file_path, restore) if p]


def run(cfg, run_dir: Path) -> Path:
    """Build the NeMo command(s) for cfg.stage.name and hand them to the executor.

    Returns the final checkpoint the (last) job writes; with dry_run=true or a submitted Slurm job it
    does not exist yet. <run dir>/nemo_command.json records what was (or would be) run.
    """
    from recipes import executors

    if cfg.stage.name == "convert":
        from recipes import convert

        return convert.run(cfg, run_dir)
    if any(hasattr(v, "get") and v.get("enabled") for v in cfg.eval.values()):
        print("note: backend=nemo runs no eval hooks (they read Hugging Face checkpoints): export the .nemo with "
              "stage=convert backend.nemo.convert.direction=nemo_to_hf, then run stage=eval eval.model=<hf dir>")
    return executors.launch(jobs_for(cfg, run_dir), cfg, Path(run_dir))
