"""SteerLM: attribute-conditioned SFT, steerable generation, and the annotate -> SFT -> steer loop.

A SteerLM model reads the attributes it should answer with from a label line that sits
right after the Assistant header (Nemotron-3-8B-SteerLM model card, NeMo-Aligner steerlm.rst)::

    <extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{q}\\n<extra_id_1>Assistant\\n<extra_id_2>{attributes}\\n{answer}

Training (`stage=steerlm_sft`) is plain SFT on chat rows whose Assistant turns carry that
line as `label` (type VALUE_TO_TEXT): recipes/chat.py renders it and leaves it out of the
loss, so the model learns p(answer | prompt, attributes). On top of stage=sft this stage
checks that the labels will really be rendered and saves `steerlm.json` in the checkpoint:
the attributes the model saw and their default values, which generation starts from.

Labels come from HelpSteer2 (`python -m data_prep.helpsteer2`) or from a reward model:
`label_from_attributes` turns stage=rm_annotate scores into a label the way NeMo-Aligner's
attribute_annotate.py does. `experiment(...)` (experiment=steerlm) runs the whole loop.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

from data_prep.jsonl import RowError, atomic_write_text, read_jsonl, write_jsonl
from data_prep.schemas import (
    ALL_STEERLM_ATTRIBUTES,
    END_OF_NAME,
    END_OF_TURN,
    LABEL_START,
    STEERLM_SYSTEM_PROMPT,
    SYSTEM_TEMPLATE,
    TURN_START,
    sft_chat_row,
    steerlm_label,
    validate_sft_chat,
)

log = logging.getLogger(__name__)

STEERLM_FILE = "steerlm.json"  # written into a steerlm_sft checkpoint: attributes + defaults

# ---------------------------------------------------------------- attribute vocabularies
# Dict order is the order of the attribute line. Values are the defaults generation uses.
# Nemotron-3-8B-SteerLM model card: its 17 attributes plus `lang`, with the card's example values.
NEMOTRON3_17 = {
    "quality": 4, "understanding": 4, "correctness": 4, "coherence": 4, "complexity": 4, "verbosity": 4,
    "toxicity": 0, "humor": 0, "creativity": 0, "violence": 0, "helpfulness": 4, "not_appropriate": 0,
    "hate_speech": 0, "sexual_content": 0, "fails_task": 0, "political_content": 0, "moral_judgement": 0,
    "lang": "en",
}
# HelpSteer2's five, in NeMo-Aligner's label order; defaults = the attributes HS2 §4.5 generates with
# (helpfulness, correctness, coherence 4; complexity, verbosity 2).
HELPSTEER2_5 = {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 2}
# NeMo-Aligner's nine (OpenAssistant + HelpSteer, ALL_STEERLM_ATTRIBUTES), steerlm.rst's inference values:
# what attribute_annotate.py writes with a 9-output reward model.
STEERLM_9 = {"quality": 4, "toxicity": 0, "humor": 0, "creativity": 0, "helpfulness": 4, "correctness": 4,
             "coherence": 4, "complexity": 4, "verbosity": 4}
assert list(STEERLM_9) == ALL_STEERLM_ATTRIBUTES
# Smallest first: a label set is given the first vocabulary that holds all its names.
VOCABULARIES = {"helpsteer2_5": HELPSTEER2_5, "steerlm_9": STEERLM_9, "nemotron3_17": NEMOTRON3_17}
ATTRIBUTE_NAMES = tuple(dict.fromkeys([*NEMOTRON3_17, *STEERLM_9]))  # every name a steer.<name> key may set
LABEL_RANGE = (0, 4)  # every SteerLM attribute is a 0-4 Likert value (lang aside)


def attribute_line(values: dict) -> str:
    """`name:value,...` in the order given: the text after `<extra_id_2>`."""
    return ",".join(f"{k}:{v}" for k, v in values.items())


def parse_label(label: str) -> dict[str, str]:
    """A label string as {name: value text}, in its order. Raises ValueError naming the bad pair."""
    out = {}
    for pair in label.split(","):
        name, sep, value = pair.strip().partition(":")
        if not sep or not value:
            raise ValueError(f"{pair!r} is not name:value (label {label!r})")
        if name not in ATTRIBUTE_NAMES:
            raise ValueError(f"unknown attribute {name!r} (known: {', '.join(ATTRIBUTE_NAMES)})")
        out[name] = value
    return out


def vocabulary_for(names) -> str:
    """The smallest known vocabulary holding every name (a model trained on any of them steers with it)."""
    for vocab, defaults in VOCABULARIES.items():
        if set(names) <= set(defaults):
            return vocab
    raise ValueError(f"labels mix attributes of different vocabularies: {', '.join(names)}")


def label_from_attributes(attributes: dict[str, float]) -> str:
    """A SteerLM label from reward-model scores, as NeMo-Aligner's attribute_annotate.py makes it:
    each score clamped to [0, 4] then rounded with Python's round() (half to even: 2.5 -> 2, 3.5 -> 4),
    in ALL_STEERLM_ATTRIBUTES order. Unlike that script (which writes all 9) only the attributes
    present are written, so a HelpSteer2-only reward model gives HelpSteer2 labels."""
    unknown = [a for a in attributes if a not in ALL_STEERLM_ATTRIBUTES]
    if unknown:
        raise ValueError(f"attributes {unknown} are not reward-model outputs ({', '.join(ALL_STEERLM_ATTRIBUTES)})")
    lo, hi = LABEL_RANGE
    return steerlm_label({a: round(min(float(hi), max(float(lo), float(v)))) for a, v in attributes.items()})


# ---------------------------------------------------------------- resolving the values to steer with
def read_spec(model_dir) -> dict | None:
    """The checkpoint's steerlm.json ({"vocabulary", "attributes", "defaults"}), or None."""
    path = Path(model_dir) / STEERLM_FILE if model_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def check_value(name: str, value, where: str = "steer"):
    if name == "lang":
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_-]+", value):
            raise ValueError(f"{where}.lang={value!r} must be a language code such as en")
        return value
    lo, hi = LABEL_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not lo <= value <= hi:
        raise ValueError(f"{where}.{name}={value!r} must be an integer in [{lo}, {hi}]")
    return int(value)


