"""Rendering and loss masks: golden strings for both templates, token-exact masks."""

from recipes.chat import IGNORE_INDEX, encode_chat, encode_text, nemotron_prompt, render_hf, render_nemotron
from recipes.models import train_tiny_tokenizer

SYS = "A chat between a curious user and an artificial intelligence assistant."
ONE = {"system": SYS, "mask": "User", "type": None,
       "conversations": [{"from": "User", "value": "Hi", "label": None},
                         {"from": "Assistant", "value": "Hello!", "label": None}]}
TWO = {"system": "", "mask": "User", "type": None,
       "conversations": [{"from": "User", "value": "Q1", "label": None},
                         {"from": "Assistant", "value": "A1", "label": None},
                         {"from": "User", "value": "Q2", "label": None},
                         {"from": "Assistant", "value": "A2", "label": None}]}
LABELLED = {"system": SYS, "mask": "User", "type": "VALUE_TO_TEXT",
            "conversations": [{"from": "User", "value": "Hi", "label": None},
                              {"from": "Assistant", "value": "Hello!", "label": "helpfulness:4,verbosity:1"}]}


def trained_text(text, spans):
    return "|".join(text[s:e] for s, e in spans)


def test_nemotron_single_turn_golden():
    text, spans = render_nemotron(ONE)
    assert text == (f"<extra_id_0>System\n{SYS}\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\nHello!\n<extra_id_1>")
    # The answer with its end-of-turn newline, then the trailing turn_start that ends it.
    assert trained_text(text, spans) == "Hello!\n|<extra_id_1>"


def test_nemotron_multi_turn_golden():
    text, spans = render_nemotron(TWO)
    assert text == ("<extra_id_0>System\n\n<extra_id_1>User\nQ1\n<extra_id_1>Assistant\nA1\n"
                    "<extra_id_1>User\nQ2\n<extra_id_1>Assistant\nA2\n<extra_id_1>")
    # The second User turn's leading <extra_id_1> is trained: it ends the first answer.
    assert trained_text(text, spans) == "A1\n|<extra_id_1>|A2\n|<extra_id_1>"


def test_nemotron_label_block_is_conditioning_not_target():
    text, spans = render_nemotron(LABELLED)
    assert text.endswith("<extra_id_1>Assistant\n<extra_id_2>helpfulness:4,verbosity:1\nHello!\n<extra_id_1>")
    assert trained_text(text, spans) == "Hello!\n|<extra_id_1>"


def test_text_to_value_trains_the_label():
    row = dict(LABELLED, type="TEXT_TO_VALUE")
    text, spans = render_nemotron(row)
    assert text.endswith("<extra_id_1>Assistant\nHello!\n<extra_id_2>helpfulness:4,verbosity:1\n<extra_id_1>")
    assert trained_text(text, spans) == "helpfulness:4,verbosity:1\n|<extra_id_1>"


def test_first_turn_is_never_trained_and_mask_role_assistant():
    # mask="Assistant": the User turns become the targets (NeMo allows any mask role).
    row = dict(TWO, mask="Assistant")
    text, spans = render_nemotron(row)
    assert trained_text(text, spans) == "Q2\n|<extra_id_1>"


def _tiny_tokenizer():
    return train_tiny_tokenizer(["Hi there. Hello! Q1 A1 Q2 A2 a chat between a curious user"] * 5, vocab_size=300)


def test_exact_token_mask_nemotron_multi_turn():
    tok = _tiny_tokenizer()
    enc = encode_chat(TWO, tok, "nemotron")
    assert len(enc.input_ids) == len(enc.labels)
    trained = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.decode(trained) == "A1\n<extra_id_1>A2\n<extra_id_1>"
    # Exactly the tokens of the answers and their closing <extra_id_1>, position by position.
    eid1 = tok.convert_tokens_to_ids("<extra_id_1>")
    ids = enc.input_ids
    expected = [IGNORE_INDEX] * len(ids)
    starts = [i for i, t in enumerate(ids) if t == eid1]  # 0:User 1:Assistant 2:User 3:Assistant 4:trailing
    a1 = tok("A1\n", add_special_tokens=False)["input_ids"]
    a2 = tok("A2\n", add_special_tokens=False)["input_ids"]
    s1 = starts[1] + len(tok("<extra_id_1>Assistant\n", add_special_tokens=False)["input_ids"])
    expected[s1 : s1 + len(a1)] = a1
    expected[starts[2]] = eid1
    s2 = starts[3] + len(tok("<extra_id_1>Assistant\n", add_special_tokens=False)["input_ids"])
    expected[s2 : s2 + len(a2)] = a2
    expected[starts[4]] = eid1
    assert enc.labels == expected
    assert enc.loss_mask == [int(x != IGNORE_INDEX) for x in expected]


