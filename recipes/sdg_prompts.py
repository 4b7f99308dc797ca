"""Synthetic prompts from nothing but topics: `python launch.py stage=sdg_prompts sdg_prompts.topics=topics.txt`.

The Nemotron-4 340B report generates its single-turn prompts with a generator model (§3.2.1); this stage
does the same through any generator client of the repo (`sdg_prompts.generator.kind`: the in-process HF
model, an OpenAI-compatible endpoint, a NeMo server), with the templates of recipes/sdg_templates.py:

    topics (yours, + `n_macro_topics` generated) -> `n_subtopics` subtopics each
      -> `n_open_qa` questions and `n_writing` writing tasks per topic -> each refined in a second call
    documents (yours)        -> `n_closed_qa` instructions each, asked about the document
    math / Python keywords   -> `n_math` / `n_python` problems each (small shipped lists, or yours)
    open Q&A + writing prompts -> instruction following: + IFEval instructions (lm-eval's registry), as a
                                single turn, "applies to all future turns", or a second-turn revision
                             -> two-turn prompts: + a generated assistant turn + a generated user turn

Requests of one step go to the generator in one call (the HF client batches them, HTTP clients send
`max_concurrency` at once); a step never waits for another step's unrelated requests. Every reply is
cached (HTTP clients: request_cache/generator.jsonl; HF: request_cache/hf_generator.jsonl), so a killed
run is rerun at the cost of what it had not got. Generated lists are parsed (recipes/sdg_common.py); an
output with no item is counted as `unparseable_output` and written to rejects.jsonl with its raw text.
Prompts then pass the filters of data_prep (empty, exact duplicate, near duplicate, decontamination
against `decontaminate` eval files), each drop counted per task in report.json.

Output: `<run dir>/prompts.jsonl` (or `sdg_prompts.output_file`), rows that stage=sdg_generate reads, one
task after the other in turn (so `sdg.limit=N` takes the first N across every task):

    {"id": "sdgp-00001", "category": "open_qa", "prompt": "...",
     "provenance": {"task": "open_qa", "topic": "...", "templates": ["subtopics", "open_qa", "refine_open_qa"],
                    "generator": "...", "seed": 1234, "refined": true}}

(`conversations` instead of `prompt` for multi-turn rows; instruction-following rows add
`instruction_id_list` and `kwargs`, which eval/ifeval.py checks).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.filters import CONTAMINATED, DUPLICATE, EMPTY, FilterConfig, Filters
from data_prep.jsonl import RowError, atomic_write_text, read_jsonl, write_jsonl
from data_prep.near_dup import NEAR_DUPLICATE, NearDuplicates
from data_prep.report import Report
from recipes.config import REPO_ROOT
from recipes.sdg_common import (MIN_ITEM_CHARS, CachedGenerator, checkpoint_identity, parse_list, parse_refined,
                                 parse_single)
from recipes.sdg_instructions import draw_instructions
from recipes.sdg_templates import load_templates, render

log = logging.getLogger(__name__)

TASKS = ("open_qa", "writing", "closed_qa", "math", "python", "instruction_following", "two_turn")
BASE_TASKS = TASKS[:5]  # prompts made directly from topics, documents and keywords
IF_VARIANTS = ("single", "all_turns", "revise")
SHIPPED_KEYWORDS = {"math": REPO_ROOT / "data" / "sdg" / "math_keywords.txt",
                    "python": REPO_ROOT / "data" / "sdg" / "python_keywords.txt"}
UNPARSEABLE, FAILED = "unparseable_output", "failed_request"


@dataclass
class Candidate:
    task: str
    turns: list  # [(role, text)], ending with a User turn
    provenance: dict
    extra: dict = field(default_factory=dict)  # instruction_id_list, kwargs
    # The synthetic text that decontamination checks: IFEval's own instruction texts (which every IFEval
    # prompt shares) are left out of it. None: every user turn.
    plain: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(t for r, t in self.turns if r == "User")

    def row(self, i: int) -> dict:
        body = ({"prompt": self.turns[0][1]} if len(self.turns) == 1 else
                {"conversations": [{"from": r, "value": t} for r, t in self.turns]})
        return {"id": f"sdgp-{i:05d}", "category": self.task, **body, **self.extra, "provenance": self.provenance}


# ---------------------------------------------------------------- inputs
def read_lines(path: str | Path, what: str) -> list[str]:
    """Topics or keywords: a text file (one a line; `#` comments) or JSONL rows with `topic`/`keyword`/`text`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no file at {p}")
    if p.suffix in (".jsonl", ".json"):
        out = []
        for line, row in read_jsonl(p):
            value = next((row[k] for k in ("topic", "keyword", "text") if isinstance(row.get(k), str)), None)
            if not value or not value.strip():
                raise RowError(p, line, "topic", "give a non-empty 'topic' (or 'keyword', 'text') string")
            out.append(value.strip())
        return out
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


