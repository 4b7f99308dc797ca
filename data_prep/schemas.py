"""The one definition of every NeMo JSONL row type this repository reads or writes.

Each `validate_*` function takes a parsed row and returns a list of
`(field, problem)` pairs (empty = valid); `data_prep.jsonl.read_jsonl` turns them
into `file:line: field: problem` errors. Training code and data-prep scripts
import these; nothing else re-declares a format.

Shapes (NeMo-Aligner 0.7 is the source of truth, see docs/formats.md):

SFT chat (NeMo `GPTSFTChatDataset`, `model.data.chat=True`)::

    {"system": str, "conversations": [{"from": "User"|"Assistant", "value": str, "label": str|null}, ...],
     "mask": "User", "type": "VALUE_TO_TEXT"|"TEXT_TO_VALUE"|null}

Regression reward model (NeMo-Aligner `RegressionRewardModelDataset`)::

    {"text": "<extra_id_0>System\n...<extra_id_1>Assistant\n{response}\n<extra_id_2>", "label": [9 numbers]}

Pairwise reward model (`RewardModelDataset`): two adjacent lines per pair, chosen first::

    {"text": prompt || chosen}
    {"text": prompt || rejected}

DPO / RPO pair (`DPOModelDataset`)::

    {"prompt": str | [{"role", "content"}, ...], "chosen_response": str | {"role": "assistant", "content"},
     "rejected_response": (same kind as chosen), "chosen_reward"?: float, "rejected_reward"?: float}

SDG record (our synthetic-data interchange, docs/sdg_format.md) and the input
rows of HelpSteer2 / HelpSteer2-Preference are validated here too.

Builders (`sft_chat_row`, `regression_row`, `pairwise_rm_rows`, `dpo_row`) are
the only way data-prep scripts make output rows: they validate what they build,
so a script can never write a row NeMo-Aligner would reject.
"""

from __future__ import annotations

import re

# --- The Nemotron / SteerLM template (NeMo chat_prompt_tokens with <extra_id_*> overrides) ---
SYSTEM_TURN_START = "<extra_id_0>"
TURN_START = "<extra_id_1>"
LABEL_START = "<extra_id_2>"
END_OF_TURN = "\n"
END_OF_NAME = "\n"
NEMOTRON_SPECIAL_TOKENS = (SYSTEM_TURN_START, TURN_START, LABEL_START)

# examples/nlp/data/steerlm/common.py in NeMo-Aligner
STEERLM_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
OPEN_ASSISTANT_ATTRIBUTES = ["quality", "toxicity", "humor", "creativity"]
HELPSTEER_ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
# Slot order of the 9-output regression reward model; -100 marks a missing attribute.
ALL_STEERLM_ATTRIBUTES = OPEN_ASSISTANT_ATTRIBUTES + HELPSTEER_ATTRIBUTES

ROLES = ("User", "Assistant")
SFT_TYPES = ("VALUE_TO_TEXT", "TEXT_TO_VALUE")

Problems = list[tuple[str, str]]


def _type_name(x) -> str:
    return "null" if x is None else type(x).__name__


def _sft_chat_ok(row: dict) -> bool:
    """Every rule of validate_sft_chat in one pass (data prep builds tens of thousands of rows a second)."""
    convs = row.get("conversations")
    if type(row.get("system")) is not str or type(convs) is not list or not convs:
        return False
    if row.get("mask", "User") not in ROLES or row.get("type") not in (None, *SFT_TYPES):
        return False
    prev = "Assistant"  # so that the first turn must be User
    for turn in convs:
        if type(turn) is not dict:
            return False
        speaker, label, value = turn.get("from"), turn.get("label"), turn.get("value")
        if speaker == prev or speaker not in ROLES or type(value) is not str:
            return False
        if speaker == "Assistant" and (not value or value.isspace()):
            return False
        if label is not None and type(label) is not str:
            return False
        prev = speaker
    return prev == "Assistant"