def given_values(steer_cfg) -> dict:
    """The steer.<attribute> keys set on the command line (the rest are null)."""
    return {n: steer_cfg[n] for n in ATTRIBUTE_NAMES if steer_cfg[n] is not None}


def resolve(steer_cfg, spec: dict | None, overrides: dict | None = None) -> dict:
    """The attribute values to render, in order: the attribute list and defaults of
    `steer.vocabulary` when set, else of the checkpoint's steerlm.json, else of the
    Nemotron-3-8B-SteerLM model card; then the steer.<attribute> values given; then `overrides`."""
    if steer_cfg.vocabulary != "auto":
        defaults, source = VOCABULARIES[steer_cfg.vocabulary], f"steer.vocabulary={steer_cfg.vocabulary}"
    elif spec is not None:
        defaults, source = {a: spec["defaults"][a] for a in spec["attributes"]}, f"the checkpoint's {STEERLM_FILE}"
    else:
        defaults, source = NEMOTRON3_17, "the Nemotron-3-8B-SteerLM model card (no steerlm.json given)"
    values = dict(defaults)
    for name, value in {**given_values(steer_cfg), **(overrides or {})}.items():
        if name not in values:
            raise ValueError(f"steer.{name}: not an attribute of this model (from {source}: {', '.join(values)})")
        values[name] = check_value(name, value)
    return values


# ---------------------------------------------------------------- prompts and generation
def steer_prompt(conversation: list[dict], values: dict, system: str = STEERLM_SYSTEM_PROMPT) -> str:
    """A generation prompt ending in the attribute line. `conversation`: OpenAI-style messages ending
    with a user turn (a leading system message replaces `system`); earlier assistant turns carry the
    same attribute line, as in the model card's multi-turn format and in training rows."""
    if conversation and conversation[0]["role"] == "system":
        system, conversation = conversation[0]["content"], conversation[1:]
    label = f"{LABEL_START}{attribute_line(values)}{END_OF_NAME}"
    text = SYSTEM_TEMPLATE.format(value=system)
    for i, m in enumerate(conversation):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"conversation turn {i}: expected role {expected!r}, got {m['role']!r}")
        header = f"{TURN_START}{expected.capitalize()}{END_OF_NAME}"
        text += header + (label if expected == "assistant" else "") + m["content"] + END_OF_TURN
    if len(conversation) % 2 == 0:
        raise ValueError("a conversation to answer must end with a user turn")
    return text + f"{TURN_START}Assistant{END_OF_NAME}{label}"


