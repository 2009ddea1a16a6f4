"""The geometric Spatial Forcing teacher: per-token 3-D features from a simulator's depth and camera.

Where VGGT *estimates* the 3-D structure of the views, a simulator knows it: MuJoCo's renderer
gives metric depth and ``data.cam_xpos`` / ``data.cam_xmat`` give the camera pose at every frame.
Per view of one frame:

    depth [H, W]   metric z-depth along the optical axis, row 0 = image top (what
                   ``mujoco.Renderer`` returns after ``enable_depth_rendering()``: already linear
                   metres, not the raw depth buffer; do not convert it again)
    -> backproject(depth, fovy, cam_pos, cam_mat)     world points [H, W, 3]
    -> (the view's own orientation, e.g. MetaWorld's corner cameras turned 180 degrees)
    -> point_features(points, valid, grid)            [gh, gw, d] on the student's token grid
    -> normalize(feats, *feature_stats(dataset))      optional, with data-set statistics

Camera model (MuJoCo's): the camera looks along its local -z, local +y is image up and +x image
right; ``cam_mat`` (``data.cam_xmat``, row-major 3 x 3) is the camera-to-world rotation, its
columns the camera axes in the world; ``cam_pos`` is the optical centre; ``fovy`` the vertical
field of view in degrees. Pixels are square, f = (H / 2) / tan(fovy / 2), the principal point is
the image centre, and pixel (i, j) has its centre at (j + 0.5, i + 0.5).

Features: per pixel q = (p - centre) / scale and e(q) = [q | per axis sin, cos of 2 pi f_k q | 1]
with octave frequencies f_k; per token the mean of e over the token's valid pixels, the last
channel becoming the valid fraction (a token that sees only sky is all zeros). Under the cosine
loss each (sin, cos) pair has norm 1, so the dot product of two embeddings is
sum_k cos(2 pi f_k (q - q')): a shift-invariant kernel of 3-D position, and alignment asks the
student to reproduce 3-D distances. Embedding before averaging keeps both depths of a token that
straddles an edge. Features are in the world frame, so one 3-D point has one target in every view
and frame (VGGT's are likewise multi-view consistent). The grid is the student's (Qwen2.5-VL's
merged tokens: ``token_grid``), so Spatial Forcing's bilinear resampling is the identity and the
targets get VGGT's position embedding exactly as for the other teachers.

Pure numpy; nothing here needs a simulator.
"""

from __future__ import annotations

import math

import numpy as np

NORMALIZE = ("residual", "zscore", "none")


# ----------------------------------------------------------------------------- camera model


def focal_length(fovy_deg: float, height: int) -> float:
    """f in pixels of a camera with vertical field of view ``fovy_deg`` and an image ``height``."""
    return (height / 2.0) / math.tan(math.radians(fovy_deg) / 2.0)


def pixel_rays(fovy_deg: float, height: int, width: int) -> np.ndarray:
    """Camera-frame directions through the pixel centres, scaled to unit depth (z = -1): [H, W, 3]."""
    f = focal_length(fovy_deg, height)
    x = (np.arange(width) + 0.5 - width / 2.0) / f  # image right = camera +x
    y = -(np.arange(height) + 0.5 - height / 2.0) / f  # image down = camera -y
    xs, ys = np.meshgrid(x, y)  # [H, W] each
    return np.stack([xs, ys, -np.ones_like(xs)], axis=-1)


def backproject(depth: np.ndarray, fovy_deg: float, cam_pos, cam_mat) -> np.ndarray:
    """World points [H, W, 3] of a z-depth map [H, W] (metres, row 0 = image top).

    p_cam = depth x (u / f, -v / f, -1) with (u, v) the pixel centre's offset from the image
    centre; p_world = cam_pos + cam_mat @ p_cam. ``cam_mat`` is (3, 3) or MuJoCo's flat (9,).
    """
    depth = np.asarray(depth, np.float64)
    R = np.asarray(cam_mat, np.float64).reshape(3, 3)
    p_cam = pixel_rays(fovy_deg, *depth.shape) * depth[..., None]  # [H, W, 3]
    return p_cam @ R.T + np.asarray(cam_pos, np.float64)


