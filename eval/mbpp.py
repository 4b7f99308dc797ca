"""MBPP (Austin et al. 2021), 500 Python tasks with 3 asserts each, 0-shot pass@1, through lm-evaluation-harness.

Default: lm-eval's `mbpp_instruct` (the task and its asserts as the user turn, the reply opened with a
```python fence, the first code block kept), 0-shot, greedy; a task passes when `code + "\\n" + asserts` runs
(HF code_eval's program) in eval/code_exec.py, which needs `--allow-code-execution` (eval.mbpp.allow_code_execution).

    python -m eval.mbpp run --checkpoint runs/sft/checkpoints/final --output-dir out/ --allow-code-execution
    python -m eval.mbpp score --samples out/samples.jsonl [--json]
"""

import sys

from eval.lm_harness import main as _main


def main(argv=None) -> int:
    return _main("mbpp", argv)


if __name__ == "__main__":
    sys.exit(main())
