"""The DPO/RPO stage on the tiny model: learning, accumulation, sum vs mean log-probs, the
reference cache, iterative RPO with resume, bad rows, and `launch.py` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_prep.jsonl import Rejects, RowError
from data_prep.schemas import TURN_START
from recipes import dpo, loop, ref_cache
from recipes.chat import nemotron_prompt
from recipes.models import load_model, train_tiny_tokenizer
from recipes.preference_data import encode_pairs, load_pairs, pair_texts, render_pair
from tests.conftest import REPO, TINY, compose_cfg

FIXTURE = REPO / "tests" / "fixtures" / "dpo_tiny.jsonl"  # 12 pairs, 3 of them as messages, varied reward gaps
BAD = REPO / "tests" / "fixtures" / "dpo_bad.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines()]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own reference cache, so a hit is one this test made."""
    monkeypatch.setenv("RECIPES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny model gains nothing from two, and on a shared 2-core machine
    OpenMP threads waiting on each other make a step up to 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(run_dir: Path, *overrides: str, stage: str = "dpo", data: Path = FIXTURE):
    return compose_cfg(*TINY, f"stage={stage}", f"model.data.train_ds.file_path={data}",
                       f"exp_manager.explicit_log_dir={run_dir}", *overrides)


def train_rows(run_dir: Path) -> list[dict]:
    """Logged training metrics, without the wall-clock ones."""
    return [{k: v for k, v in m.items() if k not in ("tokens_per_s", "step_time_s")}
            for m in loop.read_metrics(run_dir) if "loss" in m]


def last_val(run_dir: Path) -> dict:
    return [m for m in loop.read_metrics(run_dir) if "val_loss" in m][-1]


# ---------------------------------------------------------------- learning
def test_dpo_learns_the_preferences(tmp_path):
    cfg = cfg_for(tmp_path, "trainer.max_steps=6", "model.optim.sched.name=constant",
                  f"model.data.validation_ds.file_path={FIXTURE}")
    final = dpo.run(cfg, tmp_path)
    rows = train_rows(tmp_path)
    # Step 1 sees the initial policy, which is the reference: Δ = 0, loss = log 2.
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-4)
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    val = last_val(tmp_path)  # validation on the training pairs = train reward accuracy after training
    assert val["val_acc"] > 0.9, val
    assert val["val_margin"] > 1.0 and val["val_rewards_chosen_mean"] > val["val_rewards_rejected_mean"]
    for key in ("preference_loss", "sft_loss", "acc", "rewards_chosen_mean", "rewards_rejected_mean", "grad_norm", "lr"):
        assert key in rows[-1]
    assert final == tmp_path / "checkpoints" / "final" and (final / "model.safetensors").is_file()


def test_rpo_fits_the_reward_gap(tmp_path):
    cfg = cfg_for(tmp_path, "trainer.max_steps=7", "model.optim.sched.name=constant", "model.global_batch_size=12",
                  "model.micro_batch_size=12", "model.dpo.ref_policy_kl_penalty=0.5",
                  f"model.data.validation_ds.file_path={FIXTURE}", stage="rpo")
    assert cfg.model.dpo.preference_loss == "rpo_bwd_kl"
    dpo.run(cfg, tmp_path)
    first = train_rows(tmp_path)[0]
    # At step 1 Δ = 0, so the error |βΔ − ηΔr| is the mean reward gap of the data.
    gaps = [r["chosen_reward"] - r["rejected_reward"] for r in ROWS]
    assert first["gap_abs_err"] == pytest.approx(sum(gaps) / len(gaps), abs=1e-4)
    assert first["target_gap"] == pytest.approx(sum(gaps) / len(gaps), abs=1e-4)
    val = last_val(tmp_path)
    assert val["val_gap_abs_err"] < 0.3 * first["gap_abs_err"], val
    assert val["val_beta_delta"] == pytest.approx(val["val_target_gap"], rel=0.25)


