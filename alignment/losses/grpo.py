"""GRPO's pure pieces: group-relative advantages, the k3 KL estimate and the clipped policy loss
(GRPO, DAPO, Dr.GRPO by ``aggregation``)."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages of ``rewards`` [N] laid out as N / group_size groups in a row.

    ``scale``: "group" (GRPO: (r - mean_G) / (std_G + eps)), "none" (Dr.GRPO: r - mean_G) or
    "batch" ((r - mean_G) / (std over the whole batch + eps)). std is the unbiased sample std,
    as TRL and the CLS-RL reference compute it.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    centered = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        return (centered / (std + eps)).flatten()
    if scale == "batch":
        return (centered / (rewards.float().std() + eps)).flatten()
    if scale == "none":
        return centered.flatten()
    raise ValueError(f"advantage scale must be 'group', 'batch' or 'none', got {scale!r}")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(
    *,
    logp: torch.Tensor,  # [B, T] log-probs of the sampled tokens under the current policy
    old_logp: torch.Tensor,  # [B, T] the same under the policy that sampled them (detached)
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, T] 1 on generated tokens that count (tool results and padding 0)
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    tis_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The clipped policy-gradient loss of GRPO and its variants, and detached metrics.

    Per token: ``-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) * w + beta * k3``,
    ``w`` the truncated importance weights ``tis_weights`` ([B, T], detached; 1 without them: see
    ``loss.tis_cap``), which weigh the policy term only, as TRL applies its vLLM correction.
    ``aggregation``:
      * "token_mean": sum over all counted tokens of the batch / their number (DAPO);
      * "sequence_mean": mean over each sequence's tokens, then over sequences (GRPO);
      * "fixed_length": sum over tokens / (B * max_tokens) (Dr.GRPO; ``max_tokens`` required).
    Clip-higher (DAPO) is ``clip_high`` > ``clip_low``, e.g. 0.2 / 0.28.
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype)[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if tis_weights is not None:
        per_token = per_token * tis_weights.to(per_token.dtype).detach()
    kl = None
    if beta and ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl
    if aggregation == "token_mean":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif aggregation == "sequence_mean":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif aggregation == "fixed_length":
        if not max_tokens:
            raise ValueError("aggregation='fixed_length' needs max_tokens")
        loss = (per_token * mask).sum() / (logp.shape[0] * max_tokens)
    else:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; use token_mean, sequence_mean or fixed_length"
        )
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        was_clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        metrics = {
            "clip_fraction": float((was_clipped.to(mask.dtype) * mask).sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
            "kl": float((kl * mask).sum() / n) if kl is not None else 0.0,
        }
    return loss, metrics
