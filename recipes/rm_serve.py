"""Serve a reward model trained here over Nemotron-4-340B-Reward's API: `python launch.py stage=rm_serve
rm_serve.reward_model=runs/rm/checkpoints/final rm_serve.port=1424`.

Put the RM on a GPU box and annotate from anywhere with `stage=rm_annotate
annotate.reward_model=http://<host>:1424/v1` (or point any client of NVIDIA's reward API at it). The wire
format is eval/reward_client.py's: POST /v1/chat/completions with [user, assistant, ...] messages; the reply
carries the attributes the checkpoint was trained on, as "name:value" pairs in `message.content` and as
`logprobs.content` tokens. The last message is the assistant turn scored; it is rendered exactly as
stage=rm_annotate renders it in-process (`reward_model.rm_text`, the checkpoint's system prompt), so the
scores equal in-process scoring of the same checkpoint.

Also: GET /v1/models (the served model), GET /health. A request with a system message, a conversation
that does not alternate user/assistant or does not end with the assistant turn, or `stream: true` gets a
400 saying so. Requests in flight are scored together (`rm_serve.batch_size`, waiting up to
`rm_serve.max_wait_ms` for company): one forward pass per batch on one device.

Standard library only (`http.server.ThreadingHTTPServer`): one thread per connection, keep-alive.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from data_prep.jsonl import atomic_write_text
from eval.reward_client import reward_reply
from recipes.reward_model import encode, load_reward_model, rm_text, score_ids

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request this API does not take (HTTP 400)."""


def conversation(body) -> tuple[list[tuple[str, str]], str]:
    """(prompt turns, response) of a chat-completions body; BadRequest says what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("the body must be a JSON object with a non-empty 'messages' list")
    if body.get("stream"):
        raise BadRequest("stream is not supported by a reward model")
    turns = []
    for i, m in enumerate(body["messages"]):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'content'")
        role = m.get("role")
        if role == "system":
            raise BadRequest("system messages are not scored: the reward model renders every conversation with "
                             "its own system prompt (rm_config.json)")
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise BadRequest(f"messages[{i}].role must be {want!r} (user and assistant alternate, user first), "
                             f"got {role!r}")
        turns.append(("User" if role == "user" else "Assistant", m["content"]))
    if turns[-1][0] != "Assistant":
        raise BadRequest("the last message must be the assistant turn to score")
    return turns[:-1], turns[-1][1]


class BatchScorer:
    """Scores texts from many handler threads in batches: a request waits at most `max_wait_ms` for others."""

    def __init__(self, ckpt: str | Path, device, batch_size: int = 8, max_wait_ms: float = 5.0, precision="auto"):
        self.rm, self.tok, self.meta = load_reward_model(ckpt, device)
        self.device, self.batch_size, self.wait, self.precision = device, batch_size, max_wait_ms / 1000, precision
        names = self.meta["attribute_names"]
        self.keep = [(i, n) for i, n in enumerate(names) if n in self.meta["trained_attributes"]]
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="rm-batcher").start()

    def ids(self, turns, response) -> list[int]:
        return encode(self.tok, rm_text(turns, response, self.meta["system_prompt"]), self.meta["max_seq_length"])[0]

    def score(self, ids: list[int]) -> dict[str, float]:
        fut: Future = Future()
        self.queue.put((ids, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.batch_size:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                out = score_ids(self.rm, [ids for ids, _ in batch], self.tok.pad_token_id, len(batch), self.device,
                                self.precision)
                for (_, fut), row in zip(batch, out.tolist()):
                    fut.set_result({n: row[i] for i, n in self.keep})
            except Exception as e:  # noqa: BLE001 - the handlers answer 500 with it
                for _, fut in batch:
                    fut.set_exception(e)


def make_server(ckpt: str | Path, host: str = "127.0.0.1", port: int = 0, served_model_name: str | None = None,
                batch_size: int = 8, max_wait_ms: float = 5.0, device="cpu", precision: str = "auto",
                max_requests: int = 0) -> ThreadingHTTPServer:
    """The server, bound (port 0: a free one; `server.url` is its base URL) but not yet serving."""
    scorer = BatchScorer(ckpt, device, batch_size, max_wait_ms, precision)
    name = served_model_name or Path(ckpt).resolve().parent.parent.name or Path(ckpt).name
    counter = {"n": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client's connection pool reuses its sockets

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str) -> None:
            self._reply(status, {"error": {"message": message, "type": kind, "code": status}})

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._reply(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "rm_serve",
                                                              "attributes": [n for _, n in scorer.keep]}]})
            elif self.path.rstrip("/") in ("/health", "/v1/health"):
                self._reply(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self):  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}; POST /v1/chat/completions", "not_found")
            try:
                body = json.loads(raw or b"null")
                turns, response = conversation(body)
                if served_model_name and body.get("model") != served_model_name:
                    return self._error(404, f"model {body.get('model')!r} not found; this server serves "
                                       f"{served_model_name!r}", "not_found")
                ids = scorer.ids(turns, response)
            except (ValueError, BadRequest) as e:  # a JSONDecodeError is a ValueError
                return self._error(400, str(e), "invalid_request_error")
            try:
                scores = scorer.score(ids)
            except Exception as e:  # noqa: BLE001
                log.exception("scoring failed")
                return self._error(500, f"scoring failed: {type(e).__name__}: {e}", "server_error")
            self._reply(200, reward_reply(scores, body.get("model") or name, len(ids)))
            with lock:
                counter["n"] += 1
                if max_requests and counter["n"] >= max_requests:
                    threading.Thread(target=self.server.shutdown, daemon=True).start()

        def log_message(self, fmt, *args):
            log.debug("%s %s", self.address_string(), fmt % args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # many annotators connecting at once are not refused

    server = Server((host, port), Handler)
    server.url = f"http://{host}:{server.server_address[1]}/v1"
    server.model_name = name
    return server


def run(cfg, run_dir: Path) -> Path:
    from recipes import loop

    r = cfg.rm_serve
    if not r.reward_model:
        raise ValueError("stage=rm_serve needs rm_serve.reward_model (a checkpoint directory written by stage=rm)")
    server = make_server(r.reward_model, r.host, r.port, r.served_model_name, r.batch_size, r.max_wait_ms,
                         loop.pick_device(cfg.trainer), cfg.trainer.precision, r.max_requests)
    info = Path(run_dir) / "rm_serve.json"
    atomic_write_text(info, json.dumps({"url": server.url, "model": server.model_name,
                                        "reward_model": str(r.reward_model)}, indent=1) + "\n")
    print(f"rm_serve: serving {r.reward_model} at {server.url} (model {server.model_name!r}); "
          f"annotate with annotate.reward_model={server.url}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return info
