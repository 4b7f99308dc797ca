"""Generation clients shared by the benchmarks: `generate(conversations, params)` and `complete(prompts, params)`.

A conversation is a list of `{"role": "system"|"user"|"assistant", "content": str}` that ends
with a user turn; `generate` returns one reply string per conversation, in order, and **None** for a
request that still failed after its retries (HTTP clients only; the in-process eval/hf_client.HFClient
never fails one by one). Callers skip and count the Nones and write them to a failures file; the client
keeps the reasons (`client.pool.failures`, `client.pool.last_errors`) and stops the run with one line
once more than `max_failed_fraction` of its requests failed (eval/request_pool.py).

- `OpenAIChatClient`: any OpenAI-compatible endpoint (OpenAI, vLLM, NIM, TRT-LLM serve) through the
  `openai` SDK. `generate` posts `/chat/completions`; `complete` posts `/completions`;
  `chat_completions(payloads)` posts raw request bodies and returns the full replies as dicts (judges
  that read logprobs, reward models served behind the chat API). Used for the model under test and for
  the MT-Bench judge.
- `NemoServerClient`: NeMo's `megatron_gpt_eval.py` text-generation server (`PUT /generate`),
  which takes raw prompt strings, so conversations are rendered with the Nemotron template.

`complete(prompts, params)` (also on HFClient) continues pre-rendered prompt strings: SteerLM puts its
attribute line inside the assistant turn, where no chat-messages API can place it.

Both HTTP clients send through one `RequestPool` (eval/request_pool.py): per-request timeout, retries
with back-off on 408/429/5xx/timeouts/connection errors, `max_concurrency` in flight, an optional
requests-per-minute limit, a progress bar (requests/s, errors) and an on-disk cache keyed by the request.
Keyword arguments of both constructors: the `Limits` fields (timeout_s, max_retries, backoff_s,
max_concurrency, requests_per_minute, max_failed_fraction), `cache` (a JSONL path or None) and `progress`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from eval.request_pool import (RETRY_STATUS, GenerationError, Limits, PermanentError, RequestPool,  # noqa: F401
                               TransientError, excerpt, post_json, retry_after_s)

Conversation = list[dict]


@dataclass
class SamplingParams:
    """Decoding settings. temperature 0 means greedy; top_k 0 means no top-k filter."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)


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


# --- clients --------------------------------------------------------------------------------


def _sdk_errors(openai, e: Exception, timeout_s: float, secret: str | None) -> Exception:
    """An `openai` SDK exception as our TransientError / PermanentError (one line, never the key)."""
    scrub = (lambda text: text.replace(secret, "<key>")) if secret else (lambda text: text)  # noqa: E731
    if isinstance(e, openai.APITimeoutError):
        return TransientError(f"timed out after {timeout_s:g} s", timeout=True)
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        return TransientError(scrub(f"{type(cause).__name__}: {cause}"))
    if isinstance(e, openai.APIStatusError):
        message = scrub(f"HTTP {e.status_code}: {excerpt(e.response.text)}")
        if e.status_code in RETRY_STATUS:
            return TransientError(message, retry_after_s(e.response.headers))
        return PermanentError(message)
    return PermanentError(scrub(f"{type(e).__name__}: {excerpt(str(e))}"))


