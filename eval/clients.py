"""Generation clients shared by the benchmarks: one method, `generate(conversations, params)`.

A conversation is a list of `{"role": "system"|"user"|"assistant", "content": str}` that ends
with a user turn; `generate` returns one reply string per conversation, in order.

- `OpenAIChatClient`: any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, NIM,
  TRT-LLM serve). Used for the model under test and for the MT-Bench judge.
- `NemoServerClient`: NeMo's `megatron_gpt_eval.py` text-generation server (`PUT /generate`),
  which takes raw prompt strings, so conversations are rendered with the Nemotron template.

Both (and eval/hf_client.HFClient) also have `complete(prompts, params)`, which continues pre-rendered
prompt strings (the OpenAI one through `/completions`): SteerLM puts its attribute line inside the
assistant turn, where no chat-messages API can place it.

Only the standard library talks HTTP, so evaluation adds no dependency. Transient failures
(408, 429, 5xx, timeouts, refused or reset connections) are retried with exponential backoff.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

from tqdm.auto import tqdm

Conversation = list[dict]
log = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    """Decoding settings. temperature 0 means greedy; top_k 0 means no top-k filter."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)


class GenerationError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted)."""


def render_nemotron_prompt(conversation: Conversation) -> str:
    """Nemotron-4 chat template, ending with an open assistant turn:

    `<extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{user}\\n<extra_id_1>Assistant\\n...`
    (empty system text when the conversation has none).
    """
    if not conversation:
        raise ValueError("empty conversation")
    system = ""
    turns = conversation
    if conversation[0].get("role") == "system":
        system, turns = conversation[0]["content"], conversation[1:]
    out = [f"<extra_id_0>System\n{system}\n"]
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg.get("role") != expected:
            raise ValueError(f"conversation turn {i}: expected role {expected!r}, got {msg.get('role')!r}")
        out.append(f"<extra_id_1>{expected.capitalize()}\n{msg['content']}\n")
    if len(turns) % 2 == 0:
        raise ValueError("conversation must end with a user turn")
    out.append("<extra_id_1>Assistant\n")
    return "".join(out)


# --- HTTP with retries --------------------------------------------------------------------

RETRY_STATUS = {408, 429} | set(range(500, 600))


def _excerpt(body: bytes, n: int = 300) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text[:n] + ("..." if len(text) > n else "")


def request_json(method: str, url: str, payload: dict, headers: dict, timeout_s: float,
                 max_retries: int, backoff_s: float) -> object:
    """Send `payload` as JSON and return the decoded JSON reply.

    Retries up to `max_retries` times after the first attempt on 408/429/5xx, timeouts and
    connection errors, sleeping `backoff_s * 2**attempt` (or the server's Retry-After, capped
    at 60 s). Other statuses fail at once: a 400 or 401 will not fix itself.
    """
    data = json.dumps(payload).encode("utf-8")
    last = ""
    for attempt in range(max_retries + 1):
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **headers})
        retry_after = None
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                body = resp.read()
            try:
                return json.loads(body)
            except ValueError:
                raise GenerationError(f"{method} {url}: reply is not JSON: {_excerpt(body)}") from None
        except urllib.error.HTTPError as e:
            try:
                body = e.read() if e.fp is not None else b""
            except (OSError, http.client.HTTPException):
                body = b"<error body unreadable>"
            last = f"HTTP {e.code}: {_excerpt(body)}"
            if e.code not in RETRY_STATUS:
                raise GenerationError(f"{method} {url} failed: {last}") from None
            retry_after = e.headers.get("Retry-After") if e.headers else None
        except (OSError, http.client.HTTPException) as e:  # timeouts, refused/reset connections, bad DNS
            reason = getattr(e, "reason", e)
            last = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        if attempt == max_retries:
            break
        delay = backoff_s * 2**attempt
        if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(min(delay, 60.0))
    raise GenerationError(f"{method} {url} failed after {max_retries + 1} attempts; last error: {last}")


# --- clients --------------------------------------------------------------------------------


class OpenAIChatClient:
    """POST `{base_url}/chat/completions`, one conversation per request, `concurrency` in flight.

    The API key is read from the environment variable *named* by `api_key_env` at each request;
    the client never stores the key itself, so it cannot leak through repr, logs or saved configs.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout_s: float = 120, backoff_s: float = 1.0, progress: bool = True):
        if api_key_env and not os.environ.get(api_key_env):
            raise ValueError(f"environment variable {api_key_env} (the API key) is not set")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, timeout_s
        self.backoff_s, self.progress = backoff_s, progress

    def __repr__(self) -> str:
        return (f"OpenAIChatClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    def _headers(self) -> dict:
        if not self.api_key_env:
            return {}
        return {"Authorization": f"Bearer {os.environ[self.api_key_env]}"}

    def _one(self, conversation: Conversation, params: SamplingParams) -> str:
        payload = {"model": self.model, "messages": conversation, "max_tokens": params.max_new_tokens,
                   "temperature": params.temperature, "top_p": params.top_p}
        # top_k is not an OpenAI parameter (OpenAI rejects unknown keys); vLLM-style servers take it.
        if params.top_k > 0:
            payload["top_k"] = params.top_k
        if params.stop:
            payload["stop"] = list(params.stop)
        url = f"{self.base_url}/chat/completions"
        reply = request_json("POST", url, payload, self._headers(), self.timeout_s, self.max_retries, self.backoff_s)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GenerationError(f"POST {url}: no choices[0].message.content in reply: "
                                  f"{_excerpt(json.dumps(reply).encode())}") from None
        return content or ""  # null content (e.g. a refusal) counts as an empty answer

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[str]:
        return _map_bounded(lambda c: self._one(c, params), conversations, self.concurrency,
                            f"chat {self.model}", self.progress)

    def chat_completions(self, payloads: list[dict]) -> list[dict | None]:
        """The whole reply of `POST {base_url}/chat/completions` for each request body (messages, max_tokens,
        temperature, logprobs, top_logprobs...; `model` filled in when absent), as a plain dict, at most
        `concurrency` in flight. A request that fails for good gives None instead of raising, so a judge run can
        count its failures and still finish (the judges of AlpacaEval and Arena-Hard use this)."""
        url = f"{self.base_url}/chat/completions"

        def one(payload: dict) -> dict | None:
            try:
                reply = request_json("POST", url, {"model": self.model, **payload}, self._headers(), self.timeout_s,
                                     self.max_retries, self.backoff_s)
            except GenerationError as e:
                log.warning("judge request failed: %s", e)
                return None
            return reply if isinstance(reply, dict) else None

        return _map_bounded(one, payloads, self.concurrency, f"judge {self.model}", self.progress)

    def _one_text(self, prompt: str, params: SamplingParams) -> str:
        payload = {"model": self.model, "prompt": prompt, "max_tokens": params.max_new_tokens,
                   "temperature": params.temperature, "top_p": params.top_p}
        if params.top_k > 0:
            payload["top_k"] = params.top_k
        if params.stop:
            payload["stop"] = list(params.stop)
        url = f"{self.base_url}/completions"
        reply = request_json("POST", url, payload, self._headers(), self.timeout_s, self.max_retries, self.backoff_s)
        try:
            choice = reply["choices"][0]
            text = choice["text"] or ""
        except (KeyError, IndexError, TypeError):
            raise GenerationError(f"POST {url}: no choices[0].text in reply: "
                                  f"{_excerpt(json.dumps(reply).encode())}") from None
        # The server drops the stop string itself; the newline before <extra_id_1> closes the turn.
        if choice.get("finish_reason") == "stop" and "<extra_id_1>" in params.stop and text.endswith("\n"):
            text = text[:-1]
        return text

    def complete(self, prompts: list[str], params: SamplingParams) -> list[str]:
        """Continue pre-rendered prompt strings through the text-completions endpoint (`{base_url}/completions`,
        served by vLLM, TRT-LLM and NIM): for prompts no chat template can express, e.g. SteerLM's."""
        return _map_bounded(lambda p: self._one_text(p, params), prompts, self.concurrency,
                            f"completions {self.model}", self.progress)


class NemoServerClient:
    """PUT `{url}/generate` on NeMo's text-generation server, `batch_size` prompts per request.

    NeMo returns prompt + continuation in `sentences[i]`; we cut the prompt off by length and
    strip the end string that stopped generation (with the newline before it). NeMo rejects temperature 0, so greedy
    decoding is sent as `greedy=True, temperature=1.0`.
    """

    MAX_BATCH = 128  # the server refuses more sentences per request

    def __init__(self, url: str, tokens_to_generate: int | None = None, add_BOS: bool = False,
                 end_strings: list[str] | None = None, batch_size: int = 8, concurrency: int = 1,
                 max_retries: int = 5, timeout_s: float = 600, backoff_s: float = 1.0, progress: bool = True):
        if not 1 <= batch_size <= self.MAX_BATCH:
            raise ValueError(f"batch_size must be in 1..{self.MAX_BATCH}, got {batch_size}")
        self.url = url.rstrip("/")
        self.tokens_to_generate = tokens_to_generate  # None: use params.max_new_tokens
        self.add_BOS = add_BOS
        self.end_strings = list(end_strings) if end_strings is not None else ["<extra_id_1>"]
        self.batch_size, self.concurrency = batch_size, concurrency
        self.max_retries, self.timeout_s, self.backoff_s, self.progress = max_retries, timeout_s, backoff_s, progress

    def __repr__(self) -> str:
        return f"NemoServerClient(url={self.url!r}, batch_size={self.batch_size})"

    def _batch(self, prompts: list[str], params: SamplingParams) -> list[str]:
        greedy = params.temperature <= 0.0
        end_strings = self.end_strings + [s for s in params.stop if s not in self.end_strings]
        payload = {
            "sentences": prompts,
            "tokens_to_generate": self.tokens_to_generate or params.max_new_tokens,
            "temperature": 1.0 if greedy else params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
            "greedy": greedy,
            "add_BOS": self.add_BOS,
            "end_strings": end_strings,
        }
        url = f"{self.url}/generate"
        reply = request_json("PUT", url, payload, {}, self.timeout_s, self.max_retries, self.backoff_s)
        # On a bad request the server answers 200 with a bare JSON string saying what is wrong.
        if not isinstance(reply, dict) or not isinstance(reply.get("sentences"), list):
            raise GenerationError(f"PUT {url}: unexpected reply {_excerpt(json.dumps(reply).encode())}")
        if len(reply["sentences"]) != len(prompts):
            raise GenerationError(f"PUT {url}: sent {len(prompts)} prompts, got {len(reply['sentences'])} sentences")
        outs = []
        for prompt, sentence in zip(prompts, reply["sentences"]):
            text = sentence[len(prompt):]
            for end in end_strings:
                if text.endswith(end):
                    # "\n" + end string closes a turn in the template; drop both, as NeMo's own
                    # chat endpoint does.
                    text = text[: -len(end)]
                    text = text[:-1] if text.endswith("\n") else text
                    break
            outs.append(text)
        return outs

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[str]:
        return self.complete([render_nemotron_prompt(c) for c in conversations], params)

    def complete(self, prompts: list[str], params: SamplingParams) -> list[str]:
        """Continue pre-rendered prompt strings (e.g. a SteerLM prompt ending in its attribute line)."""
        batches = [prompts[i: i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        results = _map_bounded(lambda b: self._batch(b, params), batches, self.concurrency,
                               "nemo /generate", self.progress, weights=[len(b) for b in batches])
        return [text for batch in results for text in batch]


def _map_bounded(fn: Callable, items: list, workers: int, desc: str, progress: bool,
                 weights: list[int] | None = None) -> list:
    """`[fn(x) for x in items]` with at most `workers` calls in flight; the first failure
    cancels what has not started and is re-raised."""
    if not items:
        return []
    weights = weights or [1] * len(items)
    results: list = [None] * len(items)
    with tqdm(total=sum(weights), desc=desc, disable=not progress, leave=False) as bar, \
            ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                bar.update(weights[i])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


# --- command-line wiring used by eval/ifeval.py and eval/mt_bench.py -------------------------


def add_client_args(parser, prefix: str = "") -> None:
    """`--{prefix}backend/base-url/model/api-key-env/concurrency/batch-size/timeout` flags."""
    p = f"--{prefix}"
    parser.add_argument(f"{p}backend", choices=["openai", "nemo"], default="openai",
                        help="openai: POST {base-url}/chat/completions; nemo: PUT {base-url}/generate")
    parser.add_argument(f"{p}base-url", required=True, help="e.g. http://localhost:8000/v1 or http://host:5555")
    parser.add_argument(f"{p}model", default="default", help="model name sent to an OpenAI-compatible server")
    parser.add_argument(f"{p}api-key-env", default=None, help="NAME of the env var holding the API key")
    parser.add_argument(f"{p}concurrency", type=int, default=8)
    parser.add_argument(f"{p}batch-size", type=int, default=8, help="prompts per NeMo /generate request")
    parser.add_argument(f"{p}timeout", type=float, default=600.0, help="seconds per request")


def client_from_args(args, prefix: str = ""):
    get = lambda name: getattr(args, prefix.replace("-", "_") + name)  # noqa: E731
    if get("backend") == "nemo":
        return NemoServerClient(get("base_url"), batch_size=get("batch_size"), timeout_s=get("timeout"))
    return OpenAIChatClient(get("base_url"), get("model"), api_key_env=get("api_key_env"),
                            concurrency=get("concurrency"), timeout_s=get("timeout"))
