"""Nothing lost: the accounting every data-prep run writes (`report.json`, `rejects.jsonl`).

For every output file the report holds `rows_in`, `rows_out` and `rejected`
(count per reason), and `rows_in == rows_out + sum(rejected)` always holds
(`Report.check` asserts it before anything is written). What one "row" is
depends on the file and is named in its `unit` field:

* `response`  - one input response (a HelpSteer2 line; an SFT/regression line).
* `prompt`    - one prompt with all its responses (SDG SFT: the best answer;
                pair files: every pair made from that prompt).
* `preference row` - one HelpSteer2-Preference line (two regression lines).

`lines` is what the file holds (a pair file may hold several pairs per prompt
with `all_pairs`; a pairwise reward-model file holds two lines per pair).
A response dropped inside a prompt that is still used (SDG: too long, empty)
is listed under `responses_dropped` and in rejects.jsonl with stage `response`.
Rows that failed validation never reach an output: they are counted under
`input`, where `rows_in == rows_ok + sum(rejected)`.

Also here: `write_outputs` (builds and writes the files, two processes for big
runs), `with_overrides` (options for the `convert_*` functions) and `run_cli`
(one-line errors, exit code 2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from data_prep.inputs import DataPrepError
from data_prep.jsonl import Rejects, RowError, atomic_write_text, write_jsonl
from data_prep.schemas import unknown_fields

_INDEX = re.compile(r"\[\d+\]")

# A filter reason -> what to change when it removed every row (the option; its prep.* key; its CLI flag).
FILTER_KEYS = {
    "below_min_reward": "sft.min_reward: prep.sft_min_reward / --sft-min-reward, null or none turns it off",
    "chosen_below_min_reward": "pairs.min_chosen_reward: prep.min_chosen_reward / --min-chosen-reward, null or none "
                               "turns it off",
    "gap_below_min": "pairs.min_gap: prep.min_gap / --min-gap",
    "tie": "the responses: every prompt needs two with different rewards (sdg.n_responses, sdg.temperature)",
    "fewer_than_2_responses": "the responses: pairs need 2+ per prompt (sdg.n_responses)",
    "identical_responses": "the responses: pairs need two different texts (sdg.temperature > 0)",
    "no_response_left": "the response filters (report.json responses_dropped)",
    "duplicate_prompt": "dedup: --no-dedup",
    "too_long": "the length filter: data.max_seq_length / --max-seq-length",
    "contaminated": "decontamination: prep.decontaminate / --decontaminate",
    "empty_text": "the empty-text filter: --keep-empty",
    "weak_preference": "min_strength: --min-strength (data_prep.helpsteer2_preference)",
}


@dataclass
class OutputCount:
    """The counts of one output file (see the module docstring for `unit`)."""

    unit: str
    rows_in: int = 0
    rows_out: int = 0
    lines: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    """Everything report.json says, plus the reject records that go to rejects.jsonl."""

    script: str
    config: dict
    inputs: list[str] = field(default_factory=list)
    input: dict = field(default_factory=lambda: {"rows_in": 0, "rows_ok": 0, "rejected": {}})
    outputs: dict[str, OutputCount] = field(default_factory=dict)
    filters: dict = field(default_factory=dict)
    # Responses dropped inside a prompt that is still used (prompt-unit outputs); not units of any file.
    responses_dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    # Per input file: fields its rows carry that their row type does not define (schemas.KNOWN_FIELDS) -> rows.
    unknown_fields: dict[str, dict[str, int]] = field(default_factory=dict)

    def add_input(self, n_ok: int, bad: Rejects, first_bad: int = 0) -> None:
        """Count one source's good rows and the bad rows it added to `bad` since index `first_bad`."""
        new = bad.records[first_bad:]
        self.input["rows_ok"] += n_ok
        self.input["rows_in"] += n_ok + len(new)
        for r in new:
            key = f"bad row ({_INDEX.sub('[]', r['field'])})"  # responses[3].text -> responses[].text
            self.input["rejected"][key] = self.input["rejected"].get(key, 0) + 1
            self.rejects.append({"stage": "input", **r})

    def count_unknown(self, source: str, rows: Iterable[dict], kind: str) -> None:
        """Count the unknown fields of one input file's good rows (nothing is dropped for them)."""
        counts = self.unknown_fields.get(source, {})
        for row in rows:
            for name in unknown_fields(row, kind):
                counts[name] = counts.get(name, 0) + 1
        if counts:
            self.unknown_fields[source] = counts

    def output(self, name: str, unit: str) -> OutputCount:
        return self.outputs.setdefault(name, OutputCount(unit))

    def reject(self, outputs: list[str], reason: str, source: str, lines: list[int], detail: str = "") -> None:
        """One unit (row or prompt) left out of `outputs` for `reason`: counted there and kept for rejects.jsonl."""
        for name in outputs:
            counts = self.outputs[name].rejected
            counts[reason] = counts.get(reason, 0) + 1
        record = {"stage": "filter", "outputs": outputs, "file": source, "line": lines[0] if lines else None,
                  "lines": lines, "reason": reason}
        if detail:
            record["detail"] = detail
        self.rejects.append(record)

    def drop_response(self, reason: str, source: str, line: int, detail: str = "") -> None:
        """One response left out of a prompt that may still be used (SDG): counted under responses_dropped."""
        self.responses_dropped[reason] = self.responses_dropped.get(reason, 0) + 1
        record = {"stage": "response", "outputs": [], "file": source, "line": line, "lines": [line], "reason": reason}
        if detail:
            record["detail"] = detail
        self.rejects.append(record)

    def check(self) -> None:
        """The accounting identities; a failure here is a bug in a script, never a data problem."""
        inp = self.input
        assert inp["rows_in"] == inp["rows_ok"] + sum(inp["rejected"].values()), inp
        for name, c in self.outputs.items():
            assert c.rows_in == c.rows_out + sum(c.rejected.values()), (name, asdict(c))

    def refuse_empty(self, allow_empty: bool) -> None:
        """No silent empties: when the input has no usable row, or the filters removed every row of an output
        file, stop with one line naming the file, the filters and their counts, and the option to change
        (`allow_empty`: prep.allow_empty=true / --allow-empty writes the empty files anyway)."""
        if allow_empty:
            return
        escape = "; or allow_empty (prep.allow_empty=true, --allow-empty) to write empty files"
        inp = self.input
        if inp["rows_ok"] == 0:
            bad = ", ".join(f"{k} {v}" for k, v in sorted(inp["rejected"].items(), key=lambda kv: -kv[1]))
            raise DataPrepError(f"no usable input rows ({inp['rows_in']} read" + (f"; bad: {bad}" if bad else "") +
                                f"){escape}")
        emptied, seen = [], set()
        for name, c in self.outputs.items():
            if c.rows_in == 0 or c.rows_out > 0 or tuple(c.rejected.items()) in seen:
                continue
            seen.add(tuple(c.rejected.items()))  # train_rm_pairs repeats train_dpo's story
            reasons = sorted(c.rejected.items(), key=lambda kv: -kv[1])
            change = "; ".join(dict.fromkeys(FILTER_KEYS.get(r, r) for r, _ in reasons))
            emptied.append(f"{name}: all {c.rows_in} {c.unit} rows removed by "
                           + ", ".join(f"{r} {n}" for r, n in reasons) + f" (change {change})")
        if emptied:
            raise DataPrepError("the filters left nothing: " + "; ".join(emptied) + escape)

    def as_dict(self) -> dict:
        """report.json's content (without the reject records themselves, which go to rejects.jsonl)."""
        return {"script": self.script, "config": self.config, "inputs": self.inputs, "input": self.input,
                "outputs": {name: asdict(c) for name, c in self.outputs.items()}, "filters": self.filters,
                "responses_dropped": self.responses_dropped, "unknown_fields": self.unknown_fields, "notes": self.notes,
                "rejects_file": "rejects.jsonl", "rejected_total": len(self.rejects)}

    def write(self, out_dir: Path) -> None:
        """rejects.jsonl, then report.json last: a report.json means the run finished."""
        self.check()
        for name, c in self.outputs.items():
            if c.lines == 0:
                self.notes.append(f"{name} is empty: NeMo-Aligner's dataset builders cannot load an empty file")
        write_jsonl(out_dir / "rejects.jsonl", self.rejects, ensure_ascii=True)
        atomic_write_text(out_dir / "report.json", json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n")


def with_overrides(cfg, overrides: Mapping, what: str):
    """`cfg` (a dataclass) with `overrides` applied; a nested dataclass field takes a mapping of its own fields.

    Unknown keys are an error (a mistyped option must not be ignored). Mappings from Hydra (DictConfig) work.
    """
    names = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise DataPrepError(f"unknown {what} option(s): {', '.join(map(str, unknown))} (known: {', '.join(sorted(names))})")
    changes = {}
    for key, value in overrides.items():
        current = getattr(cfg, key)
        if is_dataclass(current) and isinstance(value, Mapping):
            value = with_overrides(current, value, f"{what}.{key}")
        elif isinstance(value, Mapping):
            value = dict(value)
        elif not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") and not is_dataclass(value):
            value = list(value)  # ListConfig, tuples -> plain lists (report.json must serialise them)
        changes[key] = value
    return replace(cfg, **changes)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a data-prep `main`; user-facing problems become one `error: ...` line and exit code 2."""
    try:
        main(argv)
    except (RowError, DataPrepError, OSError) as e:  # OSError: missing file, permissions, disk full
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def print_summary(report: dict, out_dir) -> None:
    """The counts of report.json in a few lines, for the terminal."""
    inp = report["input"]
    print(f"{inp['rows_in']} input rows, {inp['rows_in'] - inp['rows_ok']} bad -> {out_dir}")
    for name, c in report["outputs"].items():
        rej = ", ".join(f"{k} {v}" for k, v in c["rejected"].items()) or "none rejected"
        print(f"  {name}: {c['rows_out']}/{c['rows_in']} {c['unit']} rows ({c['lines']} lines; {rej})")
    for source, counts in report.get("unknown_fields", {}).items():
        print(f"  note: {source}: fields the format does not define (kept out of the outputs): "
              + ", ".join(f"{k} ({n} row{'s' * (n != 1)})" for k, n in counts.items()))
    for note in report["notes"]:
        print(f"  note: {note}")


@dataclass
class Output:
    """One output file, built when it is written: `build()` returns its rows; `size` estimates the work of
    building and encoding them (~ bytes; measured: a nested SFT row costs ~1.1x, a flat DPO row ~0.7x)."""

    build: Callable[[], list[dict]]
    size: int


PARALLEL_MIN_BYTES = 20_000_000  # below this, forking costs more than it saves


def write_outputs(out_dir: Path, outputs: dict[str, Output], parallel_min_bytes: int | None = None) -> dict[str, int]:
    """Build and write every output file atomically (ASCII-escaped JSONL); returns the lines of each.

    Building rows and encoding JSON are most of a big run's time and hold the GIL, so above
    `parallel_min_bytes` a forked child builds and writes about half of the bytes while this process does
    the rest (2 cores: ~1.3x faster, docs/data_prep.md). The child touches nothing shared: it writes its
    files into `out_dir` (a data-prep run's staging directory, data_prep/output_set.py), sends their line
    counts through a pipe and leaves with os._exit. It never outlives this process: on Linux the kernel
    kills it when its parent dies (PR_SET_PDEATHSIG, so a `kill -9` of the run takes it along), and this
    process waits for it (or kills it, when its own half fails) before returning.
    """
    names = sorted(outputs, key=lambda n: -outputs[n].size)
    threshold = PARALLEL_MIN_BYTES if parallel_min_bytes is None else parallel_min_bytes
    child: list[str] = []
    if hasattr(os, "fork") and len(names) > 1 and sum(o.size for o in outputs.values()) >= threshold:
        load = [0, 0]
        for n in names:  # greedy balance by estimated bytes
            side = 0 if load[0] <= load[1] else 1
            load[side] += outputs[n].size
            if side:
                child.append(n)
    if not child:
        return {n: write_jsonl(out_dir / n, outputs[n].build(), ensure_ascii=True) for n in outputs}
    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _die_with_parent(parent)
            lines = {n: write_jsonl(out_dir / n, outputs[n].build(), ensure_ascii=True) for n in child}
            os.write(write_fd, json.dumps(lines).encode())
        except BaseException as e:  # say why, and leave without running the parent's cleanup code
            os.write(2, f"error: writing {', '.join(child)}: {e}\n".encode())
            os._exit(1)
        os._exit(0)
    os.close(write_fd)
    waited = False
    try:
        lines = {n: write_jsonl(out_dir / n, outputs[n].build(), ensure_ascii=True) for n in names if n not in child}
        with os.fdopen(read_fd, "rb") as f:
            sent = f.read()
        status = os.waitpid(pid, 0)[1]
        waited = True
        if status != 0:
            raise OSError(f"writing {', '.join(child)} failed (see the message above)")
    finally:
        if not waited:  # this half failed: stop the child before the staging directory goes away
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    lines.update(json.loads(sent))
    return {n: lines[n] for n in outputs}


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this (forked) process when its parent dies; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1 (linux/prctl.h)
    except (OSError, AttributeError):  # not Linux: the child still only writes into the staging directory
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def write_output_set(report: Report, out_dir: str | os.PathLike, files: dict[str, Output], allow_empty: bool,
                     extra: Callable[[Path], None] | None = None) -> dict:
    """The end of every data-prep run: refuse an empty result (`allow_empty` writes it anyway), then build and
    write `files`, rejects.jsonl and report.json (last) as one set (data_prep/output_set.py), so a reader sees
    the old set or the new one. `extra(staging_dir)` adds derived files to the set before report.json.
    Returns report.json's content."""
    from data_prep.output_set import OutputSet

    report.check()
    report.refuse_empty(allow_empty)  # before anything is written
    with OutputSet(out_dir) as staged:
        for name, lines in write_outputs(staged.dir, files).items():
            report.outputs[name].lines = lines
        if extra is not None:
            extra(staged.dir)
        report.write(staged.dir)
        staged.commit()
    return report.as_dict()

