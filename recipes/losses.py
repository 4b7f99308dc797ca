"""Loss functions for the reward model, DPO and RPO: pure functions of tensors.

The formulas are NeMo-Aligner 0.7's (`megatron_gpt_dpo_model.py`,
`megatron_gpt_regression_reward_model.py`); `model.dpo.*` / `model.regression.*`
name the config keys that feed them. Preference losses return one value per
example, shape (B,); the training loop takes the mean, as NeMo-Aligner does.

Notation for the preference losses, per example:
    logp_c, logp_r  policy log-prob of the chosen / rejected response (sum over its tokens,
                    or mean when model.dpo.preference_average_log_probs=True)
    ref_c, ref_r    the same under the frozen reference policy
    Δ  = (logp_c − ref_c) − (logp_r − ref_r)     implicit reward gap, NOT scaled by β
    Δr = chosen_reward − rejected_reward          reward-model gap from the data rows
    β  = model.dpo.ref_policy_kl_penalty,  η = model.dpo.gt_reward_scale
Every log σ(x) below is F.logsigmoid(x): log(sigmoid(x)) is -inf once σ underflows.

Hyperparameters are keyword-only and have no defaults here: the defaults live in
recipes/config.py only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------
# Log-probabilities of sequences
# ---------------------------------------------------------------------------


def sequence_logps(
    logits: Tensor, labels: Tensor, average: bool = False, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """Per-sequence log-probability of the label tokens.

    This function does the causal shift itself: pass the model's logits for
    `input_ids` and `labels` aligned with `input_ids` (a copy of it with prompt
    and padding positions set to `ignore_index`). Position t of the logits
    predicts label t+1, so the first label is never scored.

        logp[b] = Σ_t mask[b,t] · log softmax(logits[b,t])[labels[b,t+1]]
        mask[b,t] = labels[b,t+1] != ignore_index
        average=True: logp[b] / max(n_tokens[b], 1)   (NeMo guards the all-masked row the same way)

    Args:
        logits: (B, T, V), any float dtype; reduced in float32.
        labels: (B, T) int64.
    Returns:
        (logps, n_tokens): (B,) float32 log-probs and (B,) int64 counts of scored tokens.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    logits, labels = logits[:, :-1], labels[:, 1:]  # views, no copy
    mask = labels != ignore_index
    safe_labels = labels.masked_fill(~mask, 0)  # any valid index; masked out below
    picked = torch.gather(logits, -1, safe_labels.unsqueeze(-1)).squeeze(-1).float()  # (B, T-1)
    # log_softmax over (B, T, V) would materialise a full float32 copy of the logits;
    # logsumexp one sequence at a time keeps the extra memory at (T, V).
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # (B, T-1)
    token_logps = (picked - lse) * mask
    n_tokens = mask.sum(-1)
    logps = token_logps.sum(-1)
    if average:
        logps = logps / n_tokens.clamp(min=1)
    return logps, n_tokens


# ---------------------------------------------------------------------------
# Preference losses (model.dpo.preference_loss)
# ---------------------------------------------------------------------------


