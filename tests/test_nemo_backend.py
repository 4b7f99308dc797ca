"""backend=nemo: the NeMo-Aligner command, the sbatch script, dry runs, presets. No NeMo needed."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.backends import nemo_backend as nb
from recipes import convert, executors
from tests.conftest import FIXTURES, REPO, compose_cfg

DATA = ("model.data.train_ds.file_path=/data/train.jsonl", "model.data.validation_ds.file_path=/data/val.jsonl")
BASE = ("backend=nemo", "model=hf", "data=none", "logger.wandb.enabled=false",
        "backend.nemo.restore_from_path=/ckpt/base.nemo", *DATA)
# stage -> the v0.7.0 config of the script it runs (nemo_aligner_v0.7.0_config_keys.json)
CONFIG_OF = {"sft": "gpt_sft", "rm": "training_rm", "dpo": "gpt_dpo", "rpo": "gpt_dpo"}
PRESETS = sorted(str(p.relative_to(REPO / "conf/experiment").with_suffix(""))  # the paper presets (both backends)
                 for family in ("nemotron4_340b", "llama3_70b") for p in (REPO / "conf/experiment" / family).glob("*.yaml"))


def nemo_cfg(stage, *overrides, log_dir="/runs/x"):
    return compose_cfg(*BASE, f"stage={stage}", f"exp_manager.explicit_log_dir={log_dir}", *overrides)


def as_dict(overrides):
    return dict(o.split("=", 1) for o in overrides)


@pytest.fixture(scope="module")
def v070():
    """{config name: {dotted key: default}} of NeMo-Aligner v0.7.0's training yamls."""
    data = json.loads((FIXTURES / "nemo_aligner" / "nemo_aligner_v0.7.0_config_keys.json").read_text())
    return {name: c["keys"] for name, c in data["configs"].items()}


# ---------------------------------------------------------------- golden overrides
def test_golden_dpo():
    cfg = nemo_cfg("dpo", "trainer.num_nodes=2", "trainer.devices=8", "backend.nemo.tensor_model_parallel_size=4",
                   "backend.nemo.pipeline_model_parallel_size=2", "model.global_batch_size=32",
                   "model.micro_batch_size=1", "model.optim.lr=1e-7", "model.optim.weight_decay=0.1",
                   "model.optim.sched.name=constant", "model.optim.sched.warmup_steps=10",
                   "model.dpo.ref_policy_kl_penalty=1e-3", "model.dpo.sft_loss_weight=1e-4",
                   "trainer.val_check_interval=50", "trainer.save_interval=100", "trainer.max_epochs=1")
    script, overrides = nb.overrides_for(cfg)
    assert script == "/opt/NeMo-Aligner/examples/nlp/gpt/train_gpt_dpo.py"
    assert overrides == [
        "trainer.num_nodes=2", "trainer.devices=8", "trainer.precision=bf16",
        "trainer.dpo.max_epochs=1", "trainer.dpo.max_steps=-1", "trainer.dpo.val_check_interval=50",
        "trainer.dpo.save_interval=100", "trainer.dpo.limit_val_batches=1.0", "trainer.dpo.gradient_clip_val=1.0",
        "model.seed=1234",
        "model.optim.lr=1e-07", "model.optim.weight_decay=0.1", "model.optim.betas=[0.9, 0.98]",
        "model.optim.sched.name=CosineAnnealing", "model.optim.sched.warmup_steps=10",
        "model.optim.sched.constant_steps=0", "model.optim.sched.min_lr=1e-07",
        "exp_manager.explicit_log_dir=/runs/x", "exp_manager.resume_if_exists=False",
        "exp_manager.create_wandb_logger=False",
        "pretrained_checkpoint.restore_from_path=/ckpt/base.nemo",
        "++model.tensor_model_parallel_size=4", "++model.pipeline_model_parallel_size=2",
        "model.data.data_prefix={train: [/data/train.jsonl], validation: [/data/val.jsonl], test: [/data/val.jsonl]}",
        "model.data.seq_length=4096", "model.global_batch_size=32", "model.micro_batch_size=1",
        "model.dpo.ref_policy_kl_penalty=0.001", "model.dpo.gt_reward_scale=1.0", "model.dpo.preference_loss=dpo",
        "model.dpo.preference_loss_weight=1.0", "model.dpo.sft_loss_weight=0.0001",
        "model.dpo.preference_average_log_probs=False", "model.dpo.sft_average_log_probs=False",
        "model.data.default_chosen_reward=1.0", "model.data.default_rejected_reward=0.0",
    ]