def generate(client, conversations: list[list[dict]], values: dict, params, system: str = STEERLM_SYSTEM_PROMPT) -> list[dict]:
    """Answer each conversation steered by `values`; rows {prompt | conversations, attributes, response}.

    `client` is any of our generation clients; its `complete(prompts, params)` continues pre-rendered
    prompts (HFClient in process, NemoServerClient's PUT /generate, an OpenAI-compatible /completions):
    the attribute line sits inside the assistant turn, where no chat-messages API can put it.
    A request that failed after its retries (HTTP clients) gives `"response": None` and its `"error"`.
    """
    from dataclasses import replace

    from eval.clients import failure_reasons

    stop = [TURN_START] + [s for s in params.stop if s != TURN_START]  # the end of an answer (model card)
    prompts = [steer_prompt(c, values, system) for c in conversations]
    replies = client.complete(prompts, replace(params, stop=stop))
    reasons = failure_reasons(client, len(prompts))
    return [{**prompt_fields(c), "attributes": dict(values), "response": r,
             **({"error": why or "no response"} if r is None else {})}
            for c, r, why in zip(conversations, replies, reasons)]


def prompt_fields(conversation: list[dict]) -> dict:
    """SDG-style prompt keys: `prompt` for one user turn, else `conversations` (so rm_annotate can score the rows)."""
    turns = [m for m in conversation if m["role"] != "system"]
    if len(turns) == 1:
        return {"prompt": turns[0]["content"]}
    return {"conversations": [{"from": m["role"].capitalize(), "value": m["content"]} for m in turns]}


def conversation_of(row: dict, where: str) -> list[dict]:
    """Messages to answer from a prompts-file row: {"prompt": str}, or an SFT chat row (the turns before
    its final Assistant turn), either with an optional `system`."""
    messages = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else []
    if isinstance(row.get("prompt"), str):
        return messages + [{"role": "user", "content": row["prompt"]}]
    turns = row.get("conversations")
    if isinstance(turns, list) and turns and all(isinstance(t, dict) and "from" in t and "value" in t for t in turns):
        if turns[-1]["from"] == "Assistant":
            turns = turns[:-1]
        if turns:
            return messages + [{"role": t["from"].lower(), "content": t["value"]} for t in turns]
    raise ValueError(f"{where}: expected a 'prompt' string or 'conversations' turns")


def load_prompts(steer_cfg) -> list[list[dict]]:
    """steer.prompts (inline strings) and steer.prompts_file (.jsonl rows, or a text file with one prompt per line)."""
    convs = [[{"role": "user", "content": p}] for p in steer_cfg.prompts]
    path = steer_cfg.prompts_file
    if path:
        if str(path).endswith((".jsonl", ".jsonl.gz")):
            convs += [conversation_of(row, f"{Path(path).name}:{line}") for line, row in read_jsonl(path)]
        else:
            if not Path(path).is_file():
                raise FileNotFoundError(f"steer.prompts_file: no file at {path}")
            convs += [[{"role": "user", "content": line}] for line in Path(path).read_text().splitlines() if line.strip()]
    return convs


# ---------------------------------------------------------------- stage=steerlm_sft
def label_names(path: str, on_bad_row: str) -> tuple[list[str], int]:
    """The attribute names the Assistant labels of an SFT file use, and how many turns are labelled.

    Stops at a label NeMo would silently not train on: a row whose `type` is not VALUE_TO_TEXT
    drops the label (null) or trains on it as a target (TEXT_TO_VALUE)."""
    names: dict[str, None] = {}
    n = 0
    for line, row in read_jsonl(path, validate_sft_chat, on_bad_row=on_bad_row):
        for j, turn in enumerate(row["conversations"]):
            label = turn.get("label")
            if turn["from"] != "Assistant" or label is None:
                continue
            where = f"conversations[{j}].label"
            if row.get("type") != "VALUE_TO_TEXT":
                raise RowError(path, line, "type", f"is {row.get('type')!r}, so {where} is not rendered as "
                               "conditioning; SteerLM rows need type VALUE_TO_TEXT")
            try:
                parsed = parse_label(label)
                for name, value in parsed.items():
                    check_value(name, value if name == "lang" else float(value), where)
            except ValueError as err:
                raise RowError(path, line, where, str(err)) from None
            names.update(dict.fromkeys(parsed))
            n += 1
    return list(names), n