def validate_sft_chat(row: dict) -> Problems:
    """Check an SFT chat row the way NeMo's GPTSFTChatDataset would use it, plus what training needs.

    Conversations must start with a User turn, alternate, and end with an
    Assistant turn (otherwise there is nothing to learn from the row); an Assistant
    answer must not be empty (it would train nothing but the end-of-turn token).
    """
    if _sft_chat_ok(row):
        return []  # fast path for the common, valid row; the code below explains what is wrong otherwise
    problems: Problems = []
    system = row.get("system")
    if "system" not in row:
        problems.append(("system", "missing (use \"\" for no system prompt)"))
    elif not isinstance(system, str):
        problems.append(("system", f"must be a string, got {_type_name(system)}"))

    convs = row.get("conversations")
    if not isinstance(convs, list) or not convs:
        what = "missing" if convs is None else f"must be a non-empty list, got {_type_name(convs)}"
        return problems + [("conversations", what)]

    for i, turn in enumerate(convs):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.append((where, f"must be an object, got {_type_name(turn)}"))
            continue
        speaker = turn.get("from")
        if speaker not in ROLES:
            problems.append((f"{where}.from", f"must be 'User' or 'Assistant', got {speaker!r}"))
        value = turn.get("value")
        if not isinstance(value, str):
            problems.append((f"{where}.value", f"must be a string, got {_type_name(value)}"))
        label = turn.get("label")
        if label is not None and not isinstance(label, str):
            problems.append((f"{where}.label", f"must be a string or null, got {_type_name(label)}"))
        if speaker == "Assistant" and isinstance(value, str) and not value.strip():
            problems.append((f"{where}.value", "the Assistant answer is empty"))
    if problems:
        return problems

    speakers = [t["from"] for t in convs]
    if speakers[0] != "User":
        problems.append(("conversations[0].from", "the first turn must be 'User'"))
    for i in range(1, len(speakers)):
        if speakers[i] == speakers[i - 1]:
            problems.append((f"conversations[{i}].from", f"turns must alternate, got two {speakers[i]!r} turns in a row"))
            break
    if speakers[-1] != "Assistant":
        problems.append((f"conversations[{len(convs) - 1}].from", "the last turn must be 'Assistant'"))

    mask = row.get("mask", "User")
    if mask not in ROLES:
        problems.append(("mask", f"must be 'User' or 'Assistant', got {mask!r}"))
    sft_type = row.get("type")
    if sft_type is not None and sft_type not in SFT_TYPES:
        problems.append(("type", f"must be 'VALUE_TO_TEXT', 'TEXT_TO_VALUE' or null, got {sft_type!r}"))
    return problems


# --- Templates (the strings of examples/nlp/data/steerlm/common.py, built from the tokens above) ---
SYSTEM_TEMPLATE = SYSTEM_TURN_START + "System" + END_OF_NAME + "{value}" + END_OF_TURN
USER_TEMPLATE = TURN_START + "User" + END_OF_NAME + "{value}" + END_OF_TURN
ASSISTANT_TEMPLATE = TURN_START + "Assistant" + END_OF_NAME + "{value}" + END_OF_TURN

# --- Regression labels ---
NUM_ATTRIBUTES = len(ALL_STEERLM_ATTRIBUTES)  # 9: NeMo-Aligner's scripts and recipes all use 9 slots
MISSING_LABEL = -100  # model.regression.loss_mask_val: the slot is masked out of the MSE
HELPSTEER_RANGE = (0.0, 4.0)  # HelpSteer/HelpSteer2 labels are 0-4 Likert integers
# Slot 0 (quality) also carries HelpSteer2-Preference strength (-3..3), and OASST labels are round(4v),
# so the four OpenAssistant slots accept [-3, 4]; the five HelpSteer slots accept [0, 4].
LABEL_RANGES = [(-3.0, 4.0)] * len(OPEN_ASSISTANT_ATTRIBUTES) + [HELPSTEER_RANGE] * len(HELPSTEER_ATTRIBUTES)
PREFERENCE_STRENGTH_RANGE = (-3.0, 3.0)  # negative: response_1 is better; >= 0: response_2
# Attributes in SDG records come from a reward model's raw regression head, which overshoots the 0-4 scale a
# little; a value further out means a different scale (0-10, 1-7) and stops the run.
SDG_ATTRIBUTE_RANGE = (-1.0, 5.0)

# Attribute weights -> one scalar reward (over the 9 slots). HelpSteer2 paper App. H.
NEMOTRON_340B_REWARD_WEIGHTS = (0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33)
LLAMA3_70B_REWARD_WEIGHTS = (0.0, 0.0, 0.0, 0.0, 0.65, 0.8, 0.45, 0.55, -0.4)

OPENAI_ROLES = ("system", "user", "assistant")


def _got(x) -> str:
    """What a value is, for "must be a non-empty ..." messages."""
    return "an empty list" if x == [] else "an empty object" if x == {} else _type_name(x)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_number(x, where: str, lo: float | None = None, hi: float | None = None) -> Problems:
    if not _is_number(x):
        return [(where, f"must be a number, got {_type_name(x)}")]
    if x != x or x in (float("inf"), float("-inf")):
        return [(where, f"must be finite, got {x}")]
    if lo is not None and not lo <= x <= hi:
        return [(where, f"{x} is out of range [{lo:g}, {hi:g}]")]
    return []