class OpenAIChatClient:
    """An OpenAI-compatible server through the `openai` SDK (its retries off: the RequestPool retries).

    The API key is read from the environment variable *named* by `api_key_env`. `api_key_env=None` is a
    keyless server (a local judge): no Authorization header is sent at all, not even the OPENAI_API_KEY
    that the SDK would otherwise pick up from the environment. The key never appears in a repr, a log line,
    an error message, the cache or an output file.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, *,
                 cache: str | os.PathLike | None = None, progress: bool = True, **limits):
        if api_key_env and not os.environ.get(api_key_env):
            raise ValueError(f"environment variable {api_key_env} (the API key) is not set")
        import openai  # about 1 s to import: only when a served model is used

        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env or None
        self.pool = RequestPool(Limits(**limits), cache, progress)
        key = os.environ[self.api_key_env] if self.api_key_env else "unused"
        self._sdk = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0,
                                  timeout=self.pool.limits.timeout_s)
        # Keyless: an explicit Omit is the SDK's way to send no Authorization header.
        self._headers = None if self.api_key_env else {"Authorization": openai.Omit()}

    def __repr__(self) -> str:
        return (f"OpenAIChatClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, limits={self.pool.limits})")

    def _post(self, resource, prompt_field: str, body: dict) -> dict:
        """One attempt at the SDK's chat or text completions (`resource`) with a wire-format body; the
        reply as the server sent it (the raw JSON: the SDK's parsing would cost a third of its time)."""
        import openai

        rest = {k: v for k, v in body.items() if k not in ("model", prompt_field)}
        try:
            response = resource.with_raw_response.create(
                model=body["model"], **{prompt_field: body[prompt_field]}, extra_body=rest or None,
                extra_headers=self._headers)
            reply = response.http_response.json()
        except openai.OpenAIError as e:
            secret = os.environ.get(self.api_key_env) if self.api_key_env else None
            raise _sdk_errors(openai, e, self.pool.limits.timeout_s, secret) from None
        except ValueError as e:  # a 200 whose body is not JSON (a proxy's error page, say)
            raise PermanentError(f"reply is not JSON: {excerpt(str(e))}") from None
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise PermanentError(f"reply has no choices: {excerpt(json.dumps(reply))}")
        return reply

    def _chat(self, bodies: list[dict]) -> list[dict | None]:
        return self.pool.map(lambda b: self._post(self._sdk.chat.completions, "messages", b), bodies,
                             f"POST {self.base_url}/chat/completions", f"chat {self.model}")

    def chat_completions(self, payloads: list[dict]) -> list[dict | None]:
        """POST each OpenAI chat-completions request body (model, messages, max_tokens, temperature,
        logprobs, top_logprobs, ...; `model` filled in when absent) to `{base_url}/chat/completions`.

        Returns each full reply as a plain dict, as the SDK returns it (`ChatCompletion` built from the
        reply, then `.model_dump()`: e.g. `choices[0].message.content`,
        `choices[0].logprobs.content[i].top_logprobs`; fields a server adds are kept), or None for a
        request that failed after its retries. Cached, concurrent and rate-limited like everything else.
        """
        from openai.types.chat import ChatCompletion

        bodies = []
        for p in payloads:
            if p.get("stream"):
                raise ValueError("chat_completions does not stream: drop 'stream' from the payload")
            bodies.append({"model": self.model, **p})
        return [None if r is None else ChatCompletion.construct(**r).model_dump() for r in self._chat(bodies)]

    @staticmethod
    def _sampling(params: SamplingParams) -> dict:
        body = {"max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p}
        # top_k is not an OpenAI parameter (OpenAI rejects unknown keys); vLLM-style servers take it.
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[str | None]:
        replies = self._chat([{"model": self.model, "messages": c, **self._sampling(params)} for c in conversations])
        # null content (e.g. a refusal) counts as an empty answer
        return [None if r is None else (r["choices"][0].get("message") or {}).get("content") or "" for r in replies]

    def complete(self, prompts: list[str], params: SamplingParams) -> list[str | None]:
        """Continue pre-rendered prompt strings through the text-completions endpoint (`{base_url}/completions`,
        served by vLLM, TRT-LLM and NIM): for prompts no chat template can express, e.g. SteerLM's."""
        bodies = [{"model": self.model, "prompt": p, **self._sampling(params)} for p in prompts]
        replies = self.pool.map(lambda b: self._post(self._sdk.completions, "prompt", b), bodies,
                                f"POST {self.base_url}/completions", f"completions {self.model}")
        return [None if r is None else _completion_text(r["choices"][0], params) for r in replies]


def _completion_text(choice: dict, params: SamplingParams) -> str:
    text = choice.get("text") or ""
    # The server drops the stop string itself; the newline before <extra_id_1> closes the turn.
    if choice.get("finish_reason") == "stop" and "<extra_id_1>" in params.stop and text.endswith("\n"):
        text = text[:-1]
    return text


class NemoServerClient:
    """PUT `{url}/generate` on NeMo's text-generation server, `batch_size` prompts per request.

    NeMo returns prompt + continuation in `sentences[i]`; we cut the prompt off by length and
    strip the end string that stopped generation (with the newline before it). NeMo rejects temperature 0, so greedy
    decoding is sent as `greedy=True, temperature=1.0`. Each prompt is cached on its own, so a rerun
    batches only the prompts not yet answered.
    """

    MAX_BATCH = 128  # the server refuses more sentences per request

    def __init__(self, url: str, tokens_to_generate: int | None = None, add_BOS: bool = False,
                 end_strings: list[str] | None = None, batch_size: int = 8, *,
                 cache: str | os.PathLike | None = None, progress: bool = True, **limits):
        if not 1 <= batch_size <= self.MAX_BATCH:
            raise ValueError(f"batch_size must be in 1..{self.MAX_BATCH}, got {batch_size}")
        self.url = url.rstrip("/")
        self.tokens_to_generate = tokens_to_generate  # None: use params.max_new_tokens
        self.add_BOS = add_BOS
        self.end_strings = list(end_strings) if end_strings is not None else ["<extra_id_1>"]
        self.batch_size = batch_size
        self.pool = RequestPool(Limits(**limits), cache, progress)

    def __repr__(self) -> str:
        return f"NemoServerClient(url={self.url!r}, batch_size={self.batch_size}, limits={self.pool.limits})"

    def _payload(self, prompt: str, params: SamplingParams) -> dict:
        """The request body for one prompt (batches join the `sentences` of payloads with equal settings)."""
        greedy = params.temperature <= 0.0
        return {
            "sentences": [prompt],
            "tokens_to_generate": self.tokens_to_generate or params.max_new_tokens,
            "temperature": 1.0 if greedy else params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
            "greedy": greedy,
            "add_BOS": self.add_BOS,
            "end_strings": self.end_strings + [s for s in params.stop if s not in self.end_strings],
        }

    def _send_batch(self, payloads: list[dict]) -> list[str]:
        prompts = [p["sentences"][0] for p in payloads]
        url = f"{self.url}/generate"
        reply = post_json("PUT", url, {**payloads[0], "sentences": prompts}, {}, self.pool.limits.timeout_s)
        # On a bad request the server answers 200 with a bare JSON string saying what is wrong.
        if not isinstance(reply, dict) or not isinstance(reply.get("sentences"), list):
            raise PermanentError(f"unexpected reply {excerpt(str(reply))}")
        if len(reply["sentences"]) != len(prompts):
            raise PermanentError(f"sent {len(prompts)} prompts, got {len(reply['sentences'])} sentences")
        end_strings = payloads[0]["end_strings"]
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

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[str | None]:
        return self.complete([render_nemotron_prompt(c) for c in conversations], params)

    def complete(self, prompts: list[str], params: SamplingParams) -> list[str | None]:
        """Continue pre-rendered prompt strings (e.g. a SteerLM prompt ending in its attribute line)."""
        return self.pool.map_batches(self._send_batch, [self._payload(p, params) for p in prompts],
                                     f"PUT {self.url}/generate", "nemo /generate", self.batch_size)


def failure_reasons(generator, n: int) -> list[str | None]:
    """Why each of the last call's `n` items failed (None where it did not), for a client or its bound
    `generate`/`complete`; all None for generators that keep no record (HFClient, plain functions)."""
    owner = getattr(generator, "__self__", generator)
    pool = getattr(owner, "pool", None)
    errors = getattr(pool, "last_errors", None)
    return list(errors) if errors is not None and len(errors) == n else [None] * n


def write_failures(path: str | os.PathLike, rows: list[dict]) -> None:
    """`failures.jsonl`: one row per item that got no reply (what it was, and `error`), or no file at all
    when nothing failed (a stale one from an earlier run is removed)."""
    from data_prep.jsonl import atomic_write_text

    path = Path(path)
    if rows:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        path.unlink(missing_ok=True)


# --- command-line wiring used by eval/ifeval.py and eval/mt_bench.py -------------------------


def add_limit_args(parser, prefix: str = "") -> None:
    """`--{prefix}timeout-s`, `--{prefix}max-retries`, ... : one flag per `Limits` field, same defaults."""
    for f in fields(Limits):
        typ = int if f.name in ("max_retries", "max_concurrency") else float
        parser.add_argument(f"--{prefix}{f.name.replace('_', '-')}", type=typ, default=f.default,
                            help=f.metadata.get("help"))


def limits_from_args(args, prefix: str = "") -> dict:
    return {f.name: getattr(args, (prefix + f.name).replace("-", "_")) for f in fields(Limits)}


def key_env(value: str | None) -> str | None:
    """`--api-key-env none` (or an empty value) means a keyless server."""
    return None if value is None or value.strip().lower() in ("", "none", "null") else value


def add_client_args(parser, prefix: str = "") -> None:
    """`--{prefix}backend/base-url/model/api-key-env/batch-size` and the `Limits` flags."""
    p = f"--{prefix}"
    parser.add_argument(f"{p}backend", choices=["openai", "nemo"], default="openai",
                        help="openai: POST {base-url}/chat/completions; nemo: PUT {base-url}/generate")
    parser.add_argument(f"{p}base-url", required=True, help="e.g. http://localhost:8000/v1 or http://host:5555")
    parser.add_argument(f"{p}model", default="default", help="model name sent to an OpenAI-compatible server")
    parser.add_argument(f"{p}api-key-env", default=None,
                        help="NAME of the env var holding the API key (default: none, a keyless server)")
    parser.add_argument(f"{p}batch-size", type=int, default=8, help="prompts per NeMo /generate request")
    add_limit_args(parser, prefix)


def add_cache_arg(parser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="do not cache replies in <output-dir>/request_cache/ (a rerun then asks again)")


def cache_file(args, name: str) -> Path | None:
    return None if args.no_cache else Path(args.output_dir) / "request_cache" / f"{name}.jsonl"


def client_from_args(args, prefix: str = "", cache=None, progress: bool = True):
    get = lambda name: getattr(args, prefix.replace("-", "_") + name)  # noqa: E731
    limits = limits_from_args(args, prefix)
    if get("backend") == "nemo":
        return NemoServerClient(get("base_url"), batch_size=get("batch_size"), cache=cache, progress=progress,
                                **limits)
    return OpenAIChatClient(get("base_url"), get("model"), api_key_env=key_env(get("api_key_env")), cache=cache,
                            progress=progress, **limits)
