"""eval/clients.py and eval/request_pool.py against real servers on 127.0.0.1 (no network, no mocked clients):
retries, bounds in time, concurrency, rate limit, the on-disk cache, failure accounting, keys."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval.clients import (GenerationError, NemoServerClient, OpenAIChatClient, SamplingParams, failure_reasons,
                          render_nemotron_prompt)
from eval.request_pool import Limits, RequestCache


class FakeServer:
    """An HTTP server in a thread. `respond(n, request)` gets the 0-based request count and
    {"method", "path", "headers", "body"} and returns (status, payload, delay_s[, extra headers])."""

    def __init__(self, respond):
        self.respond, self.requests = respond, []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = {"method": self.command, "path": self.path, "headers": self.headers,  # case-insensitive
                       "body": json.loads(raw) if raw else None}
                with server.lock:
                    n = len(server.requests)
                    server.requests.append(req)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    status, payload, delay, *headers = server.respond(n, req)
                    time.sleep(delay)
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in (headers[0] if headers else {}).items():
                        self.send_header(name, value)
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

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # many clients connecting at once are not refused

        self.httpd = Server(("127.0.0.1", 0), Handler)
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
        client = fast_client(srv.url + "/v1/", api_key_env="TEST_CLIENT_KEY", max_concurrency=3)
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


def test_retry_after_is_honoured():
    def respond(n, req):
        return (429, {"error": "later"}, 0.0, {"Retry-After": "0.4"}) if n == 0 else echo(n, req)

    with FakeServer(respond) as srv:
        start = time.monotonic()
        assert fast_client(srv.url).generate(convs("hi"), SamplingParams()) == ["HI"]
        assert time.monotonic() - start >= 0.4  # backoff_s is 0.01: the server's 0.4 s won


def test_gives_up_naming_status_and_body():
    with FakeServer(lambda n, req: (503, b"backend overloaded xyz", 0.0)) as srv:
        with pytest.raises(GenerationError, match=r"1 of 1 requests failed.*3 attempts.*HTTP 503.*backend overloaded xyz"):
            fast_client(srv.url, max_retries=2).generate(convs("hi"), SamplingParams())
        assert len(srv.requests) == 3


def test_client_errors_are_not_retried():
    with FakeServer(lambda n, req: (400, {"error": "bad max_tokens"}, 0.0)) as srv:
        with pytest.raises(GenerationError, match=r"HTTP 400.*bad max_tokens.*not retried"):
            fast_client(srv.url).generate(convs("hi"), SamplingParams())
        assert len(srv.requests) == 1


def test_reply_that_is_not_json_fails_without_retry():
    with FakeServer(lambda n, req: (200, b"<html>proxy error</html>", 0.0)) as srv:
        client = fast_client(srv.url, max_failed_fraction=1.0)
        assert client.generate(convs("hi"), SamplingParams()) == [None]
        assert len(srv.requests) == 1 and "not retried" in client.pool.failures[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_failure(client):
    with pytest.raises(GenerationError) as err:
        client.generate(convs("hi"), SamplingParams())
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_closed_port_fails_fast_in_one_line():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    message = one_line_failure(fast_client(url, timeout_s=1, max_retries=2))
    assert time.monotonic() - start < 10
    assert f"POST {url}/chat/completions: failed after 3 attempts" in message and "Connect" in message


def test_server_that_never_answers_fails_in_bounded_time():
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        start = time.monotonic()
        message = one_line_failure(fast_client(url, timeout_s=1, max_retries=5))
        elapsed = time.monotonic() - start
    assert elapsed < 10  # a timeout is retried once, whatever max_retries says: ~2 s here
    assert "failed after 2 attempts" in message and "timed out after 1 s" in message


def test_default_limits_bound_a_silent_server_well_under_two_minutes():
    lim = Limits()
    assert lim.max_concurrency == 1  # one-slot local servers: no queueing counted against the timeout
    assert 2 * lim.timeout_s + lim.backoff_s < 90


def test_failures_below_the_fraction_are_counted_not_fatal():
    def respond(n, req):
        text = req["body"]["messages"][-1]["content"]
        return (400, {"error": "context too long"}, 0.0) if text == "q7" else echo(n, req)

    with FakeServer(respond) as srv:
        client = fast_client(srv.url, max_failed_fraction=0.05, max_concurrency=4)
        outs = client.generate(convs(*[f"q{i}" for i in range(30)]), SamplingParams())
    assert outs[7] is None and outs[8] == "Q8" and sum(o is None for o in outs) == 1
    reasons = failure_reasons(client.generate, 30)
    assert reasons[7].startswith(f"POST {srv.url}/chat/completions: HTTP 400") and reasons[8] is None
    assert len(client.pool.failures) == 1


def test_too_many_failures_stop_the_run_early():
    with FakeServer(lambda n, req: (500, {"error": "down"}, 0.0)) as srv:
        client = fast_client(srv.url, max_retries=0, max_failed_fraction=0.05)
        with pytest.raises(GenerationError, match=r"^3 of 40 requests failed \(more than max_failed_fraction=0.05\)"):
            client.generate(convs(*[f"q{i}" for i in range(40)]), SamplingParams())
        assert len(srv.requests) == 3  # 3 > 0.05 * 40: the other 37 are never sent


def test_connection_refused_is_retried_then_reported():
    with FakeServer(echo) as srv:
        url = srv.url
    with pytest.raises(GenerationError, match="2 attempts"):  # nothing listens there any more
        fast_client(url, max_retries=1).generate(convs("hi"), SamplingParams())


def test_keyless_server_gets_no_authorization_header(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-travel")  # the SDK's default: never sent to our server
    with FakeServer(echo) as srv:
        assert fast_client(srv.url, api_key_env=None).generate(convs("a"), SamplingParams()) == ["A"]
        assert "Authorization" not in srv.requests[0]["headers"]
        assert all("sk-must-not-travel" not in str(v) for v in srv.requests[0]["headers"].values())


def test_cache_asks_nothing_twice_and_keeps_samples_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CACHE_KEY", "sk-cache-secret-77")
    counter = lambda n, req: (200, chat_reply(f"sample {n}"), 0.0)  # noqa: E731  every reply differs
    cache = tmp_path / "cache" / "generator.jsonl"
    params = SamplingParams(temperature=0.9)
    prompts = convs("same", "same", "same", "other")
    with FakeServer(counter) as srv:
        first = fast_client(srv.url, api_key_env="TEST_CACHE_KEY", cache=cache).generate(prompts, params)
        assert len(set(first)) == 4 and len(srv.requests) == 4  # 3 samples of one prompt are 3 requests
        again = fast_client(srv.url, api_key_env="TEST_CACHE_KEY", cache=cache).generate(prompts, params)
        assert again == first and len(srv.requests) == 4  # a new client (a rerun) asks nothing
        more = fast_client(srv.url, cache=cache).generate(prompts + convs("new"), params)
        assert more[:4] == first and len(srv.requests) == 5  # the key is not part of the request key
        fast_client(srv.url, cache=cache).generate(prompts, SamplingParams(temperature=0.5))
        assert len(srv.requests) == 9  # other settings are other requests
    assert b"sk-cache-secret-77" not in cache.read_bytes()


def test_torn_cache_line_is_skipped_and_the_next_write_is_whole(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = RequestCache(path)
    cache.put("a" * 64, {"x": 1})
    cache.close()
    with open(path, "ab") as f:
        f.write(b'{"key": "' + b"b" * 64 + b'", "value": {"trunc')  # killed mid-write
    cache = RequestCache(path)
    assert cache.get("a" * 64) == {"x": 1} and cache.get("b" * 64) is None
    cache.put("c" * 64, [1, 2])
    cache.close()
    assert RequestCache(path).get("c" * 64) == [1, 2]


def test_chat_completions_returns_full_replies_with_logprobs(tmp_path):
    def respond(n, req):
        if req["body"]["messages"][-1]["content"] == "fail":
            return 400, {"error": "no"}, 0.0
        top = [{"token": "4", "logprob": -0.1, "bytes": [52]}, {"token": "3", "logprob": -2.5, "bytes": [51]}]
        return 200, {"id": f"c{n}", "object": "chat.completion", "created": 1, "model": req["body"]["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "4"},
                                  "logprobs": {"content": [{"token": "4", "logprob": -0.1, "bytes": [52],
                                                            "top_logprobs": top}]}}]}, 0.0

    payloads = [{"messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 1, "temperature": 0,
                 "logprobs": True, "top_logprobs": 2, "top_k": 1},
                {"messages": [{"role": "user", "content": "fail"}], "model": "other-model"}]
    with FakeServer(respond) as srv:
        client = fast_client(srv.url, cache=tmp_path / "judge.jsonl", max_failed_fraction=1.0)
        live = client.chat_completions(payloads)
        body = srv.requests[0]["body"]
        assert body == {"model": "test-model", **payloads[0]}  # model filled in; top_k passed through
        assert srv.requests[1]["body"]["model"] == "other-model"
        assert live[1] is None and "HTTP 400" in client.pool.last_errors[1]
        reply = live[0]
        assert isinstance(reply, dict) and reply["choices"][0]["message"]["content"] == "4"
        top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        assert [(t["token"], t["logprob"]) for t in top] == [("4", -0.1), ("3", -2.5)]
        cached = fast_client(srv.url, cache=tmp_path / "judge.jsonl").chat_completions(payloads[:1])
        assert cached == live[:1] and len(srv.requests) == 2


def test_rate_limit_spaces_requests():
    with FakeServer(echo) as srv:
        start = time.monotonic()
        fast_client(srv.url, max_concurrency=4, requests_per_minute=600).generate(convs(*"abcdef"), SamplingParams())
        assert time.monotonic() - start >= 0.45  # 6 requests at most one per 0.1 s, though 4 may be in flight


def test_limits_are_checked_in_one_line():
    with pytest.raises(ValueError, match=r"^max_concurrency=0 must be >= 1$"):
        Limits(max_concurrency=0)
    with pytest.raises(ValueError, match=r"max_failed_fraction=1.5 must be in \[0, 1\]"):
        OpenAIChatClient("http://127.0.0.1:1", "m", max_failed_fraction=1.5)


def test_concurrency_bound_respected():
    with FakeServer(lambda n, req: (200, chat_reply(str(n)), 0.15)) as srv:
        fast_client(srv.url, max_concurrency=3).generate(convs(*"abcdefgh"), SamplingParams())
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


def test_nemo_caches_each_prompt_and_batches_only_the_missing(tmp_path):
    def respond(n, req):
        return 200, {"sentences": [p + f"a{n}" for p in req["body"]["sentences"]]}, 0.0

    with FakeServer(respond) as srv:
        first = NemoServerClient(srv.url, batch_size=2, cache=tmp_path / "c.jsonl", progress=False)
        out = first.complete(["p0", "p1", "p2"], SamplingParams())
        again = NemoServerClient(srv.url, batch_size=2, cache=tmp_path / "c.jsonl", progress=False)
        out2 = again.complete(["p0", "p1", "p2", "p3", "p4"], SamplingParams())
        assert out2[:3] == out and len(srv.requests) == 3  # one new request: [p3, p4]
        assert srv.requests[-1]["body"]["sentences"] == ["p3", "p4"]


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