def spec_for(names: list[str], steer_cfg) -> dict:
    """steerlm.json: the vocabulary, the attributes the model was trained on (in label order), and
    their defaults (the vocabulary's, overridden by steer.<attribute> given at training time)."""
    vocab = vocabulary_for(names)
    attributes = [a for a in VOCABULARIES[vocab] if a in names]
    defaults = {a: VOCABULARIES[vocab][a] for a in attributes}
    for name, value in given_values(steer_cfg).items():
        if name not in defaults:
            raise ValueError(f"steer.{name}: the training labels have no {name!r} ({', '.join(attributes)})")
        defaults[name] = check_value(name, value)
    return {"vocabulary": vocab, "attributes": attributes, "defaults": defaults}


def train(cfg, run_dir: Path) -> Path:
    """stage=steerlm_sft: stage=sft on labelled rows, plus steerlm.json in the final checkpoint."""
    from recipes import sft

    if cfg.data.prompt_template == "auto":
        cfg.data.prompt_template = "nemotron"  # the SteerLM template, whatever the starting checkpoint used
    if cfg.data.prompt_template != "nemotron":
        raise ValueError(f"stage=steerlm_sft needs data.prompt_template=nemotron (got {cfg.data.prompt_template}): "
                         "the label line is part of the <extra_id_*> template; a tokenizer chat template drops it")
    path = cfg.model.data.train_ds.file_path
    if not path:
        raise ValueError("model.data.train_ds.file_path is required for stage=steerlm_sft (SFT chat JSONL with labels)")
    names, n_labelled = label_names(path, cfg.data.on_bad_row)
    if not n_labelled:
        raise ValueError(f"{path}: no Assistant turn carries a SteerLM label; make labels with "
                         "python -m data_prep.helpsteer2 or experiment=steerlm, or train with stage=sft")
    spec = spec_for(names, cfg.steer)
    log.info("steerlm_sft: %d labelled turns; attributes %s (%s)", n_labelled, spec["attributes"], spec["vocabulary"])
    final = sft.run(cfg, run_dir)
    from recipes import distributed

    if distributed.is_main():  # several processes: rank 0 wrote the checkpoint
        atomic_write_text(Path(final) / STEERLM_FILE, json.dumps(spec, indent=1) + "\n")
    return final


# ---------------------------------------------------------------- annotation -> labelled SFT rows
def sft_to_sdg(rows: list[tuple[int, dict]]) -> list[dict]:
    """One SDG record per Assistant turn (the turns before it as the prompt, it as the one response),
    with id `<line>:<turn>` so the scores can be put back on the right turn."""
    out = []
    for line, row in rows:
        convs = row["conversations"]
        for j, turn in enumerate(convs):
            if turn["from"] == "Assistant":
                out.append({"id": f"{line}:{j}", "system": row["system"],
                            "conversations": [{"from": t["from"], "value": t["value"]} for t in convs[:j]],
                            "responses": [{"text": turn["value"]}]})
    return out


def label_sft_rows(rows: list[tuple[int, dict]], annotated: list[dict]) -> list[dict]:
    """The SFT rows with each Assistant turn labelled from its annotated SDG record (type VALUE_TO_TEXT)."""
    labels = {rec["id"]: label_from_attributes(rec["responses"][0]["attributes"]) for rec in annotated}
    out = []
    for line, row in rows:
        convs = [dict(t, label=labels[f"{line}:{j}"]) if t["from"] == "Assistant" else dict(t, label=None)
                 for j, t in enumerate(row["conversations"])]
        out.append({**row, "conversations": convs, "type": "VALUE_TO_TEXT"})
    return out


