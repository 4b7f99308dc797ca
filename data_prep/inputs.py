"""Where data-prep rows come from: JSONL, JSONL.GZ, Parquet or a Hugging Face hub dataset.

Every source yields `(line, row)` after schema validation, exactly like
`data_prep.jsonl.read_jsonl` (for Parquet and hub splits "line" is the 1-based
row number). pyarrow and datasets are imported only when such a source is used,
so the JSONL path needs nothing beyond the standard library.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator

from data_prep.jsonl import Rejects, RowError, Validator, read_jsonl

TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class DataPrepError(ValueError):
    """A problem the user must fix (an option, a file layout): reported in one line, exit code 2."""


def has_table_suffix(path: Path) -> bool:
    return path.name.endswith(TABLE_SUFFIXES)


def is_hub_id(spec: str) -> bool:
    """`owner/name` that is not a local path (nor named like a data file): a Hugging Face dataset id."""
    return not Path(spec).exists() and bool(_HUB_ID.match(spec)) and not has_table_suffix(Path(spec))


def validated(rows: Iterable[dict], source: str, validate: Validator | None, on_bad_row: str,
              rejects: Rejects) -> Iterator[tuple[int, dict]]:
    """Validate in-memory rows (Parquet, hub) with the same error/skip policy as read_jsonl."""
    for line, row in enumerate(rows, start=1):
        try:
            for fld, problem in validate(row) if validate else ():
                raise RowError(source, line, fld, problem)
        except RowError as err:
            if on_bad_row == "error":
                raise
            record = err.as_record()
            record["raw"] = json.dumps(row, ensure_ascii=False, default=str)
            rejects.add(record)
            continue
        yield line, row


def iter_file(path: str | Path, validate: Validator | None, on_bad_row: str, rejects: Rejects) -> Iterator[tuple[int, dict]]:
    """Rows of one local file, by suffix: `.parquet`, else JSONL (gzip when it ends in `.gz`)."""
    if on_bad_row not in ("error", "skip"):
        raise DataPrepError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    path = Path(path)
    if path.is_dir():
        raise DataPrepError(f"{path} is a directory; give a .jsonl, .jsonl.gz or .parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataPrepError(f"{path.name}: cannot read Parquet ({type(e).__name__}: {e})") from None
        yield from validated(rows, str(path), validate, on_bad_row, rejects)
    else:
        yield from read_jsonl(path, validate, on_bad_row=on_bad_row, rejects=rejects)


def iter_source(spec: str, validate: Validator | None, on_bad_row: str, rejects: Rejects, split: str | None = None,
                split_key: str = "split", fallback: tuple[str, ...] = ("train",)) -> Iterator[tuple[int, dict]]:
    """Rows of a training source: a local file (iter_file), or a local dataset directory / a Hugging Face hub
    id read with `datasets.load_dataset`: the split `split`, else the first of `fallback` it has, else its
    only split. `split_key` names the config key that sets the split, for the error when one is needed."""
    path = Path(spec)
    if path.is_file():
        yield from iter_file(path, validate, on_bad_row, rejects)
        return
    if not path.is_dir() and not is_hub_id(spec):
        raise FileNotFoundError(f"data file not found: {spec} (not a file, a dataset directory or a hub id)")
    from datasets import load_dataset

    try:
        splits = load_dataset(str(spec))
    except Exception as e:  # offline, unknown id, no data files: one line instead of a datasets traceback
        why = (str(e).strip().splitlines() or ["no message"])[0]
        raise DataPrepError(f"cannot load dataset {spec!r} ({type(e).__name__}: {why})") from None
    found = [f for f in fallback if f in splits] + (list(splits) if len(splits) == 1 else [])
    name = split or (found[0] if found else f"one of {'/'.join(fallback)}")
    if name not in splits:
        raise DataPrepError(f"{spec} has no split {name!r} (splits: {', '.join(splits)}); set {split_key}")
    yield from validated(splits[name], f"{spec}:{name}", validate, on_bad_row, rejects)


def find_split_files(directory: Path) -> dict[str, Path]:
    """`train.*` / `validation.*` (or `val.*`) inside a directory, as in the hub repo of HelpSteer2."""
    found: dict[str, Path] = {}
    for split, stems in (("train", ("train",)), ("validation", ("validation", "val"))):
        for p in sorted(directory.iterdir()):
            if has_table_suffix(p) and p.name.split(".")[0] in stems:
                found.setdefault(split, p)
    if "train" not in found:
        raise DataPrepError(f"{directory}: no train.jsonl[.gz] or train.parquet inside")
    return found


def load_hub_split_rows(hub_id: str, data_dir: str | None = None) -> dict[str, list[dict]]:
    """All splits of a hub dataset as lists of rows (needs network access, or a warm HF cache)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(hub_id, data_dir=data_dir) if data_dir else load_dataset(hub_id)
    except Exception as e:  # offline, unknown id, ...: one line instead of a hub traceback
        raise DataPrepError(f"cannot load hub dataset {hub_id!r} ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return {name: ds[name].to_list() for name in ds}
