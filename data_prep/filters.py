"""Filters shared by every data-prep script; each drop is counted in report.json with its reason.

Prompt-level (a prompt and all its responses go):
  * `empty_text`       - the prompt is empty or whitespace.
  * `contaminated`     - the prompt shares an n-gram (13 by default) of normalised words with a prompt of an
                         evaluation set, or equals a short one word for word (see `Decontaminator`).
  * `duplicate_prompt` - the same prompt (system + turns, case and whitespace normalised) came earlier.
Response-level (only that response goes):
  * `empty_text`       - the response is empty or whitespace (always: no output row type accepts an empty answer).
  * `too_long`         - the rendered conversation has more than `max_seq_length` tokens. Needs a tokenizer;
                         without one the filter is skipped and report.json says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.inputs import DataPrepError, iter_file
from data_prep.jsonl import Rejects

EMPTY, CONTAMINATED, DUPLICATE, TOO_LONG = "empty_text", "contaminated", "duplicate_prompt", "too_long"

# Template markers inside HelpSteer2 prompts (`\n<extra_id_1>Assistant\n`) are not words of the prompt.
_MARKER = re.compile(r"<extra_id_\d+>(?:system|user|assistant)?")
_WORD = re.compile(r"\w+")


@dataclass
class FilterConfig:
    """Filter settings (one home of their defaults; scripts override `dedup` per their data)."""

    dedup: bool = True
    drop_empty: bool = True
    tokenizer: str | None = None  # a local tokenizer dir/name for AutoTokenizer; None skips `too_long`
    max_seq_length: int = 4096
    decontaminate: list[str] = field(default_factory=list)  # eval files: MT-Bench question.jsonl, IFEval, RewardBench
    ngram: int = 13


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form of a text, the key of duplicate detection."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens with template markers removed: the unit of decontamination n-grams."""
    text = text.lower()
    return _WORD.findall(_MARKER.sub(" ", text) if "<extra_id_" in text else text)


def _ngrams(ws: list[str], n: int):
    return zip(*(ws[i:] for i in range(n)))


def eval_prompts(path: str | Path) -> list[tuple[int, str]]:
    """(line, text) of every prompt in an evaluation file, whatever its layout:

    MT-Bench `question.jsonl` (`turns`: every turn is a prompt), IFEval `input_data.jsonl` and RewardBench
    (`prompt`), or any file with a `text` column.
    """
    out: list[tuple[int, str]] = []
    for line, row in iter_file(path, None, "error", Rejects()):
        if isinstance(row.get("turns"), list):
            out += [(line, t) for t in row["turns"] if isinstance(t, str)]
        elif isinstance(row.get("prompt"), str):
            out.append((line, row["prompt"]))
        elif isinstance(row.get("text"), str):
            out.append((line, row["text"]))
        else:
            raise DataPrepError(f"{Path(path).name}:{line}: not an evaluation prompt: expected 'turns' (MT-Bench), "
                                f"'prompt' (IFEval, RewardBench) or 'text'")
    return out


class Decontaminator:
    """Drops training prompts that overlap evaluation prompts.

    Every n-gram of every evaluation prompt is hashed into a set once; a training
    prompt is then checked with one C-level `set.isdisjoint` over its n-gram
    hashes, so checking costs about as much as splitting the prompt into words.
    Evaluation prompts shorter than n words have no n-gram; they match only a
    training prompt with exactly the same words.
    """

    def __init__(self, paths: list[str], n: int = 13):
        if n < 1:
            raise DataPrepError(f"decontamination n-gram size must be >= 1, got {n}")
        self.n = n
        self.where: dict[int, str] = {}  # n-gram hash -> "file:line", to say what matched
        self.exact: dict[str, str] = {}
        self.n_prompts = 0
        for path in paths:
            for line, text in eval_prompts(path):
                ws, src = words(text), f"{Path(path).name}:{line}"
                self.n_prompts += 1
                self.exact.setdefault(" ".join(ws), src)
                for h in map(hash, _ngrams(ws, n)):
                    self.where.setdefault(h, src)
        self.hashes = set(self.where)

    def match(self, text: str) -> str | None:
        """None if clean, else a one-line description of the overlap."""
        ws = words(text)
        if self.hashes.isdisjoint(map(hash, _ngrams(ws, self.n))):
            src = self.exact.get(" ".join(ws))
            return f"same words as {src}" if src else None
        for gram in _ngrams(ws, self.n):
            if hash(gram) in self.hashes:
                return f"shares the {self.n}-gram '{' '.join(gram)}' with {self.where[hash(gram)]}"
        return None  # unreachable: isdisjoint said there is a hit