def test_golden_sft():
    cfg = nemo_cfg("sft", "trainer.devices=8", "model.global_batch_size=128", "model.micro_batch_size=1",
                   "model.optim.lr=3e-7", "model.optim.sched.name=constant", "trainer.val_check_interval=0",
                   "trainer.save_interval=0", "data.max_seq_length=2048", "trainer.max_epochs=3")
    script, overrides = nb.overrides_for(cfg)
    assert script == "/opt/NeMo-Aligner/examples/nlp/gpt/train_gpt_sft.py"
    stage_part = overrides[overrides.index("model.restore_from_path=/ckpt/base.nemo"):]
    assert stage_part == [
        "model.restore_from_path=/ckpt/base.nemo",
        "model.tensor_model_parallel_size=1", "model.pipeline_model_parallel_size=1", "model.megatron_amp_O2=True",
        "model.data.chat=True",
        "model.data.chat_prompt_tokens.system_turn_start='<extra_id_0>'",
        "model.data.chat_prompt_tokens.turn_start='<extra_id_1>'",
        "model.data.chat_prompt_tokens.label_start='<extra_id_2>'",
        "model.data.train_ds.file_path=/data/train.jsonl", "model.data.validation_ds.file_path=/data/val.jsonl",
        "model.data.train_ds.global_batch_size=128", "model.data.train_ds.micro_batch_size=1",
        "model.data.train_ds.max_seq_length=2048", "model.data.train_ds.shuffle=True",
        "model.data.train_ds.add_eos=False",
        "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True",
    ]
    o = as_dict(overrides)
    # 0 = "only at the end" for us; NeMo-Aligner's 0 disables validation/saving, so a never-reached interval.
    assert o["trainer.sft.val_check_interval"] == o["trainer.sft.save_interval"] == str(nb.AT_END_ONLY)
    assert o["trainer.sft.max_epochs"] == "3"


def test_golden_rm():
    cfg = nemo_cfg("rm", "trainer.devices=8", "model.global_batch_size=128", "model.micro_batch_size=1",
                   "backend.nemo.tensor_model_parallel_size=8")
    _, overrides = nb.overrides_for(cfg)
    stage_part = overrides[overrides.index("pretrained_checkpoint.restore_from_path=/ckpt/base.nemo"):]
    assert stage_part == [
        "pretrained_checkpoint.restore_from_path=/ckpt/base.nemo",
        "++model.tensor_model_parallel_size=8", "++model.pipeline_model_parallel_size=1",
        "model.data.data_prefix={train: [/data/train.jsonl], validation: [/data/val.jsonl], test: [/data/val.jsonl]}",
        "model.data.seq_length=4096", "model.global_batch_size=128", "model.micro_batch_size=1",
        "trainer.rm.train_random_sampler=True", "model.reward_model_type=regression",
        "model.regression.num_attributes=9", "model.regression.loss_func=regression",
        "model.regression.loss_mask_val=-100.0",
        # NEMO_ALIGNER.md §2.1: the model reads these at model.*, not model.regression.*
        "++model.loss_func=regression", "++model.loss_mask_val=-100.0",
    ]


def test_scaled_bt_workaround_and_checks():
    cfg = nemo_cfg("rm", "model.regression.loss_func=scaled_bt", "model.micro_batch_size=2")
    o = as_dict(nb.overrides_for(cfg)[1])
    assert o["++model.loss_func"] == "scaled_bt" and o["model.regression.loss_func"] == "scaled_bt"
    assert o["trainer.rm.train_random_sampler"] == "False" and o["model.micro_batch_size"] == "2"
    with pytest.raises(ValueError, match="micro_batch_size=2"):
        nb.overrides_for(nemo_cfg("rm", "model.regression.loss_func=scaled_bt", "model.micro_batch_size=1"))


