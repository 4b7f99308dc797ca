"""A reward model behind an OpenAI-compatible API, as NVIDIA serves Nemotron-4-340B-Reward.

The wire format (docs/sdg.md says what is confirmed and what is inferred):

    POST {base_url}/chat/completions
    {"model": "nvidia/nemotron-4-340b-reward",
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "<the response>"}]}

    200 {"choices": [{"index": 0, "finish_reason": "length",
                      "message": {"role": "assistant",
                                  "content": "helpfulness:3.3,correctness:3.1,coherence:3.7,complexity:1.4,verbosity:1.5"},
                      "logprobs": {"content": [{"token": "helpfulness", "logprob": 3.3, ...}, ...]}}], ...}

The conversation is the prompt's turns and, last, the assistant turn to score; earlier turns alternate
user/assistant. The scores are the attributes of that last assistant turn. NVIDIA's NIM documentation
parses `message.content` ("name:value" pairs joined by commas); NeMo Curator's client reads
`logprobs.content` (token = attribute name, logprob = its value). We read `logprobs.content` when it is
there and `message.content` otherwise; recipes/rm_serve.py sends both.

`RewardClient.score(conversations)` sends one request per conversation through eval/request_pool.py's
`RequestPool` (timeouts, retries on 429/5xx, `max_concurrency` in flight, requests per minute, the reply
cache, failures counted: None where a request failed after its retries).
"""

from __future__ import annotations

import math
import os
import re
import time

from eval.request_pool import Limits, PermanentError, RequestPool, excerpt, post_json

_PAIR = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*:\s*(\S+)\s*$")


def reward_messages(turns: list[tuple[str, str]], response: str) -> list[dict]:
    """OpenAI messages for scoring `response` after the prompt `turns` ([(User|Assistant, text)])."""
    return [{"role": role.lower(), "content": text} for role, text in turns] + \
        [{"role": "assistant", "content": response}]


def parse_scores(content: str) -> dict[str, float]:
    """`helpfulness:3.3,correctness:3.1,...` -> {name: value}; PermanentError when it is not that."""
    scores = {}
    for part in (content or "").split(","):
        m = _PAIR.match(part)
        try:
            value = float(m.group(2)) if m else math.nan
        except ValueError:
            value = math.nan
        if not m or not math.isfinite(value):
            raise PermanentError(f"reply content is not 'name:value,...' scores: {excerpt(content or '')}")
        scores[m.group(1)] = value
    return scores


def parse_reward_reply(reply) -> dict[str, float]:
    """The attribute scores of a reply: `choices[0].logprobs.content` (token -> logprob), else
    `choices[0].message.content`. PermanentError for a reply that carries neither (not a reward model)."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise PermanentError(f"reply has no choices: {excerpt(str(reply))}")
    choice = choices[0]
    entries = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if isinstance(entries, list) and entries:
        scores = {}
        for e in entries:
            value = e.get("logprob") if isinstance(e, dict) else None
            if not isinstance(e, dict) or not isinstance(e.get("token"), str) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise PermanentError(f"reply logprobs.content entry is not {{token, logprob}}: {excerpt(str(e))}")
            scores[e["token"]] = float(value)
        return scores
    content = (choice.get("message") or {}).get("content") if isinstance(choice.get("message"), dict) else None
    if not isinstance(content, str):
        raise PermanentError("reply has neither logprobs.content nor message.content scores (is the model a "
                             f"reward model?): {excerpt(str(reply))}")
    return parse_scores(content)


def reward_reply(scores: dict[str, float], model: str, prompt_tokens: int = 0) -> dict:
    """The reply rm_serve sends: both places a client may read the scores from, the values printed with
    Python's shortest round-trip repr so a client parses back exactly what was computed."""
    content = ",".join(f"{name}:{value!r}" for name, value in scores.items())
    entries = [{"token": name, "logprob": value, "bytes": list(name.encode()), "top_logprobs": []}
               for name, value in scores.items()]
    return {"id": f"reward-{time.time_ns():x}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": {"content": entries}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(scores),
                      "total_tokens": prompt_tokens + len(scores)}}


class RewardClient:
    """Scores conversations at `{base_url}/chat/completions` (the API key read from the environment
    variable *named* by `api_key_env`; None: a keyless server such as stage=rm_serve)."""

    def __init__(self, base_url: str, model: str = "nvidia/nemotron-4-340b-reward", api_key_env: str | None = None,
                 *, cache=None, progress: bool = True, **limits):
        if api_key_env and not os.environ.get(api_key_env):
            raise ValueError(f"environment variable {api_key_env} (the API key) is not set")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env or None
        self.url = f"{self.base_url}/chat/completions"
        self.pool = RequestPool(Limits(**limits), cache, progress)

    def __repr__(self) -> str:
        return (f"RewardClient(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"limits={self.pool.limits})")

    def _send(self, body: dict) -> dict[str, float]:
        headers = {"Authorization": f"Bearer {os.environ[self.api_key_env]}"} if self.api_key_env else {}
        return parse_reward_reply(post_json("POST", self.url, body, headers, self.pool.limits.timeout_s))

    def score(self, conversations: list[list[dict]]) -> list[dict[str, float] | None]:
        """{attribute: value} for the last (assistant) message of each conversation; None where it failed."""
        bodies = [{"model": self.model, "messages": c} for c in conversations]
        return self.pool.map(self._send, bodies, f"POST {self.url}", f"reward {self.model}")
