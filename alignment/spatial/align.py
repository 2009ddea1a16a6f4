"""Spatial Forcing's alignment pieces as pure functions and one small module.

The student is a hidden state of the language model at the visual-token positions of one view,
laid out on that view's merged token grid ``[gh, gw]`` (Qwen2.5-VL: image patches / 2 per side).
The target is the frozen teacher's patch-feature grid of the same view ``[ht, wt, d_t]`` plus a
2-D sinusoidal position embedding scaled by 0.1, resampled bilinearly to ``[gh, gw]``.
``projector`` maps student to teacher width; the loss is 1 - mean cosine similarity over the
valid tokens of each sample (absent views and padding are masked out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position embedding ``[h, w, dim]`` (MAE form).

    The first ``dim / 2`` channels encode the row, the last ``dim / 2`` the column; each half is
    ``[sin(p * omega_k), cos(p * omega_k)]`` with ``omega_k = 10000 ** (-k / (dim / 4))``,
    k = 0 .. dim/4 - 1.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs a feature width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim/4]

    def axis(n: int) -> torch.Tensor:
        p = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]  # [n, dim/4]
        return torch.cat([p.sin(), p.cos()], dim=1)  # [n, dim/2]

    rows = axis(h)[:, None, :].expand(h, w, dim // 2)
    cols = axis(w)[None, :, :].expand(h, w, dim // 2)
    return torch.cat([rows, cols], dim=-1).float()  # [h, w, dim]


def resample_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of feature grids ``[N, h, w, d]`` to ``[N, H, W, d]``.

    ``align_corners=False``: both grids tile the same image, so cell centres map onto cell
    centres (a 2x2 grid [[0, 1], [2, 3]] becomes rows [0, .25, .75, 1], ...); equal sizes are
    returned unchanged.
    """
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1)


def alignment_targets(feats: torch.Tensor, size: tuple[int, int], pos_scale: float = 0.1) -> torch.Tensor:
    """Teacher grid ``[h, w, d]`` -> targets on the student's grid ``[H * W, d]`` (row-major).

    The position embedding is added on the teacher's grid, then the sum is resampled.
    """
    h, w, d = feats.shape
    x = feats.float() + pos_scale * sincos_2d(h, w, d).to(feats.device)
    return resample_grid(x[None], size)[0].reshape(-1, d)


class AlignProjector(torch.nn.Module):
    """LayerNorm(d_llm) -> Linear(d_llm, d_t) -> GELU -> Linear(d_t, d_t); Xavier-uniform, zero bias."""

    def __init__(self, d_llm: int, d_t: int, layernorm: bool = True):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.LayerNorm(d_llm) if layernorm else torch.nn.Identity(),
            torch.nn.Linear(d_llm, d_t),
            torch.nn.GELU(),
            torch.nn.Linear(d_t, d_t),
        )
        for m in self.net:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                torch.nn.init.zeros_(m.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def cosine_align_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``1 - mean cosine similarity`` over valid tokens.

    ``pred``, ``target`` [B, T, d]; ``mask`` [B, T] (True = a token of a present view). Both sides
    are L2-normalised per token. Returns (loss [B], valid tokens [B]); a sample without valid
    tokens has loss 0 (it contributes nothing to the alignment term).
    """
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8)  # [B, T]
    m = mask.to(cos.dtype)
    n = m.sum(1)
    mean = (cos * m).sum(1) / n.clamp(min=1)
    return torch.where(n > 0, 1.0 - mean, torch.zeros_like(mean)), n
