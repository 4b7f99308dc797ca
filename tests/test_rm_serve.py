"""stage=rm_serve on a real port, and stage=rm_annotate against it: the served scores equal in-process
scoring, concurrent, resumable from the .partial file; the wire format of Nemotron-4-340B-Reward's API."""

import json
import threading
import urllib.request

import pytest

from eval.request_pool import GenerationError, PermanentError
from eval.reward_client import RewardClient, parse_reward_reply, parse_scores, reward_messages
from recipes import rm_annotate, rm_serve
from tests.conftest import TINY, compose_cfg
from tests.test_clients import FakeServer
from tests.test_rm_annotate import SDG, reward_model, rows  # noqa: F401 - the module-scoped RM fixture


@pytest.fixture(scope="module")
def server(reward_model):  # noqa: F811
    srv = rm_serve.make_server(reward_model, "127.0.0.1", 0, batch_size=4, max_wait_ms=20)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_scores_equal_in_process_scoring(reward_model, server, tmp_path):  # noqa: F811
    local = tmp_path / "local.jsonl"
    rm_annotate.annotate_file(SDG, local, reward_model, batch_size=3, progress=False)
    cfg = compose_cfg(*TINY, "stage=rm_annotate", f"annotate.input_file={SDG}",
                      f"annotate.output_file={tmp_path / 'served.jsonl'}", f"annotate.reward_model={server.url}",
                      "annotate.batch_size=10", "annotate.endpoint.max_concurrency=4",
                      f"exp_manager.explicit_log_dir={tmp_path}")
    out = rm_annotate.run(cfg, tmp_path)
    a, b = rows(local), rows(out)
    diffs = [abs(x["attributes"][k] - y["attributes"][k]) for ra, rb in zip(a, b)
             for x, y in zip(ra["responses"], rb["responses"]) for k in x["attributes"]]
    rdiffs = [abs(x["reward"] - y["reward"]) for ra, rb in zip(a, b) for x, y in zip(ra["responses"], rb["responses"])]
    assert len(diffs) == 10 * 5 and max(diffs) <= 1e-5 and max(rdiffs) <= 1e-5, (max(diffs), max(rdiffs))
    assert [list(x["attributes"]) for r in b for x in r["responses"]] == [list(x["attributes"]) for r in a
                                                                           for x in r["responses"]]
    assert (tmp_path / "request_cache" / "reward.jsonl").is_file()


def test_wire_format_both_places_and_errors(server):
    status, reply = post(server.url + "/chat/completions", {
        "model": "nvidia/nemotron-4-340b-reward",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})
    assert status == 200 and reply["object"] == "chat.completion"
    choice = reply["choices"][0]
    content = parse_scores(choice["message"]["content"])
    tokens = {e["token"]: e["logprob"] for e in choice["logprobs"]["content"]}
    assert list(content) == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert content == tokens == parse_reward_reply(reply)  # printed with repr: the same floats
    for body, message in [
        ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "Hi"}]}, "system messages"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages[0].role must be 'user'"),
        ({"messages": []}, "non-empty 'messages'"),
    ]:
        status, err = post(server.url + "/chat/completions", body)
        assert status == 400 and message in err["error"]["message"]
    with urllib.request.urlopen(server.url + "/models", timeout=10) as r:
        assert json.loads(r.read())["data"][0]["attributes"][0] == "helpfulness"
    # What NeMo Curator's client does against NVIDIA's API works against ours: the openai SDK, logprobs tokens.
    import openai

    sdk = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    done = sdk.chat.completions.create(model="nvidia/nemotron-4-340b-reward", messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    assert {e.token: e.logprob for e in done.choices[0].logprobs.content} == content


def test_client_reads_nvidia_content_replies_and_refuses_chat_models():
    def respond(n, req):
        if req["body"]["messages"][-1]["content"] == "chat":
            return 200, {"choices": [{"message": {"role": "assistant", "content": "Sure, here you go."}}]}, 0
        return 200, {"choices": [{"message": {"role": "assistant",
                                              "content": "helpfulness:1.2578125,correctness:0.43359375"}}]}, 0

    with FakeServer(respond) as srv:
        client = RewardClient(srv.url + "/v1", progress=False, backoff_s=0.01, max_failed_fraction=1)
        got = client.score([reward_messages([("User", "q")], "a"), reward_messages([("User", "q")], "chat")])
    assert got[0] == {"helpfulness": 1.2578125, "correctness": 0.43359375} and got[1] is None
    assert "not 'name:value,...' scores" in client.pool.last_errors[1]
    assert srv.requests[0]["body"] == {"model": "nvidia/nemotron-4-340b-reward", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert "Authorization" not in srv.requests[0]["headers"]
    with pytest.raises(PermanentError, match="neither logprobs.content nor message.content"):
        parse_reward_reply({"choices": [{"message": {}}]})


def test_endpoint_annotation_resumes_after_failures(reward_model, server, tmp_path):  # noqa: F811
    """A proxy in front of rm_serve fails the 4th request (400, not retried): the rows before it stay in .partial,
    the run stops in one line, and the rerun asks only what it had not got."""
    seen = []

    def proxy(n, req):
        seen.append(req["body"]["messages"][-1]["content"])
        if n == 3:
            return 400, {"error": "bad luck"}, 0
        status, body = post(server.url + "/chat/completions", req["body"])
        return status, body, 0

    out = tmp_path / "scored.jsonl"
    with FakeServer(proxy) as srv:
        url = srv.url + "/v1"
        with pytest.raises(GenerationError, match=r"1 of 5 requests failed .*HTTP 400: .*bad luck"):
            rm_annotate.annotate_file(SDG, out, url, batch_size=2, progress=False)
        partial = out.with_name(out.name + ".partial")
        assert len(rows(partial)) == 1 and not out.exists()  # record 1 (2 responses) was written
        stats = rm_annotate.annotate_file(SDG, out, url, batch_size=2, progress=False)
    assert stats["skipped"] == 1 and stats["scored"] == 4
    # Each of the 10 responses reached the server once over both runs, the failed one twice: record 1 was
    # in .partial, record 2's answered request came from the cache.
    assert len(seen) == 11 and seen.count("Cats are dogs.") == 2
    local = tmp_path / "local.jsonl"
    rm_annotate.annotate_file(SDG, local, reward_model, progress=False)
    for ra, rb in zip(rows(local), rows(out)):
        for x, y in zip(ra["responses"], rb["responses"]):
            assert abs(x["reward"] - y["reward"]) <= 1e-5


def test_rm_serve_config_errors():
    cfg = compose_cfg(*TINY, "stage=rm_serve")
    with pytest.raises(ValueError, match="needs rm_serve.reward_model"):
        rm_serve.run(cfg, "/tmp")
    from recipes.config import validate

    assert any("rm_serve.port" in p for p in validate(compose_cfg(*TINY, "stage=rm_serve", "rm_serve.port=70000")))