# ---------------------------------------------------------------- loss normalisation
def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    common = ("trainer.max_steps=3", "model.global_batch_size=4", "model.optim.sched.name=constant",
              "model.dpo.sft_loss_weight=0.1")
    a, b = tmp_path / "a", tmp_path / "b"
    dpo.run(cfg_for(a, *common, "model.micro_batch_size=1"), a)
    dpo.run(cfg_for(b, *common, "model.micro_batch_size=4"), b)
    for x, y in zip(train_rows(a), train_rows(b), strict=True):
        for key in ("loss", "preference_loss", "sft_loss", "margin"):
            assert abs(x[key] - y[key]) < 1e-5, (key, x, y)
    wa = AutoModelForCausalLM.from_pretrained(a / "checkpoints" / "final").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b / "checkpoints" / "final").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=0)


def _independent_logps(model, tok, text_prompt: str, response: str) -> tuple[float, int]:
    """log π(response | prompt) without padding or shared code: one sequence, full log_softmax."""
    p = tok(text_prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), -1)
    return sum(float(logp[len(p) + i - 1, t]) for i, t in enumerate(r)), len(r)


def test_sum_and_mean_log_probs_end_to_end(tmp_path):
    margins = {}
    for average in (False, True):
        run = tmp_path / str(average)
        cfg = cfg_for(run, "trainer.max_steps=2", f"model.dpo.preference_average_log_probs={average}",
                      f"model.data.validation_ds.file_path={FIXTURE}")
        assert cfg.model.dpo.sft_average_log_probs == average  # NeMo: follows preference_average_log_probs
        final = dpo.run(cfg, run)
        tok = AutoTokenizer.from_pretrained(final)
        policy = AutoModelForCausalLM.from_pretrained(final).eval()
        reference = load_model(cfg.model, tok, cfg.seed).eval()  # the tiny model is a function of its seed
        lengths, chosen, rejected, sft = set(), [], [], []
        for row in ROWS:
            prompt, c, r = render_pair(row, "nemotron", tok)
            for resp, out in ((c, chosen), (r, rejected)):
                (lp, k), (lr, _) = _independent_logps(policy, tok, prompt, resp), _independent_logps(reference, tok, prompt, resp)
                out.append((lp - lr) / k if average else lp - lr)
                lengths.add(k)
                if out is chosen:
                    sft.append(-lp / k if average else -lp)  # the SFT term is on the chosen response
        assert len(lengths) > 3  # responses of many different lengths
        val = last_val(run)
        n = len(ROWS)
        assert val["val_rewards_chosen_mean"] == pytest.approx(sum(chosen) / n, abs=1e-3)
        assert val["val_rewards_rejected_mean"] == pytest.approx(sum(rejected) / n, abs=1e-3)
        assert val["val_margin"] == pytest.approx((sum(chosen) - sum(rejected)) / n, abs=1e-3)
        assert val["val_sft_loss"] == pytest.approx(sum(sft) / n, abs=1e-3)
        margins[average] = val["val_margin"]
    assert abs(margins[True] - margins[False]) > 0.1


