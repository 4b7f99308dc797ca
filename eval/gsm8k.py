"""GSM8K (Cobbe et al. 2021), 1,319 grade-school maths problems, 0-shot, through lm-evaluation-harness.

Default: lm-eval's `gsm8k_cot_zeroshot` ("Q: {question}\\nA: Let's think step by step.", greedy), in the chat
template, scored by its `flexible-extract` filter (the last number in the reply) with exact match; its
`strict-match` ("The answer is N.") is in the sample logs too. eval/lm_harness.py says what runs where.

    python -m eval.gsm8k run --checkpoint runs/sft/checkpoints/final --output-dir out/ [--data gsm8k.jsonl --limit 5]
    python -m eval.gsm8k score --samples out/samples.jsonl [--json]
"""

import sys

from eval.lm_harness import main as _main


def main(argv=None) -> int:
    return _main("gsm8k", argv)


if __name__ == "__main__":
    sys.exit(main())