def _delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps) -> Tensor:
    """Δ = (logp_c − ref_c) − (logp_r − ref_r), shape (B,)."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """DPO: loss = −log σ(β·Δ). All inputs (B,); returns (B,)."""
    delta = _delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * delta)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """IPO as NeMo-Aligner writes it: loss = (Δ − 1/(2β))². All inputs (B,); returns (B,).

    Δ is not multiplied by β here (unlike `dpo_loss`): the target gap is 1/(2β).
    """
    delta = _delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (delta - 1.0 / (2.0 * beta)) ** 2


def rpo_sq_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    beta: float,
    eta: float,
) -> Tensor:
    """RPO, squared distance: loss = (β·Δ − η·Δr)². All inputs (B,); returns (B,)."""
    delta = _delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (beta * delta - eta * (chosen_rewards - rejected_rewards)) ** 2


def _bernoulli_kl(logit_p: Tensor, logit_q: Tensor) -> Tensor:
    """KL(Bern(σ(logit_p)) ‖ Bern(σ(logit_q))), all in log space.

    = σ(a)·(log σ(a) − log σ(b)) + σ(−a)·(log σ(−a) − log σ(−b)),  a = logit_p, b = logit_q.
    σ(a) is taken as exp(log σ(a)); for |a|, |b| in the thousands every term stays finite.
    """
    log_p, log_1mp = F.logsigmoid(logit_p), F.logsigmoid(-logit_p)
    log_q, log_1mq = F.logsigmoid(logit_q), F.logsigmoid(-logit_q)
    return log_p.exp() * (log_p - log_q) + log_1mp.exp() * (log_1mp - log_1mq)


def rpo_bwd_kl_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    beta: float,
    eta: float,
) -> Tensor:
    """RPO of the Nemotron-4 report: loss = KL(Bern(σ(η·Δr)) ‖ Bern(σ(β·Δ))).

    The reward model's gap is the target distribution; the policy's implicit gap is
    fitted to it. Zero exactly when β·Δ = η·Δr. All inputs (B,); returns (B,).
    """
    delta = _delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _bernoulli_kl(eta * (chosen_rewards - rejected_rewards), beta * delta)


def rpo_fwd_kl_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    beta: float,
    eta: float,
) -> Tensor:
    """RPO, forward KL: loss = KL(Bern(σ(β·Δ)) ‖ Bern(σ(η·Δr))). All inputs (B,); returns (B,)."""
    delta = _delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _bernoulli_kl(beta * delta, eta * (chosen_rewards - rejected_rewards))


# model.dpo.preference_loss -> function. RPO losses also take the reward columns.
PREFERENCE_LOSSES = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "rpo_sq": rpo_sq_loss,
    "rpo_bwd_kl": rpo_bwd_kl_loss,
    "rpo_fwd_kl": rpo_fwd_kl_loss,
}
REWARD_AWARE = ("rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl")


def preference_loss(
    name: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_rewards: Tensor | None = None,
    rejected_rewards: Tensor | None = None,
    *,
    beta: float,
    eta: float,
) -> Tensor:
    """Per-example loss (B,) of the loss named by `model.dpo.preference_loss`.

    DPO and IPO ignore the rewards and η; the RPO losses require both reward tensors (B,).
    """
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown model.dpo.preference_loss {name!r}; valid: {', '.join(PREFERENCE_LOSSES)}")
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if name not in REWARD_AWARE:
        return PREFERENCE_LOSSES[name](*logps, beta=beta)
    if chosen_rewards is None or rejected_rewards is None:
        raise ValueError(f"preference_loss {name!r} needs chosen_rewards and rejected_rewards")
    return PREFERENCE_LOSSES[name](*logps, chosen_rewards, rejected_rewards, beta=beta, eta=eta)


def sft_loss(policy_chosen_logps: Tensor) -> Tensor:
    """SFT term of the DPO/RPO objective: −mean_b logp_c[b]. Input (B,); returns a scalar.

    Pass per-sequence sums, or per-token means when model.dpo.sft_average_log_probs=True.
    The total loss is preference_loss_weight · mean(pref) + sft_loss_weight · sft_loss.
    """
    return -policy_chosen_logps.mean()


def implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """Implicit rewards (logp_c − ref_c, logp_r − ref_r), each (B,).

    Unscaled by β, as NeMo-Aligner logs them (its dpo.rst says ×β; the code does not).
    """
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


@torch.no_grad()
def preference_metrics(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> dict[str, Tensor]:
    """NeMo-Aligner's DPO metrics as 0-dim tensors: acc (chosen reward > rejected; a tie
    is a miss), rewards_{chosen,rejected,all}_mean, rewards_all_std. Inputs (B,)."""
    chosen, rejected = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    both = torch.cat([chosen, rejected]).float()
    return {
        "acc": (chosen > rejected).float().mean(),
        "rewards_chosen_mean": chosen.float().mean(),
        "rewards_rejected_mean": rejected.float().mean(),
        "rewards_all_mean": both.mean(),
        "rewards_all_std": both.std(),
    }


# ---------------------------------------------------------------------------
# Regression reward model (model.regression.loss_func)
# ---------------------------------------------------------------------------

HELPFULNESS_INDEX = 4  # slot of helpfulness among the 9 SteerLM attributes; the BT losses read it
BT_KINDS = ("regular_bt", "margin_bt", "scaled_bt")


def regression_loss(outputs: Tensor, labels: Tensor, mask_value: float = -100) -> Tensor:
    """Masked MSE over the whole batch: Σ((out − label)² · m) / Σ m,  m = [label ≠ mask_value].

    All attributes of all rows are pooled (a row with 5 known attributes weighs 5x a
    row with 1). NeMo-Aligner applies this per micro-batch and averages micro-batches.
    outputs, labels: (B, A); returns a scalar. Raises if every label is masked.
    """
    mask = labels != mask_value
    n_valid = mask.sum()
    if n_valid == 0:  # NeMo-Aligner asserts the same: such a batch is a data bug
        raise ValueError("regression_loss: every label in the batch equals mask_value; check the data")
    # where() on the difference (NeMo multiplies by the mask): a masked slot then adds
    # nothing to the value or the gradient even if its output is inf.
    diff = torch.where(mask, outputs.float() - labels.float(), 0.0)
    return (diff**2).sum() / n_valid


@torch.no_grad()
def attribute_mse(outputs: Tensor, labels: Tensor, mask_value: float = -100) -> tuple[Tensor, Tensor]:
    """Per-attribute masked MSE for validation logs.

    outputs, labels: (B, A). Returns (mse, counts), each (A,); mse is NaN where an
    attribute has no label in the batch. To pool batches, sum mse·counts and counts.
    """
    mask = labels != mask_value
    diff = torch.where(mask, outputs.float() - labels.float(), 0.0)
    counts = mask.sum(0)
    mse = (diff**2).sum(0) / counts.clamp(min=1)
    return mse.masked_fill(counts == 0, float("nan")), counts


def bt_loss(outputs_pair: Tensor, strength: Tensor | float, kind: str) -> Tensor:
    """Bradley-Terry losses for HelpSteer2-Preference pairs (regular_bt | margin_bt | scaled_bt).

    outputs_pair: (..., 2, A) reward-head outputs of the two responses of each pair
        (NeMo-Aligner's micro-batch of 2 adjacent rows); only slot 4 (helpfulness) is read.
    strength: (...) or a number: preference strength in [−3, 3], NeMo reads it from
        label[0][0] of the pair. Negative = first response preferred; 0 and positive =
        second response preferred (NeMo-Aligner's rule: a tie counts as "second wins").
    With r_c, r_r the chosen / rejected rewards and m = |strength|:
        regular_bt: −log σ(r_c − r_r)
        margin_bt:  −log σ(r_c − r_r − m)
        scaled_bt:  m · (−log σ(r_c − r_r))      (a strength-0 pair contributes 0)
    Returns per-pair losses, shape (...); NeMo averages them over pairs.
    """
    if kind not in BT_KINDS:
        raise ValueError(f"unknown model.regression.loss_func {kind!r}; BT kinds: {', '.join(BT_KINDS)}")
    if outputs_pair.shape[-2] != 2:
        raise ValueError(f"outputs_pair must be (..., 2, A), got {tuple(outputs_pair.shape)}")
    r = outputs_pair[..., HELPFULNESS_INDEX].float()  # (..., 2)
    strength = torch.as_tensor(strength, dtype=r.dtype, device=r.device)
    first_chosen = strength < 0
    r_chosen = torch.where(first_chosen, r[..., 0], r[..., 1])
    r_rejected = torch.where(first_chosen, r[..., 1], r[..., 0])
    margin = strength.abs()
    if kind == "regular_bt":
        return -F.logsigmoid(r_chosen - r_rejected)
    if kind == "margin_bt":
        return -F.logsigmoid(r_chosen - r_rejected - margin)
    return margin * -F.logsigmoid(r_chosen - r_rejected)