def sdg_to_sft(annotated: list[dict]) -> list[dict]:
    """One labelled SFT row per scored response of stage=rm_annotate output (SDG records or flat rows)."""
    from recipes.rm_annotate import prompt_turns

    out, empty = [], 0
    for rec in annotated:
        system = rec.get("system") or STEERLM_SYSTEM_PROMPT  # the prompt the reward model scored them under
        for resp in rec["responses"] if "responses" in rec else [rec]:
            text = resp["text"] if "responses" in rec else resp["response"]
            if not text.strip():  # an empty generation is no SFT answer (schemas.validate_sft_chat)
                empty += 1
                continue
            out.append(sft_chat_row(system, prompt_turns(rec), text, label_from_attributes(resp["attributes"])))
    if empty:
        log.warning("left out %d empty responses (no answer to train on)", empty)
    return out


def labelled_file(cfg, out_dir: Path) -> Path:
    """annotate.input_file with SteerLM labels from annotate.reward_model, as SFT chat JSONL.

    The input is SFT chat rows (every Assistant turn is scored) or SDG records (every response
    becomes a row). Without a reward model, SFT rows that already carry labels are used as they are.
    """
    from recipes import loop
    from recipes.rm_annotate import annotate_file

    a = cfg.annotate
    if not a.input_file:
        raise ValueError("experiment=steerlm needs annotate.input_file (SFT chat or SDG JSONL)")
    rows = list(read_jsonl(a.input_file))
    is_sft = not validate_sft_chat(rows[0][1]) if rows else False
    if not a.reward_model:
        if is_sft and label_names(a.input_file, cfg.data.on_bad_row)[1]:
            log.info("annotate.reward_model is null: training on the labels already in %s", a.input_file)
            return Path(a.input_file)
        raise ValueError("experiment=steerlm needs annotate.reward_model (a stage=rm checkpoint) to label "
                         f"{a.input_file}, which carries no SteerLM labels")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Path(a.input_file)
    if is_sft:
        rows = list(read_jsonl(a.input_file, validate_sft_chat))  # every row, checked
        source = out_dir / "to_annotate.jsonl"
        write_jsonl(source, sft_to_sdg(rows))
    scored = out_dir / "annotated.jsonl"
    annotate_file(source, scored, a.reward_model, a.batch_size, device=loop.pick_device(cfg.trainer),
                  precision=cfg.trainer.precision, progress=cfg.logger.progress_bar, endpoint=a.endpoint)
    annotated = [row for _, row in read_jsonl(scored)]
    labelled = label_sft_rows(rows, annotated) if is_sft else sdg_to_sft(annotated)
    path = out_dir / "train.jsonl"
    write_jsonl(path, labelled)
    return path


# ---------------------------------------------------------------- experiment=steerlm
def experiment(cfg, run_dir: Path) -> Path:
    """annotate -> steerlm_sft -> generate at steerlm.low and steerlm.high of steerlm.attribute -> report.

    Layout: <run dir>/annotate/ (labelled train.jsonl), sft/ (a stage=steerlm_sft run, with
    recipe.json and eval hooks), generate/<attribute>_<value>.jsonl, report.json and report.md.
    """
    from eval.clients import SamplingParams
    from recipes import loop
    from recipes.backends import torch_backend
    from recipes.evaluate import hf_client

    s = cfg.steerlm
    if s.attribute not in ATTRIBUTE_NAMES or s.attribute == "lang":
        raise ValueError(f"steerlm.attribute={s.attribute!r} is not a SteerLM attribute ({', '.join(ATTRIBUTE_NAMES[:-1])})")
    for key in ("low", "high"):
        check_value(s.attribute, s[key], "steerlm")
    train_file = labelled_file(cfg, run_dir / "annotate")

    sft_cfg = copy.deepcopy(cfg)
    sft_cfg.stage.name = "steerlm_sft"
    sft_cfg.model.data.train_ds.file_path = str(train_file)
    sft_dir = run_dir / "sft"
    sft_dir.mkdir(parents=True, exist_ok=True)
    loop.save_config(sft_cfg, sft_dir)
    ckpt = Path(torch_backend.run(sft_cfg, sft_dir))

    convs = load_prompts(cfg.steer) or experiment_prompts(cfg, train_file)
    spec = read_spec(ckpt)
    client = hf_client(ckpt, "nemotron", cfg.eval.generator.batch_size, cfg.logger.progress_bar,
                       device=loop.pick_device(cfg.trainer).type, seed=cfg.seed)
    params = SamplingParams(max_new_tokens=cfg.steer.max_new_tokens, temperature=cfg.steer.temperature,
                            top_p=cfg.steer.top_p)
    system = cfg.steer.system if cfg.steer.system is not None else STEERLM_SYSTEM_PROMPT
    settings = []
    for value in (s.low, s.high):
        values = resolve(cfg.steer, spec, {s.attribute: value})
        path = run_dir / "generate" / f"{s.attribute}_{value}.jsonl"
        rows = generate(client, convs, values, params, system)
        write_jsonl(path, rows)
        settings.append({"value": value, "file": str(path), **length_stats(rows),
                         **rm_score(cfg, path, s.attribute)})
    report = {"attribute": s.attribute, "checkpoint": str(ckpt), "train_file": str(train_file),
              "reward_model": cfg.annotate.reward_model, "prompts": len(convs), "settings": settings}
    report["effect"] = {k: settings[1][k] - settings[0][k] for k in settings[0]
                        if k.startswith(("mean_", "rm_")) and settings[0][k] is not None and settings[1][k] is not None}
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(run_dir / "report.md", report_markdown(report))
    print(report_markdown(report))
    return run_dir / "report.json"


