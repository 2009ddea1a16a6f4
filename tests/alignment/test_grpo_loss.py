"""GRPO/DAPO loss pieces against hand-computed values."""

import math

import pytest
import torch

from alignment.losses import group_advantages, grpo_loss, kl_k3


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.5, unbiased std sqrt(1/3) = 0.57735; group 2: all equal -> 0
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert torch.allclose(group_advantages(r, 4), torch.tensor([a, -a, -a, a, 0, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(group_advantages(r, 4, "none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    # batch std of all eight: sum of squared deviations 5.5 / 7 -> 0.886405
    b = 0.5 / (math.sqrt(5.5 / 7) + 1e-4)
    assert torch.allclose(
        group_advantages(r, 4, "batch"), torch.tensor([b, -b, -b, b, 0, 0, 0, 0]), atol=1e-6
    )
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


def inputs():
    ratios = torch.tensor([[1.0, 1.5, 0.5], [1.3, 0.7, 1.0]])
    old = torch.full((2, 3), -1.0)
    logp = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, adv, mask


def loss_of(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, **kw):
    return grpo_loss(
        logp=logp, old_logp=old, advantages=adv, mask=mask, clip_low=clip_low, clip_high=clip_high, **kw
    )


@pytest.mark.parametrize(
    "aggregation, kw, want",
    [
        # per token (clip 0.2 / 0.28): seq 0 (A=1): -1, -1.28 (1.5 clipped to 1.28), -0.5 -> -2.78;
        # seq 1 (A=-2): 2.6 (1.3 not clipped: A < 0), 1.6 (0.7 clipped to 0.8), masked
        ("token_mean", {}, (-2.78 + 2.6 + 1.6) / 5),
        ("sequence_mean", {}, (-2.78 / 3 + (2.6 + 1.6) / 2) / 2),
        ("fixed_length", {"max_tokens": 4}, (-2.78 + 2.6 + 1.6) / 8),
    ],
)
def test_clipped_loss_aggregations(aggregation, kw, want):
    logp, old, adv, mask = inputs()
    loss, m = loss_of(logp, old, adv, mask, 0.2, 0.28, aggregation=aggregation, **kw)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert m["clip_fraction"] == pytest.approx(2 / 5)  # 1.5 with A > 0, 0.7 with A < 0


def test_clip_higher_differs_from_symmetric_clipping():
    logp, old, adv, mask = inputs()
    sym, _ = loss_of(logp, old, adv, mask, 0.2, 0.2)
    assert sym.item() == pytest.approx((-1 - 1.2 - 0.5 + 2.6 + 1.6) / 5, abs=1e-6)


def test_clipped_tokens_get_no_gradient():
    logp, old, adv, mask = inputs()
    loss, _ = loss_of(logp, old, adv, mask, 0.2, 0.28)
    loss.backward()
    g = logp.grad
    assert g[0, 1] == 0 and g[1, 1] == 0 and g[1, 2] == 0  # clipped, clipped, masked
    # unclipped token: d(-ratio * A)/dlogp / 5 = -ratio * A / 5
    assert g[0, 0].item() == pytest.approx(-1.0 * 1.0 / 5) and g[1, 0].item() == pytest.approx(1.3 * 2.0 / 5)


def test_kl_k3_and_the_kl_term():
    lp, ref = torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0])
    assert torch.allclose(kl_k3(lp, ref), torch.tensor([0.5 + math.log(2) - 1, 0.0]))
    logp, old, adv, mask = inputs()
    ref_logp = logp.detach() + math.log(0.5)  # reference half as likely on every token
    base, _ = loss_of(logp, old, adv, mask, 0.2, 0.28)
    with_kl, m = loss_of(logp, old, adv, mask, 0.2, 0.28, ref_logp=ref_logp, beta=0.04)
    k = 0.5 + math.log(2) - 1
    assert with_kl.item() == pytest.approx(base.item() + 0.04 * k, abs=1e-6)
    assert m["kl"] == pytest.approx(k, abs=1e-6)


def test_bad_options():
    logp, old, adv, mask = inputs()
    with pytest.raises(ValueError, match="max_tokens"):
        loss_of(logp, old, adv, mask, aggregation="fixed_length")
    with pytest.raises(ValueError, match="unknown aggregation"):
        loss_of(logp, old, adv, mask, aggregation="sum")