def _check_str(row: dict, key: str, where: str | None = None) -> Problems:
    value = row.get(key)
    if key not in row:
        return [(where or key, "missing")]
    if not isinstance(value, str):
        return [(where or key, f"must be a string, got {_type_name(value)}")]
    return []


# --- Regression reward model -------------------------------------------------------------------------------


def _labels_ok(label: list) -> bool:
    present = False
    for v, (lo, hi) in zip(label, LABEL_RANGES):  # a plain loop: ~3x faster than all(<generator>)
        if type(v) is not float and type(v) is not int:
            return False
        if v != MISSING_LABEL:
            if not lo <= v <= hi:  # NaN fails here too
                return False
            present = True
    return present


def validate_regression_rm(row: dict, num_attributes: int = NUM_ATTRIBUTES) -> Problems:
    """`{"text": str, "label": [num_attributes numbers]}`; -100 marks a missing attribute.

    With the standard 9 slots each present value must lie in its slot's range
    (`LABEL_RANGES`); other widths are only checked for finiteness. At least one
    slot must be present, or the row trains nothing.
    """
    label, text = row.get("label"), row.get("text")
    if type(text) is str and text and not text.isspace() and type(label) is list \
            and len(label) == num_attributes == NUM_ATTRIBUTES and _labels_ok(label):
        return []  # fast path for the common, valid row; the code below explains what is wrong otherwise
    problems = _check_text(row)
    if not isinstance(label, list):
        what = "missing" if "label" not in row else f"must be a list of numbers, got {_type_name(label)}"
        return problems + [("label", what)]
    if len(label) != num_attributes:
        return problems + [("label", f"must have {num_attributes} values, got {len(label)}")]
    for i, v in enumerate(label):
        if _is_number(v) and v == MISSING_LABEL:
            continue
        lo, hi = LABEL_RANGES[i] if num_attributes == NUM_ATTRIBUTES else (None, None)
        problems += _check_number(v, f"label[{i}]", lo, hi)
    if not problems and all(v == MISSING_LABEL for v in label):
        problems.append(("label", f"every value is {MISSING_LABEL} (missing); at least one attribute must be given"))
    return problems


# --- Pairwise (Bradley-Terry) reward model -----------------------------------------------------------------


def _check_text(row: dict) -> Problems:
    """A reward model's input `text`: a non-empty string (an empty one scores nothing)."""
    problems = _check_str(row, "text")
    if not problems and not row["text"].strip():
        problems.append(("text", "is empty"))
    return problems


def validate_pairwise_rm(row: dict) -> Problems:
    """One line of a pairwise RM file: `{"text": prompt || response}` (chosen on even lines, rejected on odd)."""
    return _check_text(row)


def validate_pairwise_rm_file(rows: list[dict]) -> Problems:
    """File-level rule of `RewardModelDataset`: an even number of lines, each pair of two different texts."""
    problems = [p for r in rows for p in validate_pairwise_rm(r)]
    if len(rows) % 2:
        problems.append(("<file>", f"has {len(rows)} lines; pairs need an even number (chosen, rejected, ...)"))
    for i in range(0, len(rows) - 1, 2):
        if rows[i].get("text") == rows[i + 1].get("text"):
            problems.append((f"<lines {i + 1}-{i + 2}>", "chosen and rejected texts are identical"))
    return problems


# --- DPO / RPO pairs ---------------------------------------------------------------------------------------


def _each_message(msgs: list, where: str) -> Problems:
    """Every item an object with a known `role` and a string `content`."""
    problems: Problems = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append((f"{where}[{i}]", f"must be an object, got {_type_name(m)}"))
            continue
        if m.get("role") not in OPENAI_ROLES:
            problems.append((f"{where}[{i}].role", f"must be one of {', '.join(OPENAI_ROLES)}, got {m.get('role')!r}"))
        problems += _check_str(m, "content", f"{where}[{i}].content")
    return problems


def _check_messages(msgs, where: str) -> Problems:
    if not msgs:
        return [(where, "must be a non-empty string or list of messages")]
    problems = _each_message(msgs, where)
    if problems:
        return problems
    roles = [m["role"] for m in msgs]
    if roles.count("system") > 1 or ("system" in roles and roles[0] != "system"):
        problems.append((where, "at most one system message, and it must come first"))  # NeMo raises on two
    if roles[-1] != "user":
        problems.append((f"{where}[{len(msgs) - 1}].role", "the last prompt message must be 'user'"))
    return problems