def read_documents(path: str | Path) -> list[tuple[str, str]]:
    """(id, text) of each document: JSONL rows with `text` (and `id`), or a text file of blank-line-separated
    documents."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sdg_prompts.documents: no file at {p}")
    if p.suffix in (".jsonl", ".json"):
        docs = []
        for line, row in read_jsonl(p):
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise RowError(p, line, "text", "give the document as a non-empty 'text' string")
            docs.append((str(row.get("id", f"{p.name}:{line}")), row["text"].strip()))
        return docs
    parts = [d.strip() for d in p.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return [(f"{p.name}:{i + 1}", d) for i, d in enumerate(parts)]


# ---------------------------------------------------------------- asking the generator
class Asker:
    """Sends one step's requests in one call and accounts for every reply (report.input, rejects)."""

    def __init__(self, generate, params, templates: dict, report: Report, model: str):
        self.generate, self.params, self.templates, self.report, self.model = generate, params, templates, report, model
        self.requests = 0

    def texts(self, requests: list[tuple[str, dict]]) -> list[str | None]:
        """Replies to (template, fields) requests; None where the request failed (counted)."""
        convs = [[{"role": "user", "content": render(self.templates, name, **f)}] for name, f in requests]
        return self.raw(convs, [name for name, _ in requests], account=False)

    def raw(self, convs: list[list[dict]], names: list[str], account: bool = True) -> list[str | None]:
        """Replies to ready conversations. With `account`, each reply is counted here (an empty one as
        unparseable, then None); otherwise the caller counts what it parses."""
        if not convs:
            return []
        replies = list(self.generate(convs, self.params))
        self.requests += len(convs)
        for i, (name, reply) in enumerate(zip(names, replies)):
            if reply is None:
                self._bad(FAILED, name, None)
            elif account and not reply.strip():
                self._bad(UNPARSEABLE, name, reply)
                replies[i] = None
            elif account:
                self._ok()
        return replies

    def parsed(self, requests: list[tuple[str, dict]], single: bool = False) -> list:
        """Parsed replies: a list of items per request ([] when unparseable), or one text (None)."""
        out = []
        for (name, f), reply in zip(requests, self.texts(requests)):
            short = 2 if name in ("macro_topics", "subtopics") else MIN_ITEM_CHARS  # a topic may be one word
            one = (lambda r: parse_refined(r, name == "refine_open_qa")) if name.startswith("refine_") else parse_single
            value = None if reply is None else (one(reply) if single else parse_list(reply, f.get("n"), short))
            if reply is not None and not value:
                self._bad(UNPARSEABLE, name, reply)
            elif reply is not None:
                self._ok()
            out.append(value or (None if single else []))
        return out

    def _ok(self):
        self.report.input["rows_in"] += 1
        self.report.input["rows_ok"] += 1

    def _bad(self, reason: str, template: str, raw: str | None):
        rej = self.report.input["rejected"]
        self.report.input["rows_in"] += 1
        rej[reason] = rej.get(reason, 0) + 1
        self.report.rejects.append({"stage": "generator", "template": template, "reason": reason, "raw": raw})