def project(points, fovy_deg: float, cam_pos, cam_mat, height: int, width: int):
    """World points [..., 3] -> (col, row, depth): continuous pixel coordinates (pixel (i, j)
    spans [j, j + 1) x [i, i + 1)) and the z-depth (> 0 in front of the camera)."""
    R = np.asarray(cam_mat, np.float64).reshape(3, 3)
    p = (np.asarray(points, np.float64) - np.asarray(cam_pos, np.float64)) @ R  # world -> camera
    z = -p[..., 2]
    f = focal_length(fovy_deg, height)
    return width / 2.0 + f * p[..., 0] / z, height / 2.0 - f * p[..., 1] / z, z


def valid_depth(depth: np.ndarray, far: float) -> np.ndarray:
    """Pixels that hit geometry: finite, positive and in front of the far plane (the sky and the
    background read the far distance)."""
    d = np.asarray(depth)
    return np.isfinite(d) & (d > 0) & (d < 0.99 * far)


# ----------------------------------------------------------------------------- token grid


def token_grid(height: int, width: int, min_pixels: int = 4 * 28 * 28, max_pixels: int = 224 * 224):
    """The merged token grid (gh, gw) Qwen2.5-VL gives an H x W view: smart_resize to multiples of
    28 px, one token per 28 x 28 (the defaults are the VLA's ``data.visual``; 64 px -> 2 x 2,
    112 px -> 4 x 4, 224 px and more -> 8 x 8)."""
    from mm.visual import FACTOR, smart_size

    h, w = smart_size(height, width, min_pixels, max_pixels)
    return h // FACTOR, w // FACTOR


def cell_index(n: int, cells: int) -> np.ndarray:
    """The cell of each of ``n`` pixels split into ``cells`` equal parts: the cell that holds the
    pixel's centre, floor((i + 0.5) x cells / n). (The processor resizes the whole view, so token r
    covers rows [r H / gh, (r + 1) H / gh) of the rendered image.)"""
    return np.minimum(((np.arange(n) + 0.5) * cells / n).astype(int), cells - 1)


