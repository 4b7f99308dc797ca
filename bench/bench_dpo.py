#!/usr/bin/env python
"""DPO step time on CPU: this repo's `stage=dpo` against TRL's `DPOTrainer`, same model, data and settings.

    .venv/bin/python bench/bench_dpo.py [--steps 20] [--warmup 5] [--trl-python .venv-bench/bin/python]

TRL is not a dependency of the repo: it runs from its own virtual environment, made once with

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0              # the CPU wheel, first
    .venv-bench/bin/pip install trl==1.16.0 transformers==5.23.0

This process builds one tiny Llama (hidden 256, 4 layers, 4 heads, BPE vocabulary of ~1.5k trained on
the data) and a JSONL of pairs whose prompt and responses are exactly 64 tokens each, saves both in a
temp dir, then runs each framework in its own subprocess, one after the other, with the same thread
count, and prints a markdown table of the median wall time between consecutive optimizer steps
(forward + backward + clip + AdamW + whatever the framework does around a step), after warmup.

Settings shared by both: batch 8 (one micro-batch; chosen and rejected in one forward of 16
sequences), fp32, sigmoid (DPO) loss with the same beta, AdamW (torch, not fused) with the same lr,
betas and no weight decay, constant schedule, gradient clipping at 1.0, no dropout, no LoRA.
Reference log-probs: ours computes them once before training (and caches them on disk);
TRL is timed both with `precompute_ref_log_probs=True` (the same: one pass before training) and with
its default (a second, frozen model forwards every batch during training).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS, RESPONSE_TOKENS, BATCH, BETA, LR = 64, 64, 8, 0.1, 1e-5
MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=704)


# ---------------------------------------------------------------- data and model (repo venv)
def _words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghiklmnoprstuvw"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(n)]


def _exactly(tok, rng, vocab: list[str], n_tokens: int, first: str, suffix: str = "") -> str:
    """A text of random words that tokenises to exactly `n_tokens` tokens (suffix included)."""
    text = first
    while True:
        count = len(tok(text + suffix, add_special_tokens=False)["input_ids"])
        if count == n_tokens:
            return text + suffix
        if count > n_tokens:  # overshot with a multi-token word: drop it and try another
            text = text.rsplit(" ", 1)[0]
        text += " " + rng.choice(vocab)


def prepare(work: Path, n_pairs: int, seed: int = 0) -> None:
    sys.path.insert(0, str(REPO))
    from transformers import LlamaConfig, LlamaForCausalLM

    from recipes.models import train_tiny_tokenizer

    rng = random.Random(seed)
    vocab = _words(rng, 800)
    corpus = [" ".join(rng.choice(vocab) for _ in range(200)) for _ in range(400)]
    tok = train_tiny_tokenizer(corpus, 1536)
    rows = []
    for i in range(n_pairs):
        prompt = _exactly(tok, rng, vocab, PROMPT_TOKENS, f"Question{i % 10}")
        chosen, rejected = (_exactly(tok, rng, vocab, RESPONSE_TOKENS, "", tok.eos_token) for _ in range(2))
        # The joint tokenisation must split at the boundary too (TRL tokenises prompt+response).
        assert len(tok(prompt + chosen, add_special_tokens=False)["input_ids"]) == PROMPT_TOKENS + RESPONSE_TOKENS
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    with open(work / "pairs.jsonl", "w") as f:  # NeMo DPO shape, for ours
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "chosen_response": r["chosen"], "rejected_response": r["rejected"]}) + "\n")
    with open(work / "trl.jsonl", "w") as f:  # TRL's prompt/chosen/rejected shape
        f.writelines(json.dumps(r) + "\n" for r in rows)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=512, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **MODEL)
    import torch

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocab {len(tok)}; "
          f"{n_pairs} pairs of {PROMPT_TOKENS}+{RESPONSE_TOKENS} tokens", file=sys.stderr)


# ---------------------------------------------------------------- ours (repo venv)
def run_ours(work: Path, total_steps: int, threads: int) -> dict:
    import os

    os.environ["RECIPES_CACHE"] = str(work / "cache")
    sys.path.insert(0, str(REPO))
    import torch
    from hydra import compose, initialize_config_dir

    from recipes import dpo
    from recipes.config import register_configs

    torch.set_num_threads(threads)
    register_configs()
    overrides = [
        "stage=dpo", "model=hf", f"model.name_or_path={work / 'model'}", "data=none",
        f"model.data.train_ds.file_path={work / 'pairs.jsonl'}", "data.max_seq_length=256",
        f"model.global_batch_size={BATCH}", f"model.micro_batch_size={BATCH}", f"trainer.max_steps={total_steps}",
        f"model.optim.lr={LR}", "model.optim.weight_decay=0.0", "model.optim.sched.name=constant",
        "trainer.gradient_clip_val=1.0", "trainer.precision=32", "trainer.accelerator=cpu",
        f"model.dpo.ref_policy_kl_penalty={BETA}", "logger.wandb.enabled=false", "logger.progress_bar=false",
        f"exp_manager.explicit_log_dir={work / 'ours'}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    ends, ref_time, real_step, real_ref = [], [], dpo.train_step, dpo.compute_reference

    def timed_step(*a, **k):
        out = real_step(*a, **k)
        ends.append((time.perf_counter(), time.process_time()))
        return out

    def timed_ref(*a, **k):
        t = time.perf_counter()
        out = real_ref(*a, **k)
        ref_time.append(time.perf_counter() - t)
        return out

    dpo.train_step, dpo.compute_reference = timed_step, timed_ref
    dpo.run(cfg, work / "ours")
    return {"ends": ends, "ref_pass_s": sum(ref_time)}


# ---------------------------------------------------------------- TRL (bench venv)
def run_trl(work: Path, total_steps: int, threads: int, precompute: bool) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(threads)
    ends = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.process_time()))

    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(work / "model")
    args = DPOConfig(
        output_dir=str(work / f"trl-{precompute}"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        max_steps=total_steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.98, optim="adamw_torch", max_grad_norm=1.0, beta=BETA, loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute, max_length=256, report_to="none", save_strategy="no",
        logging_steps=10**6, use_cpu=True, bf16=False, seed=1234, dataloader_num_workers=0, disable_dropout=True,
    )
    data = load_dataset("json", data_files=str(work / "trl.jsonl"), split="train")
    t = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[StepClock()])
    setup = time.perf_counter() - t
    lengths = {(len(r["prompt_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"])) for r in trainer.train_dataset}
    assert lengths == {(PROMPT_TOKENS, RESPONSE_TOKENS, RESPONSE_TOKENS)}, lengths  # the same sequences as ours
    trainer.train()
    return {"ends": ends, "setup_s": setup}


# ---------------------------------------------------------------- driver
def step_times(ends: list[list[float]], warmup: int) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds between consecutive step ends, after warmup. CPU time (all threads of
    the process) is what a step costs; wall time also counts waiting for cores on a shared machine."""
    pairs = list(zip(ends, ends[1:]))[warmup:]
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=2, help="runs per framework, interleaved (ours, TRL, TRL online, ours, ...)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trl-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--part", choices=["ours", "trl", "trl-online"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    total = args.warmup + args.steps + 1  # +1: a step time is the gap between two step ends
    if args.part:
        work = Path(args.work)
        if args.part == "ours":
            out = run_ours(work, total, args.threads)
        else:
            out = run_trl(work, total, args.threads, precompute=args.part == "trl")
        (work / f"{args.part}.json").write_text(json.dumps(out))
        return

    import os

    import torch
    import transformers

    parts = {"ours": sys.executable, "trl": args.trl_python, "trl-online": args.trl_python}
    wall: dict[str, list] = {p: [] for p in parts}
    cpu: dict[str, list] = {p: [] for p in parts}
    ref_pass = []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as tmp:
        work = Path(tmp)
        prepare(work, n_pairs=BATCH * total)
        for rep in range(args.repeats):
            for part, python in parts.items():
                shutil.rmtree(work / "cache", ignore_errors=True)  # ours computes its reference pass every run
                cmd = [python, __file__, "--part", part, "--work", str(work), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--threads", str(args.threads)]
                print(f"[{rep + 1}/{args.repeats}] {part} ...", file=sys.stderr)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                res = json.loads((work / f"{part}.json").read_text())
                w, c = step_times(res["ends"], args.warmup)
                wall[part] += w
                cpu[part] += c
                ref_pass += [res["ref_pass_s"]] if part == "ours" else []
                loads.append(os.getloadavg()[0])
        trl_version = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"],
                                     capture_output=True, text=True, check=True).stdout.strip()

    rows = [
        ("ours (`stage=dpo`)", "precomputed once before training, cached on disk", "ours"),
        (f"TRL {trl_version} `DPOTrainer`", "`precompute_ref_log_probs=True`: one pass before training", "trl"),
        (f"TRL {trl_version} `DPOTrainer`", "default: a frozen copy forwards every batch", "trl-online"),
    ]
    tokens = 2 * BATCH * (PROMPT_TOKENS + RESPONSE_TOKENS)
    base_wall, base_cpu = statistics.median(wall["ours"]), statistics.median(cpu["ours"])
    print(f"\nDPO step, tiny Llama ({MODEL['hidden_size']} hidden, {MODEL['num_hidden_layers']} layers, "
          f"{MODEL['num_attention_heads']} heads, vocab ~1.5k), batch {BATCH}, prompt {PROMPT_TOKENS} + response "
          f"{RESPONSE_TOKENS} tokens, fp32, CPU, {args.threads} threads; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {args.repeats} interleaved runs x {args.steps} steps "
          f"after {args.warmup} warmup; load average {min(loads):.1f}-{max(loads):.1f}\n")
    print("| framework | reference log-probs | median step, wall (s) | median step, CPU (s) | tokens/s (wall) | vs ours (wall / CPU) |")
    print("|---|---|---|---|---|---|")
    for name, ref, part in rows:
        w, c = statistics.median(wall[part]), statistics.median(cpu[part])
        print(f"| {name} | {ref} | {w:.3f} | {c:.3f} | {tokens / w:.0f} | {w / base_wall:.2f}x / {c / base_cpu:.2f}x |")
    print(f"\nours: the reference pass over {BATCH * total} pairs took {statistics.median(ref_pass):.1f} s "
          "(once per reference and data; a rerun reads the cache)")


if __name__ == "__main__":
    main()