def make_generator(cfg, s, run_dir: Path):
    """(generate, model name): the configured client; the in-process one behind a reply cache."""

    from recipes.sdg_generate import generator_model_dir, make_client

    client, name = make_client(cfg, run_dir / "request_cache", gen=s.generator, model=s.model)
    if s.generator.kind != "hf" or not s.generator.cache:
        return client.generate, name
    identity = checkpoint_identity(generator_model_dir(cfg, s.model))
    return CachedGenerator(client.generate, run_dir / "request_cache" / "hf_generator.jsonl", identity).generate, name


# ---------------------------------------------------------------- the steps
def topic_list(s, ask: Asker, prov) -> list[tuple[str, list[str]]]:
    """(topic, templates that made it): the user's topics, generated macro topics, then their subtopics."""
    topics = [(t, []) for t in (read_lines(s.topics, "sdg_prompts.topics") if s.topics else [])]
    if s.n_macro_topics > 0:
        (macro,) = ask.parsed([("macro_topics", {"n": s.n_macro_topics})])
        topics += [(t, ["macro_topics"]) for t in macro]
    if s.n_subtopics > 0:
        subs = ask.parsed([("subtopics", {"n": s.n_subtopics, "topic": t}) for t, _ in topics])
        topics += [(sub, tpl + ["subtopics"]) for (t, tpl), items in zip(topics, subs) for sub in items]
    seen, out = set(), []
    for t, tpl in topics:
        if t.lower() not in seen:
            seen.add(t.lower())
            out.append((t, tpl))
    return out


def base_candidates(s, ask: Asker, prov, topics) -> list[Candidate]:
    """Open Q&A and writing per topic, closed Q&A per document, math/Python per keyword (one call)."""
    on = set(s.tasks)
    reqs, meta = [], []  # meta: (task, provenance) per request
    for task, n in (("open_qa", s.n_open_qa), ("writing", s.n_writing)):
        if task in on and n > 0:
            for t, tpl in topics:
                reqs.append((task, {"n": n, "topic": t}))
                meta.append((task, prov(task, topic=t, templates=tpl + [task])))
    docs = read_documents(s.documents) if "closed_qa" in on and s.documents and s.n_closed_qa > 0 else []
    for doc_id, text in docs:
        reqs.append(("closed_qa", {"n": s.n_closed_qa, "document": text}))
        meta.append(("closed_qa", prov("closed_qa", document=doc_id, templates=["closed_qa", "closed_qa_prompt"],
                                       _doc=text)))
    for task, n in (("math", s.n_math), ("python", s.n_python)):
        if task in on and n > 0:
            words = read_lines(s.get(f"{task}_keywords") or SHIPPED_KEYWORDS[task], f"sdg_prompts.{task}_keywords")
            for kw in words[: s.max_keywords or None]:
                reqs.append((task, {"n": n, "keyword": kw}))
                meta.append((task, prov(task, keyword=kw, templates=[task])))
    out = []
    for (task, p), items in zip(meta, ask.parsed(reqs)):
        doc = p.pop("_doc", None)
        for item in items:
            text = render(ask.templates, "closed_qa_prompt", document=doc, instruction=item) if doc else item
            out.append(Candidate(task, [("User", text)], {**p, "templates": list(p["templates"])}))
    return out


def refine(s, ask: Asker, cands: list[Candidate]) -> None:
    """The second call of open Q&A and writing prompts: more detail and specificity. A reply that is not a
    usable prompt leaves the first version (provenance `refined: false`, counted as unparseable)."""
    todo = [c for c in cands if c.task in ("open_qa", "writing")] if s.refine else []
    replies = ask.parsed([(f"refine_{c.task}", {"prompt": c.text, "topic": c.provenance.get("topic", "")})
                          for c in todo], single=True)
    for c, new in zip(todo, replies):
        c.provenance["refined"] = new is not None
        c.provenance["templates"].append(f"refine_{c.task}")
        if new:
            c.turns = [("User", new)]


