"""The allowed range of every number in the run config (recipes/config.py), declared once.

`check(cfg)` runs inside `recipes.config.validate`, before anything runs (launch.py, and the pipeline
for each stage). Each violation is one line naming the key, the value and the range:
`model.optim.lr=0.0 must be > 0`. A null value (an optional key left unset) is not checked, and every
number must be finite. Sentinels are listed with their meaning (`trainer.max_steps=-1`: run
`trainer.max_epochs`). Keys of lists of numbers (`model.optim.betas`) apply to every element.
tests/test_ranges.py fails when a numeric key of the schema has no entry here: a new key needs one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import OmegaConf


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded
    hi_open: bool = False
    sentinels: tuple = ()  # ((value, meaning), ...) allowed outside the range

    def ok(self, v) -> bool:
        if any(v == s for s, _ in self.sentinels):
            return True
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or not (v > self.hi or (self.hi_open and v == self.hi))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            text = f"{'<' if self.hi_open else '<='} {self.hi:g}"
        else:
            text = "a finite number"
        return " or ".join([*(f"{s:g} ({meaning})" for s, meaning in self.sentinels), text])


def at_least(x: float, **kw) -> Range:
    return Range(lo=x, **kw)


def above(x: float) -> Range:
    return Range(lo=x, lo_open=True)


POSITIVE_INT = at_least(1)
COUNT = at_least(0)  # 0 = none / off, as the key's comment says
PROBABILITY = Range(0, 1)
ANY = Range()  # any finite number (a reward, a weight, a threshold on a scale the data defines)
ZERO_IS_ALL = at_least(0)  # `limit`-style keys: 0 = every item
ATTRIBUTE = Range(0, 4)  # SteerLM attributes are 0-4 Likert values

RANGES: dict[str, Range] = {
    # trainer
    "trainer.max_steps": at_least(1, sentinels=((-1, "run trainer.max_epochs"),)),
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.val_check_interval": COUNT,  # 0 = validate only at the end
    "trainer.save_interval": COUNT,  # 0 = only the final checkpoint
    "trainer.gradient_clip_val": COUNT,  # 0 = no clipping
    "trainer.limit_val_batches": ZERO_IS_ALL,
    "trainer.devices": POSITIVE_INT,
    "trainer.num_nodes": POSITIVE_INT,
    # model: batches, optimiser, LoRA, the tiny model
    "model.micro_batch_size": POSITIVE_INT,
    "model.logprob_chunk_tokens": COUNT,  # 0 = the full logits (the reference path)
    "model.global_batch_size": POSITIVE_INT,
    "model.optim.lr": above(0),
    "model.optim.weight_decay": COUNT,
    "model.optim.betas": Range(0, 1, hi_open=True),
    "model.optim.sched.warmup_steps": COUNT,
    "model.optim.sched.min_lr": COUNT,
    "model.peft.lora_rank": POSITIVE_INT,
    "model.peft.lora_alpha": above(0),
    "model.peft.lora_dropout": Range(0, 1, hi_open=True),
    "model.tiny.hidden_size": POSITIVE_INT,
    "model.tiny.num_layers": POSITIVE_INT,
    "model.tiny.num_attention_heads": POSITIVE_INT,
    "model.tiny.num_key_value_heads": POSITIVE_INT,
    "model.tiny.intermediate_size": POSITIVE_INT,
    "model.tiny.vocab_size": POSITIVE_INT,
    "model.tiny.max_position_embeddings": POSITIVE_INT,
    # model: losses
    "model.data.default_chosen_reward": ANY,
    "model.data.default_rejected_reward": ANY,
    "model.dpo.ref_policy_kl_penalty": above(0),  # beta
    "model.dpo.gt_reward_scale": above(0),  # eta
    "model.dpo.preference_loss_weight": COUNT,
    "model.dpo.sft_loss_weight": COUNT,
    "model.rpo.iterations": POSITIVE_INT,
    "model.regression.num_attributes": POSITIVE_INT,
    "model.regression.loss_mask_val": ANY,  # a sentinel label value (-100)
    "model.regression.attribute_weights": ANY,
    # data
    "data.max_seq_length": POSITIVE_INT,
    "seed": COUNT,
    # data prep (null = the converter's default)
    "prep.epochs": POSITIVE_INT,
    "prep.sft_min_reward": ANY,
    "prep.min_gap": COUNT,
    "prep.min_chosen_reward": ANY,
    "prep.weights": ANY,
    "prep.val_fraction": Range(0, 1, hi_open=True),
    "prep.seed": COUNT,
    "annotate.batch_size": POSITIVE_INT,
    # generation and steering
    "sdg.limit": ZERO_IS_ALL,
    "sdg.n_responses": POSITIVE_INT,
    "sdg.max_new_tokens": POSITIVE_INT,
    "sdg.temperature": COUNT,  # 0 = greedy
    "sdg.top_p": Range(0, 1, lo_open=True),
    "sdg.top_k": COUNT,  # 0 = off
    "sdg.chunk_size": POSITIVE_INT,
    "steer.max_new_tokens": POSITIVE_INT,
    "steer.temperature": COUNT,
    "steer.top_p": Range(0, 1, lo_open=True),
    "steerlm.low": ATTRIBUTE,
    "steerlm.high": ATTRIBUTE,
    "steerlm.num_prompts": POSITIVE_INT,
    # evaluation
    "eval.ifeval.max_new_tokens": POSITIVE_INT,
    "eval.ifeval.limit": ZERO_IS_ALL,
    "eval.mt_bench.max_new_tokens": POSITIVE_INT,
    "eval.mt_bench.limit": ZERO_IS_ALL,
    "eval.reward_bench.batch_size": POSITIVE_INT,
    "eval.reward_bench.limit": ZERO_IS_ALL,
    "eval.reward_bench.attribute_weights": ANY,
    "eval.alpaca_eval.max_new_tokens": POSITIVE_INT,
    "eval.alpaca_eval.limit": ZERO_IS_ALL,
    "eval.arena_hard.max_new_tokens": POSITIVE_INT,
    "eval.arena_hard.limit": ZERO_IS_ALL,
    "eval.arena_hard.bootstrap_rounds": POSITIVE_INT,
    "eval.humaneval.max_new_tokens": POSITIVE_INT,
    "eval.humaneval.limit": ZERO_IS_ALL,
    "eval.humaneval.timeout_s": above(0),
    "eval.mbpp.timeout_s": above(0),
    "eval.policy_reward.max_new_tokens": POSITIVE_INT,
    "eval.policy_reward.batch_size": POSITIVE_INT,
    "eval.policy_reward.limit": ZERO_IS_ALL,
    "eval.preference_accuracy.batch_size": POSITIVE_INT,
    "eval.preference_accuracy.limit": ZERO_IS_ALL,
    # backend=nemo
    "backend.nemo.tensor_model_parallel_size": POSITIVE_INT,
    "backend.nemo.pipeline_model_parallel_size": POSITIVE_INT,
}
# synthetic data from nothing (recipes/sdg_prompts.py, sdg_dialogue.py, rm_serve.py)
RANGES.update({f"sdg_prompts.{k}": COUNT for k in ("n_macro_topics", "n_subtopics", "n_open_qa", "n_writing",
                                                    "n_closed_qa", "max_keywords", "n_math", "n_python",
                                                    "n_instruction_following", "n_two_turn")})
RANGES.update({
    "sdg_prompts.max_instructions": POSITIVE_INT,
    "sdg_prompts.near_duplicate_threshold": PROBABILITY,
    "sdg_prompts.ngram": POSITIVE_INT,
    "sdg_dialogue.turns": POSITIVE_INT,
    "sdg_dialogue.batch_size": POSITIVE_INT,
    "sdg_dialogue.limit": ZERO_IS_ALL,
    "sdg_dialogue.min_reward": ANY,
    "rm_serve.batch_size": POSITIVE_INT,
    "rm_serve.port": Range(0, 65535),  # 0 picks a free port
    "rm_serve.max_wait_ms": at_least(0),
    "rm_serve.max_requests": COUNT,
})
for _stage in ("sdg_prompts", "sdg_dialogue"):
    RANGES.update({f"{_stage}.max_new_tokens": POSITIVE_INT, f"{_stage}.temperature": at_least(0),
                   f"{_stage}.top_p": Range(0, 1, lo_open=True)})
for _lm_eval in ("eval.mmlu", "eval.gsm8k", "eval.mbpp"):  # lm-eval's tasks
    RANGES.update({f"{_lm_eval}.limit": ZERO_IS_ALL,
                   f"{_lm_eval}.max_gen_toks": Range(1, sentinels=((0, "the task's own"),)),
                   f"{_lm_eval}.num_fewshot": COUNT})
for _client in ("eval.generator", "sdg.generator", "eval.mt_bench.judge", "eval.alpaca_eval.judge",
                "eval.arena_hard.judge", "sdg_prompts.generator", "sdg_dialogue.generator", "annotate.endpoint",
                "sdg_dialogue.endpoint"):  # every served client (ServedClientConfig)
    RANGES.update({f"{_client}.max_concurrency": POSITIVE_INT, f"{_client}.timeout_s": above(0),
                   f"{_client}.max_retries": COUNT, f"{_client}.backoff_s": at_least(0),
                   f"{_client}.requests_per_minute": above(0), f"{_client}.max_failed_fraction": PROBABILITY})
for _gen in ("eval.generator", "sdg.generator", "sdg_prompts.generator", "sdg_dialogue.generator"):
    RANGES[f"{_gen}.batch_size"] = POSITIVE_INT
for _name in ("quality", "understanding", "correctness", "coherence", "complexity", "verbosity", "toxicity", "humor",
              "creativity", "violence", "helpfulness", "not_appropriate", "hate_speech", "sexual_content",
              "fails_task", "political_content", "moral_judgement"):
    RANGES[f"steer.{_name}"] = ATTRIBUTE


def _problem(key: str, v, r: Range) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None  # not a number: Hydra's types already refused it, or it is null
    if not math.isfinite(v):
        return f"{key}={v} must be a finite number"
    if not r.ok(v):
        return f"{key}={v!r} must be {r.describe()}"
    return None


def check(cfg) -> list[str]:
    """One line per number outside its range."""
    problems = []
    for key, r in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        is_list = OmegaConf.is_list(value) or isinstance(value, list)
        for i, v in enumerate(value if is_list else [value]):
            p = _problem(f"{key}[{i}]" if is_list else key, v, r)
            if p:
                problems.append(p)
    return problems