def test_hf_template_golden_and_mask():
    tok = _tiny_tokenizer()
    text, spans = render_hf(TWO, tok)
    assert text == "<|user|>\nQ1</s>\n<|assistant|>\nA1</s>\n<|user|>\nQ2</s>\n<|assistant|>\nA2</s>\n"
    assert trained_text(text, spans) == "A1</s>\n|A2</s>\n"
    text, spans = render_hf(ONE, tok)
    assert text == f"<|system|>\n{SYS}</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n"
    enc = encode_chat(ONE, tok, "hf")
    assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "Hello!</s>\n"


def test_mask_is_exact_when_tokens_merge_across_the_boundary():
    """A tokenizer with no pre-tokenizer learns merges such as 't\\nH' that span the masked
    'Assistant\\n' and the trained answer; the straddling token must be trained, and every
    untrained token must lie wholly outside the trained characters."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    text, spans = render_nemotron(ONE)
    raw = Tokenizer(models.BPE())
    raw.train_from_iterator([text] * 50, trainers.BpeTrainer(vocab_size=120, show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    s0 = spans[0][0]
    straddling = [i for i, (a, b) in enumerate(offsets) if a < s0 < b]
    assert straddling, "fixture must produce a token that crosses the boundary"
    labels = encode_text(text, spans, tok).labels
    for i, (a, b) in enumerate(offsets):
        inside = any(a < e and s < b for s, e in spans)
        assert (labels[i] != IGNORE_INDEX) == inside, (i, text[a:b])
    assert labels[straddling[0]] != IGNORE_INDEX


def test_nemotron_generation_prompt():
    msgs = [{"role": "user", "content": "Hi"}]
    assert nemotron_prompt(msgs) == "<extra_id_0>System\n\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n"


def test_preference_rows_render_like_sft_with_the_header_in_the_response():
    """render_prompt_response (DPO/RPO message lists): prompt + response is the SFT text of the same conversation;
    the assistant header starts the response (NeMo-Aligner's DPOModelDataset), and prompt + header is the
    generation prompt. An empty system message is no system message, in every path."""
    from recipes.chat import render, render_prompt_response, to_messages

    tok = train_tiny_tokenizer(["Hi Hello! Q1 A1 Q2 A2", SYS], 300)
    for row in (ONE, TWO):
        # As data prep writes them: the system message always (TWO's is empty), then every turn.
        msgs = [{"role": "system", "content": row["system"]}] + [
            {"role": t["from"].lower(), "content": t["value"]} for t in row["conversations"]]
        prompt, answer = msgs[:-1], msgs[-1]
        for template in ("nemotron", "hf"):
            text, _ = render(row, template, tok)
            head, response = render_prompt_response(prompt, answer, template, tok)
            assert head + response == text, template
            gen = nemotron_prompt(prompt) if template == "nemotron" else tok.apply_chat_template(
                to_messages(row)[:-1], tokenize=False, add_generation_prompt=True)
            assert text.startswith(gen) and gen.startswith(head) and len(gen) > len(head)
    head, response = render_prompt_response([{"role": "user", "content": "Hi"}], {"role": "assistant", "content": "7"},
                                            "nemotron", None)
    assert (head, response) == ("<extra_id_0>System\n\n<extra_id_1>User\nHi\n", "<extra_id_1>Assistant\n7\n<extra_id_1>")
    with_empty = render_prompt_response([{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
                                        {"role": "assistant", "content": "7"}, "hf", tok)
    assert with_empty == render_prompt_response([{"role": "user", "content": "Hi"}], {"role": "assistant", "content": "7"},
                                                "hf", tok)
    assert not with_empty[0].startswith("<|system|>")
