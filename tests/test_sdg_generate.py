"""stage=sdg_generate: dedup, resumable appends, the SDG record format, and the three generator kinds."""

import json

import pytest

from data_prep.schemas import validate_sdg_record
from eval.clients import SamplingParams
from recipes import sdg_generate as sg
from recipes.rm_annotate import _input_problems
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_clients import FakeServer

PROMPTS = REPO / "data" / "demo" / "sdg_prompts.jsonl"


def make_tiny_checkpoint(path):
    """A random tiny Llama saved as a plain HF checkpoint (stands in for a starting model)."""
    from recipes.config import TinyModelConfig
    from recipes.models import build_tiny_model, save_hf, train_tiny_tokenizer

    texts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()] * 4
    tok = train_tiny_tokenizer(texts, 320)
    save_hf(build_tiny_model(TinyModelConfig(), tok, seed=0), tok, path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny-base")


def rows(n):
    return [{"id": i, "prompt": f"Question number {i}?"} for i in range(n)]


class FakeGenerator:
    """Counts requests; `fail_on` (a call index) raises to stand in for a crash mid-run."""

    def __init__(self, fail_on=None):
        self.calls, self.requests, self.fail_on = 0, [], fail_on

    def generate(self, conversations, params):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("generator crashed")
        self.requests += [c[-1]["content"] for c in conversations]
        return [f"answer {i} to {c[-1]['content']}" for i, c in enumerate(conversations)]


def test_dedup_normalises_case_and_whitespace():
    loaded = sg.load_prompts(str(PROMPTS))
    kept, dropped = sg.dedup(loaded)
    assert (len(loaded), len(kept), dropped) == (13, 12, 1)
    assert kept[0]["prompt"] == "Why do we have seasons on Earth?"  # the first copy wins
    same = [{"prompt": "Hello  World"}, {"prompt": "hello world"}, {"prompt": "Hello", "system": "Be brief."}]
    assert [r["prompt"] for r in sg.dedup(same)[0]] == ["Hello  World", "Hello"]


def test_resume_after_a_crash_generates_only_the_rest(tmp_path):
    out = tmp_path / "gen.jsonl"
    params = SamplingParams(max_new_tokens=8, temperature=0.7)
    crashing = FakeGenerator(fail_on=3)
    with pytest.raises(RuntimeError, match="generator crashed"):
        sg.generate_file(rows(10), out, crashing.generate, params, n=2, model="m", chunk_size=4, progress=False)
    assert len(out.read_text().splitlines()) == 8  # two chunks were flushed before the crash
    with open(out, "a") as f:
        f.write('{"id": 8, "prompt": "Quest')  # a torn line, as a kill mid-write leaves
    gen = FakeGenerator()
    stats = sg.generate_file(rows(10), out, gen.generate, params, n=2, model="m", chunk_size=4, progress=False)
    assert stats["already_done"] == 8 and stats["generated"] == 2 and gen.requests == [
        "Question number 8?", "Question number 8?", "Question number 9?", "Question number 9?"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == list(range(10))
    again = FakeGenerator()
    stats = sg.generate_file(rows(10), out, again.generate, params, n=2, model="m", progress=False)
    assert again.calls == 0 and stats["already_done"] == 10


def test_records_are_sdg_records_that_annotation_accepts(tmp_path):
    out = tmp_path / "gen.jsonl"
    convo = {"id": "c1", "system": "Be brief.", "category": "chat",
             "conversations": [{"from": "User", "value": "Hi"}, {"from": "Assistant", "value": "Hello!"},
                               {"from": "User", "value": "Tell me a joke."}]}
    gen = FakeGenerator()
    sg.generate_file([rows(1)[0], convo], out, gen.generate, SamplingParams(), n=3, model="gen-model", progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[1]["system"] == "Be brief." and records[1]["category"] == "chat"
    assert records[1]["responses"][0] == {"text": "answer 3 to Tell me a joke.", "model": "gen-model"}  # 4th request
    for rec in records:
        assert len(rec["responses"]) == 3
        assert _input_problems(rec) == []  # what stage=rm_annotate reads
        scored = {**rec, "responses": [{**r, "reward": 1.0} for r in rec["responses"]]}
        assert validate_sdg_record(scored) == []  # what data_prep.sdg reads after annotation


def test_bad_prompt_row_names_file_and_line(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: prompt: give a non-empty"):
        sg.load_prompts(str(bad))


def test_stage_with_a_tiny_checkpoint_and_rerun(tmp_path, tiny_checkpoint):
    from recipes.backends import torch_backend

    run_dir = tmp_path / "run"
    cfg = compose_cfg("stage=sdg_generate", *TINY, f"sdg.prompts={PROMPTS}", f"sdg.model={tiny_checkpoint}",
                      "sdg.n_responses=2", "sdg.max_new_tokens=4", "sdg.chunk_size=5")
    out = torch_backend.run(cfg, run_dir)
    assert out == run_dir / "generations.jsonl"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12 and all(len(r["responses"]) == 2 for r in records)
    assert records[0]["responses"][0]["model"] == tiny_checkpoint.name
    stats = json.loads((run_dir / "sdg_stats.json").read_text())
    assert stats["duplicates_dropped"] == 1 and stats["responses"] == 24
    before = out.read_bytes()
    torch_backend.run(cfg, run_dir)  # everything is done: nothing generated, file untouched
    assert out.read_bytes() == before
    assert json.loads((run_dir / "sdg_stats.json").read_text())["already_done"] == 12


def test_openai_endpoint_with_a_retried_failure(tmp_path):
    def respond(n, req):
        if n == 0:
            return 503, {"error": "busy"}, 0  # retried by the client
        return 200, {"choices": [{"message": {"content": f"reply to {req['body']['messages'][-1]['content']}"}}]}, 0

    with FakeServer(respond) as server:
        cfg = compose_cfg("stage=sdg_generate", *TINY, f"sdg.prompts={PROMPTS}", "sdg.limit=3", "sdg.n_responses=2",
                          "sdg.generator.kind=openai", "sdg.generator.model=mixtral",
                          f"sdg.generator.base_url={server.url}/v1", "sdg.temperature=0.9",
                          "sdg.generator.backoff_s=0.01")
        client, name = sg.make_client(cfg)
        out = tmp_path / "gen.jsonl"
        sg.generate_file(sg.load_prompts(str(PROMPTS))[:3], out, client.generate,
                         SamplingParams(max_new_tokens=16, temperature=0.9), 2, name, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert name == "mixtral" and len(records) == 3
    assert records[0]["responses"][1] == {"text": "reply to Why do we have seasons on Earth?", "model": "mixtral"}
    bodies = [r["body"] for r in server.requests[1:]]
    assert all(b["temperature"] == 0.9 and b["max_tokens"] == 16 and b["model"] == "mixtral" for b in bodies)
    assert len(server.requests) == 1 + 3 * 2


def test_sdg_config_errors_are_one_line(tmp_path):
    cfg = compose_cfg("stage=sdg_generate", *TINY)
    with pytest.raises(ValueError, match="needs sdg.prompts"):
        sg.run(cfg, tmp_path)
    cfg = compose_cfg("stage=sdg_generate", *TINY, f"sdg.prompts={PROMPTS}")
    with pytest.raises(ValueError, match="needs sdg.model"):
        sg.run(cfg, tmp_path)  # model=tiny has no checkpoint to generate with
