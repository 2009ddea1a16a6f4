"""DPO's pure loss (SPECS' cold start): sigmoid / IPO / hinge on the log-ratio margin, plus an SFT
term on the chosen response."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_KINDS = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,  # [P] log-prob of each pair's chosen response (sum, or mean per token)
    policy_rejected_logps: torch.Tensor,  # [P]
    ref_chosen_logps: torch.Tensor,  # [P] the same under the frozen reference (no grad)
    ref_rejected_logps: torch.Tensor,  # [P]
    beta: float = 0.1,
    kind: str = "sigmoid",
    chosen_nll: torch.Tensor | None = None,  # [P] mean NLL per token of the chosen response
    sft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Per-pair preference loss plus ``sft_weight`` x SFT, and detached per-pair metrics.

    With h = (pi_c - ref_c) - (pi_r - ref_r) (the log-ratio margin):

    * "sigmoid" (DPO):  -log sigmoid(beta * h)
    * "ipo":            (h - 1 / (2 * beta))^2
    * "hinge" (SLiC):   max(0, 1 - beta * h)

    plus ``sft_weight * chosen_nll`` (SPECS: lambda = 1; without it the chosen reward drifts
    negative). Implicit rewards are beta * (pi - ref) for each side. Returns ``(loss [P],
    metrics)`` with metrics ``dpo_loss``, ``sft_loss``, ``chosen_reward``, ``rejected_reward``,
    ``margin`` and ``accuracy`` (1 where the chosen reward is higher), each [P] and detached.
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if kind == "sigmoid":
        pref = -F.logsigmoid(beta * h)
    elif kind == "ipo":
        pref = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        pref = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss {kind!r}; use one of {', '.join(DPO_KINDS)}")
    loss = pref
    sft = torch.zeros_like(pref) if chosen_nll is None else chosen_nll
    if sft_weight:
        if chosen_nll is None:
            raise ValueError("sft_weight > 0 needs chosen_nll (the chosen response's mean NLL)")
        loss = loss + sft_weight * chosen_nll
    with torch.no_grad():
        chosen_reward = beta * (policy_chosen_logps - ref_chosen_logps)
        rejected_reward = beta * (policy_rejected_logps - ref_rejected_logps)
        metrics = {
            "dpo_loss": pref.detach(),
            "sft_loss": sft.detach(),
            "chosen_reward": chosen_reward.detach(),
            "rejected_reward": rejected_reward.detach(),
            "margin": (chosen_reward - rejected_reward).detach(),
            "accuracy": (chosen_reward > rejected_reward).float(),
        }
    return loss, metrics
