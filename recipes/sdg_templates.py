"""Every prompt template the SDG stages send to a generator, in one place.

Written for this repository, following the structure the Nemotron-4 340B report gives for its synthetic
prompts (§3.2.1) and dialogues (§3.2.2): macro topics -> subtopics -> open Q&A questions and writing
tasks per topic, each refined in a second call; closed Q&A instructions over a document; math and
Python problems from keywords; instruction-following prompts with IFEval's verifiable instructions;
two-turn prompts; role-played dialogues. The report gives no template texts, so none of these is
NVIDIA's.

Fields are filled with `str.format` (`{topic}`, `{n}`, ...). Override any template by name without
touching code: `+sdg_prompts.templates.open_qa='Write {n} questions on {topic}, one per line.'` or
`sdg_prompts.templates_file=my_templates.yaml` (a mapping name -> text); a template that names a field
its task does not fill is an error at start-up, not mid-run.
"""

from __future__ import annotations

import string
from pathlib import Path

LIST_RULES = "Write one per line, numbered, with no introduction and no other text."

TEMPLATES: dict[str, str] = {
    # --- topics
    "macro_topics": "List {n} broad topics that people often ask an AI assistant about (for example science, "
                    "cooking or personal finance). " + LIST_RULES,
    "subtopics": "List {n} specific subtopics of the topic \"{topic}\". " + LIST_RULES,
    # --- single-turn prompts per topic, then refined
    "open_qa": "Write {n} different questions that a curious person could ask about \"{topic}\". Each question "
               "must make sense on its own. " + LIST_RULES,
    "writing": "Write {n} different writing tasks about \"{topic}\", for example an essay, a poem, a short story, "
               "a letter or a speech. Each task is an instruction to a writer. " + LIST_RULES,
    "refine_open_qa": "Rewrite the question below so that it is more detailed and specific, and keep it a single "
                      "question. Reply with the rewritten question only.\n\nQuestion: {prompt}",
    "refine_writing": "Rewrite the writing task below so that it is more detailed and specific (say what to "
                      "write, for whom and how long). Reply with the rewritten task only.\n\nTask: {prompt}",
    # --- closed Q&A over a user-supplied document
    "closed_qa": "Here is a document:\n\n{document}\n\nWrite {n} different instructions or questions about this "
                 "document that can be answered from the document alone (for example summarise it, extract a "
                 "fact, answer a question about it). " + LIST_RULES,
    "closed_qa_prompt": "{document}\n\n{instruction}",  # what the final prompt looks like (no generator call)
    # --- math and Python from keywords
    "math": "Write {n} different math problems that involve \"{keyword}\". Each problem must be self-contained "
            "and have one correct answer. " + LIST_RULES,
    "python": "Write {n} different Python programming tasks that involve \"{keyword}\". Each task must say what "
              "the code should do. " + LIST_RULES,
    # --- instruction following (the instruction text itself comes from lm-eval's IFEval registry)
    "if_single": "{prompt} {instructions}",
    "if_all_turns": "{prompt} In this and all your following answers: {instructions}",
    "if_revise": "Please rewrite your previous answer so that it follows these instructions: {instructions}",
    # --- two-turn prompts: a generated assistant turn, then a generated second user turn
    "second_user_turn": "Here is a conversation between a user and an AI assistant.\n\nUser: {user}\n\n"
                        "Assistant: {assistant}\n\nWrite the next message the user sends: a follow-up question or "
                        "request that builds on the assistant's answer. Reply with the user's message only.",
    # --- dialogues (stage=sdg_dialogue): the generator plays the user, with a personality
    "dialogue_user": "You are role-playing a user who is talking with an AI assistant. Your personality: "
                     "{persona}.\n\nThe conversation so far:\n\n{history}\n\nWrite the user's next message: a "
                     "follow-up question or request, in the user's own style. Do not thank the assistant and do "
                     "not answer for it. Reply with the message only.",
}

# The fields each template is filled with (a template may use fewer of them, never others).
FIELDS: dict[str, set[str]] = {
    "macro_topics": {"n"}, "subtopics": {"n", "topic"}, "open_qa": {"n", "topic"}, "writing": {"n", "topic"},
    "refine_open_qa": {"prompt", "topic"}, "refine_writing": {"prompt", "topic"},
    "closed_qa": {"n", "document"}, "closed_qa_prompt": {"document", "instruction"},
    "math": {"n", "keyword"}, "python": {"n", "keyword"},
    "if_single": {"prompt", "instructions"}, "if_all_turns": {"prompt", "instructions"},
    "if_revise": {"instructions"}, "second_user_turn": {"user", "assistant"},
    "dialogue_user": {"persona", "history"},
}

# Personalities for the role-played user of stage=sdg_dialogue (our own list; override sdg_dialogue.personas).
PERSONAS = [
    "a busy professional who writes short, direct messages and wants practical answers",
    "a curious student who asks for examples and explanations of the why",
    "a sceptical reader who questions claims and asks for evidence",
    "a friendly hobbyist who writes casually and shares bits of their own situation",
    "a detail-oriented planner who asks for step-by-step instructions and edge cases",
]


def load_templates(overrides: dict | None = None, templates_file: str | None = None) -> dict[str, str]:
    """The templates with `templates_file` (YAML or JSON mapping) and then `overrides` applied; checked."""
    out = dict(TEMPLATES)
    for source, given in ((templates_file, _read(templates_file) if templates_file else {}),
                          ("templates", dict(overrides or {}))):
        for name, text in given.items():
            if name not in TEMPLATES:
                raise ValueError(f"{source}: unknown template {name!r} (known: {', '.join(TEMPLATES)})")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{source}: template {name!r} must be a non-empty string")
            out[name] = text
    for name, text in out.items():
        used = {f for _, f, _, _ in string.Formatter().parse(text) if f}
        unknown = used - FIELDS[name]
        if unknown:
            raise ValueError(f"template {name!r} uses {', '.join(sorted('{' + u + '}' for u in unknown))}; "
                             f"it is filled with {', '.join(sorted('{' + f + '}' for f in FIELDS[name]))}")
    return out


def _read(path: str) -> dict:
    from omegaconf import OmegaConf

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"templates_file: no file at {p}")
    data = OmegaConf.to_container(OmegaConf.load(p))
    if not isinstance(data, dict):
        raise ValueError(f"{p}: must be a mapping of template name -> text")
    return data


def render(templates: dict[str, str], name: str, **fields) -> str:
    return templates[name].format(**fields)
