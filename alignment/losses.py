"""Pure loss functions (tensors in, loss and detached metrics out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_nll_sum(
    hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over supervised positions, and their count.

    ``hidden`` [B, L, D] are the final hidden states, ``labels`` [B, L] (IGNORE where not
    trained). Logits are computed only at supervised positions, in chunks, so the full
    [B, L, vocab] tensor is never materialised (with a 152k vocabulary it would dominate memory).
    """
    tgt = labels[:, 1:]
    valid = tgt != IGNORE
    h = hidden[:, :-1][valid]  # [N, D]
    y = tgt[valid]  # [N]
    total = hidden.new_zeros((), dtype=torch.float32)
    for k in range(0, h.shape[0], chunk):
        logits = lm_head(h[k : k + chunk]).float()  # [n, V]
        total = total + F.cross_entropy(logits, y[k : k + chunk], reduction="sum")
    return total, valid.sum()
