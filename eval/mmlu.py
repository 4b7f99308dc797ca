"""MMLU (Hendrycks et al. 2021), 57 subjects of 4-way multiple choice, 0-shot, through lm-evaluation-harness.

Default: lm-eval's `mmlu` group (its prompt "{question}\\nA. ...\\nD. ...\\nAnswer:", the answer letter scored by
log-likelihood, accuracy micro-averaged over the 14,042 test questions), 0-shot, in the chat template. A chat
endpoint has no log-likelihoods: use `mmlu_generative` (the letter is generated) there. eval/lm_harness.py says
what runs where.

    python -m eval.mmlu run --checkpoint runs/sft/checkpoints/final --output-dir out/ [--data mmlu.jsonl --limit 5]
    python -m eval.mmlu score --samples out/samples.jsonl [--json]
"""

import sys

from eval.lm_harness import main as _main


def main(argv=None) -> int:
    return _main("mmlu", argv)


if __name__ == "__main__":
    sys.exit(main())
