#!/usr/bin/env python
"""DPO step time and peak memory on CPU: this repo's `stage=dpo` against TRL's `DPOTrainer`, same model, data and settings.

    .venv/bin/python bench/bench_dpo.py [--steps 20] [--warmup 5] [--trl-python .venv-bench/bin/python]
    .venv/bin/python bench/bench_dpo.py --shape vocab128k --steps 3 --warmup 1   # the 128k-vocabulary case

TRL is not a dependency of the repo: it runs from its own virtual environment, made once with

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0              # the CPU wheel, first
    .venv-bench/bin/pip install trl==1.16.0 transformers==<the version .venv has>

This process builds one tiny Llama (hidden 256, 4 layers, 4 heads, BPE vocabulary of ~1.5k trained on
the data; `--shape vocab128k`: the same body with an untied 128,256-entry embedding and head) and a
JSONL of pairs whose prompt and responses are exactly N tokens each (64 + 64, or 512 + 512), saves
both in a temp dir, then runs each configuration in its own subprocess, one after the other, with the
same thread count, and prints a markdown table of the median wall time between consecutive optimizer
steps (forward + backward + clip + AdamW + whatever the framework does around a step), after warmup,
and of each process's peak resident memory (ru_maxrss: model, optimizer, data, everything).

Settings shared by all: batch 8 (small) or 4 (vocab128k) pairs as one micro-batch (chosen and rejected
in one forward), fp32, sigmoid (DPO) loss with the same beta, AdamW (torch, not fused) with the same
lr, betas and no weight decay, constant schedule, gradient clipping at 1.0, no dropout, no LoRA.
Ours runs twice: as configured by default (label log-probs through the head in chunks,
model.logprob_chunk_tokens) and with model.logprob_chunk_tokens=0 (full logits, the path before).
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
BETA, LR = 0.1, 1e-5
MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=704)
# vocab None: the tokenizer's (~1.5k); otherwise the model's embedding/head size (the tokenizer uses its first rows)
SHAPES = {"small": dict(batch=8, prompt=64, response=64, vocab=None),
          "vocab128k": dict(batch=4, prompt=512, response=512, vocab=128256)}
SHAPE = SHAPES["small"]


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
    prompt_tokens, response_tokens = SHAPE["prompt"], SHAPE["response"]
    sys.path.insert(0, str(REPO))
    from transformers import LlamaConfig, LlamaForCausalLM

    from recipes.models import train_tiny_tokenizer

    rng = random.Random(seed)
    vocab = _words(rng, 800)
    corpus = [" ".join(rng.choice(vocab) for _ in range(200)) for _ in range(400)]
    tok = train_tiny_tokenizer(corpus, 1536)
    rows = []
    for i in range(n_pairs):
        prompt = _exactly(tok, rng, vocab, prompt_tokens, f"Question{i % 10}")
        chosen, rejected = (_exactly(tok, rng, vocab, response_tokens, "", tok.eos_token) for _ in range(2))
        # The joint tokenisation must split at the boundary too (TRL tokenises prompt+response).
        assert len(tok(prompt + chosen, add_special_tokens=False)["input_ids"]) == prompt_tokens + response_tokens
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    with open(work / "pairs.jsonl", "w") as f:  # NeMo DPO shape, for ours
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "chosen_response": r["chosen"], "rejected_response": r["rejected"]}) + "\n")
    with open(work / "trl.jsonl", "w") as f:  # TRL's prompt/chosen/rejected shape
        f.writelines(json.dumps(r) + "\n" for r in rows)
    config = LlamaConfig(vocab_size=SHAPE["vocab"] or len(tok), max_position_embeddings=2048, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **MODEL)
    import torch

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocab {config.vocab_size}; "
          f"{n_pairs} pairs of {prompt_tokens}+{response_tokens} tokens", file=sys.stderr)


# ---------------------------------------------------------------- ours (repo venv)
def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def run_ours(work: Path, total_steps: int, threads: int, chunk: int | None) -> dict:
    import os

    os.environ["RECIPES_CACHE"] = str(work / "cache")
    sys.path.insert(0, str(REPO))
    import torch
    from hydra import compose, initialize_config_dir

    from recipes import dpo
    from recipes.config import register_configs

    torch.set_num_threads(threads)
    register_configs()
    batch, max_len = SHAPE["batch"], 2 * (SHAPE["prompt"] + SHAPE["response"])
    overrides = [
        "stage=dpo", "model=hf", f"model.name_or_path={work / 'model'}", "data=none",
        f"model.data.train_ds.file_path={work / 'pairs.jsonl'}", f"data.max_seq_length={max_len}",
        f"model.global_batch_size={batch}", f"model.micro_batch_size={batch}", f"trainer.max_steps={total_steps}",
        f"model.optim.lr={LR}", "model.optim.weight_decay=0.0", "model.optim.sched.name=constant",
        "trainer.gradient_clip_val=1.0", "trainer.precision=32", "trainer.accelerator=cpu",
        f"model.dpo.ref_policy_kl_penalty={BETA}", "logger.wandb.enabled=false", "logger.progress_bar=false",
        f"exp_manager.explicit_log_dir={work / 'ours'}",
    ] + ([f"model.logprob_chunk_tokens={chunk}"] if chunk is not None else [])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    ends, ref_time, ref_batches = [], [], []
    real_step, real_ref, real_logps = dpo.train_step, dpo.compute_reference, dpo.batch_logps

    def timed_step(*a, **k):
        out = real_step(*a, **k)
        ends.append((time.perf_counter(), time.process_time()))
        return out

    def timed_ref(*a, **k):
        t = time.perf_counter()
        out = real_ref(*a, **k)
        ref_time.append(time.perf_counter() - t)
        return out

    def timed_logps(*a, **k):  # the reference pass's batches: wall and CPU time of each
        t, c = time.perf_counter(), time.process_time()
        out = real_logps(*a, **k)
        if not torch.is_grad_enabled():
            ref_batches.append((time.perf_counter() - t, time.process_time() - c))
        return out

    dpo.train_step, dpo.compute_reference, dpo.batch_logps = timed_step, timed_ref, timed_logps
    dpo.run(cfg, work / "ours")
    return {"ends": ends, "ref_pass_s": sum(ref_time), "ref_batches": ref_batches, "peak_rss_gb": peak_rss_gb()}


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
        output_dir=str(work / f"trl-{precompute}"), per_device_train_batch_size=SHAPE["batch"],
        gradient_accumulation_steps=1, max_steps=total_steps, learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.98, optim="adamw_torch", max_grad_norm=1.0,
        beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
        max_length=2 * (SHAPE["prompt"] + SHAPE["response"]), report_to="none", save_strategy="no",
        logging_steps=10**6, use_cpu=True, bf16=False, seed=1234, dataloader_num_workers=0, disable_dropout=True,
    )
    data = load_dataset("json", data_files=str(work / "trl.jsonl"), split="train")
    t = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[StepClock()])
    setup = time.perf_counter() - t
    lengths = {(len(r["prompt_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"])) for r in trainer.train_dataset}
    assert lengths == {(SHAPE["prompt"], SHAPE["response"], SHAPE["response"])}, lengths  # the same sequences as ours
    trainer.train()
    return {"ends": ends, "setup_s": setup, "peak_rss_gb": peak_rss_gb()}


# ---------------------------------------------------------------- driver
def step_times(ends: list[list[float]], warmup: int) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds between consecutive step ends, after warmup. CPU time (all threads of
    the process) is what a step costs; wall time also counts waiting for cores on a shared machine."""
    pairs = list(zip(ends, ends[1:]))[warmup:]
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