def derived_candidates(s, ask: Asker, prov, pool: list[Candidate], rng: random.Random) -> list[Candidate]:
    """Instruction-following and two-turn prompts built on kept open Q&A / writing prompts."""
    if not pool:
        return []
    on = set(s.tasks)
    n_if = s.n_instruction_following if "instruction_following" in on else 0
    n_two = s.n_two_turn if "two_turn" in on else 0
    plans = []  # (task, variant, base, other base, ids, kwargs, instruction text)
    for i in range(n_if):
        variant = s.if_variants[i % len(s.if_variants)]
        base = rng.choice(pool)
        other = rng.choice([c for c in pool if c is not base] or pool)  # the next prompt of all_turns
        ids, kwargs, text = draw_instructions(rng, base.text, rng.randint(1, s.max_instructions),
                                              exclude=s.if_exclude, multi_turn=variant != "single")
        plans.append(("instruction_following", variant, base, other, ids, kwargs, text))
    plans += [("two_turn", None, rng.choice(pool), None, None, None, None) for _ in range(n_two)]

    def first_turn(plan):
        task, variant, base, _, _, _, text = plan
        if variant == "single" or variant == "revise" or task == "two_turn":
            return base.text
        return render(ask.templates, "if_all_turns", prompt=base.text, instructions=text)

    needs_answer = [p for p in plans if p[1] != "single"]
    answers = ask.raw([[{"role": "user", "content": first_turn(p)}] for p in needs_answer],
                      ["assistant_turn"] * len(needs_answer))
    answer = {id(p): a for p, a in zip(needs_answer, answers)}
    two = [p for p in plans if p[0] == "two_turn" and answer[id(p)]]
    follow = ask.parsed([("second_user_turn", {"user": p[2].text, "assistant": answer[id(p)]}) for p in two],
                        single=True)
    second = {id(p): f for p, f in zip(two, follow)}
    out = []
    for plan in plans:
        task, variant, base, other, ids, kwargs, text = plan
        tpl = base.provenance["templates"]
        if variant == "single":
            turns = [("User", render(ask.templates, "if_single", prompt=base.text, instructions=text))]
            tpl = tpl + ["if_single"]
        elif not answer.get(id(plan)) or (task == "two_turn" and not second.get(id(plan))):
            continue  # counted by the Asker as failed or unparseable
        elif task == "two_turn":
            turns, tpl = [("User", base.text), ("Assistant", answer[id(plan)]), ("User", second[id(plan)])], \
                tpl + ["assistant_turn", "second_user_turn"]
        elif variant == "all_turns":
            turns, tpl = [("User", first_turn(plan)), ("Assistant", answer[id(plan)]), ("User", other.text)], \
                tpl + ["if_all_turns", "assistant_turn"]
        else:
            turns = [("User", base.text), ("Assistant", answer[id(plan)]),
                     ("User", render(ask.templates, "if_revise", instructions=text))]
            tpl = tpl + ["assistant_turn", "if_revise"]
        p = prov(task, topic=base.provenance.get("topic"), templates=tpl, base_task=base.task,
                 **({"variant": variant} if variant else {}))
        extra = {"instruction_id_list": ids, "kwargs": kwargs} if ids is not None else {}
        plain = None if task == "two_turn" else "\n".join([base.text] + ([other.text] if variant == "all_turns" else []))
        out.append(Candidate(task, turns, p, extra, plain))
    return out


def keep(cands: list[Candidate], filters: Filters, near: NearDuplicates | None, report: Report) -> list[Candidate]:
    """The candidates that pass every filter, in order; each drop counted under its task in report.json."""
    from recipes.sdg_generate import prompt_key

    kept = []
    for c in cands:
        name = f"prompts.jsonl [{c.task}]"
        if name not in report.outputs:  # every filter that runs on the task is listed, at 0 when it dropped none
            reasons = (EMPTY, DUPLICATE, CONTAMINATED) + ((NEAR_DUPLICATE,) if near and c.task in BASE_TASKS else ())
            report.output(name, "prompt").rejected.update({r: 0 for r in reasons})
        report.outputs[name].rows_in += 1
        row = c.row(0)
        why = filters.prompt_reason(c.plain or c.text, prompt_key(row))
        if why is None and near is not None and c.task in BASE_TASKS:
            hit = near.check(c.text, c.text[:60])
            why = (NEAR_DUPLICATE, hit) if hit else None
        if why:
            report.reject([name], why[0], c.task, [], f"{why[1]}: {c.text[:120]!r}")
            continue
        report.outputs[name].rows_out += 1
        kept.append(c)
    return kept


