"""eval/clients.py against a real HTTP server on 127.0.0.1 (no network, no mocks of urllib)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval.clients import (GenerationError, NemoServerClient, OpenAIChatClient, SamplingParams,
                          render_nemotron_prompt)


class FakeServer:
    """An HTTP server in a thread. `respond(n, request)` gets the 0-based request count and
    {"method", "path", "headers", "body"} and returns (status, payload, delay_s)."""

    def __init__(self, respond):
        self.respond, self.requests = respond, []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                       "body": json.loads(raw) if raw else None}
                with server.lock:
                    n = len(server.requests)
                    server.requests.append(req)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    status, payload, delay = server.respond(n, req)
                    time.sleep(delay)
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up
                finally:
                    with server.lock:
                        server.inflight -= 1

            do_POST = do_PUT = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def chat_reply(text):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def echo(n, req):
    """Deterministic: the reply is the last user message upper-cased."""
    return 200, chat_reply(req["body"]["messages"][-1]["content"].upper()), 0.0


def convs(*texts):
    return [[{"role": "user", "content": t}] for t in texts]


def fast_client(url, **kw):
    kw = {"backoff_s": 0.01, "progress": False, **kw}
    return OpenAIChatClient(url, "test-model", **kw)


def test_openai_replies_in_order_with_expected_request(monkeypatch):
    monkeypatch.setenv("TEST_CLIENT_KEY", "sk-unit-test-123")
    with FakeServer(echo) as srv:
        client = fast_client(srv.url + "/v1/", api_key_env="TEST_CLIENT_KEY", concurrency=3)
        out = client.generate(convs("a", "b", "c", "d", "e"), SamplingParams(max_new_tokens=7, temperature=0.5))
        assert out == ["A", "B", "C", "D", "E"]
        assert len(srv.requests) == 5
        req = srv.requests[0]
        assert req["method"] == "POST" and req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == "Bearer sk-unit-test-123"
        body = req["body"]
        assert body["model"] == "test-model" and body["max_tokens"] == 7
        assert body["temperature"] == 0.5 and body["top_p"] == 1.0
        assert "top_k" not in body and "stop" not in body  # OpenAI rejects unknown or empty fields
        client.generate(convs("x"), SamplingParams(top_k=5, stop=["END"]))
        assert srv.requests[-1]["body"]["top_k"] == 5 and srv.requests[-1]["body"]["stop"] == ["END"]
    assert "sk-unit-test-123" not in repr(client) and "sk-unit-test-123" not in str(vars(client))


def test_missing_api_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TEST_CLIENT_MISSING", raising=False)
    with pytest.raises(ValueError, match="TEST_CLIENT_MISSING"):
        OpenAIChatClient("http://127.0.0.1:1", "m", api_key_env="TEST_CLIENT_MISSING")


@pytest.mark.parametrize("status", [429, 503])
def test_retries_transient_status_then_succeeds(status):
    def respond(n, req):
        return (status, {"error": "slow down"}, 0.0) if n == 0 else echo(n, req)

    with FakeServer(respond) as srv:
        assert fast_client(srv.url).generate(convs("hi"), SamplingParams()) == ["HI"]
        assert len(srv.requests) == 2  # the retry happened


def test_retries_after_timeout():
    def respond(n, req):
        return (200, chat_reply("late"), 0.6) if n == 0 else (200, chat_reply("on time"), 0.0)

    with FakeServer(respond) as srv:
        start = time.monotonic()
        out = fast_client(srv.url, timeout_s=0.2).generate(convs("hi"), SamplingParams())
        assert out == ["on time"]
        assert len(srv.requests) == 2
        assert time.monotonic() - start < 0.6  # we gave up on the slow reply rather than waiting


def test_gives_up_naming_status_and_body():
    with FakeServer(lambda n, req: (503, b"backend overloaded xyz", 0.0)) as srv:
        with pytest.raises(GenerationError, match=r"3 attempts.*HTTP 503.*backend overloaded xyz"):
            fast_client(srv.url, max_retries=2).generate(convs("hi"), SamplingParams())
        assert len(srv.requests) == 3


def test_client_errors_are_not_retried():
    with FakeServer(lambda n, req: (400, {"error": "bad max_tokens"}, 0.0)) as srv:
        with pytest.raises(GenerationError, match=r"HTTP 400.*bad max_tokens"):
            fast_client(srv.url).generate(convs("hi"), SamplingParams())
        assert len(srv.requests) == 1


def test_connection_refused_is_retried_then_reported():
    with FakeServer(echo) as srv:
        url = srv.url
    with pytest.raises(GenerationError, match="2 attempts"):  # nothing listens there any more
        fast_client(url, max_retries=1).generate(convs("hi"), SamplingParams())


def test_concurrency_bound_respected():
    with FakeServer(lambda n, req: (200, chat_reply(str(n)), 0.15)) as srv:
        fast_client(srv.url, concurrency=3).generate(convs(*"abcdefgh"), SamplingParams())
        assert len(srv.requests) == 8
        assert 2 <= srv.max_inflight <= 3  # parallel, but never more than 3 at once


def test_nemo_put_generate_body_and_reply_parsing():
    def respond(n, req):
        sentences = [p + f"answer {n}-{i}\n<extra_id_1>" for i, p in enumerate(req["body"]["sentences"])]
        return 200, {"sentences": sentences, "tokens": []}, 0.0

    with FakeServer(respond) as srv:
        client = NemoServerClient(srv.url, batch_size=2, backoff_s=0.01, progress=False)
        conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q0"}],
                         [{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]]
        out = client.generate(conversations, SamplingParams(max_new_tokens=33))
        assert out == ["answer 0-0", "answer 0-1", "answer 1-0"]
        assert [r["method"] for r in srv.requests] == ["PUT", "PUT"]
        assert {r["path"] for r in srv.requests} == {"/generate"}
        body = srv.requests[0]["body"]
        assert set(body) == {"sentences", "tokens_to_generate", "temperature", "top_k", "top_p", "greedy",
                             "add_BOS", "end_strings"}
        assert body["sentences"] == [render_nemotron_prompt(c) for c in conversations[:2]]
        assert body["tokens_to_generate"] == 33 and body["greedy"] is True
        assert body["temperature"] == 1.0  # NeMo rejects temperature 0; greedy=True decides
        assert body["add_BOS"] is False and body["end_strings"] == ["<extra_id_1>"]
        assert body["top_k"] == 0 and body["top_p"] == 1.0
        client.generate(conversations[:1], SamplingParams(temperature=0.7, top_k=40))
        last = srv.requests[-1]["body"]
        assert last["greedy"] is False and last["temperature"] == 0.7 and last["top_k"] == 40


def test_nemo_validation_message_is_an_error():
    # NeMo answers a bad request with HTTP 200 and a bare JSON string.
    with FakeServer(lambda n, req: (200, "temperature must be a positive number", 0.0)) as srv:
        client = NemoServerClient(srv.url, backoff_s=0.01, progress=False)
        with pytest.raises(GenerationError, match="temperature must be a positive number"):
            client.generate(convs("hi"), SamplingParams())


def test_render_nemotron_prompt():
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    assert render_nemotron_prompt(conv) == (
        "<extra_id_0>System\nS\n<extra_id_1>User\nU1\n<extra_id_1>Assistant\nA1\n"
        "<extra_id_1>User\nU2\n<extra_id_1>Assistant\n")
    assert render_nemotron_prompt(convs("hi")[0]) == "<extra_id_0>System\n\n<extra_id_1>User\nhi\n<extra_id_1>Assistant\n"
    with pytest.raises(ValueError, match="end with a user turn"):
        render_nemotron_prompt(conv[:3])
    with pytest.raises(ValueError, match="turn 0"):
        render_nemotron_prompt([{"role": "assistant", "content": "x"}])
