"""Shared test setup: offline hub/wandb, fixture paths, Hydra composition."""

import contextlib
import os
from pathlib import Path

# Nothing in the test suite may reach a hub; without HF_HUB_OFFLINE a failed load takes ~50 s.
# One intra-op thread: the tests use tiny models, where two OpenMP threads fighting other
# processes for 2 cores made steps up to 10x slower. Subprocesses inherit it.
for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
               "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
# Real benchmark rows the tests need, shipped in the repo (each folder's README names source and license).
FIXTURES = REPO / "tests" / "fixtures"
# The demo's RewardBench subset (data/demo/README.md): real allenai/reward-bench rows, also the tests' copy.
REWARD_BENCH_ROWS = REPO / "data" / "demo" / "reward_bench_subset.jsonl"


def compose_cfg(*overrides: str):
    """The run config `python launch.py <overrides>` would get (Hydra compose, struct mode)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recipes.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


# Settings every quick training test uses: the tiny model, no wandb, no progress bar.
TINY = ("model=tiny", "data=none", "logger.wandb.enabled=false", "logger.progress_bar=false")


@contextlib.contextmanager
def crash_on_call(monkeypatch, module, name: str, n: int):
    """A simulated kill: `module.name` raises KeyboardInterrupt on its n-th call inside the block, which the
    block must end with; the real function is back afterwards."""
    import pytest

    real, calls = getattr(module, name), [0]

    def dies(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dies)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(module, name, real)
