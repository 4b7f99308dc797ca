#!/usr/bin/env python
"""One-GPU check of the torch backend at a real scale: bf16 SFT with packing, then DPO steps, on a
randomly initialised ~1B Llama (Llama-3.2-1B's shape: 16 layers, 2048 wide, 128,256-entry vocabulary)
with a tokenizer trained offline. Nothing is downloaded. Prints tokens/s, model FLOPs utilisation
and peak GPU memory; a few minutes on one H100/H200.

    bash bench/gpu_check.sh                       # on a CUDA machine, in the repo's environment
    bash bench/gpu_check.sh --cpu --tiny          # the same code path on a CPU, tiny shapes (seconds)

MFU = achieved model FLOP/s / --peak-tflops (default 989, H100/H200 SXM dense bf16). Model FLOPs
per trained-through token = 6 · (parameters in matmuls, the head included) + 6 · layers · hidden ·
context (causal attention, forward and backward), context = the mean conversation (SFT) or
sequence (DPO) length; a DPO step trains on chosen and rejected, its reference pass is not counted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {  # Llama-3.2-1B's layout (tied embeddings), and a toy one for --tiny
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=True),
}


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghiklmnoprstuvwy") for _ in range(rng.randint(2, 8))) for _ in range(n))


def write_data(work: Path, rng: random.Random, n_sft: int, n_pairs: int, max_words: int) -> list[str]:
    """NeMo chat rows of varied length (so packing matters) and DPO pairs; returns texts for the tokenizer."""
    texts = []
    with open(work / "sft.jsonl", "w") as f:
        for _ in range(n_sft):
            q, a = words(rng, rng.randint(8, max_words // 4)), words(rng, rng.randint(16, max_words))
            texts += [q, a]
            f.write(json.dumps({"system": "", "mask": "User", "conversations": [
                {"from": "User", "value": q}, {"from": "Assistant", "value": a}]}) + "\n")
    with open(work / "dpo.jsonl", "w") as f:
        for _ in range(n_pairs):
            q = words(rng, max_words // 4)
            c, r = words(rng, max_words // 2), words(rng, max_words // 2)
            texts += [q, c, r]
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}], "chosen_response":
                                {"role": "assistant", "content": c}, "rejected_response": {"role": "assistant", "content": r}}) + "\n")
    return texts


def build_model(work: Path, shape: dict, texts: list[str], seed: int) -> int:
    """A random Llama with the tokenizer trained on the data; saved as an HF checkpoint (bf16 on disk)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from recipes.models import train_tiny_tokenizer

    tok = train_tiny_tokenizer(texts, 4096)  # uses the first rows of the 128k embedding
    torch.manual_seed(seed)
    config = LlamaConfig(max_position_embeddings=8192, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **shape)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    return sum(p.numel() for p in model.parameters())


def flops_per_token(shape: dict, context: float) -> float:
    h, n_layers, kv = shape["hidden_size"], shape["num_hidden_layers"], shape["num_key_value_heads"]
    head_dim = h // shape["num_attention_heads"]
    per_layer = h * h * 2 + 2 * h * kv * head_dim + 3 * h * shape["intermediate_size"]  # q,o + k,v + MLP
    matmul_params = n_layers * per_layer + shape["vocab_size"] * h  # + the output head
    return 6 * matmul_params + 6 * n_layers * h * context