PARTS = {  # part -> (row name, reference log-probs, which python)
    "ours": ("ours (`stage=dpo`)", "precomputed once before training, cached on disk", "repo"),
    "ours-full": ("ours, `model.logprob_chunk_tokens=0` (full logits: the path before)", "the same", "repo"),
    "trl": ("TRL {v} `DPOTrainer`", "`precompute_ref_log_probs=True`: one pass before training", "trl"),
    "trl-online": ("TRL {v} `DPOTrainer`", "default: a frozen copy forwards every batch", "trl"),
}


def run_part(args, total: int) -> None:
    work = Path(args.work)
    if args.part.startswith("ours"):
        out = run_ours(work, total, args.threads, 0 if args.part == "ours-full" else None)
    else:
        out = run_trl(work, total, args.threads, precompute=args.part == "trl")
    (work / f"{args.part}.json").write_text(json.dumps(out))


def main() -> None:
    global SHAPE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="small")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration, interleaved (ours, ours-full, TRL, ...)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    ap.add_argument("--trl-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    SHAPE = SHAPES[args.shape]
    total = args.warmup + args.steps + 1  # +1: a step time is the gap between two step ends
    if args.part:
        return run_part(args, total)

    import os

    import torch
    import transformers

    parts = [p for p in args.parts.split(",") if p]
    python = {"repo": sys.executable, "trl": args.trl_python}
    wall: dict[str, list] = {p: [] for p in parts}
    cpu: dict[str, list] = {p: [] for p in parts}
    rss: dict[str, list] = {p: [] for p in parts}
    ref_pass: dict[str, list] = {p: [] for p in parts}
    loads = [os.getloadavg()[0]]
    n_pairs = SHAPE["batch"] * total
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as tmp:
        work = Path(tmp)
        prepare(work, n_pairs=n_pairs)
        for rep in range(args.repeats):
            for part in parts:
                shutil.rmtree(work / "cache", ignore_errors=True)  # ours computes its reference pass every run
                shutil.rmtree(work / "ours", ignore_errors=True)
                cmd = [python[PARTS[part][2]], __file__, "--part", part, "--work", str(work), "--shape", args.shape,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
                print(f"[{rep + 1}/{args.repeats}] {part} ...", file=sys.stderr)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                res = json.loads((work / f"{part}.json").read_text())
                w, c = step_times(res["ends"], args.warmup)
                wall[part] += w
                cpu[part] += c
                rss[part].append(res["peak_rss_gb"])
                if part.startswith("ours"):
                    ref_pass[part].append(res)
                loads.append(os.getloadavg()[0])
        trl_version = ""
        if any(PARTS[p][2] == "trl" for p in parts):
            trl_version = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"],
                                         capture_output=True, text=True, check=True).stdout.strip()

    vocab = SHAPE["vocab"] or "~1.5k"
    tokens = 2 * SHAPE["batch"] * (SHAPE["prompt"] + SHAPE["response"])
    base = parts[0]
    base_wall, base_cpu, base_rss = statistics.median(wall[base]), statistics.median(cpu[base]), max(rss[base])
    print(f"\nDPO step, tiny Llama ({MODEL['hidden_size']} hidden, {MODEL['num_hidden_layers']} layers, "
          f"{MODEL['num_attention_heads']} heads, vocab {vocab}, untied head), batch {SHAPE['batch']} pairs, prompt "
          f"{SHAPE['prompt']} + response {SHAPE['response']} tokens, fp32, CPU, {args.threads} threads; torch "
          f"{torch.__version__}, transformers {transformers.__version__}; {args.repeats} interleaved runs x "
          f"{args.steps} steps after {args.warmup} warmup; load average {min(loads):.1f}-{max(loads):.1f}\n")
    print("| framework | reference log-probs | median step, wall (s) | median step, CPU (s) | tokens/s (wall) "
          f"| peak RSS (GB) | vs {base} (wall / CPU / peak RSS) |")
    print("|---|---|---|---|---|---|---|")
    for part in parts:
        name, ref, _ = PARTS[part]
        w, c, m = statistics.median(wall[part]), statistics.median(cpu[part]), max(rss[part])
        print(f"| {name.format(v=trl_version)} | {ref} | {w:.3f} | {c:.3f} | {tokens / w:.0f} | {m:.2f} "
              f"| {w / base_wall:.2f}x / {c / base_cpu:.2f}x / {m / base_rss:.2f}x |")
    for part, runs in ref_pass.items():
        if not runs:
            continue
        batches = [b for r in runs for b in r["ref_batches"]]
        print(f"\n{part}: the reference pass over {n_pairs} pairs took {statistics.median(r['ref_pass_s'] for r in runs):.1f} s "
              f"({len(batches) // len(runs)} micro-batches; median per micro-batch {statistics.median(b[0] for b in batches):.3f} s "
              f"wall, {statistics.median(b[1] for b in batches):.3f} s CPU; the first one {runs[0]['ref_batches'][0][0]:.3f} s wall)")


if __name__ == "__main__":
    main()
