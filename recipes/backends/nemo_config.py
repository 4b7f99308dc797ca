"""Settings of backend=nemo and of the executors that launch it (filled in by the nemo backend)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NemoConfig:
    aligner_dir: str = "/opt/NeMo-Aligner"  # where NeMo-Aligner lives inside the container
    container_image: str = "nvcr.io/nvidia/nemo:24.07"


@dataclass
class ExecutorConfig:
    name: str = "local"  # local | slurm | nemo_run