def mean_tokens(work: Path, stage: str) -> float:
    """Mean tokens of a conversation (SFT) or of prompt + one response (DPO): the attention context."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "model")
    rows = [json.loads(line) for line in open(work / f"{stage}.jsonl")]
    if stage == "sft":
        texts = [" ".join(t["value"] for t in r["conversations"]) for r in rows]
    else:
        texts = [r["prompt"][0]["content"] + " " + r["chosen_response"]["content"] for r in rows]
    return statistics.mean(len(tok(t)["input_ids"]) for t in texts)


def run_stage(stage: str, overrides: list[str], run_dir: Path) -> list[dict]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recipes import dpo, loop, sft
    from recipes.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"stage={stage}", "model=hf", "data=none", "logger.wandb.enabled=false",
                                           "logger.progress_bar=false", f"exp_manager.explicit_log_dir={run_dir}",
                                           *overrides])
    GlobalHydra.instance().clear()
    (sft if stage == "sft" else dpo).run(cfg, run_dir)
    return [m for m in loop.read_metrics(run_dir) if "loss" in m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU in fp32 (a smoke test of this script)")
    ap.add_argument("--tiny", action="store_true", help="toy model and data: seconds, numbers meaningless")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default 8, --tiny 2)")
    ap.add_argument("--seq-len", type=int, default=None, help="data.max_seq_length (default 4096, --tiny 256)")
    ap.add_argument("--micro-batch", type=int, default=None, help="packed rows (SFT) / pairs (DPO) per micro-batch")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak, for MFU")
    ap.add_argument("--chunk", type=int, default=None, help="model.logprob_chunk_tokens (default: the config's)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; run with --cpu --tiny to check the script itself")
    tiny = args.tiny
    steps = args.steps or (2 if tiny else 8)
    seq = args.seq_len or (256 if tiny else 4096)
    mbs = args.micro_batch or (2 if tiny else 4)
    shape = SHAPES["tiny" if tiny else "1b"]
    rng = random.Random(0)
    common = [f"trainer.accelerator={'cpu' if args.cpu else 'cuda'}", f"trainer.precision={'32' if args.cpu else 'bf16'}",
              f"data.max_seq_length={seq}", f"model.micro_batch_size={mbs}", f"trainer.max_steps={steps}",
              "model.optim.lr=1e-5", "model.optim.sched.name=constant", "trainer.val_check_interval=0",
              f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
    if args.chunk is not None:
        common.append(f"model.logprob_chunk_tokens={args.chunk}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        texts = write_data(work, rng, n_sft=64 if tiny else 2048, n_pairs=32 if tiny else 256,
                           max_words=60 if tiny else 1200)
        n_params = build_model(work, shape, texts, seed=0)
        model = [f"model.name_or_path={work / 'model'}"]
        print(f"model: random Llama, {n_params / 1e6:,.1f}M parameters, vocabulary {shape['vocab_size']:,}; "
              f"{'CPU fp32' if args.cpu else torch.cuda.get_device_name() + ', bf16 autocast'}", flush=True)
        jobs = [("sft", ["model.data.train_ds.packed_sequence=true", f"model.data.train_ds.file_path={work / 'sft.jsonl'}",
                         f"model.global_batch_size={mbs * 2}"]),
                ("dpo", [f"model.data.train_ds.file_path={work / 'dpo.jsonl'}", f"model.global_batch_size={mbs}"])]
        for stage, extra in jobs:
            if not args.cpu:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            metrics = run_stage(stage, [*common, *model, *extra], work / stage)
            wall = time.perf_counter() - t
            timed = metrics[1:] or metrics  # the first step warms up
            tok_s = statistics.median(m["tokens_per_s"] for m in timed)
            model_flops = flops_per_token(shape, mean_tokens(work, stage)) * tok_s
            rows.append({"stage": stage, "tokens_per_s": tok_s, "step_s": statistics.median(m["step_time_s"] for m in timed),
                         "mfu": None if args.cpu else model_flops / (args.peak_tflops * 1e12),
                         "peak_gb": None if args.cpu else torch.cuda.max_memory_allocated() / 2**30,
                         "packing": timed[-1].get("packing_efficiency"), "wall_s": wall})
            print(f"{stage}: done in {wall:.0f} s", flush=True)
    print(f"\n| stage | tokens/s | s/step | MFU | peak GPU memory (GiB) | packing efficiency | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        pack = "-" if r["packing"] is None else f"{100 * r['packing']:.1f}%"
        print(f"| {r['stage']} | {r['tokens_per_s']:.0f} | {r['step_s']:.2f} | {mfu} | {peak} | {pack} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