def patch_pool(x: np.ndarray, valid: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``x`` [H, W, C] over the valid pixels of each cell of a (gh, gw) split ->
    (pooled [gh, gw, C], valid fraction [gh, gw]); a cell without a valid pixel is 0."""
    H, W, _ = x.shape
    gh, gw = grid
    if H < gh or W < gw:
        raise ValueError(f"a {H} x {W} map cannot be pooled to a {gh} x {gw} grid")
    m = np.asarray(valid, bool)
    xm = np.where(m[..., None], x, 0).astype(np.float64)
    rows = np.searchsorted(cell_index(H, gh), np.arange(gh))  # first pixel row of each cell row
    cols = np.searchsorted(cell_index(W, gw), np.arange(gw))
    sums = np.add.reduceat(np.add.reduceat(xm, rows, axis=0), cols, axis=1)  # [gh, gw, C]
    count = np.add.reduceat(np.add.reduceat(m.astype(np.float64), rows, axis=0), cols, axis=1)
    area = np.diff(np.append(rows, H))[:, None] * np.diff(np.append(cols, W))[None, :]
    pooled = np.where(count[..., None] > 0, sums / np.maximum(count, 1)[..., None], 0.0)
    return pooled, count / area


# ----------------------------------------------------------------------------- features


def fourier_frequencies(n_freqs: int = 6, f_min: float = 0.25) -> np.ndarray:
    """Octaves f_min x 2^k, k = 0 .. n_freqs - 1, in cycles per unit (defaults, with a 1 m unit:
    periods 4 m down to 12.5 cm)."""
    return f_min * 2.0 ** np.arange(n_freqs)


def fourier_embed(q: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """[..., 3] -> [..., 6K] float32: per axis (x, y, z in order) [sin 2 pi f_k q | cos 2 pi f_k q]."""
    t = (2 * np.pi * np.asarray(q, np.float64)[..., :, None] * freqs).astype(np.float32)  # [..., 3, K]
    return np.concatenate([np.sin(t), np.cos(t)], axis=-1).reshape(*t.shape[:-2], -1)


def feature_dim(n_freqs: int = 6, sub: int = 1) -> int:
    """Width of ``point_features``: sub^2 x (3 + 6 n_freqs + 1); 40 by default (a multiple of 4, as
    the 2-D position embedding needs)."""
    return sub * sub * (3 + 6 * n_freqs + 1)


def point_features(
    points: np.ndarray,
    valid: np.ndarray,
    grid: tuple[int, int],
    centre=(0.0, 0.0, 0.0),
    scale: float = 1.0,
    n_freqs: int = 6,
    f_min: float = 0.25,
    sub: int = 1,
) -> np.ndarray:
    """Per-token features [gh, gw, d] float32 of a point map [H, W, 3] oriented as the view.

    Per pixel e = [q | fourier_embed(q) | 1], q = (p - centre) / scale; per cell the mean of e over
    its valid pixels (the last channel becomes the valid fraction; no valid pixel: all 0). With
    ``sub`` > 1 each token is split into sub x sub cells (2: one per 14 px ViT patch) pooled
    separately and concatenated row-major, the way Qwen's merger concatenates a token's patches.
    """
    gh, gw = grid
    q = (np.asarray(points, np.float64) - np.asarray(centre, np.float64)) / scale
    e = np.concatenate([q.astype(np.float32), fourier_embed(q, fourier_frequencies(n_freqs, f_min))], -1)
    pooled, frac = patch_pool(e, valid, (gh * sub, gw * sub))
    cells = np.concatenate([pooled, frac[..., None]], axis=-1)  # [gh sub, gw sub, d0]
    d0 = cells.shape[-1]
    cells = cells.reshape(gh, sub, gw, sub, d0).transpose(0, 2, 1, 3, 4)
    return cells.reshape(gh, gw, sub * sub * d0).astype(np.float32)


def feature_stats(feats: np.ndarray, mode: str = "residual") -> tuple[np.ndarray, np.ndarray]:
    """Normalisation statistics of a data set's features ``[N, V, gh, gw, d]`` for ``normalize``.

    ``zscore``: per channel over every non-empty token -> (mean [d], std [d]).
    ``residual``: the mean of each view's token position -> mean [V, gh, gw, d], and the
    per-channel std of what is left -> [d]. With fixed cameras most of a raw target is the same in
    every frame (table, walls, robot base; about 93% of the cosine in MetaWorld), so a constant
    per position would meet the alignment loss; the residual keeps what changes between frames
    (arm, objects, goal). Empty tokens (all 0) are left out of both.
    """
    if mode not in ("residual", "zscore"):
        raise ValueError(f"feature normalisation {mode!r}: use one of {', '.join(NORMALIZE)}")
    feats = np.asarray(feats, np.float64)
    full = np.any(feats != 0, axis=-1)  # [N, V, gh, gw]
    if mode == "zscore":
        return feats[full].mean(0), feats[full].std(0)
    n = full.sum(0)[..., None]  # [V, gh, gw, 1]
    mean = np.where(n > 0, (feats * full[..., None]).sum(0) / np.maximum(n, 1), 0.0)
    return mean, (feats - mean)[full].std(0)


def normalize(feats: np.ndarray, mean: np.ndarray, std: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(feats - mean) / (std + eps), broadcast (one record [V, gh, gw, d] against per-position
    means); empty tokens stay all 0."""
    empty = ~np.any(feats != 0, axis=-1, keepdims=True)
    return np.where(empty, 0.0, (feats - mean) / (std + eps)).astype(np.float32)
