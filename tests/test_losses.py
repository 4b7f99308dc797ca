"""recipes/losses.py against hand arithmetic and an independent float64 formulation."""

import math

import pytest
import torch
import torch.nn.functional as F

from recipes import losses as L


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def softplus(x):  # −log σ(x) = log(1 + e^{−x}), by hand
    return math.log1p(math.exp(-x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# One example: Δ = (−1 − (−2)) − (−3 − (−2.5)) = 1 − (−0.5) = 1.5;  Δr = 4.1 − 2.3 = 1.8.
LOGPS = (t(-1.0), t(-3.0), t(-2.0), t(-2.5))
REWARDS = (t(4.1), t(2.3))


# --- hand-computed values ---------------------------------------------------


def test_dpo_hand():
    # β = 0.2: βΔ = 0.3, loss = −log σ(0.3)
    assert L.dpo_loss(*LOGPS, beta=0.2).item() == pytest.approx(softplus(0.3), rel=1e-6)


def test_ipo_hand_delta_not_scaled_by_beta():
    # (Δ − 1/(2β))²: β = 0.2 -> (1.5 − 2.5)² = 1;  β = 0.5 -> (1.5 − 1)² = 0.25
    assert L.ipo_loss(*LOGPS, beta=0.2).item() == pytest.approx(1.0, rel=1e-6)
    assert L.ipo_loss(*LOGPS, beta=0.5).item() == pytest.approx(0.25, rel=1e-6)


def test_rpo_sq_hand():
    # (βΔ − ηΔr)² = (0.3 − 1.8)² = 2.25;  η = 2: (0.3 − 3.6)² = 10.89
    assert L.rpo_sq_loss(*LOGPS, *REWARDS, beta=0.2, eta=1.0).item() == pytest.approx(2.25, rel=1e-5)
    assert L.rpo_sq_loss(*LOGPS, *REWARDS, beta=0.2, eta=2.0).item() == pytest.approx(10.89, rel=1e-5)


def test_rpo_kl_hand():
    p, q = sig(0.3), sig(1.8)  # policy σ(βΔ), target σ(ηΔr)
    bwd = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    fwd = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert L.rpo_bwd_kl_loss(*LOGPS, *REWARDS, beta=0.2, eta=1.0).item() == pytest.approx(bwd, rel=1e-5)
    assert L.rpo_fwd_kl_loss(*LOGPS, *REWARDS, beta=0.2, eta=1.0).item() == pytest.approx(fwd, rel=1e-5)
    assert bwd != pytest.approx(fwd, rel=1e-3)  # the two directions really differ here


def test_sft_loss_and_metrics_hand():
    assert L.sft_loss(t(-2.0, -4.0)).item() == pytest.approx(3.0)
    # implicit rewards: chosen (−1+2, −1+1) = (1, 0), rejected (−3+2.5, −1+1) = (−0.5, 0): the tie is a miss
    m = L.preference_metrics(t(-1.0, -1.0), t(-3.0, -1.0), t(-2.0, -1.0), t(-2.5, -1.0))
    assert m["acc"].item() == 0.5
    assert m["rewards_chosen_mean"].item() == pytest.approx(0.5)
    assert m["rewards_rejected_mean"].item() == pytest.approx(-0.25)
    assert m["rewards_all_mean"].item() == pytest.approx(0.125)
    assert m["rewards_all_std"].item() == pytest.approx(torch.tensor([1.0, 0.0, -0.5, 0.0]).std().item())


# --- an independent float64 implementation on random inputs -------------------


def _random_batch(seed, n=64, scale=40.0):
    g = torch.Generator().manual_seed(seed)
    logps = [-(torch.rand(n, generator=g, dtype=torch.float64) * scale) for _ in range(4)]
    rewards = [torch.rand(n, generator=g, dtype=torch.float64) * 5 for _ in range(2)]
    return logps, rewards


def _reference(name, logps, rewards, beta, eta):
    """Plain probabilities instead of log-space: fine for the moderate values used here."""
    pc, pr, rc, rr = logps
    a = beta * ((pc - rc) - (pr - rr))  # policy logit
    b = eta * (rewards[0] - rewards[1])  # target logit
    p, q = 1 / (1 + torch.exp(-a)), 1 / (1 + torch.exp(-b))

    def kl(x, y):  # KL(Bern(x) ‖ Bern(y)) from the probabilities
        return x * torch.log(x / y) + (1 - x) * torch.log((1 - x) / (1 - y))

    return {
        "dpo": -torch.log(p),
        "ipo": (a / beta - 1 / (2 * beta)) ** 2,
        "rpo_sq": (a - b) ** 2,
        "rpo_bwd_kl": kl(q, p),
        "rpo_fwd_kl": kl(p, q),
    }[name]


@pytest.mark.parametrize("name", list(L.PREFERENCE_LOSSES))
@pytest.mark.parametrize("beta,eta", [(0.2, 1.0), (0.01, 0.5), (1.0, 2.0)])
def test_against_float64_reference(name, beta, eta):
    # |βΔ| <= 10 keeps the probability-space reference away from σ = 0 or 1 in float64
    logps, rewards = _random_batch(seed=len(name) + int(100 * beta), scale=min(40.0, 5.0 / beta))
    ours = L.preference_loss(name, *[x.float() for x in logps], *[r.float() for r in rewards], beta=beta, eta=eta)
    ref = _reference(name, logps, rewards, beta, eta)
    assert ours.shape == (64,)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-5)


def test_gradients_match_closed_form():
    # d/dΔ of −log σ(βΔ) = −β σ(−βΔ);  d/dΔ of KL(q ‖ σ(βΔ)) = β (σ(βΔ) − q)
    logps, rewards = _random_batch(seed=7)
    beta, eta = 0.3, 1.5
    pc = logps[0].clone().requires_grad_(True)
    L.dpo_loss(pc, *logps[1:], beta=beta).sum().backward()
    a = beta * ((logps[0] - logps[2]) - (logps[1] - logps[3]))
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-a))

    pc.grad = None
    L.rpo_bwd_kl_loss(pc, *logps[1:], *rewards, beta=beta, eta=eta).sum().backward()
    q = torch.sigmoid(eta * (rewards[0] - rewards[1]))
    torch.testing.assert_close(pc.grad, beta * (torch.sigmoid(a) - q))