def test_rpo_loss_lora_and_schedules():
    cfg = nemo_cfg("rpo", "model.peft.peft_scheme=lora", "model.peft.lora_rank=16", "model.peft.lora_alpha=32",
                   "model.peft.target_modules=[q_proj,k_proj,v_proj,o_proj]", "model.optim.sched.name=cosine",
                   "model.optim.sched.min_lr=1e-8", "model.gradient_checkpointing=true")
    o = as_dict(nb.overrides_for(cfg)[1])
    assert o["model.dpo.preference_loss"] == "rpo_bwd_kl"  # conf/stage/rpo.yaml
    assert o["model.peft.peft_scheme"] == "lora" and o["model.peft.lora_tuning.adapter_dim"] == "16"
    assert o["model.peft.lora_tuning.target_modules"] == "[attention_qkv, attention_dense]"
    assert o["++model.peft.lora_tuning.alpha"] == "32"
    assert o["model.optim.sched.min_lr"] == "1e-08" and o["model.optim.sched.constant_steps"] == "0"
    assert o["++model.activations_checkpoint_granularity"] == "full"
    with pytest.raises(ValueError, match="training_rm.yaml has no model.peft"):
        nb.overrides_for(nemo_cfg("rm", "model.peft.peft_scheme=lora"))


# ---------------------------------------------------------------- every key exists in NeMo-Aligner v0.7.0
VARIANTS = {
    "sft": [(), ("model.peft.peft_scheme=lora", "model.gradient_checkpointing=true",
                 "logger.wandb.enabled=true")],
    "rm": [(), ("model.regression.loss_func=margin_bt", "model.micro_batch_size=2",
                "model.gradient_checkpointing=true")],
    "dpo": [(), ("model.peft.peft_scheme=lora", "model.gradient_checkpointing=true", "logger.wandb.enabled=true")],
    "rpo": [()],
}
CASES = [(stage, extra) for stage, extras in VARIANTS.items() for extra in extras]


@pytest.mark.parametrize("stage,extra", CASES)
def test_plain_keys_exist_and_plus_plus_keys_do_not(v070, stage, extra):
    keys = v070[CONFIG_OF[stage]]
    _, overrides = nb.overrides_for(nemo_cfg(stage, *extra))
    for o in overrides:
        key = nb.override_key(o)
        if o.startswith("++"):
            assert key not in keys, f"{o}: {key} is in {CONFIG_OF[stage]}.yaml, drop the ++"
        else:
            assert key in keys, f"{o}: {key} is not in {CONFIG_OF[stage]}.yaml, it needs ++"


