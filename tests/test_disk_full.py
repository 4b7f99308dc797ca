"""A full disk (ENOSPC) anywhere in a run: one line naming the file and the space left, no partial temp
checkpoint left behind, metrics rows whole, earlier outputs intact. Patched writes everywhere; a real
64-256 KiB tmpfs (in a user namespace, `unshare -rm`) where the machine allows one."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.jsonl import WriteError
from recipes import loop
from tests.conftest import REPO, TINY, compose_cfg

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
FIXTURE = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"


def one_line_enospc(err: BaseException, path) -> None:
    msg = str(err)
    assert "\n" not in msg and msg.startswith(f"cannot write {path}: No space left on device (") and " free on " in msg


def test_metrics_rows_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    logger = loop.MetricsLogger(tmp_path, compose_cfg(*TINY), resume=False)
    logger.log({"loss": 1.0, "lr": 0.1}, 1)
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills up in the middle of a row
        real_write(fd, bytes(data[: len(data) // 2]))
        raise ENOSPC

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(WriteError) as err:
        logger.log({"loss": 0.5, "lr": 0.1}, 2)
    monkeypatch.undo()
    one_line_enospc(err.value, tmp_path / "metrics.jsonl")
    assert [m["step"] for m in loop.read_metrics(tmp_path)] == [1]
    logger.log({"loss": 0.25, "lr": 0.1}, 2)  # space again: the file goes on from a whole row
    assert [m["step"] for m in loop.read_metrics(tmp_path)] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1:] == ["1,1.0,0.1", "2,0.25,0.1"]


def test_checkpoint_save_on_a_full_disk_removes_its_temp_dir_and_keeps_the_last_one(tmp_path, monkeypatch):
    from recipes import sft

    cfg = compose_cfg(*TINY, f"model.data.train_ds.file_path={FIXTURE}", "trainer.max_steps=4",
                      "trainer.save_interval=2")
    real_save = loop.save_hf

    def full_at_final(model, tokenizer, path, merged=False):
        if Path(path).name == ".tmp-final":
            Path(path).mkdir(parents=True)
            (Path(path) / "model.safetensors").write_bytes(b"half a file")
            raise ENOSPC
        return real_save(model, tokenizer, path, merged=merged)

    monkeypatch.setattr(loop, "save_hf", full_at_final)
    with pytest.raises(WriteError) as err:
        sft.run(cfg, tmp_path)
    one_line_enospc(err.value, tmp_path / "checkpoints" / "final")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000002"]  # no .tmp-final
    assert (tmp_path / "checkpoints" / "step_000002" / "model.safetensors").is_file()


def test_pipeline_manifest_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    from recipes import pipeline

    manifest = {"pipeline": "demo", "stages": {}, "hashes": {}}
    pipeline.save_manifest(tmp_path, manifest)
    before = (tmp_path / "manifest.json").read_bytes()
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(WriteError) as err:
        pipeline.save_manifest(tmp_path, {**manifest, "stages": {"sft": {"status": "done"}}})
    monkeypatch.undo()
    one_line_enospc(err.value, tmp_path / "manifest.json")
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


def _tmpfs_available() -> bool:
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


def in_small_tmpfs(size: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` (sh) with a `size` tmpfs mounted on $DISK, in a private mount namespace."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**os.environ, "DISK": str(disk), "PY": sys.executable, "REPO": str(REPO), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs "$DISK" && {script}'],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


needs_tmpfs = pytest.mark.skipif(not _tmpfs_available(), reason="no unprivileged user namespaces here for a tmpfs")


@needs_tmpfs
def test_data_prep_on_a_real_full_disk_is_one_line_and_keeps_the_old_set(tmp_path):
    big = tmp_path / "big.jsonl"
    row = {"prompt": "p" * 2000, "response": "r" * 2000, "helpfulness": 3, "correctness": 3, "coherence": 3,
           "complexity": 1, "verbosity": 1}
    big.write_text("".join(json.dumps({**row, "prompt": f"{i}" + row["prompt"]}) + "\n" for i in range(40)))
    small = REPO / "tests" / "fixtures" / "data_prep" / "helpsteer2_4rows.jsonl"
    r = in_small_tmpfs("64k", f'$PY -m data_prep.helpsteer2 --input {small} --output-dir "$DISK/out" && '
                              'ls "$DISK/out" > "$DISK/../before" && '
                              # one response per prompt: no DPO pairs, by design (--allow-empty)
                              f'$PY -m data_prep.helpsteer2 --input {big} --output-dir "$DISK/out" --allow-empty; '
                              'echo "rc=$?"; ls -a "$DISK/out"', tmp_path)
    assert "rc=2" in r.stdout, (r.stdout, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {tmp_path / 'disk' / 'out'}") and "No space left on device (" in line
    assert " free on " in line
    listing = r.stdout.split("rc=2")[1].split()
    assert sorted(n for n in listing if n not in (".", "..")) == sorted((tmp_path / "before").read_text().split())


@needs_tmpfs
def test_checkpoint_on_a_real_full_disk_is_one_line_and_leaves_no_temp_dir(tmp_path):
    # safetensors reports a full disk with its own error type: the real thing, not a patched write.
    script = ("import os; from pathlib import Path; from recipes import loop; from recipes.config import TinyModelConfig; "
              "from recipes.models import build_tiny_model, train_tiny_tokenizer; "
              "tok = train_tiny_tokenizer(['hello world'] * 8, 300); "
              "loop.save_checkpoint(Path(os.environ['DISK']) / 'run', 'final', build_tiny_model(TinyModelConfig(), tok, 0), tok)")
    r = in_small_tmpfs("256k", f'$PY -c "{script}"; echo "rc=$?"; ls -A "$DISK/run/checkpoints"', tmp_path)
    assert "rc=1" in r.stdout, (r.stdout, r.stderr[-3000:])
    line = r.stderr.strip().splitlines()[-1]
    final = tmp_path / "disk" / "run" / "checkpoints" / "final"
    assert line.startswith(f"data_prep.jsonl.WriteError: cannot write {final}: No space left on device ("), line
    assert r.stdout.split("rc=1")[1].split() == []  # no .tmp-final left


@needs_tmpfs
def test_generation_on_a_real_full_disk_names_its_output(tmp_path):
    script = ("from pathlib import Path; import os; from recipes.sdg_generate import generate_file; "
              "rows = [{'prompt': f'q{i}'} for i in range(50)]; "
              "generate_file(rows, Path(os.environ['DISK']) / 'gen.jsonl', lambda msgs, p: ['x' * 4000] * len(msgs), "
              "None, 2, 'm', chunk_size=4, progress=False)")
    r = in_small_tmpfs("64k", f'$PY -c "{script}"', tmp_path)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("data_prep.jsonl.WriteError: cannot write ") and "gen.jsonl: No space left on device (" in line


@needs_tmpfs
def test_training_on_a_real_full_disk_is_one_line_even_with_wandb(tmp_path):
    # wandb's own threads log to files on the same full disk; their failures must not bury our line.
    r = in_small_tmpfs("64k", '$PY launch.py stage=sft model=tiny trainer.max_steps=4 logger.wandb.enabled=true '
                              'logger.progress_bar=false exp_manager.explicit_log_dir="$DISK/sft"; echo "rc=$?"', tmp_path)
    assert "rc=1" in r.stdout, (r.stdout, r.stderr[-3000:])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "No space left on device (" in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Logging error" not in r.stderr, r.stderr[-3000:]
