#!/usr/bin/env python
"""SFT throughput on CPU: this repo's `stage=sft` with and without sequence packing, and TRL's
`SFTTrainer` with packing, on the same model and conversations.

    .venv/bin/python bench/bench_sft_packing.py [--steps 12] [--warmup 3] [--repeats 2]

TRL runs from `.venv-bench` (see bench/bench_dpo.py). One tiny Llama (hidden 256, 4 layers, BPE
vocabulary ~1.5k) and 600 conversations whose answers have long-tailed lengths (a prompt of 16-64
tokens, an answer of 8-900, median ~110: most rows are short, a few fill the window), as in chat
data, with data.max_seq_length = TRL's max_length = 1024. Each configuration runs in its own
subprocess, interleaved, with the same thread count; a step is 8 sequences in 2 micro-batches of
4: 8 conversations (unpacked, each micro-batch padded to its longest), or 8 packed rows of up to
1024 tokens (ours: best-fit decreasing, position ids restarting per conversation; TRL: its default
`packing_strategy="bfd"`, padding-free). tokens/s counts the real tokens of a step (no padding),
trained tokens/s the answer tokens (the loss is on them only, in all three), over the median step.
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

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from bench_dpo import MODEL, _words, peak_rss_gb, step_times  # noqa: E402

MAX_LEN, MICRO, ACCUM, LR = 1024, 4, 2, 1e-4
PARTS = {"unpacked": "ours, unpacked", "packed": "ours, `packed_sequence=true`", "trl": "TRL {v} `SFTTrainer`, `packing=True` (bfd)"}


def prepare(work: Path, n_rows: int = 600, seed: int = 0) -> None:
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from recipes.chat import render_nemotron
    from recipes.models import train_tiny_tokenizer

    rng = random.Random(seed)
    vocab = _words(rng, 800)
    tok = train_tiny_tokenizer([" ".join(rng.choice(vocab) for _ in range(200)) for _ in range(400)], 1536)
    ours, trl = open(work / "sft.jsonl", "w"), open(work / "trl.jsonl", "w")
    for _ in range(n_rows):
        q = " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 32)))
        n_answer = min(450, int(rng.lognormvariate(4.0, 0.9)))  # words; ~2 tokens each
        a = " ".join(rng.choice(vocab) for _ in range(max(4, n_answer)))
        row = {"system": "", "mask": "User", "conversations": [{"from": "User", "value": q}, {"from": "Assistant", "value": a}]}
        ours.write(json.dumps(row) + "\n")
        text, spans = render_nemotron(row)  # TRL gets the same text: prompt up to the answer, completion after it
        trl.write(json.dumps({"prompt": text[:spans[0][0]], "completion": text[spans[0][0]:]}) + "\n")
    ours.close(), trl.close()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **MODEL)
    LlamaForCausalLM(config).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")


def run_ours(work: Path, total_steps: int, threads: int, packed: bool) -> dict:
    sys.path.insert(0, str(REPO))
    import torch
    from hydra import compose, initialize_config_dir

    from recipes import sft
    from recipes.config import register_configs

    torch.set_num_threads(threads)
    register_configs()
    overrides = ["stage=sft", "model=hf", f"model.name_or_path={work / 'model'}", "data=none",
                 f"model.data.train_ds.file_path={work / 'sft.jsonl'}", f"data.max_seq_length={MAX_LEN}",
                 f"model.data.train_ds.packed_sequence={packed}", f"model.micro_batch_size={MICRO}",
                 f"model.global_batch_size={MICRO * ACCUM}", f"trainer.max_steps={total_steps}", f"model.optim.lr={LR}",
                 "model.optim.weight_decay=0.0", "model.optim.sched.name=constant", "trainer.precision=32",
                 "trainer.accelerator=cpu", "logger.wandb.enabled=false", "logger.progress_bar=false",
                 f"exp_manager.explicit_log_dir={work / 'ours'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    ends, real_step = [], sft.train_step

    def timed_step(*a, **k):
        out = real_step(*a, **k)
        ends.append((time.perf_counter(), time.process_time(), out["tokens"], out["trained_tokens"]))
        return out

    sft.train_step = timed_step
    sft.run(cfg, work / "ours")
    return {"ends": ends, "peak_rss_gb": peak_rss_gb()}


def run_trl(work: Path, total_steps: int, threads: int) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(threads)
    ends, holder = [], {}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.process_time(), holder["t"]._total_train_tokens, 0))

    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(work / "model")
    args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=MICRO, gradient_accumulation_steps=ACCUM,
                     max_steps=total_steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                     weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.98, optim="adamw_torch", max_grad_norm=1.0,
                     max_length=MAX_LEN, packing=True, report_to="none", save_strategy="no", logging_steps=10**6,
                     use_cpu=True, bf16=False, seed=1234, dataloader_num_workers=0)
    data = load_dataset("json", data_files=str(work / "trl.jsonl"), split="train")
    holder["t"] = trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[StepClock()])
    ds = trainer.train_dataset
    trained = sum(sum(x != -100 for x in r["labels"]) for r in ds) / max(1, sum(len(r["input_ids"]) for r in ds))
    trainer.train()
    return {"ends": ends, "peak_rss_gb": peak_rss_gb(), "trained_fraction": trained, "rows": len(ds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--trl-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    total = args.warmup + args.steps + 1
    if args.part:
        work = Path(args.work)
        out = run_trl(work, total, args.threads) if args.part == "trl" else run_ours(work, total, args.threads, args.part == "packed")
        (work / f"{args.part}.json").write_text(json.dumps(out))
        return

    import os

    import torch

    parts = [p for p in args.parts.split(",") if p]
    res: dict[str, list] = {p: [] for p in parts}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        work = Path(tmp)
        prepare(work)
        for rep in range(args.repeats):
            for part in parts:
                shutil.rmtree(work / "ours", ignore_errors=True)
                python = args.trl_python if part == "trl" else sys.executable
                print(f"[{rep + 1}/{args.repeats}] {part} ...", file=sys.stderr)
                subprocess.run([python, __file__, "--part", part, "--work", str(work), "--steps", str(args.steps),
                                "--warmup", str(args.warmup), "--threads", str(args.threads)],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                res[part].append(json.loads((work / f"{part}.json").read_text()))
                loads.append(os.getloadavg()[0])
        trl_version = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"],
                                     capture_output=True, text=True).stdout.strip() if "trl" in parts else ""
    print(f"\nSFT step, tiny Llama ({MODEL['hidden_size']} hidden, {MODEL['num_hidden_layers']} layers, vocab ~1.5k), "
          f"600 conversations (answers of 8-900 tokens, long-tailed), max length {MAX_LEN}, {ACCUM} x micro-batch "
          f"{MICRO} sequences a step, fp32, CPU, {args.threads} threads; torch {torch.__version__}; {args.repeats} "
          f"interleaved runs x {args.steps} steps after {args.warmup} warmup; load average {min(loads):.1f}-{max(loads):.1f}\n")
    print("| configuration | tokens/step | median step, wall (s) | CPU (s) | tokens/s | trained tokens/s | tokens/s (CPU) | peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for part in parts:
        walls, cpus, toks, trained = [], [], [], []
        for r in res[part]:
            ends = r["ends"]
            w, c = step_times([e[:2] for e in ends], args.warmup)
            walls += w
            cpus += c
            # tokens of each timed step: ours reports them per step; TRL's counter is cumulative
            steps = list(zip(ends, ends[1:]))[args.warmup:]
            n = [b[2] - a[2] if part == "trl" else b[2] for a, b in steps]
            toks += n
            trained += [x * r["trained_fraction"] for x in n] if part == "trl" else [b[3] for _, b in steps]
        w, c = statistics.median(walls), statistics.median(cpus)
        per_step, per_step_trained = statistics.mean(toks), statistics.mean(trained)
        w_mean, c_mean = statistics.mean(walls), statistics.mean(cpus)
        print(f"| {PARTS[part].format(v=trl_version)} | {per_step:.0f} | {w:.3f} | {c:.3f} | {per_step / w_mean:.0f} "
              f"| {per_step_trained / w_mean:.0f} | {per_step / c_mean:.0f} | {max(r['peak_rss_gb'] for r in res[part]):.2f} |")


if __name__ == "__main__":
    main()
