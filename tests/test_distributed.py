"""Two processes (torchrun + FSDP2, gloo on CPU) train exactly as one process with the same global batch.

Each stage kind runs once with two processes (module-scoped fixtures, several assertions per run): SFT
through `torchrun` (killed with SIGKILL after a checkpoint and resumed), DPO through `torchrun`,
RPO with LoRA through `python launch.py trainer.devices=2` (which starts torchrun itself), the reward
model with LoRA through `torchrun`. The 1-process references run in this process on the same config.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipes import dpo, loop, rm, sft
from tests.conftest import REPO, TINY, compose_cfg

FIXTURES = REPO / "tests" / "fixtures"
SFT_DATA, DPO_DATA, RM_DATA = FIXTURES / "sft_tiny.jsonl", FIXTURES / "dpo_tiny.jsonl", FIXTURES / "rm_tiny.jsonl"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CLI = ("model=tiny", "data=none", "logger.wandb.enabled=false", "logger.progress_bar=false", "eval=[]",
       "trainer.accelerator=cpu")
TOL = 1e-5


def torchrun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            str(REPO / "launch.py"), *CLI, *args]


def launch_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "launch.py"), *CLI, *args]


def run(cmd: list[str], cache: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**ENV, "RECIPES_CACHE": str(cache)} if cache else ENV
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def one_process(module, stage: str, run_dir: Path, *args: str):
    """The stage's 1-process run, in this process, on the config the command line would give."""
    module.run(compose_cfg(*TINY, f"stage={stage}", "trainer.accelerator=cpu",
                           f"exp_manager.explicit_log_dir={run_dir}", *args), run_dir)


def by_step(run_dir: Path, key: str = "loss") -> dict[int, float]:
    return {m["step"]: m[key] for m in loop.read_metrics(run_dir) if m.get(key) is not None}


def assert_same(a: Path, b: Path, key: str = "loss", n: int | None = None) -> float:
    """Per-step `key` of two runs equal within TOL; returns the largest difference."""
    x, y = by_step(a, key), by_step(b, key)
    assert sorted(x) == sorted(y) and x, (x, y)
    if n is not None:
        assert len(x) == n
    diff = max(abs(x[s] - y[s]) for s in x)
    assert diff < TOL, (key, x, y)
    return diff


