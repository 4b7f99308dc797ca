"""Helpers shared by the SDG stages (sdg_prompts, sdg_dialogue): reading a generator's lists, cleaning
single answers and dialogue turns, and a reply cache for the in-process generator.

Generators answer list requests in every layout: "1. ...", "1) ...", "- ...", "* ...", "**Title**: ...",
with a preamble ("Here are five questions:") and a closing remark ("I hope this helps!"). `parse_list`
keeps the items and drops the rest; an output with no usable item is *unparseable* (the stages count it
and write it to their rejects file). The HTTP clients cache their replies themselves (eval/request_pool.py);
`CachedGenerator` gives the in-process HF model the same: a killed run re-asks only what it had not got.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

from eval.request_pool import RequestCache, request_key

# "1.", "1)", "(1)", "#1", "Question 1:", "Task 2 -", bullets, and markdown bold around any of them.
# A number is a marker only when a space follows it ("2.0% of 15" is no item "0% of 15").
_MARKER = re.compile(r"^\s*(?:[-*•·]+\s+|\(?#?\d{1,3}[.):\]](?:\s+|$)|(?:question|task|problem|prompt|topic|"
                     r"subtopic|instruction)\s*#?\d{1,3}\s*[:.)-]\s*)", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"
# Lines that talk about the list instead of being an item of it.
_CHATTER = re.compile(r"^(?:sure|certainly|of course|here (?:are|is)|below (?:are|is)|okay|ok|i hope|let me know|"
                      r"these (?:questions|tasks|problems|topics)|note:|feel free|i'?m sorry|sorry|i cannot|i can'?t|"
                      r"as an ai)\b", re.IGNORECASE)
MIN_ITEM_CHARS, MAX_ITEM_CHARS = 8, 2000


def clean_item(line: str) -> str:
    """One list line without its numbering, bullet, markdown bold and surrounding quotes
    ("1. **Soil**: keeping it rich" -> "Soil: keeping it rich")."""
    text = line.strip()
    for _ in range(2):  # "- 1) text", "1. **2.** text"
        text = _MARKER.sub("", text.replace("**", ""), count=1).strip()
    return text.strip().strip(_QUOTES).strip()


def parse_list(text: str, max_items: int | None = None, min_chars: int = MIN_ITEM_CHARS) -> list[str]:
    """The items of a generated list, in order, without duplicates; [] when there is none.

    Items are the marked lines (numbered or bulleted) when any line is marked, else every line; a
    preamble or closing line (`Here are ...:`, `I hope this helps`) and items shorter than `min_chars` or
    too long to be a prompt are dropped. A marked item may continue on the following unmarked lines, up to
    a blank line; a marked line ending with ":" heads a sub-list and is no item.
    """
    lines = (text or "").replace("\r\n", "\n").split("\n")
    marked = [bool(_MARKER.match(ln)) for ln in lines]
    items: list[str] = []
    if any(marked):
        current = None  # the item a following unmarked line continues; a blank line or a heading ends it
        for ln, is_item in zip(lines, marked):
            if is_item:
                if current is not None:
                    items.append(current)
                current = clean_item(ln)
                if current.endswith(":"):  # "1. Ideas for the garden:" heads a sub-list, it is no item
                    current = None
            elif not ln.strip():
                if current is not None:
                    items.append(current)
                current = None
            elif current is not None and not _CHATTER.match(ln.strip()) and not ln.rstrip().endswith(":"):
                current = f"{current} {ln.strip()}"  # a wrapped item
        if current is not None:
            items.append(current)
    else:
        items = [clean_item(ln) for ln in lines if ln.strip()]
    out, seen = [], set()
    for item in items:
        key = " ".join(item.lower().split())
        if (len(item) < min_chars or len(item) > MAX_ITEM_CHARS or key in seen or _CHATTER.match(item)
                or item.endswith(":")):
            continue
        seen.add(key)
        out.append(item)
    return out[:max_items] if max_items else out


def parse_single(text: str) -> str | None:
    """A one-item answer (a refined question, a follow-up user turn): the text without a preamble line,
    labels like "Revised question:" and quotes; None when nothing usable is left."""
    lines = [ln.strip() for ln in (text or "").strip().split("\n") if ln.strip()]
    while lines and (_CHATTER.match(lines[0]) or lines[0].endswith(":")) and len(lines) > 1:
        lines = lines[1:]  # "Sure! Here is the revised question:"
    body = " ".join(lines) if len(lines) <= 3 else "\n".join(lines)
    body = re.sub(r"^(?:revised|refined|new|rewritten|improved|follow-up)?\s*(?:question|task|prompt|"
                  r"request|message|reply)\s*:\s*", "", body, flags=re.IGNORECASE)
    body = clean_item(body) if "\n" not in body else body.strip().strip(_QUOTES).strip()
    return body if MIN_ITEM_CHARS <= len(body) <= MAX_ITEM_CHARS else None


_QUOTED = re.compile(r"[\"“]([^\"”\n]{8,}?)[\"”]")
_QUESTION = re.compile(r"(?:^|(?<=[.!:]\s))([A-Z][^.!?\n]{6,}\?)")


def parse_refined(text: str, question: bool) -> str | None:
    """A rewritten prompt: the quoted rewrite when the reply quotes one (`Here is the new question: "..."`),
    else the reply as parse_single reads it. A question must end with "?" (the first question asked in the
    reply is taken); anything of more than one paragraph is an answer, not a rewrite: None."""
    quoted = [q.strip() for q in _QUOTED.findall(text or "") if not question or q.strip().endswith("?")]
    if quoted:
        return max(quoted, key=len)
    single = parse_single(text)
    if single is None or "\n" in single or len(single) > 800:
        return None
    if question and not single.endswith("?"):
        found = _QUESTION.findall(single)
        return re.sub(r"^(?:question|revised question)\s*:\s*", "", found[0].strip(), flags=re.I) if found else None
    return single


# Polite closers a role-played user ends with; the report strips phrases like "Thank you ..." from user turns.
_CLOSER = re.compile(r"(?:^|(?<=[.!?]))\s*(?:thanks?(?: you)?(?: so much| very much| a lot)?|"
                     r"i appreciate (?:it|your help|that)|much appreciated|cheers)\b[^.!?]*[.!?]*\s*$",
                     re.IGNORECASE)
_LEADING_THANKS = re.compile(r"^\s*(?:thanks?(?: you)?(?: so much| very much| a lot)?(?: for [^.!?]*)?[.!,]\s*)+",
                             re.IGNORECASE)


def strip_polite(text: str) -> str:
    """A user turn without leading and trailing thanks ("Thank you! Could you ..." -> "Could you ...")."""
    out = text.strip()
    for _ in range(3):
        new = _CLOSER.sub("", _LEADING_THANKS.sub("", out)).strip()
        if new == out:
            break
        out = new
    return out


# ---------------------------------------------------------------- a reply cache for the HF generator
def checkpoint_identity(model_dir: str | Path) -> str:
    """The checkpoint's path and its weight files' names, sizes and mtimes: a checkpoint retrained into
    the same directory gets new answers, an untouched one reuses its cached ones."""
    d = Path(model_dir).resolve()
    files = sorted(p for p in d.glob("*.safetensors")) if d.is_dir() else []
    sig = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.blake2b(json.dumps([str(d), sig]).encode(), digest_size=12).hexdigest()


class CachedGenerator:
    """`generate(conversations, params)` whose replies are cached on disk (eval/request_pool.RequestCache),
    keyed by the generator's identity, the conversation, the sampling settings and the occurrence of that
    request in the call. Only the misses reach the wrapped generator, in one call (so it batches them)."""

    def __init__(self, generate, cache_file: str | Path, identity: str):
        self._generate, self.identity = generate, identity
        self.cache = RequestCache(cache_file)

    def generate(self, conversations: list, params) -> list:
        seen: dict[str, int] = {}
        keys = []
        for conv in conversations:
            body = {"messages": conv, "params": asdict(params)}
            text = json.dumps(body, sort_keys=True)
            keys.append(request_key(self.identity, body, seen.get(text, 0)))
            seen[text] = seen.get(text, 0) + 1
        out = [self.cache.get(k) for k in keys]
        todo = [i for i, hit in enumerate(out) if hit is None]
        if todo:
            for i, reply in zip(todo, self._generate([conversations[i] for i in todo], params)):
                out[i] = reply
                if reply is not None:
                    self.cache.put(keys[i], reply)
        return out