def validate_dpo_pair(row: dict) -> Problems:
    """A `DPOModelDataset` row: templated strings, or OpenAI messages with assistant-message responses."""
    prompt = row.get("prompt")
    if "prompt" not in row:
        problems: Problems = [("prompt", "missing")]
    elif isinstance(prompt, str):
        problems = []
    elif isinstance(prompt, list):
        problems = _check_messages(prompt, "prompt")
    else:
        problems = [("prompt", f"must be a string or a list of messages, got {_type_name(prompt)}")]

    for key in ("chosen_response", "rejected_response"):
        resp = row.get(key)
        if key not in row:
            problems.append((key, "missing"))
        elif isinstance(prompt, list):
            # NeMo renders a messages prompt with the model's template and appends the response message.
            if not isinstance(resp, dict):
                problems.append((key, f"must be an assistant message (the prompt is a message list), got {_type_name(resp)}"))
            elif resp.get("role") != "assistant" or not isinstance(resp.get("content"), str):
                problems.append((key, "must be {\"role\": \"assistant\", \"content\": str}"))
            elif not resp["content"].strip():
                problems.append((f"{key}.content", "is empty (the pair would train on no answer)"))
        elif not isinstance(resp, str):
            problems.append((key, f"must be a string (the prompt is a string), got {_type_name(resp)}"))
        elif not resp.removesuffix(TURN_START).strip():
            problems.append((key, "is empty (the pair would train on no answer)"))
    if not problems and row["chosen_response"] == row["rejected_response"]:
        problems.append(("rejected_response", "is identical to chosen_response (the pair teaches nothing)"))

    for key in ("chosen_reward", "rejected_reward"):
        if key in row and row[key] is not None:
            problems += _check_number(row[key], key)
    return problems


# --- TRL rows (Hugging Face TRL's dataset formats), accepted wherever SFT and DPO/RPO rows are read ---------
# SFT, conversational language modeling:  {"messages": [{"role": "system"?, ...}, {"role": "user", ...},
#                                           {"role": "assistant", ...}, ...]}
# DPO/RPO, preference (TRL's standard and conversational formats, explicit or implicit prompt):
#   {"prompt": str, "chosen": str, "rejected": str}                        (text used as it is)
#   {"prompt": [messages ending with user], "chosen": [assistant message], "rejected": [assistant message]}
#   {"chosen": [messages ... assistant], "rejected": [messages ... assistant]}  (the shared start is the prompt)
#   optional "score_chosen" / "score_rejected" become chosen_reward / rejected_reward.
# Each is converted to our row (to_sft_chat, to_dpo_pair) right after validation, so training sees one shape.

TRL_SCORES = (("score_chosen", "chosen_reward"), ("score_rejected", "rejected_reward"))


def _check_conversation(msgs, where: str) -> Problems:
    """System (optional, first), then user/assistant turns alternating from user and ending with assistant."""
    if not isinstance(msgs, list) or not msgs:
        return [(where, f"must be a non-empty list of messages, got {_got(msgs)}")]
    problems = _each_message(msgs, where)
    if problems:
        return problems
    roles = [m["role"] for m in msgs]
    start = 1 if roles[0] == "system" else 0
    for i in range(start, len(roles)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != want:
            return [(f"{where}[{i}].role", f"must be {want!r}: after an optional first system message, turns "
                     f"alternate user, assistant, ... (got {roles[i]!r})")]
    if roles[-1] != "assistant":
        return [(f"{where}[{len(roles) - 1}].role", "the last message must be 'assistant' (nothing to train on otherwise)")]
    return []


def validate_messages_row(row: dict) -> Problems:
    """A TRL conversational SFT row: `{"messages": [...]}`."""
    return _check_conversation(row.get("messages"), "messages")


def to_sft_chat(row: dict) -> dict:
    """Any accepted SFT row as our NeMo chat row (a TRL `messages` row converted; a NeMo row as it is)."""
    if "messages" not in row:
        return row
    msgs = row["messages"]
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    turns = [{"from": m["role"].capitalize(), "value": m["content"], "label": None} for m in msgs if m["role"] != "system"]
    return {"system": system, "conversations": turns, "mask": "User", "type": None}


def validate_sft_row(row: dict) -> Problems:
    """An SFT row in either accepted format: NeMo chat (validate_sft_chat) or TRL `messages`."""
    return validate_messages_row(row) if "messages" in row else validate_sft_chat(row)


def _trl_split(row: dict) -> tuple:
    """(prompt, chosen, rejected) of a TRL preference row in our terms, or a problem string."""
    prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) or isinstance(rejected, str):
        if not (isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str)):
            return "a standard (text) row needs string prompt, chosen and rejected (an implicit prompt is not split)"
        return prompt, chosen, rejected
    if not (isinstance(chosen, list) and isinstance(rejected, list)) or not chosen or not rejected:
        return "chosen and rejected must both be strings or both non-empty message lists"
    if prompt is None:  # implicit prompt: the messages both conversations start with
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if not isinstance(prompt, list):
        return "with message-list chosen/rejected, prompt must be a message list too (or absent: the shared start)"
    if len(chosen) != 1 or len(rejected) != 1:
        return "chosen and rejected must each hold exactly one assistant message after the prompt"
    return prompt, chosen[0], rejected[0]


