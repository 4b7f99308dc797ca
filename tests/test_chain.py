"""The recipe as one chain: a checkpoint carries its template and LoRA choice (recipe.json) and later stages
inherit them; adapter-only checkpoints load wherever a checkpoint loads; and the demo pipeline's chain on the
tiny model trains and evaluates every stage in one template."""

import json
import logging

import pytest
import torch

from eval.clients import SamplingParams
from recipes import dpo, sft
from recipes.models import load_causal_lm, read_recipe
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_sdg_generate import make_tiny_checkpoint

SFT = REPO / "tests" / "fixtures" / "sft_tiny.jsonl"
DPO = REPO / "tests" / "fixtures" / "dpo_tiny.jsonl"
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny-base")


def lora_sft(base, run_dir, *extra):
    """stage=sft from an HF base with LoRA and the tokenizer's chat template (hf), as the demo does."""
    cfg = compose_cfg(*TINY, f"model.name_or_path={base}", "model.peft.peft_scheme=lora", "data.prompt_template=hf",
                      f"model.data.train_ds.file_path={SFT}", "trainer.max_steps=2", "model.optim.lr=1e-2",
                      f"exp_manager.explicit_log_dir={run_dir}", *extra)
    return sft.run(cfg, run_dir)


def logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_adapter_only_checkpoints_load_as_the_weights_their_stage_ended_with(base, tmp_path):
    merged = lora_sft(base, tmp_path / "merged")
    adapter = lora_sft(base, tmp_path / "adapter", "model.peft.save_merged=false")
    assert (merged / "model.safetensors").is_file() and not (adapter / "model.safetensors").is_file()
    recipe = read_recipe(adapter)
    assert recipe["adapter_only"] is True and recipe["base_model"] == str(base.resolve())
    assert recipe["prompt_template"] == "hf" and recipe["peft"]["peft_scheme"] == "lora"
    want = logits(load_causal_lm(str(merged)))
    torch.testing.assert_close(logits(load_causal_lm(str(adapter))), want, atol=1e-5, rtol=1e-5)
    # The eval hooks' and SDG's client, and an explicit DPO reference, load it the same way.
    from recipes.evaluate import hf_client

    params = SamplingParams(max_new_tokens=5)
    conv = [[{"role": "user", "content": "What is two plus two?"}]]
    assert hf_client(adapter, "auto", 1, False).generate(conv, params) == hf_client(merged, "auto", 1, False).generate(conv, params)
    tok = hf_client(adapter, "auto", 1, False).tokenizer
    torch.testing.assert_close(logits(dpo.load_reference(str(adapter), tok, torch.device("cpu"))), want, atol=1e-5, rtol=1e-5)
    # A chain of them: DPO from the adapter-only SFT checkpoint, adapter-only itself, loads as its own end.
    cfg = compose_cfg(*TINY, "stage=dpo", "model=hf", f"model.name_or_path={adapter}", f"model.data.train_ds.file_path={DPO}",
                      "trainer.max_steps=1", "model.peft.save_merged=false", f"exp_manager.explicit_log_dir={tmp_path / 'dpo'}")
    out = dpo.run(cfg, tmp_path / "dpo")
    assert read_recipe(out)["base_model"] == str(adapter.resolve()) and not (out / "model.safetensors").is_file()
    assert not torch.allclose(logits(load_causal_lm(str(out))), want)  # the DPO step moved it


def test_later_stages_inherit_template_and_lora_unless_told(base, tmp_path, caplog):
    """The README's `stage=dpo model=hf model.name_or_path=<SFT checkpoint>` keeps the SFT's LoRA and template."""
    ckpt = lora_sft(base, tmp_path / "sft")
    cfg = compose_cfg(*[o for o in TINY if o != "model=tiny"], "stage=dpo", "model=hf", f"model.name_or_path={ckpt}",
                      f"model.data.train_ds.file_path={DPO}", "trainer.max_steps=1",
                      f"exp_manager.explicit_log_dir={tmp_path / 'dpo'}")
    assert (cfg.data.prompt_template, cfg.model.peft.peft_scheme) == ("auto", "auto")  # model=hf names neither
    with caplog.at_level(logging.WARNING):
        out = dpo.run(cfg, tmp_path / "dpo")
    assert "overrides" not in caplog.text
    recipe = read_recipe(out)
    assert (recipe["prompt_template"], recipe["peft"]["peft_scheme"]) == ("hf", "lora")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # Told otherwise: the value given wins, with a warning naming what the checkpoint was trained with.
    cfg = compose_cfg(*[o for o in TINY if o != "model=tiny"], "stage=dpo", "model=hf", f"model.name_or_path={ckpt}",
                      f"model.data.train_ds.file_path={DPO}", "trainer.max_steps=1", "data.prompt_template=nemotron",
                      "model.peft.peft_scheme=none", f"exp_manager.explicit_log_dir={tmp_path / 'full'}")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = dpo.run(cfg, tmp_path / "full")
    assert "data.prompt_template=nemotron overrides hf" in caplog.text
    assert "model.peft.peft_scheme=none overrides lora" in caplog.text
    assert (read_recipe(out)["prompt_template"], read_recipe(out)["peft"]["peft_scheme"]) == ("nemotron", "none")


