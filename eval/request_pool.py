"""Many requests to a model server, bounded in time, concurrency and rate, cached on disk, failures counted.

Every HTTP client of this repo (eval/clients.py: the OpenAI-compatible one and NeMo's server;
eval/reward_client.py: reward-model endpoints) sends its requests through one `RequestPool`:

    pool = RequestPool(Limits(timeout_s=30, max_retries=2, max_concurrency=8), cache="out/request_cache/x.jsonl")
    replies = pool.map(send, payloads, url)          # one reply per payload, None where it failed

- `send(payload)` makes ONE attempt and returns a JSON value; it raises `TransientError` for what is worth
  retrying (408, 429, 5xx, timeouts, refused or reset connections; with the server's Retry-After) and
  `PermanentError` for what is not (400, 401, a reply without the fields asked for). `post_json` is such a
  `send` for plain JSON endpoints (urllib); eval/clients.py wraps the `openai` SDK the same way. A new
  endpoint client (e.g. a reward model served over HTTP) writes its `send` and calls `pool.map`; one that
  speaks OpenAI's chat API uses `OpenAIChatClient.chat_completions` directly.
- retries: up to `max_retries` after the first attempt, sleeping `backoff_s * 2**attempt` (or Retry-After,
  at most 60 s). A timed-out request is retried once at most: the same request (greedy decoding above all)
  takes as long again, and bounding it keeps a server that never answers from holding a run for minutes.
  Worst case per request: `timeout_s * 2 + backoff_s` for a silent server; a closed port fails in
  `backoff_s * (2**max_retries - 1)`.
- `max_concurrency` requests in flight (threads); `requests_per_minute` spaces attempts evenly (null: no limit).
- cache: an append-only JSONL file, one line per reply, written (one `os.write`, so a `kill -9` loses at
  most the line being written) by the worker that got it before it sends its next request. The key is a
  SHA-256 of the URL, the full payload and the payload's occurrence number among identical payloads of the
  same call (so n samples of one prompt are n entries); headers, and so API keys, are never part of it.
- failures: a request that still fails after its retries gives None and a one-line reason (URL, attempts,
  last error); `pool.failures` holds them all, `pool.last_errors` those of the last call (aligned with its
  result). A run stops with one line (`GenerationError`) as soon as its failures exceed
  `max_failed_fraction` of the requests handed to the pool so far, so a dead server stops it after a few
  requests instead of after all of them; below that the run finishes with what it has.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429} | set(range(500, 600))
MAX_BACKOFF_S = 60.0


class GenerationError(ValueError):
    """The run cannot go on: too many requests failed. The message is one line. A ValueError, like a bad
    setting (it usually is one: a wrong base_url, key or timeout), so launch.py and the CLIs print it as one
    line instead of a traceback."""


class TransientError(Exception):
    """One attempt failed in a way a later attempt may not (429, 5xx, timeout, connection)."""

    def __init__(self, message: str, retry_after: float | None = None, timeout: bool = False):
        super().__init__(message)
        self.retry_after, self.timeout = retry_after, timeout


class PermanentError(Exception):
    """One attempt failed in a way retrying will not fix (400, 401, a malformed reply)."""


@dataclass(frozen=True)
class Limits:
    """How long, how often and how many at once. The defaults suit a local server with one slot; for
    OpenAI raise max_concurrency (e.g. 16) and max_retries (e.g. 6) and set requests_per_minute."""

    timeout_s: float = field(default=30.0, metadata={
        "help": "seconds one attempt may wait for the server (to connect, or between bytes of the reply)"})
    max_retries: int = field(default=2, metadata={
        "help": "retries after the first attempt on 408/429/5xx/connection errors (a timeout: one retry at most)"})
    backoff_s: float = field(default=1.0, metadata={
        "help": "sleep before retry k: backoff_s * 2**k seconds, or the server's Retry-After"})
    max_concurrency: int = field(default=1, metadata={"help": "requests in flight"})
    requests_per_minute: float | None = field(default=None, metadata={"help": "rate limit (default: none)"})
    max_failed_fraction: float = field(default=0.05, metadata={
        "help": "stop the run once more than this fraction of its requests failed after retries"})

    def __post_init__(self):
        checks = [("timeout_s", self.timeout_s > 0, "> 0"), ("max_retries", self.max_retries >= 0, ">= 0"),
                  ("backoff_s", self.backoff_s >= 0, ">= 0"), ("max_concurrency", self.max_concurrency >= 1, ">= 1"),
                  ("requests_per_minute", self.requests_per_minute is None or self.requests_per_minute > 0,
                   "> 0 or null"),
                  ("max_failed_fraction", 0 <= self.max_failed_fraction <= 1, "in [0, 1]")]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} must be {allowed}")

    @classmethod
    def from_config(cls, node) -> "Limits":
        """The fields of a config node that has them all (GeneratorConfig, JudgeConfig)."""
        return cls(**{f.name: node[f.name] for f in fields(cls)})


# --- one attempt at a plain JSON endpoint ----------------------------------------------------------


def excerpt(text: str | bytes, n: int = 300) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:n] + ("..." if len(text) > n else "")


def retry_after_s(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def post_json(method: str, url: str, payload, headers: dict, timeout_s: float):
    """One attempt: send `payload` as JSON, return the decoded JSON reply (a `send` for `RequestPool.map`)."""
    data = json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        try:
            body = e.read() if e.fp is not None else b""
        except (OSError, http.client.HTTPException):
            body = b"<error body unreadable>"
        message = f"HTTP {e.code}: {excerpt(body)}"
        if e.code in RETRY_STATUS:
            raise TransientError(message, retry_after_s(e.headers)) from None
        raise PermanentError(message) from None
    except TimeoutError:
        raise TransientError(f"timed out after {timeout_s:g} s", timeout=True) from None
    except (OSError, http.client.HTTPException) as e:  # refused/reset connections, bad DNS, torn replies
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise TransientError(f"timed out after {timeout_s:g} s", timeout=True) from None
        raise TransientError(f"{type(reason).__name__}: {reason}".rstrip(": ")) from None
    try:
        return json.loads(body)
    except ValueError:
        raise PermanentError(f"reply is not JSON: {excerpt(body)}") from None


# --- the cache --------------------------------------------------------------------------------------


def request_key(url: str, payload, occurrence: int = 0) -> str:
    text = json.dumps([url, payload, occurrence], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RequestCache:
    """Replies by request key in an append-only JSONL file (`{"key": ..., "value": ...}` per line).

    Only the keys and line offsets are held in memory; values are read back when asked for, so a cache
    of an SDG run with many thousands of replies costs little memory. A torn last line (a kill during a
    write) is skipped, and the next write starts on a fresh line.
    """

    PREFIX = b'{"key": "'

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._where: dict[str, tuple[int, int]] = {}  # key -> (offset, length)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._rfd = os.open(self.path, os.O_RDONLY)
        offset = 0
        with open(self.path, "rb") as f:
            for line in f:
                if line.startswith(self.PREFIX) and line.endswith(b"\n"):
                    self._where[line[9:73].decode("ascii", "replace")] = (offset, len(line))
                offset += len(line)
        if offset and os.pread(self._rfd, 1, offset - 1) != b"\n":
            os.write(self._fd, b"\n")

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: str):
        """The cached value, or None when absent (or unreadable: it is then asked again)."""
        where = self._where.get(key)
        if where is None:
            return None
        try:
            return json.loads(os.pread(self._rfd, where[1], where[0]))["value"]
        except (ValueError, KeyError):
            return None

    def put(self, key: str, value) -> None:
        line = (json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, line)  # one write on an O_APPEND descriptor: never interleaved with another
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            self._where[key] = (end - len(line), len(line))

    def close(self) -> None:
        fds, self._fd, self._rfd = (self._fd, self._rfd), -1, -1  # never close a reused descriptor twice
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __del__(self):
        self.close()


# --- the pool ---------------------------------------------------------------------------------------


class _RateLimit:
    """Attempts at least 60/rpm seconds apart, across all threads."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        time.sleep(start - now)