def to_dpo_pair(row: dict) -> dict:
    """Any accepted preference row as our DPO row (TRL's converted; NeMo's DPOModelDataset shape as it is)."""
    if "chosen" not in row and "rejected" not in row:
        return row
    prompt, chosen, rejected = _trl_split(row)
    out = {"prompt": prompt, "chosen_response": chosen, "rejected_response": rejected}
    out.update({ours: row[theirs] for theirs, ours in TRL_SCORES if row.get(theirs) is not None})
    return out


def validate_preference_row(row: dict) -> Problems:
    """A DPO/RPO row in either accepted format: NeMo's DPOModelDataset (validate_dpo_pair) or TRL's preference."""
    if "chosen" not in row and "rejected" not in row:
        return validate_dpo_pair(row)
    split = _trl_split(row)
    if isinstance(split, str):
        return [("chosen", split)]
    theirs = {"chosen_response": "chosen", "rejected_response": "rejected", "chosen_reward": "score_chosen",
              "rejected_reward": "score_rejected"}
    return [(theirs.get(f, f), p) for f, p in validate_dpo_pair(to_dpo_pair(row))]


# --- Message lists for preference rows (what data prep writes) ---------------------------------------------

_EMBEDDED_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


def split_turns(prompt: str) -> list[tuple[str, str]]:
    """A prompt string holding earlier turns in the Nemotron template (HelpSteer2's multi-turn prompts:
    `q1\n<extra_id_1>Assistant\na1\n<extra_id_1>User\nq2`) as (role, value) turns; one User turn otherwise."""
    parts = _EMBEDDED_TURN.split(prompt)
    turns = [("User", parts[0]), *zip(parts[1::2], parts[2::2])]
    roles = [r for r, _ in turns]
    if roles[-1] == "User" and all(a != b for a, b in zip(roles, roles[1:])):
        return turns
    return [("User", prompt)]


def chat_messages(system: str, turns: list[tuple[str, str]]) -> list[dict]:
    """OpenAI-style messages of a prompt: the system message (even when empty, as NeMo-Aligner's examples
    write it), then the (role, value) turns. Training renders them in the policy's template."""
    return [{"role": "system", "content": system}] + [{"role": role.lower(), "content": value} for role, value in turns]


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- Input rows: HelpSteer2, HelpSteer2-Preference, SDG ----------------------------------------------------


def validate_helpsteer2_row(row: dict) -> Problems:
    """A HelpSteer2 (or HelpSteer v1) row: prompt, response and the five 0-4 attributes."""
    if type(row.get("prompt")) is str and type(row.get("response")) is str:
        for a in HELPSTEER_ATTRIBUTES:
            v = row.get(a)
            if (type(v) is not int and type(v) is not float) or not 0 <= v <= 4:  # NaN fails `0 <= v`
                break
        else:
            return []  # fast path; the code below names the problem
    problems = _check_str(row, "prompt") + _check_str(row, "response")
    for attr in HELPSTEER_ATTRIBUTES:
        if attr not in row:
            problems.append((attr, "missing"))
        else:
            problems += _check_number(row[attr], attr, *HELPSTEER_RANGE)
    return problems


def validate_helpsteer2_preference_row(row: dict) -> Problems:
    """A HelpSteer2-Preference row (`data_dir="preference"`): two responses and a -3..3 strength."""
    problems = _check_str(row, "prompt") + _check_str(row, "response_1") + _check_str(row, "response_2")
    if "preference_strength" not in row:
        problems.append(("preference_strength", "missing"))
    else:
        problems += _check_number(row["preference_strength"], "preference_strength", *PREFERENCE_STRENGTH_RANGE)
    if "split" in row and row["split"] not in ("train", "validation"):
        problems.append(("split", f"must be 'train' or 'validation', got {row['split']!r}"))
    return problems