# --- properties ----------------------------------------------------------------


def test_rpo_bwd_kl_zero_iff_gaps_match():
    # Small integers and β = 0.5 keep every product exact, so "equal" is exact in float32.
    pc, pr = t(-3.0, -10.0, -1.0), t(-7.0, -2.0, -4.0)
    rc, rr = t(-4.0, -6.0, -1.0), t(-5.0, -5.0, -1.0)
    delta = (pc - rc) - (pr - rr)  # (3, −7, 3)
    beta, eta = 0.5, 1.0
    matched = L.rpo_bwd_kl_loss(pc, pr, rc, rr, beta * delta / eta, torch.zeros(3), beta=beta, eta=eta)
    assert torch.equal(matched, torch.zeros(3))
    off = L.rpo_bwd_kl_loss(pc, pr, rc, rr, beta * delta / eta + t(0.5, -0.5, 3.0), torch.zeros(3), beta=beta, eta=eta)
    assert (off > 0).all()


def test_rpo_sq_is_squared_gap():
    logps, rewards = _random_batch(seed=3)
    beta, eta = 0.1, 0.7
    gap = beta * ((logps[0] - logps[2]) - (logps[1] - logps[3])) - eta * (rewards[0] - rewards[1])
    torch.testing.assert_close(L.rpo_sq_loss(*logps, *rewards, beta=beta, eta=eta), gap**2)


@pytest.mark.parametrize("name", list(L.PREFERENCE_LOSSES))
@pytest.mark.parametrize("huge", [1e4, -1e4])
def test_stable_for_huge_delta(name, huge):
    pc = torch.tensor([huge, 0.0], requires_grad=True)
    zeros = torch.zeros(2)
    loss = L.preference_loss(name, pc, zeros, zeros, zeros, t(3.0, -2.0), zeros, beta=0.5, eta=1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pc.grad).all()