class RequestPool:
    """Runs `send` over many payloads with the `Limits`, the cache and the failure accounting above."""

    def __init__(self, limits: Limits | None = None, cache: str | os.PathLike | None = None, progress: bool = True):
        self.limits = limits or Limits()
        self.cache = RequestCache(cache) if cache else None
        self.progress = progress
        self._rate = _RateLimit(self.limits.requests_per_minute)
        self.n_requests = 0  # requests handed to the pool, cached ones included
        self.failures: list[str] = []  # one line per failed request
        self.last_errors: list[str | None] = []  # the last call's reasons, aligned with its result
        self._lock = threading.Lock()
        self._stopped = False  # set once failures pass max_failed_fraction; the pool then sends nothing

    def map(self, send: Callable[[Any], Any], payloads: list, url: str, desc: str = "requests") -> list:
        """`[send(p) for p in payloads]` with retries, at most `max_concurrency` at once; None where failed."""
        return self.map_batches(lambda batch: [send(batch[0])], payloads, url, desc, batch_size=1)

    def map_batches(self, send_batch: Callable[[list], list], payloads: list, url: str, desc: str = "requests",
                    batch_size: int = 1) -> list:
        """Like `map`, but `send_batch` takes up to `batch_size` uncached payloads in one request and returns
        one value per payload (NeMo's /generate takes many prompts at once). Each payload is cached alone,
        so a rerun batches only what is missing."""
        n = len(payloads)
        results: list = [None] * n
        errors: list[str | None] = [None] * n
        self.n_requests += n
        keys, todo = self._keys(url, payloads), []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if key is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]

        def work(idx: list[int]):
            if self._stopped:
                return None, None  # the run is over: too many failures
            ok, values = self._attempts(send_batch, [payloads[i] for i in idx], url)
            if ok and self.cache is not None:  # before this worker sends anything else
                for i, value in zip(idx, values):
                    self.cache.put(keys[i], value)
            if not ok:
                self._count(idx, values, errors)  # here, so no worker starts another request past the limit
            return ok, values

        bar = tqdm(total=n, initial=n - len(todo), desc=desc, unit="req", disable=not self.progress, leave=False)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.limits.max_concurrency, len(batches))))
        futures: dict = {}
        try:
            futures = {pool.submit(work, b): b for b in batches}
            for fut in as_completed(futures):
                idx = futures[fut]
                ok, values = fut.result()
                if ok:
                    for i, value in zip(idx, values):
                        results[i] = value
                elif ok is False:
                    bar.set_postfix(errors=len(self.failures), refresh=False)
                if self._stopped:
                    raise GenerationError(
                        f"{len(self.failures)} of {self.n_requests} requests failed (more than max_failed_fraction="
                        f"{self.limits.max_failed_fraction:g}); first: {self.failures[0]}")
                bar.update(len(idx))
        except BaseException:
            for f in futures:
                f.cancel()  # what has not started; what has is bounded by its timeout and retries
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
            self.last_errors = errors
        failed = sum(e is not None for e in errors)
        if failed:
            log.warning("%s: %d of %d requests failed; first: %s", desc, failed, n, next(e for e in errors if e))
        return results

    def _keys(self, url: str, payloads: list) -> list:
        """Cache keys (None without a cache): identical payloads of one call get occurrence numbers 0, 1, ..."""
        if self.cache is None:
            return [None] * len(payloads)
        seen: dict[str, int] = {}
        keys = []
        for p in payloads:
            base = request_key(url, p)
            keys.append(request_key(url, p, seen.get(base, 0)))
            seen[base] = seen.get(base, 0) + 1
        return keys

    def _count(self, idx: list[int], reason: str, errors: list) -> None:
        with self._lock:
            for i in idx:
                errors[i] = reason
                self.failures.append(reason)
            if len(self.failures) <= 3:
                log.warning("request failed: %s", reason)
            if len(self.failures) > self.limits.max_failed_fraction * self.n_requests:
                self._stopped = True

    def _attempts(self, send_batch: Callable[[list], list], batch: list, url: str) -> tuple[bool, Any]:
        """(True, values) or (False, one-line reason) after at most max_retries + 1 attempts."""
        lim = self.limits
        last, timeouts, attempt = "", 0, 0
        for attempt in range(lim.max_retries + 1):
            self._rate.wait()
            try:
                values = send_batch(batch)
                if len(values) != len(batch):
                    raise PermanentError(f"sent {len(batch)} requests in one, got {len(values)} replies")
                return True, values
            except PermanentError as e:
                return False, f"{url}: {e} (attempt {attempt + 1}, not retried)"
            except TransientError as e:
                last = str(e)
                timeouts += e.timeout
                if attempt == lim.max_retries or timeouts > 1:
                    break
                time.sleep(min(max(lim.backoff_s * 2**attempt, e.retry_after or 0.0), MAX_BACKOFF_S))
        return False, (f"{url}: failed after {attempt + 1} attempts (timeout_s={lim.timeout_s:g}, "
                       f"max_retries={lim.max_retries}); last error: {last}")
