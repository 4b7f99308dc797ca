"""Two processes with FSDP2 (torchrun, gloo on CPU) against one process: per-step losses and step time.

    .venv/bin/python bench/bench_fsdp.py [--steps 8] [--stages sft,dpo,rm] [--sizes tiny,small] [--rounds 1]

Each case trains the real stage twice through launch.py, as a user runs it: one process
(`python launch.py ...`) and two (`torchrun --standalone --nproc-per-node=2 launch.py ...`), with the
same global batch, seed and data order. Every process computes with one thread (a rank stands for
one device; two intra-op threads on a shared 2-core machine only fight), and rounds alternate the two
so that load from elsewhere on the machine hits both alike. Prints a markdown table (docs/scaling.md
cites it): the largest per-step loss difference and the median step time after the first (warm-up)
step. Nothing is downloaded: the tiny random Llama
(or a wider one) and the tokenizer are built offline from the data.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipes import loop  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
DATA = {  # stage -> its training data (the demo SFT set, the test fixtures for preferences and RM labels)
    "sft": (f"model.data.train_ds.file_path={REPO / 'data' / 'demo' / 'sft_train.jsonl'}",),
    "dpo": (f"model.data.train_ds.file_path={FIXTURES / 'dpo_tiny.jsonl'}",),
    "rm": (f"model.data.train_ds.file_path={FIXTURES / 'rm_tiny.jsonl'}",),
}
SIZES = {
    "tiny": ("model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128"),
    "small": ("model.tiny.hidden_size=256", "model.tiny.num_layers=4", "model.tiny.intermediate_size=688"),
}
LABELS = {"tiny": "2 layers x 64", "small": "4 layers x 256"}
BATCH = ("model.global_batch_size=8", "model.micro_batch_size=2")  # 2 processes: 2 accumulation steps each


def train(stage: str, size: str, steps: int, processes: int, run_dir: Path) -> dict[int, dict]:
    args = ["model=tiny", "data=none", f"stage={stage}", *DATA[stage], *SIZES[size], *BATCH,
            f"trainer.max_steps={steps}", "trainer.val_check_interval=0", "trainer.accelerator=cpu",
            "logger.wandb.enabled=false", "logger.progress_bar=false", "eval=[]",
            f"exp_manager.explicit_log_dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "RECIPES_CACHE": str(run_dir.parent / f"cache-{run_dir.name}")}  # each run its own reference pass
    head = [sys.executable, str(REPO / "launch.py")] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        str(REPO / "launch.py")]
    r = subprocess.run(head + args, capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode:
        sys.exit(f"{stage}/{size} with {processes} process(es) failed:\n{r.stderr[-3000:]}")
    return {m["step"]: m for m in loop.read_metrics(run_dir) if m.get("loss") is not None}


def bench(stage: str, size: str, steps: int, rounds: int) -> dict:
    times: dict[int, list[float]] = {1: [], 2: []}
    diff = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(rounds):
            runs = {n: train(stage, size, steps, n, Path(tmp) / f"r{k}-p{n}") for n in (1, 2)}
            one, two = runs[1], runs[2]
            assert sorted(one) == sorted(two) == list(range(1, steps + 1)), (one.keys(), two.keys())
            diff = max([diff] + [abs(one[s]["loss"] - two[s]["loss"]) for s in one])
            for n, metrics in runs.items():
                times[n] += [metrics[s]["step_time_s"] for s in sorted(metrics)[1:]]  # step 1 warms up
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    return {"stage": stage, "size": size, "steps": steps, "diff": diff, "t1": t1, "t2": t2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--stages", default="sft,dpo,rm")
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"global batch 8 (micro-batch 2), {a.steps} steps, {a.rounds} round(s); step time: median after step 1\n")
    print("| stage | model | max abs loss diff (2 vs 1 process) | 1 process, s/step | 2 processes, s/step | 2p / 1p |")
    print("|---|---|---|---|---|---|")
    for size in a.sizes.split(","):
        for stage in a.stages.split(","):
            r = bench(stage, size, a.steps, a.rounds)
            print(f"| {stage} | {size} ({LABELS[size]}) | {r['diff']:.1e} "
                  f"| {r['t1']:.3f} | {r['t2']:.3f} | {r['t2'] / r['t1']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