@pytest.mark.parametrize("name", ["dpo", "rpo_bwd_kl", "rpo_fwd_kl"])
def test_sigmoid_losses_stable_far_beyond_float_exp_range(name):
    pc = t(1e30, -1e30, 1e6, -1e6)
    zeros = torch.zeros(4)
    loss = L.preference_loss(name, pc, zeros, zeros, zeros, t(2.0, 2.0, -2.0, -2.0), zeros, beta=0.1, eta=1.0)
    assert torch.isfinite(loss).all()
    if name == "dpo":  # −log σ(x) → −x for very negative x
        assert loss[3].item() == pytest.approx(1e5, rel=1e-6)


def test_dispatch_matches_functions_and_errors():
    assert torch.equal(L.preference_loss("dpo", *LOGPS, beta=0.2, eta=1.0), L.dpo_loss(*LOGPS, beta=0.2))
    assert torch.equal(
        L.preference_loss("rpo_bwd_kl", *LOGPS, *REWARDS, beta=0.2, eta=1.0),
        L.rpo_bwd_kl_loss(*LOGPS, *REWARDS, beta=0.2, eta=1.0),
    )
    valid = "valid: dpo, ipo, rpo_sq, rpo_bwd_kl, rpo_fwd_kl"
    with pytest.raises(ValueError, match=f"unknown model.dpo.preference_loss 'simpo'; {valid}"):
        L.preference_loss("simpo", *LOGPS, beta=0.2, eta=1.0)
    with pytest.raises(ValueError, match="needs chosen_rewards and rejected_rewards"):
        L.preference_loss("rpo_sq", *LOGPS, beta=0.2, eta=1.0)


# --- sequence_logps -------------------------------------------------------------


def _by_hand_logp(logits, labels):
    """Loop over positions: log softmax(logits[t])[labels[t+1]] in float64."""
    sums, counts = [], []
    for b in range(labels.shape[0]):
        s, n = 0.0, 0
        for pos in range(labels.shape[1] - 1):
            y = int(labels[b, pos + 1])
            if y == -100:
                continue
            row = [float(v) for v in logits[b, pos]]
            s += row[y] - math.log(sum(math.exp(v) for v in row))
            n += 1
        sums.append(s)
        counts.append(n)
    return sums, counts


def test_sequence_logps_sum_mean_with_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=g)
    # row 0: prompt of 2 tokens, 4 response tokens; row 1: 1 prompt token, 2 response tokens, 3 pads
    labels = torch.tensor([[-100, -100, 2, 1, 4, 0], [-100, 3, 0, -100, -100, -100]])
    sums, counts = _by_hand_logp(logits, labels)
    assert counts == [4, 2]

    logps, n = L.sequence_logps(logits, labels)
    assert n.tolist() == counts and logps.dtype == torch.float32
    torch.testing.assert_close(logps, torch.tensor(sums, dtype=torch.float32))

    mean, _ = L.sequence_logps(logits, labels, average=True)
    torch.testing.assert_close(mean, torch.tensor([sums[0] / 4, sums[1] / 2], dtype=torch.float32))

    # the last position predicts nothing and masked positions are ignored: changing them changes nothing
    noisy = logits.clone()
    noisy[:, -1] += 100.0
    noisy[1, 2:] = torch.randn(4, 5, generator=g) * 50
    torch.testing.assert_close(L.sequence_logps(noisy, labels)[0], logps)


def test_sequence_logps_matches_cross_entropy_and_handles_bf16_and_empty_rows():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 8, 11, generator=g)
    labels = torch.randint(0, 11, (3, 8), generator=g)
    labels[:, :3] = -100
    labels[2] = -100  # a row with no response tokens
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    logps, n = L.sequence_logps(logits, labels)
    torch.testing.assert_close(logps, -ce.sum(-1))
    assert n.tolist() == [5, 5, 0]
    mean, _ = L.sequence_logps(logits, labels, average=True)
    assert mean[2].item() == 0.0  # clamp(min=1): no division by zero

    bf16, _ = L.sequence_logps(logits.bfloat16(), labels)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, logps, rtol=2e-2, atol=0.1)


def test_sequence_logps_gradient_flows():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 5, -100]])
    L.sequence_logps(logits, labels)[0].sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1, 0].abs().sum() == 0 and logits.grad[:, -1].abs().sum() == 0


