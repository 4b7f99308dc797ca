"""recipes/logprobs.py: the chunked label log-probs equal the full-logits path (the reference,
`model.logprob_chunk_tokens=0`) in values and gradients, never hold a B×T×V tensor, and refuse
models whose logits are post-processed."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from recipes import logprobs
from recipes.chat import IGNORE_INDEX, Encoded

V = 512


def tiny_llama(seed=0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **kw}))


def examples(lengths=(9, 14, 6), prompt=(3, 5, 2), seed=1) -> list[Encoded]:
    """Random sequences whose first `prompt` tokens are not trained (a prompt), varied lengths (padding)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, p in zip(lengths, prompt):
        ids = torch.randint(3, V, (n,), generator=g).tolist()
        out.append(Encoded(ids, [IGNORE_INDEX] * p + ids[p:]))
    return out


def grads(model) -> dict[str, torch.Tensor]:
    out = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def run_both(model, batch, fn, chunks=(0, 3)):
    """Value and parameter gradients of fn(model, batch, chunk) for each chunk size."""
    out = []
    for chunk in chunks:
        value, count = fn(model, batch, chunk)
        value.sum().backward()
        out.append((value.detach(), count, grads(model)))
    return out


def assert_same(a, b):
    (va, ca, ga), (vb, cb, gb) = a, b
    torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-5)
    assert (ca == cb) if isinstance(ca, int) else torch.equal(ca, cb)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("chunk", [1, 3, 1024])  # chunks smaller than, not dividing, and larger than N
def test_sequence_logps_and_nll_equal_the_full_logits_path(chunk):
    model = tiny_llama()
    batch = logprobs.collate(examples(), pad_id=0, device="cpu")
    full, ours = run_both(model, batch, logprobs.sequence_logps, chunks=(0, chunk))
    assert_same(full, ours)
    assert full[1].tolist() == [6, 9, 4]  # trained labels per row (the prompt is not)
    full, ours = run_both(model, batch, logprobs.nll_sum, chunks=(0, chunk))
    assert_same(full, ours)
    assert full[1] == 19


def test_lora_and_disabled_adapter_and_tied_embeddings():
    from peft import LoraConfig, get_peft_model

    batch = logprobs.collate(examples(), pad_id=0, device="cpu")
    lora = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False))
    full, ours = run_both(lora, batch, logprobs.sequence_logps)
    assert_same(full, ours)
    assert all("lora" in k for k in ours[2])  # only the adapters train; the frozen head gets no gradient
    with torch.no_grad(), lora.disable_adapter():
        base = logprobs.sequence_logps(lora, batch, 3)[0]
    assert (base - ours[0]).abs().max() > 1e-3  # the adapters change the values ...
    torch.testing.assert_close(base, logprobs.sequence_logps(tiny_llama(), batch, 0)[0].detach())  # ... and are off here

    tied = tiny_llama(tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    full, ours = run_both(tied, batch, logprobs.nll_sum)
    assert_same(full, ours)


def test_chunked_function_gradients_with_bias_float64():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 6, 3, 3, 1])
    f = lambda h, w, b: logprobs.ChunkedLogProbs.apply(h, w, b, y, 2, torch.float64)  # noqa: E731
    expected = torch.log_softmax(h @ w.T + b, -1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(f(h, w, b), expected)
    assert torch.autograd.gradcheck(f, (h, w, b))


def test_bf16_autocast_follows_the_full_path():
    model = tiny_llama()
    batch = logprobs.collate(examples(), pad_id=0, device="cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = logprobs.sequence_logps(model, batch, 0)[0]
        ours = logprobs.sequence_logps(model, batch, 3)[0]
        fp32 = logprobs.sequence_logps(model, batch, 3)[0]
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, full, rtol=2e-2, atol=0.1)  # both: bf16 products, float32 log-sum-exp
    with torch.no_grad():
        torch.testing.assert_close(logprobs.sequence_logps(model, batch, 3)[0], fp32, rtol=2e-2, atol=0.1)


class LargestTensor(TorchDispatchMode):
    """The largest tensor any op produces while active (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out


def test_no_full_logits_tensor_forward_or_backward():
    model = tiny_llama()
    encs = examples(lengths=(40, 40), prompt=(4, 4))
    batch = logprobs.collate(encs, pad_id=0, device="cpu")
    full_logits = 2 * 39 * V  # B x (T-1) x V; the weights are 512 x 32, a third of it
    model.zero_grad()
    for chunk, fits in ((0, False), (8, True)):
        logprobs.check_head(model)  # the one-time probe runs outside the measurement
        with LargestTensor() as seen:
            logprobs.sequence_logps(model, batch, chunk)[0].sum().backward()
        assert (seen.numel < full_logits / 2) == fits, (chunk, seen.numel, seen.op)


def test_post_processed_logits_and_non_linear_heads_are_refused():
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           final_logit_softcapping=0.5))
    batch = logprobs.collate(examples(), pad_id=0, device="cpu")
    with pytest.raises(ValueError, match=r"Gemma2ForCausalLM's logits are not lm_head.*final_logit_softcapping.*"
                                         r"logprob_chunk_tokens=0"):
        logprobs.sequence_logps(gemma, batch, 4)
    logprobs.sequence_logps(gemma, batch, 0)  # the full path serves it

    head_lora = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="not a plain Linear"):
        logprobs.sequence_logps(head_lora, batch, 4)