@pytest.mark.parametrize("stage,extra", CASES)
def test_overrides_parse_and_apply_like_hydra(v070, stage, extra):
    """Hydra parses every override, and applying them to the v0.7.0 yaml in struct mode succeeds."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    base = OmegaConf.create({})
    with open_dict(base):
        for key, default in v070[CONFIG_OF[stage]].items():
            if key != "defaults":
                OmegaConf.update(base, key, {} if default == "{...}" else default, force_add=True)
    OmegaConf.set_struct(base, True)
    for override in OverridesParser.create().parse_overrides(nb.overrides_for(nemo_cfg(stage, *extra))[1]):
        key, value = override.key_or_group, override.value()
        if override.is_force_add():  # ++: add or override
            with open_dict(base):
                OmegaConf.update(base, key, value, merge=True, force_add=True)
        else:  # plain: must already exist; in struct mode update() raises otherwise
            OmegaConf.update(base, key, value, merge=True)
    with pytest.raises(Exception):  # (that check has teeth)
        OmegaConf.update(base, "model.no_such_key", 1, merge=True)
    if stage == "sft":
        assert base.model.data.chat_prompt_tokens.turn_start == "<extra_id_1>"
    else:
        assert OmegaConf.to_container(base.model.data.data_prefix) == {
            "train": ["/data/train.jsonl"], "validation": ["/data/val.jsonl"], "test": ["/data/val.jsonl"]}


def test_paths_parallel_sizes_and_nodes_land_where_nemo_reads_them(tmp_path):
    for stage in ("sft", "rm", "dpo"):
        cfg = nemo_cfg(stage, "trainer.num_nodes=3", "trainer.devices=4", "backend.nemo.tensor_model_parallel_size=2",
                       "backend.nemo.pipeline_model_parallel_size=3", "model.global_batch_size=8",
                       "model.micro_batch_size=2", "model.regression.loss_func=regression",
                       "model.data.train_ds.file_path=rel/train.jsonl", log_dir=tmp_path)
        o = as_dict(nb.overrides_for(cfg)[1])
        plus = "" if stage == "sft" else "++"
        assert o[f"{plus}model.tensor_model_parallel_size"] == "2"
        assert o[f"{plus}model.pipeline_model_parallel_size"] == "3"
        assert o["trainer.num_nodes"] == "3" and o["trainer.devices"] == "4"
        train = str(Path("rel/train.jsonl").absolute())  # absolute: the same path inside the container
        if stage == "sft":
            assert o["model.restore_from_path"] == "/ckpt/base.nemo"
            assert o["model.data.train_ds.file_path"] == train
            assert o["model.data.train_ds.global_batch_size"] == "8"
        else:
            assert o["pretrained_checkpoint.restore_from_path"] == "/ckpt/base.nemo"
            assert o["model.data.data_prefix"].startswith(f"{{train: [{train}], validation: [/data/val.jsonl]")
        assert o["exp_manager.explicit_log_dir"] == str(tmp_path)
        assert o[f"trainer.{stage}.max_steps"] == "-1"


def test_settings_nemo_cannot_honour_fail_with_the_key():
    with pytest.raises(ValueError, match="not a multiple of tensor x pipeline"):
        nb.overrides_for(nemo_cfg("dpo", "trainer.devices=8", "backend.nemo.tensor_model_parallel_size=3"))
    with pytest.raises(ValueError, match="global_batch_size=10"):
        nb.overrides_for(nemo_cfg("dpo", "trainer.devices=4", "model.global_batch_size=10"))
    with pytest.raises(ValueError, match="save_interval=30 must be a multiple"):
        nb.overrides_for(nemo_cfg("dpo", "trainer.val_check_interval=20", "trainer.save_interval=30"))
    with pytest.raises(ValueError, match="reference is always the initial weights"):
        nb.overrides_for(nemo_cfg("dpo", "model.dpo.reference=/ckpt/other.nemo"))
    with pytest.raises(ValueError, match="torch-only"):
        nb.overrides_for(nemo_cfg("sft", "data.prompt_template=hf"))
    with pytest.raises(ValueError, match="restore_from_path"):
        nb.overrides_for(nemo_cfg("dpo", "backend.nemo.restore_from_path=null"))
    with pytest.raises(ValueError, match="validation_ds.file_path"):
        nb.overrides_for(nemo_cfg("rm", "model.data.validation_ds.file_path=null"))


def test_extra_overrides_replace_ours_and_append():
    cfg = nemo_cfg("dpo", "backend.nemo.extra_overrides=['model.data.seq_length=8192','++model.sequence_parallel=True']")
    overrides = nb.overrides_for(cfg)[1]
    assert "model.data.seq_length=4096" not in overrides
    assert overrides[-2:] == ["model.data.seq_length=8192", "++model.sequence_parallel=True"]


# ---------------------------------------------------------------- quoting
def test_hydra_and_shell_quoting_round_trip():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = ["/a/b c/d.jsonl", "<extra_id_1>", "it's", "1e-5", "true", "a,b", "plain_word", "/x/y.nemo"]
    parsed = OverridesParser.create().parse_overrides([f"k={nb.hydra_value(v)}" for v in values])
    assert [p.value() for p in parsed] == values
    words = ["a=b", "k='<extra_id_1>'", "d={train: [/a], test: [/b]}", "$HOME", 'say "hi"', "x!y", "it's"]
    assert shlex.split(" ".join(executors.shell_word(w) for w in words)) == words


# ---------------------------------------------------------------- executors
def _no_subprocess(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError(f"dry_run ran a process: {args}")
    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, boom)
    monkeypatch.setattr(os, "system", boom)


@pytest.mark.parametrize("executor", ["local", "slurm", "nemo_run"])
def test_dry_run_runs_nothing_and_writes_the_manifest(tmp_path, monkeypatch, executor):
    _no_subprocess(monkeypatch)
    cfg = nemo_cfg("dpo", f"executor={executor}", "executor.submit=true", "dry_run=true", log_dir=tmp_path)
    out = nb.run(cfg, tmp_path)
    manifest = json.loads((tmp_path / "nemo_command.json").read_text())
    assert manifest["script"].endswith("train_gpt_dpo.py")
    assert manifest["overrides"] == nb.overrides_for(cfg)[1]
    assert out == tmp_path / "checkpoints/megatron_gpt.nemo" and not out.exists()
    if executor == "slurm":
        assert manifest["sbatch"] == str(tmp_path / "dpo.sbatch") and Path(manifest["sbatch"]).exists()
    else:
        assert manifest["sbatch"] is None


def test_sbatch_has_container_mounts_nodes_gpus_and_runs_the_same_command(tmp_path):
    cfg = nemo_cfg("sft", "executor=slurm", "trainer.num_nodes=4", "trainer.devices=8",
                   "backend.nemo.tensor_model_parallel_size=8", "backend.nemo.pipeline_model_parallel_size=4",
                   "executor.account=acct", "executor.partition=batch", "executor.time=12:00:00",
                   "executor.mounts=[/lustre/cache:/cache]", "backend.nemo.container_image=nvcr.io/nvidia/nemo:25.02",
                   "+backend.nemo.env.NVTE_FUSED_ATTN=0", log_dir=tmp_path)
    job = nb.jobs_for(cfg, tmp_path)[0]
    text = executors.sbatch_script(job, cfg)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=12:00:00", "#SBATCH --account=acct", "#SBATCH --partition=batch",
                 "#SBATCH --job-name=nemotron-sft", f"#SBATCH --output={tmp_path}/sft-slurm-%j.out",
                 "CONTAINER=nvcr.io/nvidia/nemo:25.02",
                 f"MOUNTS=/lustre/cache:/cache,/ckpt:/ckpt,/data:/data,{tmp_path}:{tmp_path}",
                 'srun --no-container-mount-home --container-image="$CONTAINER" --container-mounts="$MOUNTS" \\'):
        assert line in text.splitlines(), line
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    # Run the script with srun, cd and python stubbed: the command inside must reach python unchanged.
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "srun").write_text('#!/bin/bash\nCMD="${@: -1}"\n'
                               'exec bash -c "cd() { :; }; python() { printf \'%s\\n\' \\"\\$@\\"; }; $CMD"\n')
    (stub / "srun").chmod(0o755)
    script = tmp_path / "sft.sbatch"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["-u", job.script, *job.args]


def test_local_executor_runs_the_command_in_the_aligner_dir(tmp_path, monkeypatch):
    aligner = tmp_path / "NeMo-Aligner"
    (aligner / "examples/nlp/gpt").mkdir(parents=True)
    (aligner / "examples/nlp/gpt/train_gpt_dpo.py").write_text("")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append((argv, kw)) or
                        subprocess.CompletedProcess(argv, 0))
    cfg = nemo_cfg("dpo", f"backend.nemo.aligner_dir={aligner}", "executor.launcher=torchrun", "trainer.devices=2",
                   log_dir=tmp_path / "run")
    nb.run(cfg, tmp_path / "run")
    (argv, kw), = calls
    assert argv[:3] == ["torchrun", "--nproc_per_node=2", f"{aligner}/examples/nlp/gpt/train_gpt_dpo.py"]
    assert argv[3:] == nb.overrides_for(cfg, log_dir=tmp_path / "run")[1]
    assert kw["cwd"] == str(aligner) and kw["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(aligner)
    with pytest.raises(FileNotFoundError, match="inside the NeMo container"):
        nb.run(nemo_cfg("dpo", log_dir=tmp_path / "r2"), tmp_path / "r2")
    with pytest.raises(ValueError, match="use executor=slurm"):
        nb.run(nemo_cfg("dpo", "trainer.num_nodes=2", log_dir=tmp_path / "r3"), tmp_path / "r3")


def test_iterative_rpo_is_a_chain_restoring_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = nemo_cfg("rpo", "model.rpo.iterations=3", "executor=slurm", "executor.submit=true", log_dir=tmp_path)
    jobs = nb.jobs_for(cfg, tmp_path)
    assert [j.name for j in jobs] == ["rpo_iter1", "rpo_iter2", "rpo_iter3"]
    restores = [as_dict(j.args)["pretrained_checkpoint.restore_from_path"] for j in jobs]
    assert restores == ["/ckpt/base.nemo", f"{tmp_path}/iter1/checkpoints/megatron_gpt.nemo",
                        f"{tmp_path}/iter2/checkpoints/megatron_gpt.nemo"]
    assert [as_dict(j.args)["exp_manager.explicit_log_dir"] for j in jobs] == [f"{tmp_path}/iter{k}" for k in (1, 2, 3)]
    # submitted in order, each after the previous one succeeds
    submitted = []

    def fake_run(cmd, **kw):
        submitted.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=f"{100 + len(submitted)};cluster\n", stderr="")
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    out = nb.run(cfg, tmp_path)
    assert out == tmp_path / "iter3/checkpoints/megatron_gpt.nemo"
    assert submitted == [["sbatch", "--parsable", str(tmp_path / "rpo_iter1.sbatch")],
                         ["sbatch", "--parsable", "--dependency=afterok:101", str(tmp_path / "rpo_iter2.sbatch")],
                         ["sbatch", "--parsable", "--dependency=afterok:102", str(tmp_path / "rpo_iter3.sbatch")]]
    manifest = json.loads((tmp_path / "nemo_command.json").read_text())
    assert isinstance(manifest, list) and [m["sbatch"] for m in manifest] == [s[-1] for s in submitted]


def test_nemo_run_is_optional_with_a_clear_error(tmp_path):
    try:
        import nemo_run  # noqa: F401
        pytest.skip("nemo_run is installed")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="pip install nemo-run"):
        nb.run(nemo_cfg("dpo", "executor=nemo_run", log_dir=tmp_path), tmp_path)


# ---------------------------------------------------------------- stage=convert
def test_convert_commands(tmp_path):
    def command(*o):
        return convert.command_for(compose_cfg("backend=nemo", "stage=convert", *o), tmp_path)

    script, args, out = command("backend.nemo.convert.input_path=/models/Llama-3-70B")
    assert script == "/opt/NeMo/scripts/checkpoint_converters/convert_llama_hf_to_nemo.py"
    assert args == ["--input_name_or_path", "/models/Llama-3-70B", "--output_path", f"{tmp_path}/model.nemo",
                    "--precision", "bf16"] and out == tmp_path / "model.nemo"
    script, args, out = command("backend.nemo.convert.direction=nemo_to_hf", "backend.nemo.convert.input_path=/r/x.nemo",
                                "backend.nemo.convert.hf_reference=/models/Llama-3-70B")
    assert script.endswith("convert_llama_nemo_to_hf.py") and out == tmp_path / "hf"
    assert args == ["--input_name_or_path", "/r/x.nemo", "--output_path", f"{tmp_path}/nemo_weights.bin",
                    "--hf_input_path", "/models/Llama-3-70B", "--hf_output_path", f"{tmp_path}/hf", "--precision", "bf16"]
    script, args, _ = command("backend.nemo.convert.direction=nemo_to_hf", "backend.nemo.convert.family=nemotron",
                              "backend.nemo.convert.input_path=/r/x.nemo", "backend.nemo.convert.cpu_only=true")
    assert script.endswith("convert_nemotron_nemo_to_hf.py") and args[-1] == "--cpu-only"
    assert "--hf_output_path" in args
    _, args, _ = command("backend.nemo.convert.direction=nemo_to_hf", "backend.nemo.convert.family=mistral",
                         "backend.nemo.convert.input_path=/r/x.nemo",
                         "backend.nemo.convert.hf_reference=mistralai/Mistral-7B-v0.1")
    assert args[args.index("--hf_model_name") + 1] == "mistralai/Mistral-7B-v0.1"
    with pytest.raises(ValueError, match="already NeMo checkpoints"):
        command("backend.nemo.convert.family=nemotron", "backend.nemo.convert.input_path=/m")
    with pytest.raises(ValueError, match="hf_reference"):
        command("backend.nemo.convert.direction=nemo_to_hf", "backend.nemo.convert.input_path=/r/x.nemo")


# ---------------------------------------------------------------- config checks and presets
def test_mistyped_backend_and_executor_options_fail_in_one_line():
    from recipes.config import check_overrides, validate

    conf = REPO / "conf"
    assert "nemo" in check_overrides(["backend=nemoo"], conf)
    assert "slurm" in check_overrides(["executor=slrum"], conf)
    error = check_overrides(["backend.nemo.tensor_model_parallel_sise=8"], conf)
    assert "tensor_model_parallel_size" in error and "\n" not in error
    assert validate(compose_cfg("executor.name=slrum")) == ["executor.name='slrum' is not one of local, slurm, nemo_run"]
    assert any("launcher" in p for p in validate(compose_cfg("executor.launcher=mpirun")))
    assert any("convert" in p for p in validate(compose_cfg("stage=convert")))  # backend=torch has no convert
    assert validate(compose_cfg("stage=convert", "backend=nemo")) == []


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("backend", ["torch", "nemo"])
def test_every_preset_composes(preset, backend):
    from recipes.config import validate

    cfg = compose_cfg(f"experiment={preset}", f"backend={backend}", *DATA)
    assert validate(cfg) == []
    if backend == "nemo":
        _, overrides = nb.overrides_for(compose_cfg(f"experiment={preset}", "backend=nemo", *DATA,
                                                    "backend.nemo.restore_from_path=/ckpt/base.nemo",
                                                    "exp_manager.explicit_log_dir=/runs/x"))
        assert overrides


def test_nemotron_presets_carry_the_paper_values():
    rm = compose_cfg("experiment=nemotron4_340b/rm")
    assert (rm.stage.name, rm.trainer.max_epochs, rm.model.global_batch_size, rm.model.optim.lr) == ("rm", 2, 128, 7e-7)
    assert (rm.model.optim.sched.name, rm.model.optim.sched.warmup_steps) == ("constant", 10)
    assert (rm.backend.nemo.tensor_model_parallel_size, rm.backend.nemo.pipeline_model_parallel_size) == (8, 24)
    code, general = compose_cfg("experiment=nemotron4_340b/sft_code"), compose_cfg("experiment=nemotron4_340b/sft_general")
    assert (code.trainer.max_epochs, code.model.optim.lr, code.model.global_batch_size) == (1, 3e-7, 128)
    assert (general.trainer.max_epochs, general.model.global_batch_size) == (3, 128)
    assert 1e-7 <= general.model.optim.lr <= 5e-7
    dpo = compose_cfg("experiment=nemotron4_340b/dpo")
    assert (dpo.stage.name, dpo.trainer.max_epochs, dpo.model.global_batch_size) == ("dpo", 1, 256)
    assert 3e-8 <= dpo.model.optim.lr <= 3e-7 and 3e-4 <= dpo.model.dpo.ref_policy_kl_penalty <= 3e-3
    assert 1e-5 <= dpo.model.dpo.sft_loss_weight <= 1e-3
    rpo = compose_cfg("experiment=nemotron4_340b/rpo")
    assert (rpo.stage.name, rpo.model.dpo.preference_loss, rpo.model.dpo.gt_reward_scale) == ("rpo", "rpo_bwd_kl", 1.0)
    assert (rpo.model.optim.lr, rpo.model.dpo.sft_loss_weight, rpo.model.rpo.iterations) == (3e-7, 1e-5, 3)
    assert 1e-3 <= rpo.model.dpo.ref_policy_kl_penalty <= 1.0


# ---------------------------------------------------------------- the command line, end to end
def test_launch_dry_run_prints_the_command_and_sbatch_for_every_stage(tmp_path):
    """`python launch.py backend=nemo ... executor=slurm dry_run=true` for each stage, in parallel subprocesses."""
    runs = {
        "sft": ["experiment=nemotron4_340b/sft_code"],
        "rm": ["experiment=nemotron4_340b/rm"],
        "dpo": ["experiment=nemotron4_340b/dpo"],
        "rpo": ["experiment=nemotron4_340b/rpo"],
        "convert": ["stage=convert", "backend.nemo.convert.input_path=/models/Llama-3-70B"],
    }
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    procs = {}
    for stage, args in runs.items():
        cmd = [sys.executable, str(REPO / "launch.py"), "backend=nemo", "executor=slurm", "dry_run=true",
               "backend.nemo.restore_from_path=/ckpt/base.nemo", *DATA,
               f"exp_manager.explicit_log_dir={tmp_path / stage}", *args]
        procs[stage] = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
    scripts = {"sft": "train_gpt_sft.py", "rm": "train_reward_model.py", "dpo": "train_gpt_dpo.py",
               "rpo": "train_gpt_dpo.py", "convert": "convert_llama_hf_to_nemo.py"}
    for stage, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        assert f"python -u /opt/" in out and scripts[stage] in out
        assert "#SBATCH --nodes=" in out and "--container-image" in out and "dry run: nothing was run" in out
        manifest = json.loads((tmp_path / stage / "nemo_command.json").read_text())
        if stage == "rpo":
            assert len(manifest) == 3 and all(Path(m["sbatch"]).exists() for m in manifest)
        else:
            assert Path(manifest["sbatch"]).exists()
    assert "#SBATCH --nodes=24" in (tmp_path / "dpo/dpo.sbatch").read_text()  # TP8 x PP24 on 8-GPU nodes