def experiment_prompts(cfg, train_file: Path) -> list[list[dict]]:
    """steerlm.num_prompts distinct prompts: the validation file's if given, else the training file's."""
    path = cfg.model.data.validation_ds.file_path or str(train_file)
    seen, convs = set(), []
    for line, row in read_jsonl(path):
        conv = conversation_of(row, f"{Path(path).name}:{line}")
        key = json.dumps(conv)
        if key not in seen:
            seen.add(key)
            convs.append(conv)
        if len(convs) == cfg.steerlm.num_prompts:
            break
    return convs


def length_stats(rows: list[dict]) -> dict:
    n = max(len(rows), 1)
    return {"n": len(rows), "mean_chars": sum(len(r["response"]) for r in rows) / n,
            "mean_words": sum(len(r["response"].split()) for r in rows) / n}


def rm_score(cfg, generations: Path, attribute: str) -> dict:
    """The reward model's own mean score of `attribute` on the generations (None without an RM that has it)."""
    from recipes import loop
    from recipes.reward_model import read_rm_config
    from recipes.rm_annotate import annotate_file

    key = f"rm_{attribute}"
    rm_dir = cfg.annotate.reward_model
    if not rm_dir or str(rm_dir).startswith(("http://", "https://")) or \
            attribute not in read_rm_config(rm_dir)["trained_attributes"]:
        return {key: None}  # an endpoint's attributes are not known before asking: not measured
    scored = generations.with_name(generations.stem + ".scored.jsonl")
    annotate_file(generations, scored, rm_dir, cfg.annotate.batch_size, device=loop.pick_device(cfg.trainer),
                  precision=cfg.trainer.precision, progress=False)
    values = [row["attributes"][attribute] for _, row in read_jsonl(scored)]
    return {key: sum(values) / max(len(values), 1)}


def report_markdown(report: dict) -> str:
    a = report["attribute"]
    cols = [k for k in report["settings"][0] if k.startswith(("mean_", "rm_"))]
    lines = [f"# SteerLM: effect of `{a}`", "",
             f"checkpoint `{report['checkpoint']}`, {report['prompts']} prompts, reward model "
             f"`{report['reward_model']}`", "",
             "| " + " | ".join([a, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for st in report["settings"]:
        cells = ["n/a" if st[c] is None else f"{st[c]:.2f}" for c in cols]
        lines.append("| " + " | ".join([str(st["value"]), *cells]) + " |")
    effect = ", ".join(f"{k} {v:+.2f}" for k, v in report["effect"].items())
    lines += ["", f"high - low: {effect}" if effect else "high - low: n/a", ""]
    return "\n".join(lines)


def run(cfg, run_dir: Path) -> Path:
    """stage=steerlm_sft trains; stage=steerlm (experiment=steerlm) runs the whole loop."""
    if cfg.stage.name == "steerlm_sft":
        return train(cfg, run_dir)
    return experiment(cfg, run_dir)
