"""The pipeline runner: pipeline=demo end to end on the tiny model, killed and resumed, re-run unchanged,
re-run after a change, the dry-run plan, manifest.json and report.md; plus selectors and references."""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from recipes import pipeline
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_sdg_generate import make_tiny_checkpoint

STAGES = ["rm_data", "rm", "prompts", "sdg", "annotate", "pref_data", "baseline", "sft_blend", "sft", "dpo", "rpo_1",
          "rpo_2"]
POLICIES = ["baseline", "sft", "dpo", "rpo_1", "rpo_2"]
# The demo preset on the tiny model, every stage shortened.
SHORT = ("pipeline=demo", *TINY, "trainer.max_steps=2", "sdg.n_responses=2", "sdg.max_new_tokens=6",
         "sdg_prompts.max_new_tokens=12",
         "eval.ifeval.max_new_tokens=6", "eval.ifeval.limit=4", "eval.mmlu.limit=1", "eval.gsm8k.limit=1",
         "eval.gsm8k.max_gen_toks=6", "eval.humaneval.limit=1", "eval.humaneval.max_new_tokens=6",
         "eval.policy_reward.max_new_tokens=6", "eval.policy_reward.limit=6")


def run(pdir, base, *extra, change=None):
    overrides = [*SHORT, f"pipeline.dir={pdir}", f"pipeline.base={base}", *extra]
    cfg = compose_cfg(*overrides)
    if change:
        change(cfg)
    return pipeline.run(cfg, overrides)