def test_sequence_logps_shape_check():
    with pytest.raises(ValueError, match="disagree"):
        L.sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


# --- regression reward model ------------------------------------------------------


def test_regression_loss_hand_with_masked_labels():
    out = t(1.0, 2.0, 3.0, 0.5, 0.0, -1.0).view(2, 3)
    lab = t(-100, 4.0, 2.0, 1.0, -100, -100).view(2, 3)
    # valid: (2−4)² + (3−2)² + (0.5−1)² = 4 + 1 + 0.25 over 3 labels
    assert L.regression_loss(out, lab).item() == pytest.approx(5.25 / 3)
    # NeMo's -100 coincides with the default; another mask value works the same
    assert L.regression_loss(out, lab.masked_fill(lab == -100, -1.0), mask_value=-1.0).item() == pytest.approx(5.25 / 3)


def test_regression_loss_all_masked_and_masked_inf():
    with pytest.raises(ValueError, match="every label"):
        L.regression_loss(torch.zeros(2, 3), torch.full((2, 3), -100.0))
    out = torch.tensor([[float("inf"), 1.0]], requires_grad=True)
    loss = L.regression_loss(out, t(-100, 3.0).view(1, 2))
    loss.backward()
    assert loss.item() == 4.0 and torch.isfinite(out.grad).all()


def test_attribute_mse_hand():
    out = t(1.0, 2.0, 3.0, 0.5, 0.0, -1.0).view(2, 3)
    lab = t(-100, 4.0, -100, 1.0, 2.0, -100).view(2, 3)
    mse, counts = L.attribute_mse(out, lab)
    assert counts.tolist() == [1, 2, 0]
    assert mse[0].item() == pytest.approx(0.25)  # (0.5 − 1)²
    assert mse[1].item() == pytest.approx((4 + 4) / 2)  # (2−4)², (0−2)²
    assert math.isnan(mse[2].item())


def _pair(r_first, r_second):
    out = torch.zeros(2, 9)
    out[:, 0] = 7.0  # other slots are ignored by the BT losses
    out[0, L.HELPFULNESS_INDEX], out[1, L.HELPFULNESS_INDEX] = r_first, r_second
    return out


@pytest.mark.parametrize(
    "strength,expected",
    [
        # strength −2: first response chosen, r_c − r_r = 1.0 − 0.5 = 0.5, m = 2
        (-2.0, {"regular_bt": softplus(0.5), "margin_bt": softplus(0.5 - 2), "scaled_bt": 2 * softplus(0.5)}),
        # strength 0: NeMo counts it as "second chosen": r_c − r_r = −0.5, m = 0
        (0.0, {"regular_bt": softplus(-0.5), "margin_bt": softplus(-0.5), "scaled_bt": 0.0}),
        # strength +3: second chosen, m = 3
        (3.0, {"regular_bt": softplus(-0.5), "margin_bt": softplus(-3.5), "scaled_bt": 3 * softplus(-0.5)}),
    ],
)
def test_bt_losses_hand(strength, expected):
    for kind, value in expected.items():
        assert L.bt_loss(_pair(1.0, 0.5), strength, kind).item() == pytest.approx(value, rel=1e-6, abs=1e-7), kind


def test_bt_loss_batched_equals_per_pair_and_rejects_bad_kind():
    pairs = torch.stack([_pair(1.0, 0.5), _pair(-2.0, 0.3), _pair(0.1, 0.1)])  # (3, 2, 9)
    strength = t(-2.0, 1.0, 0.0)
    for kind in L.BT_KINDS:
        batched = L.bt_loss(pairs, strength, kind)
        assert batched.shape == (3,)
        single = torch.stack([L.bt_loss(pairs[i], strength[i], kind) for i in range(3)])
        torch.testing.assert_close(batched, single)
    with pytest.raises(ValueError, match="BT kinds: regular_bt, margin_bt, scaled_bt"):
        L.bt_loss(pairs, strength, "regression")
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, A\)"):
        L.bt_loss(torch.zeros(3, 9), 1.0, "regular_bt")
