"""DPO, IPO, hinge and the SFT term against hand-computed values."""

import math

import pytest
import torch

from alignment.losses import dpo_loss

# pair 0: h = (-1 - -1.5) - (-2 - -1.5) = 1;  pair 1: h = (-3 - -2) - (-1 - -2) = -2
PC, PR = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
RC, RR = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])


@pytest.mark.parametrize(
    "kind, want",
    [
        # -log sigmoid(0.1 h) = log(1 + exp(-0.1 h))
        ("sigmoid", [math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.2))]),
        # (h - 1 / (2 beta))^2 with 1 / 0.2 = 5
        ("ipo", [16.0, 49.0]),
        # max(0, 1 - 0.1 h)
        ("hinge", [0.9, 1.2]),
    ],
)
def test_preference_losses(kind, want):
    loss, m = dpo_loss(PC, PR, RC, RR, beta=0.1, kind=kind)
    assert torch.allclose(loss, torch.tensor(want), atol=1e-6)
    assert torch.allclose(m["dpo_loss"], torch.tensor(want), atol=1e-6)
    assert torch.allclose(m["chosen_reward"], torch.tensor([0.05, -0.1]), atol=1e-7)
    assert torch.allclose(m["rejected_reward"], torch.tensor([-0.05, 0.1]), atol=1e-7)
    assert torch.allclose(m["margin"], torch.tensor([0.1, -0.2]), atol=1e-7)
    assert m["accuracy"].tolist() == [1.0, 0.0]


def test_sft_term_adds_lambda_times_the_chosen_nll():
    nll = torch.tensor([2.0, 0.5])
    base, _ = dpo_loss(PC, PR, RC, RR, beta=0.1)
    loss, m = dpo_loss(PC, PR, RC, RR, beta=0.1, chosen_nll=nll, sft_weight=1.0)
    assert torch.allclose(loss, base + nll)
    assert m["sft_loss"].tolist() == [2.0, 0.5]
    half, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, chosen_nll=nll, sft_weight=0.5)
    assert torch.allclose(half, base + 0.5 * nll)
    # lambda = 0: the SFT value is still reported, but not trained
    zero, m0 = dpo_loss(PC, PR, RC, RR, beta=0.1, chosen_nll=nll, sft_weight=0.0)
    assert torch.allclose(zero, base) and m0["sft_loss"].tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match="chosen_nll"):
        dpo_loss(PC, PR, RC, RR, sft_weight=1.0)


def test_sigmoid_gradient():
    """d/d pi_c of -log sigmoid(beta h) = -beta sigmoid(-beta h); opposite sign for pi_r."""
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, _ = dpo_loss(pc, pr, RC, RR, beta=0.1)
    loss.sum().backward()
    s = [1 / (1 + math.exp(0.1)), 1 / (1 + math.exp(-0.2))]  # sigmoid(-0.1 h)
    assert torch.allclose(pc.grad, torch.tensor([-0.1 * s[0], -0.1 * s[1]]), atol=1e-7)
    assert torch.allclose(pr.grad, -pc.grad)


def test_policy_equal_to_reference_gives_log_2():
    loss, m = dpo_loss(PC, PR, PC, PR, beta=0.1)
    assert torch.allclose(loss, torch.full((2,), math.log(2)))
    assert m["margin"].abs().max() == 0 and m["accuracy"].sum() == 0


def test_unknown_kind():
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge"):
        dpo_loss(PC, PR, RC, RR, kind="kto")