def generates(final: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    prompt = tok("<extra_id_0>System\n\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n", return_tensors="pt",
                 add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4


def weights_close(a: Path, b: Path, atol: float = 1e-4) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0)  # Adam amplifies fp noise


# ---------------------------------------------------------------- SFT: torchrun, kill -9, resume
SFT_ARGS = ("stage=sft", f"model.data.train_ds.file_path={SFT_DATA}", f"model.data.validation_ds.file_path={SFT_DATA}",
            "trainer.max_steps=8", "trainer.save_interval=2", "trainer.val_check_interval=4",
            "model.global_batch_size=4", "model.micro_batch_size=1")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (torchrun starts each worker in a session of its own, so a process group
    kill would miss them)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += parents.get(out[-1], [])
    return out


def kill_after_checkpoint(cmd: list[str], ckpt: Path, timeout: float = 180) -> None:
    """Start `cmd` and SIGKILL it and every process it started once `ckpt` exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO)
    deadline = time.monotonic() + timeout
    try:
        while not ckpt.is_dir():
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {ckpt} was written"
            assert time.monotonic() < deadline, f"no {ckpt} after {timeout} s"
            time.sleep(0.01)
    finally:
        for pid in process_tree(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """The 1-process run, and a 2-process run killed with SIGKILL after its step-2 checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("sft")
    one_process(sft, "sft", root / "one", *SFT_ARGS[1:])
    two = root / "two"
    kill_after_checkpoint(torchrun_cmd(*SFT_ARGS, f"exp_manager.explicit_log_dir={two}"),
                          two / "checkpoints" / "step_000002")
    killed_final = (two / "checkpoints" / "final").exists()
    resumed = ok(run(torchrun_cmd(*SFT_ARGS, f"exp_manager.explicit_log_dir={two}", "resume=true")))
    return {"one": root / "one", "two": two, "resumed": resumed, "killed_final": killed_final}


def test_sft_two_processes_killed_and_resumed_equal_one_process(sft_runs):
    one, two = sft_runs["one"], sft_runs["two"]
    assert not sft_runs["killed_final"], "the killed run finished before the kill: nothing was resumed"
    assert "resuming from" in (two / "launch.log").read_text()
    # Steps 1-2 from before the kill (later ones were cut on resume), 3-8 after it: each equal to one process.
    assert_same(one, two, "loss", n=8)
    assert_same(one, two, "val_loss")
    assert sorted(by_step(one, "val_loss")) == [4, 8]  # (and the final validation, also at step 8)
    weights_close(one / "checkpoints" / "final", two / "checkpoints" / "final")
    out = sft_runs["resumed"].stdout
    # Rank 0 alone speaks: the split once, the run header once.
    assert out.count("world size 2: 2 ranks x micro-batch 1 x 2 accumulation steps") == 1, out
    assert out.count("=== sft (backend torch)") == 1 and out.count("Done: sft finished.") == 1


def test_sft_periodic_checkpoints_are_sharded_and_final_is_hf(sft_runs):
    ckpts = sft_runs["two"] / "checkpoints"
    step = ckpts / "step_000002"
    assert (step / "dcp" / ".metadata").is_file() and (step / "rng_state_rank1.safetensors").is_file()
    assert json.loads((step / "trainer_state.json").read_text())["world_size"] == 2
    final = ckpts / "final"
    assert (final / "model.safetensors").is_file() and not (final / "dcp").exists()
    assert not list(ckpts.glob(".tmp-*"))
    generates(final)


def test_one_process_cannot_resume_a_sharded_checkpoint(sft_runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(sft_runs["two"], run_dir, ignore=shutil.ignore_patterns("final", ".lock"))
    r = run(launch_cmd(*SFT_ARGS, f"exp_manager.explicit_log_dir={run_dir}", "resume=true", "trainer.max_steps=9",
                       "resume_allow_changes=[trainer.max_steps]"))
    assert r.returncode == 1, r.stderr
    assert "written by 2 processes; resume it with several processes" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- DPO: torchrun, sharded reference pass
# 12 pairs in global batches of 8: step 2 is the epoch's short batch of 4 (each rank 2 pairs instead of 4);
# 5 validation micro-batches leave rank 1 one short (a zero-weight stand-in keeps the collectives in step).
DPO_ARGS = (f"model.data.train_ds.file_path={DPO_DATA}", f"model.data.validation_ds.file_path={DPO_DATA}",
            "trainer.max_steps=3", "trainer.val_check_interval=2", "trainer.limit_val_batches=5",
            "model.global_batch_size=8", "model.micro_batch_size=1", "model.optim.lr=1e-3")


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("dpo")
    monkeypatch_module.setenv("RECIPES_CACHE", str(root / "cache_one"))
    one_process(dpo, "dpo", root / "one", *DPO_ARGS)
    # Activation checkpointing (recompute each block in backward) changes the memory, not the numbers.
    two = ok(run(torchrun_cmd("stage=dpo", *DPO_ARGS, "model.activations_checkpointing=true",
                              f"exp_manager.explicit_log_dir={root / 'two'}"), cache=root / "cache_two"))
    return {"root": root, "two": two}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_dpo_two_processes_equal_one(dpo_runs):
    one, two = dpo_runs["root"] / "one", dpo_runs["root"] / "two"
    for key in ("loss", "acc", "rewards_chosen_mean", "val_loss", "val_acc"):
        assert_same(one, two, key)
    assert len(by_step(one)) == 3
    weights_close(one / "checkpoints" / "final", two / "checkpoints" / "final")
    assert "activations_checkpointing: true" in (two / "config.yaml").read_text()


def test_dpo_reference_logps_sharded_and_cached_as_one_process(dpo_runs):
    root = dpo_runs["root"]
    entries = {p.name: p for p in (root / "cache_one" / "ref_logps").glob("*.safetensors")}
    sharded = {p.name: p for p in (root / "cache_two" / "ref_logps").glob("*.safetensors")}
    assert entries and sorted(entries) == sorted(sharded)  # the same key: the same cache entry
    for name in entries:
        a, b = load_file(str(entries[name])), load_file(str(sharded[name]))
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=TOL, rtol=0)
    # A rerun with two processes finds the entry (every rank agrees) and trains the same.
    rerun = root / "rerun"
    r = ok(run(torchrun_cmd("stage=dpo", *DPO_ARGS, f"exp_manager.explicit_log_dir={rerun}", "trainer.max_steps=1"),
               cache=root / "cache_two"))
    assert "cache hit" in (rerun / "launch.log").read_text(), r.stdout


# ---------------------------------------------------------------- RPO with LoRA: trainer.devices=2
RPO_ARGS = (f"model.data.train_ds.file_path={DPO_DATA}", "trainer.max_steps=3", "model.global_batch_size=4",
            "model.micro_batch_size=2", "model.peft.peft_scheme=lora", "model.optim.lr=1e-2")


@pytest.fixture(scope="module")
def rpo_runs(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("rpo")
    monkeypatch_module.setenv("RECIPES_CACHE", str(root / "cache_one"))
    one_process(dpo, "rpo", root / "one", *RPO_ARGS)
    two = ok(run(launch_cmd("stage=rpo", *RPO_ARGS, "trainer.devices=2",
                            f"exp_manager.explicit_log_dir={root / 'two'}"), cache=root / "cache_two"))
    return {"root": root, "two": two}


def test_rpo_lora_with_trainer_devices_2_equals_one_process(rpo_runs):
    one, two = rpo_runs["root"] / "one", rpo_runs["root"] / "two"
    assert_same(one, two, "loss", n=3)
    assert_same(one, two, "preference_loss")
    out = rpo_runs["two"].stdout
    assert out.count("world size 2: 2 ranks x micro-batch 2 x 1 accumulation steps") == 1, out
    final = two / "checkpoints" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()  # the adapter, and the merged weights
    weights_close(one / "checkpoints" / "final", final)
    generates(final)


# ---------------------------------------------------------------- reward model with LoRA: torchrun
RM_ARGS = (f"model.data.train_ds.file_path={RM_DATA}", f"model.data.validation_ds.file_path={RM_DATA}",
           "trainer.max_steps=3", "trainer.val_check_interval=3", "model.global_batch_size=4",
           "model.micro_batch_size=1", "model.peft.peft_scheme=lora")


def test_rm_lora_two_processes_equal_one(tmp_path):
    one_process(rm, "rm", tmp_path / "one", *RM_ARGS)
    ok(run(torchrun_cmd("stage=rm", *RM_ARGS, f"exp_manager.explicit_log_dir={tmp_path / 'two'}")))
    assert_same(tmp_path / "one", tmp_path / "two", "loss", n=3)
    assert_same(tmp_path / "one", tmp_path / "two", "val_loss")
    a, b = tmp_path / "one" / "checkpoints" / "final", tmp_path / "two" / "checkpoints" / "final"
    weights_close(a, b)
    head_a, head_b = load_file(str(a / "rm_head.safetensors")), load_file(str(b / "rm_head.safetensors"))
    for k in head_a:
        torch.testing.assert_close(head_a[k], head_b[k], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- the split
@pytest.mark.parametrize("world", [2, 3])
def test_shares_give_the_batch_back_in_order_with_as_many_micro_batches(monkeypatch, world):
    from recipes import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: world)
    for n, mbs, unit in [(8, 2, 1), (5, 2, 1), (1, 1, 1), (6, 2, 2), (2, 2, 2)]:
        batch = list(range(100, 100 + n))
        per_rank = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            per_rank.append(distributed.micro_batches(batch, mbs, unit))
        assert len({len(mbs_) for mbs_ in per_rank}) == 1, per_rank  # the same number of passes on every rank
        assert [i for mbs_ in per_rank for mb in mbs_ for i in mb] == batch  # in order, nothing twice or lost
        assert all(len(mb) % unit == 0 for mbs_ in per_rank for mb in mbs_)  # BT pairs stay whole


# ---------------------------------------------------------------- errors, Slurm
def bad_sft_file(tmp_path: Path) -> Path:
    rows = SFT_DATA.read_text().splitlines()
    rows[3] = rows[3].replace('"from": "User"', '"from": "user"')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    return bad


def test_a_bad_row_stops_every_rank_with_one_line(tmp_path):
    r = run(launch_cmd("stage=sft", f"model.data.train_ds.file_path={bad_sft_file(tmp_path)}", "trainer.max_steps=2",
                       "trainer.devices=2", f"exp_manager.explicit_log_dir={tmp_path / 'run'}"), timeout=120)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: bad.jsonl:4: conversations[0].from: must be 'User' or 'Assistant', got 'user'"], r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


RANK_1_FAILS = """
import os
if os.environ.get("RANK") == "1":  # only rank 1, at its second step, while rank 0 waits in a collective
    from recipes import sft
    real, calls = sft.train_step, []
    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("simulated failure on rank 1")
        return real(*args, **kwargs)
    sft.train_step = train_step
"""


def test_an_error_on_one_rank_stops_the_others_with_its_line(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(RANK_1_FAILS)  # runs at every interpreter's start
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    args = ("stage=sft", f"model.data.train_ds.file_path={SFT_DATA}", "trainer.max_steps=4",
            f"exp_manager.explicit_log_dir={tmp_path / 'run'}")
    r = subprocess.run(torchrun_cmd(*args), capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: simulated failure on rank 1"], r.stderr[-3000:]
    # No traceback of ours; torchrun itself prints its ChildFailedError summary after the line (its frames are
    # under the virtualenv, which a fresh clone keeps inside the repo: .venv/).
    ours = [ln for ln in r.stderr.splitlines() if f'File "{REPO}/' in ln and f'File "{REPO}/.venv' not in ln]
    assert ours == [], r.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "final").exists()


def test_slurm_writes_an_sbatch_with_torchrun_per_node(tmp_path):
    run_dir = tmp_path / "run"
    r = ok(run(launch_cmd("stage=sft", f"model.data.train_ds.file_path={SFT_DATA}", "executor=slurm",
                          "trainer.num_nodes=2", "trainer.devices=8", "executor.partition=gpu",
                          f"exp_manager.explicit_log_dir={run_dir}")))
    text = (run_dir / "sft.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "--nnodes=2 --nproc-per-node=8", "--rdzv-backend=c10d",
                 "srun --ntasks-per-node=1", "launch.py", "stage=sft", "trainer.num_nodes=2", "executor=local"):
        assert line in text, text
    assert "\n    executor=slurm" not in text  # the job itself runs torchrun, not another sbatch
    assert "sbatch" in r.stdout and not (run_dir / "checkpoints").exists()
    # Several nodes need someone to start each of them: without executor=slurm, one line says so.
    r = run(launch_cmd("stage=sft", f"model.data.train_ds.file_path={SFT_DATA}", "trainer.num_nodes=2",
                       f"exp_manager.explicit_log_dir={tmp_path / 'other'}"))
    assert r.returncode == 1 and r.stderr.startswith("config error: trainer.num_nodes=2 on backend=torch: add "
                                                     "executor=slurm"), r.stderr