def validate_daring_anteater_row(row: dict) -> Problems:
    """An nvidia/Daring-Anteater row (dataset card: `conversations`, `mask`, `system`, `dataset`): a NeMo chat
    row whose turns may carry extra keys; it must be a trainable conversation (see validate_sft_chat)."""
    problems: Problems = []
    for key in ("system", "dataset"):
        if key in row and row[key] is not None and not isinstance(row[key], str):
            problems.append((key, f"must be a string, got {_type_name(row[key])}"))
    if row.get("mask", "User") != "User":
        problems.append(("mask", f"must be 'User' (the turns not trained on), got {row.get('mask')!r}"))
    convs = row.get("conversations")
    if not isinstance(convs, list) or not all(isinstance(t, dict) for t in convs):
        return problems + [("conversations", f"must be a list of turn objects, got {_got(convs)}")]
    chat = {"system": row.get("system") or "", "mask": "User", "conversations": [
        {"from": t.get("from"), "value": t.get("value"), "label": None} for t in convs]}
    return problems + validate_sft_chat(chat)


def _validate_sdg_prompt(row: dict) -> Problems:
    problems: Problems = []
    if "system" in row and not isinstance(row["system"], str):
        problems.append(("system", f"must be a string, got {_type_name(row['system'])}"))
    has_prompt, has_convs = "prompt" in row, "conversations" in row
    if has_prompt == has_convs:
        return problems + [("prompt", "give exactly one of 'prompt' (a string) or 'conversations' (turns ending with User)")]
    if has_prompt:
        return problems + _check_str(row, "prompt")
    convs = row["conversations"]
    if not isinstance(convs, list) or not convs:
        return problems + [("conversations", f"must be a non-empty list of turns, got {_got(convs)}")]
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict):
            problems.append((f"conversations[{i}]", f"must be an object, got {_type_name(turn)}"))
            continue
        if turn.get("from") not in ROLES:
            problems.append((f"conversations[{i}].from", f"must be 'User' or 'Assistant', got {turn.get('from')!r}"))
        problems += _check_str(turn, "value", f"conversations[{i}].value")
    if problems:
        return problems
    speakers = [t["from"] for t in convs]
    if speakers[0] != "User":
        return [("conversations[0].from", "the first turn must be 'User'")]
    for i in range(1, len(speakers)):
        if speakers[i] == speakers[i - 1]:
            return [(f"conversations[{i}].from", f"turns must alternate, got two {speakers[i]!r} turns in a row")]
    if speakers[-1] != "User":
        return [(f"conversations[{len(convs) - 1}].from", "the last turn must be 'User' (the prompt the responses answer)")]
    return []


def _validate_score(obj: dict, where: str, top_level_attributes: bool = False) -> Problems:
    """`reward` (a finite number) and/or `attributes` (names -> numbers); `reward` wins when both are given."""
    prefix = f"{where}." if where else ""
    problems: Problems = []
    if "reward" in obj:
        problems += _check_number(obj["reward"], f"{prefix}reward")
    if "attributes" in obj:
        attrs = obj["attributes"]
        if not isinstance(attrs, dict) or not attrs:
            problems.append((f"{prefix}attributes", f"must be a non-empty object of name -> number, got {_got(attrs)}"))
        else:
            for name, value in attrs.items():
                if name not in ALL_STEERLM_ATTRIBUTES:
                    problems.append((f"{prefix}attributes.{name}", f"unknown attribute (expected one of {', '.join(ALL_STEERLM_ATTRIBUTES)})"))
                else:
                    problems += _check_number(value, f"{prefix}attributes.{name}", *SDG_ATTRIBUTE_RANGE)
    elif top_level_attributes and any(a in obj for a in ALL_STEERLM_ATTRIBUTES):
        for name in ALL_STEERLM_ATTRIBUTES:  # HelpSteer2-style flat columns
            if name in obj:
                problems += _check_number(obj[name], name, *SDG_ATTRIBUTE_RANGE)
    elif "reward" not in obj:
        problems.append((f"{prefix}reward" if where else "reward", "missing: give 'reward' or 'attributes'"))
    return problems


def sdg_attributes(obj: dict) -> dict[str, float]:
    """The attributes of an SDG response or flat row (nested `attributes`, or HelpSteer2-style columns)."""
    if "attributes" in obj:
        return obj["attributes"]
    return {a: obj[a] for a in ALL_STEERLM_ATTRIBUTES if a in obj}


