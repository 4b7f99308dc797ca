"""Settings of backend=nemo and of the executors that launch it.

`backend=nemo` does not train anything itself: recipes/backends/nemo_backend.py turns the run
config into one of NeMo-Aligner's Hydra entry points plus `key=value` overrides, and
recipes/executors.py runs that command here (inside the NeMo container), or writes and submits
an sbatch script that runs it in the container on Slurm. Everything below is about *where* and
*how* that command runs; *what* it trains comes from the usual keys (trainer.*, model.*, data.*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class ConvertConfig:
    """stage=convert: NeMo's checkpoint converters (scripts/checkpoint_converters/ in the container)."""

    direction: str = "hf_to_nemo"  # hf_to_nemo (import a base model) | nemo_to_hf (export for our eval hooks)
    family: str = "llama"  # llama | mistral | nemotron: picks the converter script
    input_path: Optional[str] = None  # hf_to_nemo: HF model dir (default model.name_or_path); nemo_to_hf: the .nemo
    output_path: Optional[str] = None  # default <run dir>/model.nemo (hf_to_nemo) or <run dir>/hf (nemo_to_hf)
    # nemo_to_hf: the original HF model directory; llama copies its config/tokenizer, mistral its
    # config/tokenizer (--hf_model_name), nemotron only records it as _name_or_path.
    hf_reference: Optional[str] = None
    precision: str = "bf16"
    cpu_only: bool = False  # nemo_to_hf (llama, nemotron): load on CPU when the model does not fit one GPU (slow)
    extra_args: List[str] = field(default_factory=list)  # appended verbatim, e.g. [--llama31, "False"]


@dataclass
class NemoConfig:
    aligner_dir: str = "/opt/NeMo-Aligner"  # where NeMo-Aligner lives inside the container (README, NEMO_ALIGNER.md §4)
    nemo_dir: str = "/opt/NeMo"  # NeMo's checkout in the container; its scripts/checkpoint_converters/ does stage=convert
    # The overrides target NeMo-Aligner v0.7.0's configs (nemo_aligner_v0.7.0_config_keys.json). The README's
    # nvcr.io/nvidia/nemo:24.07 ships Aligner 0.4.0rc0 (NeMo "Software Component Versions" page), so we default
    # to a later release; which tag ships exactly 0.7.0 is unverified: check `pip show nemo-aligner` in it.
    container_image: str = "nvcr.io/nvidia/nemo:25.02"
    # The checkpoint to start from: a .nemo file or an extracted .nemo directory (Nemotron-4-340B-Base on HF is
    # one). Null: model.name_or_path when it ends in .nemo. stage=convert makes one from a HF model.
    restore_from_path: Optional[str] = None
    tensor_model_parallel_size: int = 1  # 340B: TP8 PP24 (sft.rst), set by the nemotron4_340b presets
    pipeline_model_parallel_size: int = 1
    env: Dict[str, str] = field(default_factory=dict)  # exported before the command: +backend.nemo.env.NVTE_FUSED_ATTN=0
    # Appended verbatim to the NeMo-Aligner command; one with the same key replaces ours.
    extra_overrides: List[str] = field(default_factory=list)
    convert: ConvertConfig = field(default_factory=ConvertConfig)


@dataclass
class ExecutorConfig:
    """Where the NeMo command runs. Nodes come from trainer.num_nodes, GPUs per node from trainer.devices."""

    name: str = "local"  # local (here, one node) | slurm (sbatch + pyxis container) | nemo_run (NeMo-Run's SlurmExecutor)
    # python: `python -u script.py` as NeMo's docs run it (Lightning starts the local ranks; on Slurm srun starts
    # one task per GPU). torchrun: `torchrun --nproc_per_node=<devices>` as NeMo-Aligner's CI does; local only.
    launcher: str = "python"
    submit: bool = False  # slurm/nemo_run: submit the job; false writes the sbatch script and prints how to submit
    job_name: Optional[str] = None  # default nemotron-<stage>
    account: Optional[str] = None
    partition: Optional[str] = None
    time: str = "04:00:00"
    output: Optional[str] = None  # sbatch --output; default <run dir>/slurm-%j.out
    mounts: List[str] = field(default_factory=list)  # extra src[:dst] container mounts; data/checkpoint/run dirs are added
    exclusive: bool = True


# Values the schema cannot type; recipes/config.py merges these into its CHOICES.
CHOICES = {
    "executor.name": ("local", "slurm", "nemo_run"),
    "executor.launcher": ("python", "torchrun"),
    "backend.nemo.convert.direction": ("hf_to_nemo", "nemo_to_hf"),
    "backend.nemo.convert.family": ("llama", "mistral", "nemotron"),
}
