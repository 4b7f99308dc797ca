#!/usr/bin/env python
"""What the reference pass of `stage=dpo` costs, against the forward and the step of training.

    .venv/bin/python bench/bench_ref_pass.py [--shape small|vocab128k] [--repeats 8] [--threads 2]

One process, one random Llama, one micro-batch of pairs; every variant below runs on the same
batch, interleaved, `--repeats` times after one warm-up round, and the table gives the median CPU
time (all threads of the process; steadier than wall time on a shared machine) and wall time:

  before         what recipes/dpo.py did up to the memory-lean change: eval mode, no_grad, the
                 model's default KV cache, full logits of every position, then losses.sequence_logps
  + no KV cache  the same with use_cache=False
  + inference    the same under torch.inference_mode instead of no_grad
  after          recipes.dpo.compute_reference now: the above, and only response positions go
                 through the output head (model.logprob_chunk_tokens), in length order
  train forward  recipes.dpo.batch_logps in train mode with autograd: a training step's forward
  train step     that forward, the DPO loss and backward (no optimizer step)

`--chunk-sweep 0,256,1024` instead runs three training steps (forward, backward, AdamW) per chunk
size, each in its own process, and prints the median CPU time per step and the peak RSS.

Shapes: `small` is bench/bench_dpo.py's (hidden 256, 4 layers, vocabulary 1,536, 8 pairs of
64 + 64 tokens); `vocab128k` is the issue's (the same body with a 128,256-entry untied head,
4 pairs of 512 + 512 tokens).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from recipes import dpo, logprobs  # noqa: E402
from recipes.chat import IGNORE_INDEX, Encoded  # noqa: E402
from recipes.losses import dpo_loss, sequence_logps  # noqa: E402
from recipes.preference_data import Pair  # noqa: E402

SHAPES = {"small": dict(vocab=1536, pairs=8, prompt=64, response=64),
          "vocab128k": dict(vocab=128256, pairs=4, prompt=512, response=512)}
BODY = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=704)


def make(shape: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=shape["vocab"], max_position_embeddings=2048,
                                         tie_word_embeddings=False, **BODY))
    g = torch.Generator().manual_seed(seed)

    def side(prompt):
        resp = torch.randint(3, min(shape["vocab"], 1536), (shape["response"],), generator=g).tolist()
        return Encoded(prompt + resp, [IGNORE_INDEX] * len(prompt) + resp)

    pairs = []
    for _ in range(shape["pairs"]):
        prompt = torch.randint(3, min(shape["vocab"], 1536), (shape["prompt"],), generator=g).tolist()
        pairs.append(Pair(side(prompt), side(prompt), 1.0, 0.0, 0, ref_chosen=0.0, ref_rejected=0.0))
    return model, pairs


def variants(model, pairs, chunk: int) -> dict:
    cfg = OmegaConf.create({"model": {"micro_batch_size": len(pairs), "logprob_chunk_tokens": chunk},
                            "trainer": {"precision": "32"}})
    cpu = torch.device("cpu")
    batch = logprobs.collate([p.chosen for p in pairs] + [p.rejected for p in pairs], 0, cpu)

    def old(no_cache: bool, inference: bool):
        def fn():
            model.eval()
            with torch.inference_mode() if inference else torch.no_grad():
                kw = {"use_cache": False} if no_cache else {}
                sequence_logps(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kw).logits,
                               batch.labels)
            model.train()
        return fn

    def train_forward(backward: bool):
        def fn():
            model.train()
            lc, lr, _, _ = dpo.batch_logps(model, pairs, 0, cpu, "32", chunk)
            if backward:
                dpo_loss(lc, lr, torch.zeros_like(lc), torch.zeros_like(lr), beta=0.1).sum().backward()
                model.zero_grad(set_to_none=True)
        return fn

    return {"before": old(False, False), "+ no KV cache": old(True, False), "+ inference": old(True, True),
            "after": lambda: dpo.compute_reference(model, pairs, cfg, 0, cpu),
            "train forward": train_forward(False), "train step": train_forward(True)}


def step_memory(shape: dict, chunk: int, steps: int = 3) -> None:
    """Train steps (forward, backward, AdamW) with one chunk size; prints CPU per step and peak RSS."""
    import resource

    model, pairs = make(shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    cpu = []
    for _ in range(steps):
        c = time.process_time()
        lc, lr, _, _ = dpo.batch_logps(model, pairs, 0, torch.device("cpu"), "32", chunk)
        dpo_loss(lc, lr, torch.zeros_like(lc), torch.zeros_like(lr), beta=0.1).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        cpu.append(time.process_time() - c)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"| {chunk} | {statistics.median(cpu[1:]):.1f} | {rss:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="small")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024, help="model.logprob_chunk_tokens for 'after' and training")
    ap.add_argument("--chunk-sweep", help="comma-separated chunk sizes: instead, time whole training steps and "
                    "read the peak RSS, each size in its own process (e.g. 0,256,512,1024,4096)")
    ap.add_argument("--step-memory", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    if args.step_memory is not None:
        return step_memory(shape, args.step_memory)
    if args.chunk_sweep:
        import subprocess

        print("| model.logprob_chunk_tokens | CPU per step (s) | peak RSS (GB) |\n|---|---|---|", flush=True)
        for c in args.chunk_sweep.split(","):
            subprocess.run([sys.executable, __file__, "--shape", args.shape, "--threads", str(args.threads),
                            "--step-memory", c], check=True)
        return
    model, pairs = make(shape)
    runs = variants(model, pairs, args.chunk)
    times: dict[str, list] = {k: [] for k in runs}
    load = [os.getloadavg()[0]]
    for rep in range(args.repeats + 1):
        for name, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            if rep:  # round 0 is the warm-up
                times[name].append((time.process_time() - c, time.perf_counter() - t))
        load.append(os.getloadavg()[0])
    print(f"\nReference pass vs training, one micro-batch of {shape['pairs']} pairs of {shape['prompt']}+"
          f"{shape['response']} tokens, vocabulary {shape['vocab']:,}, body {BODY['hidden_size']} wide x "
          f"{BODY['num_hidden_layers']} layers, fp32, CPU, {args.threads} threads, torch {torch.__version__}; "
          f"median of {args.repeats} interleaved rounds; load average {min(load):.1f}-{max(load):.1f}\n")
    print("| variant | CPU (s) | wall (s) | CPU vs train forward |")
    print("|---|---|---|---|")
    base = statistics.median(c for c, _ in times["train forward"])
    for name, ts in times.items():
        c, w = statistics.median(x[0] for x in ts), statistics.median(x[1] for x in ts)
        print(f"| {name} | {c:.3f} | {w:.3f} | {c / base:.2f}x |")


if __name__ == "__main__":
    main()
