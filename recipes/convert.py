"""stage=convert (backend=nemo): Hugging Face <-> .nemo with NeMo's own converter scripts.

NeMo-Aligner trains .nemo checkpoints only (NEMO_ALIGNER.md §4); our eval hooks read Hugging Face
directories. Both directions run NeMo's scripts/checkpoint_converters/*.py inside the container,
through the same executors as training (local, or one Slurm task with one GPU):

  hf_to_nemo  python convert_llama_hf_to_nemo.py --input_name_or_path <hf dir> --output_path <x.nemo> --precision bf16
  nemo_to_hf  python convert_llama_nemo_to_hf.py --input_name_or_path <x.nemo> --output_path <weights.bin>
                     --hf_input_path <original hf dir> --hf_output_path <hf dir>

Nemotron-4 340B needs no import: its Hugging Face repos hold NeMo checkpoints (sft.rst: point
*.restore_from_path at the downloaded directory). Reward models cannot be exported this way: the
converters expect a language-model output layer, an RM has a reward head (NeMo-Aligner #115).
"""

from __future__ import annotations

from pathlib import Path

# family -> (hf_to_nemo script, nemo_to_hf script) under <nemo_dir>/scripts/checkpoint_converters/
CONVERTERS = {
    "llama": ("convert_llama_hf_to_nemo.py", "convert_llama_nemo_to_hf.py"),
    "mistral": ("convert_mistral_7b_hf_to_nemo.py", "convert_mistral_7b_nemo_to_hf.py"),
    "nemotron": (None, "convert_nemotron_nemo_to_hf.py"),
}


def command_for(cfg, run_dir: Path) -> tuple[str, list[str], Path]:
    """(converter script, its arguments, what it writes) for backend.nemo.convert."""
    conv, nemo = cfg.backend.nemo.convert, cfg.backend.nemo
    run_dir = Path(run_dir).absolute()
    to_nemo = conv.direction == "hf_to_nemo"
    name = CONVERTERS[conv.family][0 if to_nemo else 1]
    if name is None:
        raise ValueError(f"backend.nemo.convert.family={conv.family} has no HF->NeMo converter: Nemotron-4 checkpoints "
                         "on Hugging Face are already NeMo checkpoints; set backend.nemo.restore_from_path to the "
                         "downloaded directory")
    script = f"{nemo.nemo_dir.rstrip('/')}/scripts/checkpoint_converters/{name}"
    source = conv.input_path or (cfg.model.name_or_path if to_nemo else None)
    if not source:
        raise ValueError("set backend.nemo.convert.input_path (" +
                         ("the HF model directory)" if to_nemo else "the .nemo to export)"))
    source = _abs(source)
    output = _abs(conv.output_path or run_dir / ("model.nemo" if to_nemo else "hf"))
    args = ["--input_name_or_path", str(source)]
    if to_nemo:
        args += ["--output_path", str(output), "--precision", conv.precision]
    elif conv.family == "nemotron":
        # --hf_input_path is only recorded as config.json's _name_or_path; the tokenizer comes from the .nemo.
        args += ["--hf_input_path", conv.hf_reference or "nvidia/Nemotron-4-340B-Base",
                 "--hf_output_path", str(output), "--precision", conv.precision]
        args += ["--cpu-only"] if conv.cpu_only else []
    else:
        if not conv.hf_reference:
            raise ValueError(f"backend.nemo.convert.hf_reference: {conv.family} export copies config and tokenizer "
                             "from the original Hugging Face model directory; set it to that directory")
        if conv.family == "llama":
            # --output_path receives the bare state dict first; the HF directory is --hf_output_path.
            args += ["--output_path", str(run_dir / "nemo_weights.bin"), "--hf_input_path", str(_abs(conv.hf_reference)),
                     "--hf_output_path", str(output), "--precision", conv.precision]
            args += ["--cpu-only"] if conv.cpu_only else []
        else:  # mistral writes the HF directory to --output_path
            args += ["--output_path", str(output), "--hf_model_name", _path_or_id(conv.hf_reference),
                     "--precision", conv.precision]
    return script, args + [str(a) for a in conv.extra_args], output


def run(cfg, run_dir: Path) -> Path:
    from recipes.executors import Job, launch

    script, args, output = command_for(cfg, run_dir)
    conv = cfg.backend.nemo.convert
    reference = _path_or_id(conv.hf_reference) if conv.hf_reference and conv.family != "nemotron" else None
    reads = [args[1]] + ([reference] if reference and reference.startswith("/") else [])
    job = Job(name="convert", script=script, args=args, workdir=cfg.backend.nemo.nemo_dir, log_dir=Path(run_dir),
              checkpoint=output, run_dir=Path(run_dir), inputs=[*reads, str(output)], distributed=False,
              arg_name="args")
    out = launch([job], cfg, Path(run_dir))
    if conv.direction == "nemo_to_hf":
        print(f"evaluate it with: python launch.py stage=eval eval=[ifeval,mt_bench] eval.model={output}")
    else:
        print(f"train from it with: backend.nemo.restore_from_path={output}")
    return out


def _abs(path) -> Path:
    return Path(path).expanduser().absolute()


def _path_or_id(name: str) -> str:
    """A local path made absolute; anything else (org/model) is a hub id and stays as it is."""
    return str(_abs(name)) if name.startswith(("/", ".", "~")) or Path(name).exists() else name