def interleave(cands: list[Candidate]) -> list[Candidate]:
    """One prompt of each task in turn (TASKS order), so the first N rows (`sdg.limit=N`) cover every task."""
    by = [[c for c in cands if c.task == t] for t in TASKS]
    return [group[i] for i in range(max(map(len, by), default=0)) for group in by if i < len(group)]


def run(cfg, run_dir: Path) -> Path:
    from eval.clients import SamplingParams

    s = cfg.sdg_prompts
    unknown = [t for t in s.tasks if t not in TASKS] + [v for v in s.if_variants if v not in IF_VARIANTS]
    if unknown:
        raise ValueError(f"sdg_prompts: unknown task or variant {unknown[0]!r} (tasks: {', '.join(TASKS)}; "
                         f"if_variants: {', '.join(IF_VARIANTS)})")
    if s.n_instruction_following > 0 and not s.if_variants:
        raise ValueError("sdg_prompts.if_variants is empty: give one or more of " + ", ".join(IF_VARIANTS))
    if not s.topics and s.n_macro_topics <= 0 and set(s.tasks) & {"open_qa", "writing"}:
        raise ValueError("stage=sdg_prompts needs sdg_prompts.topics (a file, one topic a line) or "
                         "sdg_prompts.n_macro_topics > 0")
    run_dir = Path(run_dir)
    output = Path(s.output_file) if s.output_file else run_dir / "prompts.jsonl"
    templates = load_templates(s.templates, s.templates_file)
    generate, model = make_generator(cfg, s, run_dir)
    report = Report("recipes.sdg_prompts", {"generator": model, "seed": cfg.seed})
    filters = Filters(FilterConfig(dedup=True, decontaminate=list(s.decontaminate), ngram=s.ngram))
    report.filters = {**filters.describe(), "near_duplicate": f"word 3-gram Jaccard >= {s.near_duplicate_threshold}"
                      if s.near_duplicate_threshold > 0 else "off"}
    near = NearDuplicates(s.near_duplicate_threshold) if s.near_duplicate_threshold > 0 else None
    report.input["rejected"] = {UNPARSEABLE: 0, FAILED: 0}
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
    ask = Asker(generate, params, templates, report, model)
    rng = random.Random(cfg.seed)

    def prov(task, templates, **kw):
        return {"task": task, **{k: v for k, v in kw.items() if v is not None}, "templates": list(templates),
                "generator": model, "seed": cfg.seed}

    topics = topic_list(s, ask, prov) if set(s.tasks) & {"open_qa", "writing"} else []
    cands = base_candidates(s, ask, prov, topics)
    refine(s, ask, cands)
    kept = keep(cands, filters, near, report)
    pool = [c for c in kept if c.task in ("open_qa", "writing")]
    kept += keep(derived_candidates(s, ask, prov, pool, rng), filters, None, report)
    if not kept:
        raise ValueError(f"sdg_prompts: no prompt passed parsing and the filters ({run_dir / 'report.json'}, "
                         f"{run_dir / 'rejects.jsonl'}); check the generator's replies there")
    n = write_jsonl(output, [c.row(i + 1) for i, c in enumerate(interleave(kept))])
    for c in report.outputs.values():
        c.lines = c.rows_out  # one line per prompt, all in one file
    report.notes.append(f"{ask.requests} generator requests; {len(topics)} topics; {n} prompts -> {output}")
    report.write(run_dir)
    by_task = {t: sum(c.task == t for c in kept) for t in TASKS}
    log.info("sdg_prompts: %d prompts (%s) from %d requests -> %s", n,
             ", ".join(f"{t} {k}" for t, k in by_task.items() if k), ask.requests, output)
    atomic_write_text(run_dir / "sdg_prompts_stats.json", json.dumps(
        {"prompts": n, "requests": ask.requests, "topics": len(topics), "by_task": by_task}, indent=1) + "\n")
    return output
