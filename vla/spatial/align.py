"""Spatial Forcing's alignment pieces as pure functions and one small module.

The student is a hidden state of the language model at the visual-token positions of one view,
laid out on that view's merged token grid ``[gh, gw]`` (Qwen2.5-VL: image patches / 2 per side),
or, with the released code's one-token shift, at the position after each visual token.
The target is the frozen teacher's patch-feature grid of the same view ``[ht, wt, d_t]`` plus
VGGT's own 2-D position embedding (``vggt_uv_grid`` -> ``vggt_position_embedding``) scaled by 0.1,
resampled bilinearly with ``align_corners=True`` to ``[gh, gw]``, as the released code does.
``projector`` maps student to teacher width; the loss is 1 - mean cosine similarity over the
valid tokens of each sample (absent views and padding are masked out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vggt_uv_grid(h: int, w: int, aspect_ratio: float | None = None) -> torch.Tensor:
    """VGGT's normalised uv grid ``[h, w, 2]`` (float64): channel 0 is x (columns), 1 is y (rows).

    With aspect ratio a (default w / h) the plane spans x in [-a/r, a/r], y in [-1/r, 1/r],
    r = sqrt(a^2 + 1) (unit half-diagonal); the n points of an axis are n evenly spaced values
    from -span (n - 1) / n to +span (n - 1) / n, i.e. the centres of n equal cells.
    """
    a = w / h if aspect_ratio is None else aspect_ratio
    r = (a * a + 1.0) ** 0.5

    def axis(n: int, span: float) -> torch.Tensor:
        edge = span * (n - 1) / n
        return torch.linspace(-edge, edge, n, dtype=torch.float64)

    ys, xs = torch.meshgrid(axis(h, 1.0 / r), axis(w, a / r), indexing="ij")  # [h, w] each
    return torch.stack([xs, ys], dim=-1)


def vggt_position_embedding(uv: torch.Tensor, dim: int, omega_0: float = 100.0) -> torch.Tensor:
    """VGGT's sinusoidal embedding of a uv grid ``[h, w, 2]`` -> ``[h, w, dim]`` (float32).

    ``[emb(x) | emb(y)]``, each half ``[sin(p * omega_k) | cos(p * omega_k)]`` with
    ``omega_k = omega_0 ** (-k / (dim / 4))``, k = 0 .. dim/4 - 1.
    """
    if dim % 4:
        raise ValueError(f"the 2-D position embedding needs a feature width divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / omega_0 ** (torch.arange(q, dtype=torch.float64) / q)  # [dim/4]

    def axis(p: torch.Tensor) -> torch.Tensor:
        t = p.double()[..., None] * omega  # [h, w, dim/4]
        return torch.cat([t.sin(), t.cos()], dim=-1)  # [h, w, dim/2]

    return torch.cat([axis(uv[..., 0]), axis(uv[..., 1])], dim=-1).float()


def resample_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of feature grids ``[N, h, w, d]`` to ``[N, H, W, d]``.

    ``align_corners=True`` as in the released code: the corner cells of both grids coincide (a
    2x2 grid [[0, 1], [2, 3]] becomes rows [0, .5, 1], [1, 1.5, 2], [2, 2.5, 3] on 3x3); equal
    sizes are returned unchanged.
    """
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True)
    return y.permute(0, 2, 3, 1)


def alignment_targets(feats: torch.Tensor, size: tuple[int, int], pos_scale: float = 0.1) -> torch.Tensor:
    """Teacher grid ``[h, w, d]`` -> targets on the student's grid ``[H * W, d]`` (row-major).

    VGGT's position embedding of the teacher's grid, times ``pos_scale``, is added on that grid,
    then the sum is resampled.
    """
    h, w, d = feats.shape
    pe = vggt_position_embedding(vggt_uv_grid(h, w), d).to(feats.device)
    x = feats.float() + pos_scale * pe
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
