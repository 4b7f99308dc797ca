"""What the pairwise judges (AlpacaEval, Arena-Hard) share: chunked judge calls that save after every chunk,
and the rule for judge requests that failed for good (`OpenAIChatClient.chat_completions` gives None).

A failed request is not saved, so a rerun retries it (answered ones are never paid for twice); the run still
finishes, without those items, unless more than `max_failed` (a fraction) of the requests failed.
"""

from __future__ import annotations

from typing import Callable


class JudgeError(ValueError):
    """Too many judge requests failed. A ValueError, so launch.py prints it as one line."""


def call_in_chunks(client, items: list, payload: Callable[[object], dict], answered: Callable[[object, dict], None],
                   save: Callable[[], None], chunk_size: int = 64) -> int:
    """Send `payload(item)` for every item, `chunk_size` at a time; `answered(item, reply)` for each reply,
    `save()` after each chunk. Returns how many requests failed."""
    failed = 0
    for start in range(0, len(items), chunk_size):
        chunk = items[start: start + chunk_size]
        replies = client.chat_completions([payload(x) for x in chunk])
        if len(replies) != len(chunk):
            raise JudgeError(f"judge returned {len(replies)} replies for {len(chunk)} requests")
        for item, reply in zip(chunk, replies):
            if reply is None:
                failed += 1
            else:
                answered(item, reply)
        save()
    return failed


def check_failures(failed: int, total: int, max_failed: float, what: str) -> None:
    if failed and failed > max_failed * total:
        raise JudgeError(f"{what}: {failed} of {total} judge requests failed (more than {max_failed:.0%}); the answered "
                         "ones are saved, run again to retry the others")


def reply_text(reply: dict) -> str:
    """`choices[0].message.content` of a chat-completions reply ('' when missing or null)."""
    try:
        return reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return ""


def add_judge_args(parser, default_model: str) -> None:
    """`--judge-base-url/-model/-api-key-env` and the judge's `Limits` flags for the `run` commands."""
    from eval.clients import add_limit_args

    parser.add_argument("--judge-base-url", default="https://api.openai.com/v1")
    parser.add_argument("--judge-model", default=default_model)
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="NAME of the env var with the judge's key")
    add_limit_args(parser, "judge-")


def judge_from_args(args):
    from eval.clients import OpenAIChatClient, key_env, limits_from_args

    return OpenAIChatClient(args.judge_base_url, args.judge_model, api_key_env=key_env(args.judge_api_key_env),
                            **limits_from_args(args, "judge-"))