class TokenCounter:
    """Token lengths with a Hugging Face tokenizer (no special tokens added, as NeMo's text_to_ids)."""

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(name_or_path)
        except Exception as e:
            raise DataPrepError(f"cannot load tokenizer {name_or_path!r} ({type(e).__name__}: {str(e).splitlines()[0]})") from None

    def lengths(self, texts: list[str], batch: int = 512) -> list[int]:
        out: list[int] = []
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i:i + batch], add_special_tokens=False, return_attention_mask=False)
            out += [len(ids) for ids in enc["input_ids"]]
        return out


class Filters:
    """The configured filters plus the state they need (seen prompts, eval n-grams, tokenizer)."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.seen: set[str] = set()
        self.decon = Decontaminator(list(cfg.decontaminate), cfg.ngram) if cfg.decontaminate else None
        self.tokens = TokenCounter(cfg.tokenizer) if cfg.tokenizer else None

    def describe(self) -> dict:
        """What ran, for report.json."""
        c = self.cfg
        return {
            "dedup": c.dedup,
            "drop_empty": c.drop_empty,
            "too_long": (f"max_seq_length={c.max_seq_length} tokens with tokenizer {c.tokenizer}" if self.tokens
                         else "skipped: no tokenizer given"),
            "decontaminate": ({"files": list(c.decontaminate), "ngram": c.ngram, "eval_prompts": self.decon.n_prompts}
                              if self.decon else "off: no evaluation files given"),
        }

    def prompt_reason(self, prompt_text: str, key: str | None = None) -> tuple[str, str] | None:
        """(reason, detail) when a whole prompt must go, else None. `key` identifies duplicates
        (default: the normalised prompt text; computed only when dedup is on)."""
        if self.cfg.drop_empty and (not prompt_text or prompt_text.isspace()):
            return EMPTY, "the prompt is empty"
        if self.decon is not None:
            hit = self.decon.match(prompt_text)
            if hit:
                return CONTAMINATED, hit
        if self.cfg.dedup:
            key = normalize(prompt_text) if key is None else key
            if key in self.seen:
                return DUPLICATE, "an earlier prompt has the same normalised text"
            self.seen.add(key)
        return None

    def response_reasons(self, responses: list[str], rendered: list[str] | None = None) -> list[tuple[str, str] | None]:
        """Per response: (reason, detail) or None. `rendered` (the full conversations) are measured in tokens."""
        out: list[tuple[str, str] | None] = [None] * len(responses)
        for i, r in enumerate(responses):  # always: no output row type accepts an empty answer (schemas.py)
            if not r or r.isspace():  # (no copy, unlike strip())
                out[i] = (EMPTY, "the response is empty")
        if self.tokens is not None and rendered is not None:
            todo = [i for i in range(len(responses)) if out[i] is None]
            for i, n in zip(todo, self.tokens.lengths([rendered[i] for i in todo])):
                if n > self.cfg.max_seq_length:
                    out[i] = (TOO_LONG, f"{n} tokens > max_seq_length={self.cfg.max_seq_length}")
        return out


def add_filter_args(parser, dedup_default: bool) -> None:
    """The filter options every data-prep CLI shares."""
    g = parser.add_argument_group("filters (each drop is counted in report.json)")
    g.add_argument("--dedup", action="store_true", default=dedup_default,
                   help=f"drop a prompt equal (case/whitespace-insensitive) to an earlier one (default: {'on' if dedup_default else 'off'})")
    g.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep duplicate prompts")
    g.add_argument("--keep-empty", dest="drop_empty", action="store_false",
                   help="keep empty/whitespace prompts (dropped by default; empty responses are always dropped)")
    g.add_argument("--tokenizer", default=None,
                   help="local tokenizer (AutoTokenizer path) for the max-seq-length filter; without it that filter is skipped")
    g.add_argument("--max-seq-length", type=int, default=FilterConfig.max_seq_length,
                   help="drop a response whose rendered conversation has more tokens (default: %(default)s)")
    g.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL_FILE",
                   help="evaluation prompt files (MT-Bench question.jsonl, IFEval input_data.jsonl, RewardBench .jsonl)")
    g.add_argument("--ngram", type=int, default=FilterConfig.ngram,
                   help="decontamination n-gram size in words (default: %(default)s)")


def filter_config_from_args(args) -> FilterConfig:
    return FilterConfig(dedup=args.dedup, drop_empty=args.drop_empty, tokenizer=args.tokenizer,
                        max_seq_length=args.max_seq_length, decontaminate=list(args.decontaminate), ngram=args.ngram)
