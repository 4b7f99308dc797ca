"""In-process generation with a Hugging Face model or one of our checkpoints.

Same interface as the HTTP clients in eval/clients.py: `generate(conversations, params)`
returns one reply per conversation. Prompts are rendered with the checkpoint's template
(`hf`: the tokenizer's chat template; `nemotron`: the `<extra_id_*>` model-card format),
left-padded and generated in batches, longest first so batches waste little padding.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from eval.clients import Conversation, SamplingParams
from recipes.chat import nemotron_prompt

NEMOTRON_STOP = "<extra_id_1>"


class HFClient:
    def __init__(self, model_or_path, tokenizer=None, template: str = "hf", batch_size: int = 8,
                 device: str | None = None, progress: bool = True, seed: int = 1234):
        if isinstance(model_or_path, (str, bytes)) or hasattr(model_or_path, "__fspath__"):
            tokenizer = AutoTokenizer.from_pretrained(model_or_path)
            model_or_path = AutoModelForCausalLM.from_pretrained(model_or_path)
        if tokenizer is None:
            raise ValueError("HFClient needs a tokenizer when given a model object")
        if template not in ("hf", "nemotron"):
            raise ValueError(f"template must be 'hf' or 'nemotron', got {template!r}")
        if template == "hf" and not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template; use template='nemotron'")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model_or_path.to(self.device).eval()
        self.tokenizer, self.template = tokenizer, template
        self.batch_size, self.progress, self.seed = batch_size, progress, seed
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def prompt(self, conversation: Conversation) -> str:
        if self.template == "nemotron":
            return nemotron_prompt(conversation)
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def _stops(self, params: SamplingParams) -> list[str]:
        return list(params.stop) + ([NEMOTRON_STOP] if self.template == "nemotron" else [])

    @torch.no_grad()
    def _batch(self, prompts: list[str], params: SamplingParams) -> list[str]:
        tok = self.tokenizer
        tok.padding_side = "left"  # generation continues from the right edge of every row
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = params.temperature > 0
        kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=sample, pad_token_id=tok.pad_token_id)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        stops = self._stops(params)
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=tok)
        out = self.model.generate(**enc, **kwargs)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=False)
        return [self._clean(t, stops) for t in texts]

    def _clean(self, text: str, stops: list[str]) -> str:
        """Cut at the first stop string (and the newline that closes a Nemotron turn) or EOS/pad."""
        for special in {self.tokenizer.eos_token, self.tokenizer.pad_token} - {None}:
            text = text.split(special)[0]
        for stop in stops:
            if stop in text:
                text = text.split(stop)[0]
                if stop == NEMOTRON_STOP and text.endswith("\n"):
                    text = text[:-1]
        return text

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[str]:
        return self.complete([self.prompt(c) for c in conversations], params)

    def complete(self, prompts: list[str], params: SamplingParams) -> list[str]:
        """Continue pre-rendered prompt strings (e.g. a SteerLM prompt ending in its attribute line)."""
        if params.temperature > 0:
            torch.manual_seed(self.seed)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[str | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc="generate", disable=not self.progress)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for i, text in zip(idx, self._batch([prompts[i] for i in idx], params)):
                results[i] = text
            bar.update(len(idx))
        bar.close()
        return results  # type: ignore[return-value]
