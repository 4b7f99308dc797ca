"""The GPU check script starts and runs its whole path on a CPU (`--cpu --tiny`); its numbers are not checked."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_runs_on_cpu_tiny():
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--tiny"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| sft |") or line.startswith("| dpo |")]
    assert len(rows) == 2, out.stdout
    assert rows[0].split("|")[6].strip().endswith("%")  # the packing efficiency of the SFT stage
