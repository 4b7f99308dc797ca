"""Chat rendering and loss masking: the one place a conversation becomes tokens.

Two templates:

* `nemotron` mirrors NeMo's `GPTSFTChatDataset` with the `<extra_id_*>` prompt
  tokens of the Nemotron-4 / SteerLM model cards::

      <extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{user}\\n<extra_id_1>Assistant\\n{answer}\\n<extra_id_1>

  Loss rules (NeMo `_mask_targets`): the header and turn 0 are never trained;
  an Assistant turn trains on its value and end-of-turn, not on its name or its
  `<extra_id_2>label` block (labels are conditioning); the next User turn's
  leading `<extra_id_1>`, or the trailing one after the last answer, is trained
  as the end-of-answer signal.
* `hf` uses the tokenizer's own chat template; each assistant message (and
  whatever the template closes it with) is trained.

Masks are computed on characters first and mapped to the real tokenisation of
the whole string through offsets, so they stay exact when a tokenizer merges
characters across a turn boundary (NeMo's per-turn token counting does not):
a token is trained when any of its characters is.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_prep.schemas import END_OF_NAME, END_OF_TURN, LABEL_START, SYSTEM_TURN_START, TURN_START

IGNORE_INDEX = -100
Span = tuple[int, int]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # input_ids where trained, IGNORE_INDEX elsewhere (unshifted)
    truncated: bool = False
    position_ids: list[int] | None = None  # packed rows only (recipes/packing.py): restart per conversation

    @property
    def loss_mask(self) -> list[int]:
        return [int(x != IGNORE_INDEX) for x in self.labels]


def render_nemotron(row: dict) -> tuple[str, list[Span]]:
    """Render an SFT chat row exactly as NeMo does; return (text, trained character spans)."""
    mask_role = row.get("mask", "User")
    gtype = row.get("type")
    text = f"{SYSTEM_TURN_START}System{END_OF_NAME}{row['system']}{END_OF_TURN}"
    spans: list[Span] = []
    turns = row["conversations"]
    for i, turn in enumerate(turns):
        speaker, value, label = turn["from"], turn["value"], turn.get("label")
        start = len(text)
        name = f"{TURN_START}{speaker}{END_OF_NAME}"
        label_block = f"{LABEL_START}{label}{END_OF_NAME}" if isinstance(label, str) and gtype else ""
        if gtype == "TEXT_TO_VALUE":
            body = value + END_OF_TURN + label_block
        else:
            body = label_block + value + END_OF_TURN
        text += name + body
        end = len(text)

        if speaker == mask_role:
            # The leading turn_start of a later masked turn ends the previous answer: train it.
            if i > 1 or (i == 1 and gtype == "TEXT_TO_VALUE"):
                spans.append((start, start + len(TURN_START)))
        elif i == 0 and gtype in ("VALUE_TO_TEXT", None):
            pass  # the first turn is always context
        else:
            trained_from = start + len(name)
            if gtype == "VALUE_TO_TEXT" and label_block:
                trained_from += len(label_block)  # labels are conditioning, not targets
            elif gtype == "TEXT_TO_VALUE" and label_block:
                trained_from = start + len(name) + len(value) + len(END_OF_TURN) + len(LABEL_START)
            spans.append((trained_from, end))
        if speaker != mask_role and i == len(turns) - 1:
            spans.append((len(text), len(text) + len(TURN_START)))
            text += TURN_START
    return text, spans


def to_messages(row: dict) -> list[dict]:
    """An SFT chat row as OpenAI-style messages (system first when non-empty)."""
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for turn in row["conversations"]:
        messages.append({"role": turn["from"].lower(), "content": turn["value"]})
    return messages


def without_empty_system(messages: list[dict]) -> list[dict]:
    """The one rule for system prompts: an empty system message is no system message. SFT rows always have a
    `system` (often ""), message lists may or may not; a tokenizer chat template renders an empty system
    message differently from none (SmolLM2's puts in its own default), so every path drops it."""
    return messages[1:] if messages and messages[0]["role"] == "system" and not messages[0]["content"] else messages


def render_hf(row: dict, tokenizer) -> tuple[str, list[Span]]:
    """Render with the tokenizer's chat template; train each assistant message and its closing tokens."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_template=hf needs a tokenizer with a chat_template; use data.prompt_template=nemotron")
    messages = to_messages(row)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[Span] = []
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise ValueError(
                "the tokenizer's chat template does not render conversations as growing prefixes; "
                "use data.prompt_template=nemotron"
            )
        spans.append((len(prefix), len(upto)))
    return text, spans


def render(row: dict, template: str, tokenizer) -> tuple[str, list[Span]]:
    if template == "nemotron":
        return render_nemotron(row)
    if template == "hf":
        return render_hf(row, tokenizer)
    raise ValueError(f"data.prompt_template must be 'nemotron' or 'hf', got {template!r}")


def char_spans_to_labels(input_ids: list[int], offsets: list[Span], spans: list[Span], n_chars: int) -> list[int]:
    """Labels for a tokenised string: a token is trained when any character it covers is trained."""
    trained = bytearray(n_chars + 1)
    for s, e in spans:
        trained[s:e] = b"\x01" * (e - s)
    labels = []
    for tok, (s, e) in zip(input_ids, offsets):
        hit = any(trained[s:e]) if e > s else bool(trained[s])
        labels.append(tok if hit else IGNORE_INDEX)
    return labels


def encode_text(text: str, spans: list[Span], tokenizer) -> Encoded:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    return Encoded(ids, char_spans_to_labels(ids, list(enc["offset_mapping"]), spans, len(text)))


def encode_chat(row: dict, tokenizer, template: str = "nemotron") -> Encoded:
    """Render and tokenise an SFT chat row; labels hold only the trained tokens."""
    text, spans = render(row, template, tokenizer)
    return encode_text(text, spans, tokenizer)


def truncate(enc: Encoded, max_len: int) -> Encoded:
    if len(enc.input_ids) <= max_len:
        return enc
    return Encoded(enc.input_ids[:max_len], enc.labels[:max_len], truncated=True)


def nemotron_turns(messages: list[dict]) -> str:
    """OpenAI-style messages in the Nemotron template: the header, then every turn with its end-of-turn."""
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    text = f"{SYSTEM_TURN_START}System{END_OF_NAME}{system}{END_OF_TURN}"
    for m in messages:
        name = {"user": "User", "assistant": "Assistant"}[m["role"]]
        text += f"{TURN_START}{name}{END_OF_NAME}{m['content']}{END_OF_TURN}"
    return text


def nemotron_prompt(messages: list[dict]) -> str:
    """A generation prompt in the Nemotron template for OpenAI-style messages, ending at the
    Assistant header (the Nemotron-4-340B-Instruct model card format; stop at `<extra_id_1>`)."""
    return nemotron_turns(messages) + f"{TURN_START}Assistant{END_OF_NAME}"


def render_prompt_response(prompt: list[dict], response: dict, template: str, tokenizer) -> tuple[str, str]:
    """A message-list preference row as (prompt, response) strings; the model scores the response.

    NeMo-Aligner's DPOModelDataset renders the prompt messages (ending with the user turn) and then
    prompt + response message, so the assistant header belongs to the *response*: for the Nemotron tokens
    the response is `<extra_id_1>Assistant\n{content}\n<extra_id_1>`. The same rule for a tokenizer chat
    template: the prompt is the template of the prompt messages without a generation prompt, the response
    is whatever the template adds for the assistant message (its header, the content, its end-of-turn).
    prompt + response is the text SFT renders for the same conversation (the header is not trained in SFT).
    """
    messages = without_empty_system(prompt)
    if template == "nemotron":
        head = nemotron_turns(messages)
        return head, nemotron_turns([*messages, response])[len(head):] + TURN_START
    if template != "hf":
        raise ValueError(f"data.prompt_template must be 'nemotron' or 'hf', got {template!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_template=hf needs a tokenizer with a chat_template; use data.prompt_template=nemotron")
    head = tokenizer.apply_chat_template(messages, tokenize=False)
    full = tokenizer.apply_chat_template([*messages, response], tokenize=False)
    if not full.startswith(head):
        raise ValueError("the tokenizer's chat template does not render the prompt as a prefix of prompt+response; "
                         "use data.prompt_template=nemotron")
    return head, full[len(head):]