# ---------------------------------------------------------------- the demo pipeline's chain, one template
SHORT = ("pipeline=demo", *TINY, "data.prompt_template=hf", "model.peft.peft_scheme=lora", "trainer.max_steps=1",
         "sdg.n_responses=2", "sdg.max_new_tokens=6", "sdg_prompts.max_new_tokens=12", "eval.ifeval.max_new_tokens=4",
         "eval.ifeval.limit=2", "eval.mmlu.limit=1", "eval.gsm8k.limit=1", "eval.gsm8k.max_gen_toks=4",
         "eval.humaneval.limit=1", "eval.humaneval.max_new_tokens=4",
         "data.max_seq_length=1024")  # no prompt is cut, so every chosen text is also an SFT text


def test_the_demo_chain_trains_and_evaluates_every_stage_in_one_template(base, tmp_path, monkeypatch):
    from eval.hf_client import HFClient
    from recipes import pipeline
    from recipes import sft as sft_stage

    seen = {"sft": [], "dpo": [], "prompts": []}
    encode_sft, encode_pairs, prompt, clean = sft_stage.encode_sft_rows, dpo.encode_pairs, HFClient.prompt, HFClient._clean

    def spy_sft(rows, path, tokenizer, *a):
        out = encode_sft(rows, path, tokenizer, *a)
        seen["sft"] += [tokenizer.decode(e.input_ids) for e in out[0]]
        return out

    def spy_pairs(rows, path, tokenizer, *a):
        out = encode_pairs(rows, path, tokenizer, *a)
        seen["dpo"] += [(tokenizer.decode(p.chosen.input_ids), tokenizer.decode(p.rejected.input_ids)) for p in out[0]]
        return out

    def spy_prompt(self, conversation):
        text = prompt(self, conversation)
        seen["prompts"].append(text)
        return text

    def plain_text(self, text, stops):
        # A random tiny model emits any token, its tokenizer's <extra_id_*> included (a trained ChatML model does
        # not): keep them out of its SDG responses, so that any <extra_id_ seen below comes from a template.
        return "".join(clean(self, text, stops).split("<extra_id_"))

    monkeypatch.setattr(HFClient, "_clean", plain_text)
    monkeypatch.setattr(sft_stage, "encode_sft_rows", spy_sft)
    monkeypatch.setattr(dpo, "encode_pairs", spy_pairs)
    monkeypatch.setattr(HFClient, "prompt", spy_prompt)
    overrides = [*SHORT, f"pipeline.dir={tmp_path / 'demo'}", f"pipeline.base={base}"]
    pipeline.run(compose_cfg(*overrides), overrides)

    texts = seen["sft"] + [t for pair in seen["dpo"] for t in pair] + seen["prompts"]
    assert seen["sft"] and seen["dpo"] and seen["prompts"]
    assert not [t for t in texts if "<extra_id_" in t]  # nothing of the Nemotron template reaches this model
    # The same conversation renders identically everywhere: every DPO/RPO chosen text (prompt + best response)
    # is exactly an SFT training text (the best response also went to SFT), and its prompt is the generation
    # prompt SDG and IFEval use.
    sft_texts = set(seen["sft"])
    missing = [chosen for chosen, _ in seen["dpo"] if chosen not in sft_texts]
    assert not missing, (missing[:2], sorted(sft_texts)[:3])
    assert all(any(chosen.startswith(p) for p in seen["prompts"]) for chosen, _ in seen["dpo"])
    # Every checkpoint says so, LoRA was kept all the way, and only the last policy stage is merged.
    pdir = tmp_path / "demo"
    for name in ("sft", "dpo", "rpo_1", "rpo_2"):
        recipe = read_recipe(pdir / name / "checkpoints" / "final")
        assert (recipe["prompt_template"], recipe["peft"]["peft_scheme"]) == ("hf", "lora"), name
    assert [read_recipe(pdir / n / "checkpoints" / "final")["adapter_only"] for n in ("dpo", "rpo_1", "rpo_2")] == \
           [True, True, False]
    assert read_recipe(pdir / "rpo_1" / "checkpoints" / "final")["base_model"] == str(pdir / "dpo" / "checkpoints" / "final")
    results = json.loads((pdir / "rpo_1" / "eval" / "results.json").read_text())
    assert results["ifeval"]["n_prompts"] == 2  # the hooks loaded the adapter-only checkpoint
