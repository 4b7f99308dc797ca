"""SFT step time and throughput on this machine: the tiny test model and SmolLM2-135M with LoRA.

    .venv/bin/python bench/bench_sft.py [--steps 6] [--skip-smollm]

Prints a markdown table (docs/benchmarks.md cites it). Each row trains through the real
stage (`recipes.sft.run`) and reads its metrics.csv; the first step is dropped as warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from recipes import loop, sft  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402

CASES = {
    "tiny (2x64, full FT)": ("model=tiny", "model.micro_batch_size=4", "model.global_batch_size=8"),
    "SmolLM2-135M LoRA r8 (q,v)": ("model=smollm2_135m", "model.micro_batch_size=4", "model.global_batch_size=8"),
}


def bench(name: str, overrides: tuple, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(*overrides, "data=demo", "logger.wandb.enabled=false", "logger.progress_bar=false",
                          f"trainer.max_steps={steps}", "trainer.val_check_interval=0",
                          "model.data.validation_ds.file_path=null", f"exp_manager.explicit_log_dir={tmp}")
        t0 = time.perf_counter()
        sft.run(cfg, Path(tmp))
        wall = time.perf_counter() - t0
        rows = loop.read_metrics(Path(tmp))[1:]
    return {"case": name, "steps": steps, "wall_s": wall,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
            "step_s": statistics.median(r["step_time_s"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-smollm", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"demo data (max_seq_length 256), global batch 8 = 2 x micro-batch 4\n")
    print("| case | steps | median tokens/s | s/step | wall (incl. load) |")
    print("|---|---|---|---|---|")
    for name, overrides in CASES.items():
        if args.skip_smollm and "SmolLM2" in name:
            continue
        r = bench(name, overrides, args.steps)
        print(f"| {r['case']} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['step_s']:.2f} | {r['wall_s']:.1f} s |")


if __name__ == "__main__":
    main()