def _check_optional_meta(row: dict, where: str = "") -> Problems:
    prefix = f"{where}." if where else ""
    problems: Problems = []
    for key in ("model", "judge", "category"):
        if key in row and row[key] is not None and not isinstance(row[key], str):
            problems.append((f"{prefix}{key}", f"must be a string, got {_type_name(row[key])}"))
    if "id" in row and row["id"] is not None and not isinstance(row["id"], (str, int)):
        problems.append((f"{prefix}id", f"must be a string or integer, got {_type_name(row['id'])}"))
    return problems


def validate_sdg_record(row: dict) -> Problems:
    """An SDG record: a prompt and its scored `responses` (see docs/sdg_format.md)."""
    problems = _validate_sdg_prompt(row) + _check_optional_meta(row)
    responses = row.get("responses")
    if not isinstance(responses, list) or not responses:
        what = "missing" if "responses" not in row else f"must be a non-empty list, got {_got(responses)}"
        return problems + [("responses", what)]
    for i, resp in enumerate(responses):
        where = f"responses[{i}]"
        if not isinstance(resp, dict):
            problems.append((where, f"must be an object, got {_type_name(resp)}"))
            continue
        problems += _check_str(resp, "text", f"{where}.text") + _validate_score(resp, where) + _check_optional_meta(resp, where)
    return problems


def validate_sdg_flat_row(row: dict) -> Problems:
    """A flat SDG row: one `response` per line, grouped by prompt (HelpSteer2's layout)."""
    return (_validate_sdg_prompt(row) + _check_str(row, "response")
            + _validate_score(row, "", top_level_attributes=True) + _check_optional_meta(row))


def validate_sdg_row(row: dict) -> Problems:
    """Either SDG layout: a record with `responses`, or a flat row with `response`."""
    if "responses" in row:
        return validate_sdg_record(row)
    if "response" in row:
        return validate_sdg_flat_row(row)
    return _validate_sdg_prompt(row) + [("responses", "missing: give 'responses' (a list) or 'response' (one per row)")]


# --- Fields each row type defines ------------------------------------------------------------------------
# Anything else in a row is an unknown field: data prep counts them per input file (report.json
# `unknown_fields`); training reads follow data.unknown_fields (ignore | count, the default: one warning per
# file | error: a bad row). Per type: (top-level fields, {field: fields of the objects it holds}).
_SDG_META = {"id", "category", "model", "judge"}
_SDG_RESPONSE = {"text", "reward", "attributes", *_SDG_META}
KNOWN_FIELDS: dict[str, tuple[set[str], dict[str, set[str]]]] = {
    "sft_chat": ({"system", "conversations", "mask", "type"}, {"conversations": {"from", "value", "label"}}),
    "regression_rm": ({"text", "label"}, {}),
    "pairwise_rm": ({"text"}, {}),
    "dpo_pair": ({"prompt", "chosen_response", "rejected_response", "chosen_reward", "rejected_reward"},
                 {"prompt": {"role", "content"}, "chosen_response": {"role", "content"},
                  "rejected_response": {"role", "content"}}),
    "helpsteer2": ({"prompt", "response", "split", *HELPSTEER_ATTRIBUTES}, {}),
    "helpsteer2_preference": ({"prompt", "response_1", "response_2", "preference_strength", "split"}, {}),
    "sdg": ({"system", "prompt", "conversations", "responses", "response", "reward", "attributes", *_SDG_META,
             *ALL_STEERLM_ATTRIBUTES},
            {"conversations": {"from", "value", "label"}, "responses": _SDG_RESPONSE}),
}


# TRL rows are read wherever our SFT and DPO rows are (to_sft_chat, to_dpo_pair): their own fields are known.
_MESSAGE = {"role", "content"}
KNOWN_FIELDS["trl_messages"] = ({"messages"}, {"messages": _MESSAGE})
KNOWN_FIELDS["trl_preference"] = ({"prompt", "chosen", "rejected", "score_chosen", "score_rejected"},
                                  {"prompt": _MESSAGE, "chosen": _MESSAGE, "rejected": _MESSAGE})


def _row_kind(row: dict, kind: str) -> str:
    if kind == "sft_chat" and "messages" in row:
        return "trl_messages"
    if kind == "dpo_pair" and ("chosen" in row or "rejected" in row):
        return "trl_preference"
    return kind


def unknown_fields(row: dict, kind: str) -> list[str]:
    """The fields of `row` its type (a KNOWN_FIELDS key) does not define: `extra`, `conversations[].extra`."""
    top, nested = KNOWN_FIELDS[_row_kind(row, kind)]
    out = [k for k in row if k not in top]
    for key, known in nested.items():
        value = row.get(key)
        items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
        suffix = "[]" if isinstance(value, list) else ""
        extra = {k for item in items if isinstance(item, dict) for k in item if k not in known}
        out += [f"{key}{suffix}.{k}" for k in sorted(extra)]
    return out