# ---------------------------------------------------------------- the reference cache
def test_reference_cache_is_hit_on_rerun(tmp_path, monkeypatch):
    calls = {"load": 0, "compute": 0}
    real_load, real_compute = dpo.load_reference, dpo.compute_reference

    def counting_load(*a, **k):
        calls["load"] += 1
        return real_load(*a, **k)

    def counting_compute(*a, **k):
        calls["compute"] += 1
        return real_compute(*a, **k)

    monkeypatch.setattr(dpo, "load_reference", counting_load)
    monkeypatch.setattr(dpo, "compute_reference", counting_compute)
    one = ("trainer.max_steps=1",)

    # Reference = the initial policy: computed on the first run, read back on the second.
    ref_ckpt = dpo.run(cfg_for(tmp_path / "a", *one), tmp_path / "a")
    assert calls == {"load": 0, "compute": 1}
    dpo.run(cfg_for(tmp_path / "b", *one), tmp_path / "b")
    assert calls == {"load": 0, "compute": 1}
    assert train_rows(tmp_path / "a") == train_rows(tmp_path / "b")

    # An explicit reference checkpoint: loaded once, then never again (not even loaded).
    with_ref = (*one, f"model.dpo.reference={ref_ckpt}")
    dpo.run(cfg_for(tmp_path / "c", *with_ref), tmp_path / "c")
    assert calls == {"load": 1, "compute": 2}
    dpo.run(cfg_for(tmp_path / "d", *with_ref), tmp_path / "d")
    assert calls == {"load": 1, "compute": 2}
    assert train_rows(tmp_path / "c") == train_rows(tmp_path / "d")
    assert train_rows(tmp_path / "c")[0]["margin"] != pytest.approx(0.0, abs=1e-3)  # policy != reference

    # The cached values equal a fresh computation with the reference checkpoint.
    entries = [p for p in ref_cache.entry_dir().glob("*.json") if "reference" in json.loads(p.read_text())["reference"]]
    assert len(entries) == 1
    cached = ref_cache.load(entries[0].stem, len(ROWS))
    cfg = cfg_for(tmp_path / "e", *with_ref)
    tok = AutoTokenizer.from_pretrained(ref_ckpt)
    pairs, _ = encode_pairs(load_pairs(str(FIXTURE), cfg.data, Rejects(), False, "dpo"), str(FIXTURE), tok,
                            cfg.data, cfg.model.data, Rejects())
    fresh = real_compute(real_load(str(ref_ckpt), tok, torch.device("cpu")), pairs, cfg, tok.pad_token_id, torch.device("cpu"))
    for k in fresh:
        torch.testing.assert_close(cached[k], fresh[k], atol=1e-5, rtol=0)


def test_lora_reference_is_the_adapter_disabled_model(tmp_path):
    cfg = cfg_for(tmp_path, "model.peft.peft_scheme=lora")
    rows = load_pairs(str(FIXTURE), cfg.data, Rejects(), False, "dpo")
    tok = train_tiny_tokenizer(pair_texts(rows), cfg.model.tiny.vocab_size)
    base = load_model(cfg.model, tok, cfg.seed)
    pairs, _ = encode_pairs(rows, str(FIXTURE), tok, cfg.data, cfg.model.data, Rejects())
    want = dpo.compute_reference(base, pairs, cfg, tok.pad_token_id, torch.device("cpu"))
    from recipes.models import apply_lora

    lora = apply_lora(load_model(cfg.model, tok, cfg.seed), cfg.model.peft)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # a trained adapter: the policy now differs from the base
            torch.nn.init.normal_(p, std=0.5)
    dpo.attach_reference_logps(cfg, lora, tok, [(str(FIXTURE), pairs)], torch.device("cpu"))
    got = torch.tensor([p.ref_chosen for p in pairs])
    torch.testing.assert_close(got, want["chosen_logps"], atol=1e-5, rtol=0)
    adapted = dpo.compute_reference(lora, pairs, cfg, tok.pad_token_id, torch.device("cpu"))
    assert not torch.allclose(adapted["chosen_logps"], want["chosen_logps"], atol=1e-3)