def manifest(pdir):
    return json.loads((pdir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """One pipeline directory through six runs: killed in dpo, resumed, re-run, re-run with rpo_1 changed,
    with the eval settings changed, with pipeline.from=rpo_1 (its output captured)."""
    root = tmp_path_factory.mktemp("pipeline")
    base, pdir = make_tiny_checkpoint(root / "tiny-base"), root / "demo"
    real_execute = pipeline.execute

    def killed_in_dpo(job, action):
        if job.name == "dpo":
            (job.dir / "partial").mkdir(parents=True)  # it had started
            raise KeyboardInterrupt  # what Ctrl-C (or a kill the runner could see) leaves
        return real_execute(job, action)

    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "execute", killed_in_dpo)
    with pytest.raises(KeyboardInterrupt):
        run(pdir, base)
    mp.undo()
    h = {"pdir": pdir, "base": base, "killed": manifest(pdir)}
    h["report"] = run(pdir, base)
    h["resumed"] = manifest(pdir)
    run(pdir, base)
    h["rerun"] = manifest(pdir)

    def stronger_beta(cfg):
        cfg.pipeline.stages.rpo_1.overrides.append("model.dpo.ref_policy_kl_penalty=0.3")

    run(pdir, base, change=stronger_beta)
    h["changed"] = manifest(pdir)
    run(pdir, base, "eval.ifeval.limit=3", change=stronger_beta)
    h["eval_changed"] = manifest(pdir)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        run(pdir, base, "eval.ifeval.limit=3", "pipeline.from=rpo_1", change=stronger_beta)
    h["from"], h["from_out"] = manifest(pdir), out.getvalue()
    return h


def test_killed_stage_is_recorded_and_resumed_others_skipped_identical(history):
    killed, resumed = history["killed"]["stages"], history["resumed"]["stages"]
    before = STAGES[:STAGES.index("dpo")]
    assert [killed[n]["status"] for n in STAGES] == ["done"] * len(before) + ["failed", "pending", "pending"]
    assert killed["dpo"]["error"].startswith("KeyboardInterrupt")
    for name in before:  # skipped: same run, same outputs (content hashes)
        assert resumed[name]["finished"] == killed[name]["finished"] and resumed[name]["attempts"] == 1
        assert resumed[name]["outputs"] == killed[name]["outputs"]
    assert resumed["dpo"]["resumed"] is True and resumed["dpo"]["attempts"] == 2
    assert (history["pdir"] / "dpo" / "partial").is_dir()  # resumed in place, not wiped
    assert all(resumed[n]["status"] == "done" for n in STAGES)
    # The content hashes in the manifest are the files' own.
    hashes = {}
    for name in ("sft", "pref_data"):
        for out in resumed[name]["outputs"].values():
            if out["hash"]:
                assert pipeline.content_hash(out["path"], hashes) == out["hash"]


def test_rerun_skips_every_finished_stage(history):
    resumed, rerun = history["resumed"]["stages"], history["rerun"]["stages"]
    for name in STAGES:
        assert rerun[name]["finished"] == resumed[name]["finished"], name
        assert rerun[name]["outputs"] == resumed[name]["outputs"], name


def test_changed_stage_reruns_with_those_after_it_only(history):
    rerun, changed = history["rerun"]["stages"], history["changed"]["stages"]
    again = [n for n in STAGES if changed[n]["finished"] != rerun[n]["finished"]]
    assert again == ["rpo_1", "rpo_2"]
    assert changed["rpo_1"]["config_hash"] != rerun["rpo_1"]["config_hash"]
    assert changed["rpo_2"]["config_hash"] == rerun["rpo_2"]["config_hash"]  # re-run for its new input
    assert changed["rpo_2"]["inputs"] != rerun["rpo_2"]["inputs"]
    assert "model.dpo.ref_policy_kl_penalty=0.3" in changed["rpo_1"]["overrides"]


def test_changed_eval_settings_rerun_only_the_hooks(history):
    changed, ev = history["changed"]["stages"], history["eval_changed"]["stages"]
    assert [n for n in STAGES if ev[n]["finished"] != changed[n]["finished"]] == ["baseline", "sft", "dpo", "rpo_1",
                                                                                "rpo_2"]
    assert ev["rm"] == changed["rm"]  # its hook (RewardBench) does not read the IFEval settings
    for name in ("sft", "dpo", "rpo_1", "rpo_2"):
        assert ev[name]["outputs"] == changed[name]["outputs"]  # the checkpoints were not retrained
        assert ev[name]["metrics"]["eval"]["ifeval"]["n_prompts"] == 3
        assert ev[name]["metrics"]["train"] == changed[name]["metrics"]["train"]


def test_manifest_records_config_inputs_outputs_timings_metrics(history):
    m = history["resumed"]
    assert m["pipeline"] == "demo" and m["backend"] == "torch" and list(m["stages"]) == STAGES
    s = m["stages"]
    for name in STAGES:
        e = s[name]
        assert e["status"] == "done" and len(e["config_hash"]) == 32 and e["seconds"] >= 0 and e["cpu_seconds"] >= 0
        assert e["started"] <= e["finished"]
        assert os.path.exists(e["outputs"]["output"]["path"])
    # Outputs become inputs by name: the RM checkpoint feeds annotation, SFT feeds DPO, DPO feeds RPO.
    assert s["rm"]["outputs"]["checkpoint"]["path"] in s["annotate"]["inputs"]
    assert s["annotate"]["inputs"][s["rm"]["outputs"]["checkpoint"]["path"]] == s["rm"]["outputs"]["checkpoint"]["hash"]
    assert f"model.name_or_path={s['sft']['outputs']['checkpoint']['path']}" in s["dpo"]["overrides"]
    assert f"model.name_or_path={s['dpo']['outputs']['checkpoint']['path']}" in s["rpo_1"]["overrides"]
    assert f"model.name_or_path={s['rpo_1']['outputs']['checkpoint']['path']}" in s["rpo_2"]["overrides"]
    assert s["pref_data"]["outputs"]["train_dpo"]["path"] in s["rpo_2"]["inputs"]
    # Eval after each stage: IFEval on the policies, RewardBench on the RM.
    for name in ("baseline", "sft", "dpo", "rpo_1", "rpo_2"):
        assert s[name]["metrics"]["eval"]["ifeval"]["n_prompts"] == 4
        assert s[name]["metrics"]["eval"]["mmlu"]["n_samples"] == 3  # limit 1 per subject, 3 subjects
        assert s[name]["metrics"]["eval"]["humaneval"]["n_problems"] == 1 and "gsm8k" in s[name]["metrics"]["eval"]
    assert "overall" in s["rm"]["metrics"]["eval"]["reward_bench"]
    assert s["sft"]["metrics"]["train"]["steps"] == 2 and "val_loss" in s["sft"]["metrics"]["train"]
    # Prompts made from data/demo/topics.txt, counted per task at every filter, feed generation.
    tasks = s["prompts"]["metrics"]["data"]["outputs"]
    assert "prompts.jsonl [open_qa]" in tasks and "prompts.jsonl [math]" in tasks
    assert s["prompts"]["outputs"]["output"]["path"] in s["sdg"]["inputs"]
    generated = s["sdg"]["metrics"]["data"]["generated"]
    assert 0 < generated <= 32 and s["sdg"]["metrics"]["data"]["duplicates_dropped"] == 0
    outputs = s["pref_data"]["metrics"]["data"]["outputs"]  # a quarter of the prompts held out (val_fraction 0.25)
    held_out = outputs["val_dpo.jsonl"]["rows_in"]
    assert outputs["train_dpo.jsonl"]["rows_in"] + held_out == generated and 0 < held_out < generated / 2
    # The pipeline's own judges on every policy stage: its RM on held-out prompts (a win rate from sft on, against
    # the stage before), its held-out pairs.
    for prev, name in zip([None, *POLICIES], POLICIES):
        ev = s[name]["metrics"]["eval"]
        assert ev["policy_reward"]["n_prompts"] == 6 and ev["policy_reward"]["reward_model"] == \
            s["rm"]["outputs"]["checkpoint"]["path"]
        assert ev["preference_accuracy"]["n_pairs"] == outputs["val_dpo.jsonl"]["rows_out"]
        assert ("win_rate" in ev["policy_reward"]) == (prev is not None)
        if prev:
            assert ev["policy_reward"]["previous"] == f"{s[prev]['dir']}/eval/policy_reward/responses.jsonl"
            assert ev["policy_reward"]["n_compared"] == 6
    # seed_offset: rpo_2 reshuffles (seed + 1), whatever seed the command line gives.
    assert "seed=1235" in s["rpo_2"]["overrides"] and not any(o.startswith("seed=") for o in s["rpo_1"]["overrides"])


def test_report_has_table_paper_numbers_counts_and_plots(history):
    pdir = history["pdir"]
    assert history["report"] == pdir / "report.md"
    text = history["report"].read_text()
    assert "| stage | runs | status |" in text and "| IFEval P-strict |" in text.replace(" IFEval I-strict |", "")
    assert "| sft | sft | done |" in text and "| sft | + General SFT | - / 7.99 | " in text and " / 78.3 | " in text
    assert "| rpo_2 | + RPO iter 2 | - / 8.31 | " in text and " / 79.9 | " in text and "RewardBench 92.0" in text
    train_pairs = manifest(pdir)["stages"]["pref_data"]["metrics"]["data"]["outputs"]["train_dpo.jsonl"]["rows_in"]
    assert "## Data at each filter" in text and f"| train_dpo.jsonl | {train_pairs} |" in text
    assert "**prompts** (sdg_prompts)" in text and "| prompts.jsonl [open_qa] |" in text
    assert "## The recipe at work: the pipeline's own judges" in text and "| dpo | " in text.split("own judges")[1]
    for png in ("eval_across_stages.png", "train_rm.png", "train_sft.png", "train_dpo.png", "train_rpo_2.png"):
        assert (pdir / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{png})" in text


def test_from_reruns_that_stage_and_the_rest_though_done(history):
    """pipeline.from=rpo_1 with nothing changed: rpo_1 and rpo_2 run again from scratch, the rest is skipped."""
    before, after = history["eval_changed"]["stages"], history["from"]["stages"]
    assert [n for n in STAGES if after[n]["finished"] != before[n]["finished"]] == ["rpo_1", "rpo_2"]
    assert after["rpo_1"]["attempts"] == before["rpo_1"]["attempts"] + 1 and after["rpo_1"]["resumed"] is False
    out = history["from_out"]
    assert "=== [11/12] rpo_1 (rpo): run (selected by pipeline.from=rpo_1)" in out
    assert "=== [12/12] rpo_2 (rpo): run (selected by pipeline.from=rpo_1)" in out
    # The end: one line per stage with its numbers, then where everything is.
    assert " 10. dpo            dpo              -       done" in out
    assert "IFEval prompt/instr-strict" in out.split(" 12. rpo_2")[1].splitlines()[0]
    pdir = history["pdir"]
    for line in (f"  report:    {pdir / 'report.md'}", f"  log:       {pdir / 'pipeline.log'}",
                 f"  last checkpoint: {pdir / 'rpo_2' / 'checkpoints' / 'final'} (rpo_2)"):
        assert line in out


def test_run_logs_land_in_the_pipeline_and_stage_directories(history):
    pdir = history["pdir"]
    log = (pdir / "pipeline.log").read_text()  # every run appended to it, headers included
    assert "=== [10/12] dpo (dpo): resume (failed earlier; resume in the same directory)" in log
    assert "][recipes.dpo][INFO] reference log-probs for train_dpo.jsonl" in log
    assert log.count("][launch][ERROR] KeyboardInterrupt") == 1  # the kill, with its traceback, logged once
    assert "[launch][ERROR] KeyboardInterrupt" in (pdir / "dpo" / "launch.log").read_text()  # resumed: kept
    stage_log = (pdir / "rpo_2" / "launch.log").read_text()  # its own records only
    train_pairs = manifest(pdir)["stages"]["pref_data"]["metrics"]["data"]["outputs"]["train_dpo.jsonl"]["rows_out"]
    assert f"][recipes.dpo][INFO] train: {{'rows': {train_pairs}" in stage_log and "recipes.sft" not in stage_log
    assert all((pdir / n / "launch.log").is_file() for n in STAGES)


def test_dry_run_prints_the_plan_and_runs_nothing(history, capsys):
    pdir = history["pdir"]
    before = sorted((p, p.stat().st_mtime_ns) for p in pdir.rglob("*"))
    plan = lambda out: {line.split()[1]: line for line in out.splitlines() if line[:4].strip().rstrip(".").isdigit()}  # noqa: E731
    run(pdir, history["base"], "dry_run=true")  # the last run had eval.ifeval.limit=3 and a stronger rpo_1 beta
    lines = plan(capsys.readouterr().out)
    assert " skip " in lines["rm"] and " eval " in lines["sft"] and "eval settings changed" in lines["sft"]
    assert "config changed" in lines["rpo_1"] and "an input stage runs first" in lines["rpo_2"]
    # only/from name the stages to re-run, done or not.
    run(pdir, history["base"], "dry_run=true", "pipeline.only=[sft,rpo_2]")
    lines = plan(capsys.readouterr().out)
    assert " run " in lines["sft"] and "selected by pipeline.only=sft,rpo_2" in lines["sft"]
    assert "not selected" in lines["dpo"] and "selected by pipeline.only=sft,rpo_2" in lines["rpo_2"]
    run(pdir, history["base"], "dry_run=true", "pipeline.from=sft", "pipeline.until=dpo", "eval.ifeval.limit=3",
        "model.dpo.sft_loss_weight=0.5")
    out = capsys.readouterr().out
    lines = plan(out)
    assert "not selected" in lines["rm"] and "not selected" in lines["sdg"] and "not selected" in lines["rpo_1"]
    assert "selected by pipeline.from=sft" in lines["sft"] and "selected by pipeline.from=sft" in lines["dpo"]
    assert f"model.name_or_path={pdir / 'sft' / 'checkpoints' / 'final'}" in out  # resolved overrides
    assert sorted((p, p.stat().st_mtime_ns) for p in pdir.rglob("*")) == before  # nothing written, not even a log


def test_select_only_from_until():
    names = ["a", "b", "c", "d"]
    sel = lambda **kw: pipeline.select(names, OmegaConf.create({"only": None, "until": None, "from": None, **kw}))  # noqa: E731
    assert sel() == names
    assert sel(only="c") == ["c"] and sel(only=["d", "a"]) == ["a", "d"]
    assert sel(**{"from": "b"}) == ["b", "c", "d"] and sel(until="b") == ["a", "b"]
    assert sel(**{"from": "b", "until": "c"}) == ["b", "c"]
    with pytest.raises(ValueError, match=r"pipeline.until=e: no such stage \(stages: a, b, c, d\)"):
        sel(until="e")


def test_references_resolve_to_outputs_or_fail_in_one_line():
    known = {"base": {"checkpoint": "/m"}, "sft": {"dir": "/p/sft", "output": "/p/sft/ck", "checkpoint": "/p/sft/ck"},
             "prep": {"dir": "/p/prep", "*": "/p/prep"}}
    deps = []
    got = pipeline.resolve_refs(["a=${stages:sft.checkpoint}", "b=${stages:prep.train_dpo}", "c=${stages:base.checkpoint}"],
                                known, deps)
    assert got == ["a=/p/sft/ck", "b=/p/prep/train_dpo.jsonl", "c=/m"] and deps == ["sft", "prep"]
    with pytest.raises(ValueError, match=r"no earlier stage 'dpo'"):
        pipeline.resolve_refs("x=${stages:dpo.checkpoint}", known, [])
    with pytest.raises(ValueError, match=r"stage sft has no output 'weights' \(outputs: dir, output, checkpoint\)"):
        pipeline.resolve_refs("x=${stages:sft.weights}", known, [])


def test_launch_picks_pipeline_or_stage():
    assert not pipeline.picks_stage(["pipeline=demo", "model=tiny", "pipeline.only=sft"])
    assert pipeline.picks_stage(["stage=dpo"]) and pipeline.picks_stage(["+experiment=nemotron4_340b/rm"])


@pytest.mark.skipif(not (REPO / "conf" / "backend" / "nemo.yaml").exists(), reason="backend=nemo not in this tree")
def test_nemotron4_preset_plans_nemo_commands(tmp_path, capsys):
    overrides = ["pipeline=nemotron4", "backend=nemo", "executor=slurm", "dry_run=true", f"pipeline.dir={tmp_path}",
                 "model.name_or_path=/models/Nemotron-4-340B-Base"]
    pipeline.run(compose_cfg(*overrides), overrides)
    out = capsys.readouterr().out
    assert not (tmp_path / "manifest.json").exists()
    for name in ("rm_data", "rm", "prompts", "dialogues", "sdg", "annotate", "dpo_data", "rpo_data", "code_sft",
                 "general_sft", "dpo", "rpo_1", "rpo_2", "rpo_3", "final_eval"):
        assert f" {name} " in out
    # Every SDG stage's requests: 30 macro topics x 10 subtopics, lists per topic and keyword, refinements.
    assert ("requests (openai generator): macro_topics 1, subtopics 30, lists 722, refine 2640, assistant_turns 1666, "
            "second_user_turns 1000, total 6059") in out
    assert "requests: P dialogues x 5 generator (3 assistant + 2 user turns) + P x 3 reward model (endpoint)" in out
    assert "requests (reward endpoint https://integrate.api.nvidia.com/v1): one per response of" in out
    assert "NeMo-Aligner: python /opt/NeMo-Aligner/examples/nlp/gpt/train_reward_model.py" in out
    assert "NeMo-Aligner: python /opt/NeMo-Aligner/examples/nlp/gpt/train_gpt_dpo.py" in out
    # Each stage starts from the previous one's .nemo; the first ones (rm, code_sft) from the model given.
    assert f"model.name_or_path={tmp_path}/rpo_1/checkpoints/megatron_gpt.nemo" in out
    assert out.count("restore_from_path=/models/Nemotron-4-340B-Base") == 4  # rm, code_sft: override + NeMo command
    assert "SmolLM" not in out and "gguf" not in out.lower()
    # Without model.name_or_path the preset's own model (pipeline.overrides), never the demo's GGUF.
    overrides = overrides[:-1]
    pipeline.run(compose_cfg(*overrides), overrides)
    out = capsys.readouterr().out
    assert out.count("restore_from_path=nvidia/Nemotron-4-340B-Base") == 2 and "SmolLM" not in out


def test_a_named_model_is_the_base_of_the_plan(tmp_path, capsys):
    """`launch.py dry_run=true model.name_or_path=<checkpoint>` plans the baseline and SDG on that checkpoint."""
    ckpt = make_tiny_checkpoint(tmp_path / "my-sft")
    overrides = ["pipeline=demo", "dry_run=true", f"pipeline.dir={tmp_path / 'p'}", f"model.name_or_path={ckpt}"]
    pipeline.run(compose_cfg(*overrides), overrides)
    out = capsys.readouterr().out
    assert f"eval.model={ckpt}" in out and f"sdg.model={ckpt}" in out and "SmolLM" not in out
    # Every policy stage but the last saves only its adapter (the next one merges it on load).
    blocks, name = {}, None
    for line in out.splitlines():
        head = line.split()
        if head and head[0].rstrip(".").isdigit():
            name = head[1]
        elif name:
            blocks[name] = blocks.get(name, "") + line + "\n"
    assert [n for n in blocks if "model.peft.save_merged=false" in blocks[n]] == ["sft", "dpo", "rpo_1"]


def test_launch_runs_the_pipeline_dry(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "pipeline=demo", "model=tiny", "dry_run=true",
                        f"pipeline.dir={tmp_path / 'demo'}", f"pipeline.base={tmp_path}"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pipeline demo: plan (dry_run: nothing runs)" in r.stdout and " rpo_2 " in r.stdout
    assert list(tmp_path.iterdir()) == []  # no pipeline directory, no runs/, no .hydra/, no log
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "pipeline=demo", "pipeline.until=rpo_9",
                        "dry_run=true"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 1 and "pipeline.until=rpo_9: no such stage" in r.stderr and "Traceback" not in r.stderr