# --- Rendering (the Nemotron / SteerLM template) -----------------------------------------------------------


def render_turns(system: str, turns: list[tuple[str, str]]) -> str:
    """`<extra_id_0>System\\n{system}\\n` + `<extra_id_1>{role}\\n{value}\\n` per (role, value) turn."""
    parts = [SYSTEM_TEMPLATE.format(value=system)]
    for role, value in turns:
        parts.append(f"{TURN_START}{role}{END_OF_NAME}{value}{END_OF_TURN}")
    return "".join(parts)


def nemotron_prompt(system: str, turns: list[tuple[str, str]]) -> str:
    """A DPO prompt string: the conversation so far, ending at the Assistant header."""
    return render_turns(system, turns) + f"{TURN_START}Assistant{END_OF_NAME}"


def nemotron_response(text: str) -> str:
    """A DPO response string: the answer and the `<extra_id_1>` that ends the turn (trained as the stop signal)."""
    return text + END_OF_TURN + TURN_START


def regression_text(system: str, turns: list[tuple[str, str]]) -> str:
    """A reward-model input: the conversation up to and including the scored answer, then `<extra_id_2>`."""
    return render_turns(system, turns) + LABEL_START


def steerlm_label(attributes: dict, only: tuple[str, ...] | None = None) -> str:
    """`helpfulness:3,correctness:4,...` in ALL_STEERLM_ATTRIBUTES order; values printed as given (3 -> "3")."""
    return ",".join(f"{a}:{attributes[a]}" for a in ALL_STEERLM_ATTRIBUTES
                    if a in attributes and (only is None or a in only))


def regression_label(attributes: dict, only: tuple[str, ...] | None = None) -> list[float]:
    """The 9-slot regression label of the attributes `steerlm_label` prints (-100 for the others), i.e. what
    process_to_regression_format.py parses back out of that label string."""
    names = set(ALL_STEERLM_ATTRIBUTES if only is None else only)
    return [float(attributes[a]) if a in attributes and a in names else -100.0 for a in ALL_STEERLM_ATTRIBUTES]


def weighted_reward(attributes: dict, weights) -> float:
    """Σ w_i · attribute_i over the 9 slots (attributes by name); a slot with zero weight may be missing."""
    total = 0.0
    for name, w in zip(ALL_STEERLM_ATTRIBUTES, weights):
        if w:
            v = attributes.get(name)
            if v is None:
                raise ValueError(f"attribute {name!r} is missing but has weight {w:g}")
            total += w * v
    return total


# --- Row builders: every output row goes through one of these ----------------------------------------------


class InvalidRow(ValueError):
    """A builder was asked to make a row its own schema rejects (a bug in the caller, not bad input)."""


def _checked(row: dict, problems: Problems) -> dict:
    if problems:
        raise InvalidRow("; ".join(f"{f}: {p}" for f, p in problems))
    return row


def sft_chat_row(system: str, turns: list[tuple[str, str]], answer: str, label: str | None = None) -> dict:
    """An SFT chat row: the prompt turns, then the Assistant `answer` (with an optional SteerLM label)."""
    convs = [{"from": role, "value": value, "label": None} for role, value in turns]
    convs.append({"from": "Assistant", "value": answer, "label": label})
    row = {"system": system, "conversations": convs, "mask": "User", "type": "VALUE_TO_TEXT"}
    return _checked(row, validate_sft_chat(row))


def regression_row(text: str, label: list[float]) -> dict:
    return _checked({"text": text, "label": label}, validate_regression_rm({"text": text, "label": label}))


def pairwise_rm_rows(chosen_text: str, rejected_text: str) -> tuple[dict, dict]:
    """The two adjacent lines of one pair, chosen first."""
    rows = [{"text": chosen_text}, {"text": rejected_text}]
    _checked(rows[0], validate_pairwise_rm_file(rows))
    return rows[0], rows[1]


def dpo_row(prompt, chosen, rejected, chosen_reward: float | None = None, rejected_reward: float | None = None) -> dict:
    row = {"prompt": prompt, "chosen_response": chosen, "rejected_response": rejected}
    if chosen_reward is not None:
        row["chosen_reward"] = chosen_reward
    if rejected_reward is not None:
        row["rejected_reward"] = rejected_reward
    return _checked(row, validate_dpo_pair(row))
