"""Every number of the run config has a declared range (recipes/ranges.py), checked before anything runs."""

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from recipes.config import RunConfig, validate
from recipes.ranges import RANGES
from tests.conftest import REPO, compose_cfg


def numeric_keys(node=None, prefix=""):
    """Dotted keys of every int/float (or list of them) in the structured schema."""
    node = OmegaConf.structured(RunConfig) if node is None else node
    for k in node.keys():
        child = node._get_node(k)
        if OmegaConf.is_dict(child):
            yield from numeric_keys(child, f"{prefix}{k}.")
            continue
        t = child._metadata.ref_type if not OmegaConf.is_list(child) else child._metadata.element_type
        if t in (int, float):
            yield f"{prefix}{k}"


# Typed Any because they also take the word `default` (data_prep's value); a number given is range-checked.
NUMBER_OR_WORD = {"prep.sft_min_reward", "prep.min_gap", "prep.min_chosen_reward"}


def test_every_number_has_a_range_and_every_range_a_key():
    keys = set(numeric_keys()) | NUMBER_OR_WORD
    assert sorted(keys - set(RANGES)) == [], "numeric config keys without a range in recipes/ranges.py"
    assert sorted(set(RANGES) - keys) == [], "ranges for keys the schema does not have"


@pytest.mark.parametrize("override, line", [
    ("model.optim.lr=0", "model.optim.lr=0.0 must be > 0"),
    ("model.dpo.ref_policy_kl_penalty=-0.1", "model.dpo.ref_policy_kl_penalty=-0.1 must be > 0"),
    ("data.max_seq_length=-1", "data.max_seq_length=-1 must be >= 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
    ("model.optim.sched.warmup_steps=-5", "model.optim.sched.warmup_steps=-5 must be >= 0"),
    ("trainer.val_check_interval=-1", "trainer.val_check_interval=-1 must be >= 0"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1.0 must be >= 0"),
    ("trainer.save_interval=-1", "trainer.save_interval=-1 must be >= 0"),
    ("trainer.max_steps=0", "trainer.max_steps=0 must be -1 (run trainer.max_epochs) or >= 1"),
    ("model.global_batch_size=0", "model.global_batch_size=0 must be >= 1"),
    ("model.peft.lora_rank=0", "model.peft.lora_rank=0 must be >= 1"),
    ("model.optim.betas=[0.9,1.0]", "model.optim.betas[1]=1.0 must be in [0, 1)"),
    ("sdg.top_p=0", "sdg.top_p=0.0 must be in (0, 1]"),
    ("sdg.temperature=-0.5", "sdg.temperature=-0.5 must be >= 0"),
    ("sdg.n_responses=0", "sdg.n_responses=0 must be >= 1"),
    ("prep.val_fraction=1.0", "prep.val_fraction=1.0 must be in [0, 1)"),
    ("model.optim.lr=nan", "model.optim.lr=nan must be a finite number"),
])
def test_out_of_range_is_one_line_naming_key_value_and_range(override, line):
    assert validate(compose_cfg("model=tiny", override)) == [line]


def test_defaults_presets_and_sentinels_pass():
    assert validate(compose_cfg()) == []
    assert validate(compose_cfg("trainer.max_steps=-1", "trainer.save_interval=0", "trainer.gradient_clip_val=0")) == []
    for preset in sorted((REPO / "conf" / "experiment").rglob("*.yaml")):
        name = preset.relative_to(REPO / "conf" / "experiment").with_suffix("").as_posix()
        assert validate(compose_cfg(f"experiment={name}")) == [], name


def test_launch_prints_each_violation_on_its_own_line_and_runs_nothing(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "stage=sft", "model=tiny", "model.optim.lr=0",
                        "trainer.max_epochs=0", f"exp_manager.explicit_log_dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["config error: trainer.max_epochs=0 must be >= 1",
                                             "config error: model.optim.lr=0.0 must be > 0"]
    assert not (tmp_path / "run").exists()