# ---------------------------------------------------------------- iterative RPO
def test_iterative_rpo_resumes_the_unfinished_iteration(tmp_path, monkeypatch):
    common = ("model.rpo.iterations=3", "trainer.max_steps=2", "trainer.save_interval=1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert dpo.run(cfg_for(full, *common, stage="rpo"), full) == full / "iter_3" / "checkpoints" / "final"

    real_step, calls = dpo.train_step, {"n": 0}

    def dies_in_iteration_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # iteration 1 ran steps 1-2 (calls 1-2); this is step 2 of iteration 2
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(dpo, "train_step", dies_in_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        dpo.run(cfg_for(cut, *common, stage="rpo"), cut)
    assert (cut / "iter_1" / "checkpoints" / "final").is_dir()
    assert (cut / "iter_2" / "checkpoints" / "step_000001").is_dir()
    assert not (cut / "iter_2" / "checkpoints" / "final").exists() and not (cut / "iter_3").exists()
    iter_1_time = (cut / "iter_1" / "checkpoints" / "final" / "model.safetensors").stat().st_mtime_ns

    calls["n"] = 100  # no more crashes
    out = dpo.run(cfg_for(cut, *common, "resume=true", stage="rpo"), cut)
    assert calls["n"] == 103  # iteration 2 from step 1 (1 step) + iteration 3 (2 steps); iteration 1 skipped
    assert out == cut / "iter_3" / "checkpoints" / "final"
    assert (cut / "iter_1" / "checkpoints" / "final" / "model.safetensors").stat().st_mtime_ns == iter_1_time
    for k in (1, 2, 3):
        assert [m["step"] for m in train_rows(cut / f"iter_{k}")] == [1, 2]
        assert train_rows(cut / f"iter_{k}") == train_rows(full / f"iter_{k}")
    # Iteration k > 1 is referenced to the final checkpoint of iteration k-1.
    refs = [json.loads(p.read_text())["reference"] for p in ref_cache.entry_dir().glob("*.json")]
    dirs = {r["hf"]["dir"] for r in refs if "hf" in r}
    assert str((cut / "iter_1" / "checkpoints" / "final").resolve()) in dirs
    assert str((cut / "iter_2" / "checkpoints" / "final").resolve()) in dirs
    wa = AutoModelForCausalLM.from_pretrained(out).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(full / "iter_3" / "checkpoints" / "final").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- data rules
def test_bad_row_names_file_line_and_field(tmp_path):
    with pytest.raises(RowError, match=r"dpo_bad.jsonl:2: rejected_response: missing"):
        dpo.run(cfg_for(tmp_path, data=BAD), tmp_path)
    cfg = cfg_for(tmp_path, "data.on_bad_row=skip", data=BAD)
    rejects = Rejects()
    rows = load_pairs(str(BAD), cfg.data, rejects, False, "dpo")
    assert [line for line, _ in rows] == [1, 5]
    assert [(r["line"], r["field"]) for r in rejects.records] == [
        (2, "rejected_response"), (3, "chosen_reward"), (4, "chosen_response")]


def test_rpo_needs_rewards_on_every_row_or_none(tmp_path, caplog):
    mixed = tmp_path / "mixed.jsonl"
    rows = [dict(r) for r in ROWS]
    del rows[2]["rejected_reward"]
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = cfg_for(tmp_path, stage="rpo", data=mixed)
    with pytest.raises(RowError, match=r"mixed.jsonl:3: rejected_reward: missing; preference_loss=rpo_bwd_kl"):
        load_pairs(str(mixed), cfg.data, Rejects(), True, "rpo_bwd_kl")
    assert len(load_pairs(str(mixed), cfg.data, Rejects(), False, "dpo")) == 12  # DPO ignores rewards

    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text("".join(json.dumps({k: v for k, v in r.items() if "reward" not in k}) + "\n" for r in ROWS))
    loaded = load_pairs(str(unscored), cfg.data, Rejects(), True, "rpo_bwd_kl")
    assert "no row has chosen_reward/rejected_reward" in caplog.text
    tok = train_tiny_tokenizer(pair_texts(loaded), 300)
    pairs, _ = encode_pairs(loaded, str(unscored), tok, cfg.data, cfg.model.data, Rejects())
    assert {(p.chosen_reward, p.rejected_reward) for p in pairs} == {(1.0, 0.0)}  # model.data.default_*_reward


def test_labels_cover_the_response_only_and_overlong_rules(tmp_path):
    cfg = cfg_for(tmp_path)
    rows = load_pairs(str(FIXTURE), cfg.data, Rejects(), False, "dpo")
    tok = train_tiny_tokenizer(pair_texts(rows), 300)
    pairs, counts = encode_pairs(rows, str(FIXTURE), tok, cfg.data, cfg.model.data, Rejects())
    assert counts["pairs"] == 12 and counts["prompt_cut"] == 0
    for (_, row), p in zip(rows, pairs):
        prompt, chosen, _ = render_pair(row, "nemotron", tok)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert p.chosen.labels[:n_prompt] == [-100] * n_prompt
        assert p.chosen.labels[n_prompt:] == p.chosen.input_ids[n_prompt:] == tok(chosen, add_special_tokens=False)["input_ids"]
    # A messages row renders in the Nemotron template with the assistant header scored as part of the response
    # (NeMo-Aligner's DPOModelDataset); prompt + response is the generation prompt + answer + <extra_id_1>.
    prompt, chosen, _ = render_pair(ROWS[9], "nemotron", tok)
    assert chosen == "<extra_id_1>Assistant\nDown.\n<extra_id_1>" and prompt.endswith("\n") and TURN_START not in prompt[-2:]
    assert (prompt + chosen).startswith(nemotron_prompt(ROWS[9]["prompt"]))
    # hf template: the same rule with the tokenizer's chat template (the header <|assistant|> starts the response).
    prompt, chosen, _ = render_pair(ROWS[9], "hf", tok)
    assert not prompt.endswith("<|assistant|>\n") and chosen.startswith("<|assistant|>\nDown.")

    # Over-long pairs: truncate cuts the prompt from the left, never a response (its stop token stays trained).
    longest = max(len(p.chosen.input_ids) for p in pairs)
    short = cfg_for(tmp_path, f"data.max_seq_length={longest - 1}").data
    cut, counts = encode_pairs(rows, str(FIXTURE), tok, short, cfg.model.data, Rejects())
    assert len(cut) == 12 and counts["prompt_cut"] >= 1
    for p, whole in zip(cut, pairs):
        for side, full in ((p.chosen, whole.chosen), (p.rejected, whole.rejected)):
            assert len(side.input_ids) <= longest - 1
            trained = [x for x in side.labels if x != -100]
            assert trained == [x for x in full.labels if x != -100]  # the whole response, stop token included
            assert side.input_ids == full.input_ids[len(full.input_ids) - len(side.input_ids):]  # the prompt's end kept
    # A response that alone does not fit: the pair is dropped and counted, with the reason.
    tight = cfg_for(tmp_path, "data.max_seq_length=3").data
    rejects = Rejects()
    kept, _ = encode_pairs(rows, str(FIXTURE), tok, tight, cfg.model.data, rejects)
    assert len(kept) + len(rejects) == 12 and len(rejects) >= 1
    assert "end-of-turn token would be cut" in rejects.records[0]["reason"]
    drop = cfg_for(tmp_path, f"data.max_seq_length={longest - 1}", "data.overlong=drop").data
    rejects = Rejects()
    kept, _ = encode_pairs(rows, str(FIXTURE), tok, drop, cfg.model.data, rejects)
    assert len(kept) + len(rejects) == 12 and len(rejects) >= 1
    assert "data.max_seq_length" in rejects.records[0]["reason"]


# ---------------------------------------------------------------- launch.py end to end
def _launch(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECIPES_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "launch.py"), "model=tiny", "data=none", "logger.wandb.enabled=false",
           "logger.progress_bar=false", f"model.data.train_ds.file_path={FIXTURE}",
           f"exp_manager.explicit_log_dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_launch_dpo_with_lora(tmp_path):
    out = _launch(tmp_path, "stage=dpo", "trainer.max_steps=2", "model.peft.peft_scheme=lora",
                  f"model.data.validation_ds.file_path={FIXTURE}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done: dpo finished" in out.stdout
    final = tmp_path / "run" / "checkpoints" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file() and (final / "model.safetensors").is_file()
    assert "val_acc" in (tmp_path / "run" / "metrics.csv").read_text()


def test_launch_iterative_rpo(tmp_path):
    out = _launch(tmp_path, "stage=rpo", "model.rpo.iterations=3", "trainer.max_steps=1")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    assert all((run / f"iter_{k}" / "checkpoints" / "final" / "model.safetensors").is_file() for k in (1, 2, 3))
    assert str(run / "iter_3" / "checkpoints" / "final") in out.stdout
    assert "gap_abs_err" in (run / "iter_2" / "metrics.csv").read_text()
