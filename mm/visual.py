"""Visual inputs: where an image or video comes from, its size under the per-item pixel limits,
and the total visual-token budget of one sample.

Sizes are planned from file headers first (cheap: no pixel decoding), so validation, statistics
and packing know every sample's token count up front. ``load_visuals`` then decodes and
resizes exactly to the planned sizes, so the number of ``<|image_pad|>`` / ``<|video_pad|>``
tokens always equals the number of features the vision tower produces.

Token arithmetic: an image resized to H x W gives H*W / factor**2 tokens, a video of F frames
F/2 times that (2 frames per temporal patch). ``factor`` is the model family's pixels per merged
token (``mm.models``): 28 for Qwen2-VL / Qwen2.5-VL (patch 14, 2x2 merge), 32 for Qwen3-VL
(patch 16); planning takes it as an argument (default 28), the pixel limits stay in pixels.
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from mm.config import opt
from mm.imports import is_available
from mm.records import is_video

if TYPE_CHECKING:
    import torch

FACTOR = 28  # patch 14 x spatial merge 2 (Qwen2.5-VL); other families pass their own factor
TEMPORAL_PATCH = 2


@dataclass
class VisualConfig:
    """Pixel limits and the per-sample visual-token budget."""

    min_pixels: int = opt(4 * 28 * 28, "per-image minimum pixels (ViRC tool results: 4*28*28 .. 16384*28*28)")
    max_pixels: int = opt(16384 * 28 * 28, "per-image maximum pixels")
    video_min_pixels: int = opt(4 * 28 * 28, "per-frame minimum pixels")
    video_max_pixels: int = opt(768 * 28 * 28, "per-frame maximum pixels")
    fps: float = opt(2.0, "frames sampled per second of video")
    max_frames: int = opt(768, "frames sampled per video at most")
    max_visual_tokens: int = opt(
        16384, "total visual tokens over all images, tool results and frames of one sample"
    )
    budget_policy: Literal["shrink", "reject"] = opt(
        "shrink", "over budget: shrink every item proportionally, or reject the record"
    )

    def __post_init__(self):
        if self.budget_policy not in ("shrink", "reject"):
            raise ValueError(f"budget_policy must be 'shrink' or 'reject', got {self.budget_policy!r}")
        if self.min_pixels > self.max_pixels or self.video_min_pixels > self.video_max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")


class VisualError(ValueError):
    """A visual input is missing, undecodable or over budget. ``code`` is stable, ``hint`` says the fix."""

    def __init__(self, code: str, message: str, hint: str = ""):
        super().__init__(message + (f" (fix: {hint})" if hint else ""))
        self.code, self.message, self.hint = code, message, hint


@dataclass
class VisualPlan:
    """One image or video item and the size it will have in the model."""

    kind: str  # "image" | "video"
    source: Any  # resolved path, PIL image, data URL, or list of frames
    orig_hw: tuple[int, int]
    hw: tuple[int, int]  # resized height, width (multiples of factor)
    frames: int = 1  # sampled frames (videos: even)
    fps: float = 0.0  # sampling rate of the frames (videos)
    start: float | None = None  # video_start / video_end seconds, if given
    end: float | None = None
    item: dict = field(default_factory=dict)
    factor: int = FACTOR  # pixels per merged token side of the model family
    seconds: list[float] = field(default_factory=list)  # videos: time of each sampled frame (timestamps)

    @property
    def tokens(self) -> int:
        return visual_tokens(self.hw, self.frames, self.factor)


def visual_tokens(hw: tuple[int, int], frames: int = 1, factor: int = FACTOR) -> int:
    """Tokens of an item resized to ``hw`` (multiples of ``factor``) with ``frames`` frames."""
    return (hw[0] // factor) * (hw[1] // factor) * max(1, frames // TEMPORAL_PATCH)


# ----------------------------------------------------------------------------- sources


def resolve(ref: Any, base_dir: str | os.PathLike | None) -> Any:
    """Turn a content reference into something loadable: relative paths join ``base_dir``."""
    if isinstance(ref, str):
        if ref.startswith("file://"):
            ref = ref[7:]
        if ref.startswith(("http://", "https://")):
            raise VisualError(
                "remote_url", f"remote URL {ref!r} is not allowed", "download it and use a local path"
            )
        if not ref.startswith("data:") and base_dir is not None and not os.path.isabs(ref):
            return os.path.join(base_dir, ref)
    return ref


class LazyImage:
    """An image stored elsewhere (bytes in a parquet row, ...), read only when opened, so a record
    holds a few numbers instead of pixels. ``str()`` names where it lives (for error messages)."""

    def read(self) -> Image.Image:
        raise NotImplementedError


def open_image(src: Any, decode: bool = False) -> Image.Image:
    """Open an image from a path, data URL, PIL image or ``LazyImage``; ``decode`` forces full pixel decoding."""
    if isinstance(src, Image.Image):
        return src
    if not isinstance(src, (str, LazyImage)):
        raise VisualError(
            "bad_image", f"image must be a path, data URL or PIL image, got {type(src).__name__}"
        )
    try:
        if isinstance(src, LazyImage):
            img = src.read()
        elif src.startswith("data:image"):
            if "base64," not in src:
                raise VisualError(
                    "bad_image", "data URL without ';base64,' payload", "encode as data:image/png;base64,..."
                )
            img = Image.open(io.BytesIO(base64.b64decode(src.split("base64,", 1)[1])))
        else:
            if not os.path.exists(src):
                raise VisualError(
                    "missing_image",
                    f"image file not found: {src}",
                    "check the path (relative paths are resolved against the JSONL file's folder)",
                )
            img = Image.open(src)
        if decode:
            img.load()
        return img
    except VisualError:
        raise
    except Exception as e:  # PIL raises several types for corrupt data
        raise VisualError(
            "bad_image", f"cannot decode image {_short(src)}: {e}", "re-export the image as PNG or JPEG"
        ) from e


def _short(src: Any) -> str:
    s = str(src)
    return s if len(s) < 80 or isinstance(src, LazyImage) else s[:60] + "..."


@dataclass
class VideoInfo:
    frames: int
    fps: float
    height: int
    width: int


def probe_video(src: Any) -> VideoInfo:
    """Frame count, fps and size of a video file (decord, then OpenCV) or a list of frames."""
    if isinstance(src, (list, tuple)):
        if not src:
            raise VisualError("bad_video", "video frame list is empty")
        w, h = open_image(src[0]).size
        return VideoInfo(len(src), 0.0, h, w)
    if not isinstance(src, str) or not os.path.exists(src):
        raise VisualError(
            "missing_video",
            f"video file not found: {src}",
            "check the path (relative paths are resolved against the JSONL file's folder)",
        )
    errors = []
    if is_available("decord"):
        try:
            import decord

            vr = decord.VideoReader(src, num_threads=1)
            h, w = vr[0].shape[:2]
            return VideoInfo(len(vr), float(vr.get_avg_fps()), h, w)
        except Exception as e:
            errors.append(f"decord: {e}")
    if is_available("cv2"):
        import cv2

        cap = cv2.VideoCapture(src)
        try:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            ok, frame = cap.read()
            if cap.isOpened() and ok and n > 0:
                return VideoInfo(n, float(cap.get(cv2.CAP_PROP_FPS) or 0.0), frame.shape[0], frame.shape[1])
            errors.append("opencv: could not read a frame")
        finally:
            cap.release()
    if not errors:
        raise VisualError("no_video_backend", "no video reader installed", "pip install 'mmpost[video]'")
    raise VisualError(
        "bad_video",
        f"cannot decode video {src}: {'; '.join(errors)}",
        "re-encode it (e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4)",
    )


def read_video_frames(src: str, indices: list[int]) -> torch.Tensor:
    """Frames at ``indices`` as a uint8 tensor [F, 3, H, W] (decord first, OpenCV fallback)."""
    import torch

    errors = []
    if is_available("decord"):
        try:
            import decord

            vr = decord.VideoReader(src, num_threads=1)
            arr = vr.get_batch(indices).asnumpy()  # [F, H, W, 3]
            return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        except Exception as e:
            errors.append(f"decord: {e}")
    if is_available("cv2"):
        import cv2

        cap = cv2.VideoCapture(src)
        frames, wanted, i = [], set(indices), 0
        try:
            last = max(indices)
            while i <= last:
                ok, frame = cap.read()
                if not ok:
                    break
                if i in wanted:
                    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                i += 1
        finally:
            cap.release()
        if len(frames) == len(wanted):
            by_index = dict(zip(sorted(wanted), frames))
            arr = np.stack([by_index[j] for j in indices])
            return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        errors.append(f"opencv: read {len(frames)} of {len(wanted)} frames")
    raise VisualError(
        "bad_video",
        f"cannot read frames of {src}: {'; '.join(errors) or 'no video reader installed'}",
        "re-encode the video or pip install 'mmpost[video]'",
    )


# ----------------------------------------------------------------------------- planning


def _frame_indices(info: VideoInfo, item: dict, cfg: VisualConfig) -> tuple[list[int], float]:
    """Which frames to sample (qwen-vl-utils' smart_nframes rule) and at what rate (indices into
    the file: frame i is at i / the file's fps seconds)."""
    from qwen_vl_utils.vision_process import smart_nframes

    src_fps = info.fps or float(item.get("sample_fps", cfg.fps))
    start = float(item.get("video_start", 0.0) or 0.0)
    end = item.get("video_end")
    first = min(info.frames - 1, max(0, round(start * src_fps)))
    last = (
        info.frames - 1
        if end is None
        else min(info.frames - 1, max(first, math.ceil(float(end) * src_fps) - 1))
    )
    total = last - first + 1
    if total < TEMPORAL_PATCH:
        raise VisualError(
            "bad_video",
            f"video segment has {total} frame(s); at least {TEMPORAL_PATCH} are needed",
            "widen video_start/video_end or use a longer clip",
        )
    want = {
        "fps": float(item.get("fps", cfg.fps)),
        "min_frames": TEMPORAL_PATCH,
        "max_frames": min(cfg.max_frames, total),
    }
    if "nframes" in item:
        want = {"nframes": int(item["nframes"])}
    n = smart_nframes(want, total_frames=total, video_fps=src_fps)
    idx = np.linspace(first, last, n).round().astype(int).tolist()
    return idx, n / (total / src_fps)


def plan_item(item: dict, cfg: VisualConfig, base_dir: str | None, factor: int = FACTOR) -> VisualPlan:
    """Resolve one image/video content item and size it under the per-item pixel limits."""
    kind = "video" if is_video(item) else "image"
    if kind == "image":
        src = resolve(item.get("image", item.get("image_url")), base_dir)
        if isinstance(src, dict):  # OpenAI form {"image_url": {"url": ...}}
            src = resolve(src.get("url"), base_dir)
        w, h = open_image(src).size
        lo = int(item.get("min_pixels", cfg.min_pixels))
        hi = int(item.get("max_pixels", cfg.max_pixels))
        return VisualPlan("image", src, (h, w), smart_size(h, w, lo, hi, factor), item=item, factor=factor)
    src = resolve(item.get("video"), base_dir)
    if isinstance(src, (list, tuple)):
        src = [resolve(f, base_dir) for f in src]
    info = probe_video(src)
    if isinstance(src, (list, tuple)):
        n = len(src) + len(src) % TEMPORAL_PATCH  # the last frame is repeated to fill a temporal patch
        fps = float(item.get("sample_fps", cfg.fps))
        t0 = float(item.get("video_start", 0.0) or 0.0)
        seconds = [t0 + i / fps for i in range(len(src))]
    else:
        idx, fps = _frame_indices(info, item, cfg)
        n = len(idx)
        src_fps = info.fps or float(item.get("sample_fps", cfg.fps))
        seconds = [i / src_fps for i in idx]
    lo = int(item.get("min_pixels", cfg.video_min_pixels))
    hi = int(item.get("max_pixels", cfg.video_max_pixels))
    return VisualPlan(
        "video",
        src,
        (info.height, info.width),
        smart_size(info.height, info.width, lo, hi, factor),
        frames=n,
        fps=fps,
        start=item.get("video_start"),
        end=item.get("video_end"),
        item=item,
        factor=factor,
        seconds=seconds + seconds[-1:] * (n - len(seconds)),
    )


def smart_size(h: int, w: int, lo: int, hi: int, factor: int = FACTOR) -> tuple[int, int]:
    """(height, width) by Qwen's smart_resize: sides multiples of ``factor``, area in [lo, hi], aspect kept."""
    from qwen_vl_utils.vision_process import smart_resize

    try:
        return smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=max(hi, lo))
    except (ValueError, AssertionError) as e:
        raise VisualError(
            "bad_image", f"image of {w}x{h} cannot be resized: {e}", "crop extreme aspect ratios below 200:1"
        ) from e


def apply_budget(plans: list[VisualPlan], cfg: VisualConfig) -> list[VisualPlan]:
    """Enforce ``cfg.max_visual_tokens`` over all items of a sample (shrink or reject)."""
    total = sum(p.tokens for p in plans)
    if total <= cfg.max_visual_tokens:
        return plans
    if cfg.budget_policy == "reject":
        raise VisualError(
            "over_budget",
            f"{total} visual tokens in {len(plans)} item(s) exceed max_visual_tokens={cfg.max_visual_tokens}",
            "raise max_visual_tokens, lower max_pixels, or use budget_policy=shrink",
        )
    # Scale every item's pixel area by one common factor; smart_resize floors to multiples of the
    # token side (28 or 32), so lower the factor a little until the rounded sizes fit.
    areas = [p.hw[0] * p.hw[1] for p in plans]
    scale = cfg.max_visual_tokens / total
    for _ in range(100):
        sizes = []
        for p, area in zip(plans, areas):
            lo = cfg.min_pixels if p.kind == "image" else cfg.video_min_pixels
            sizes.append(smart_size(p.orig_hw[0], p.orig_hw[1], lo, max(lo, int(area * scale)), p.factor))
        if sum(visual_tokens(hw, p.frames, p.factor) for p, hw in zip(plans, sizes)) <= cfg.max_visual_tokens:
            for p, hw in zip(plans, sizes):
                p.hw = hw
            return plans
        scale *= 0.95
    raise VisualError(
        "over_budget",
        f"{total} visual tokens cannot be brought under max_visual_tokens={cfg.max_visual_tokens} even at min_pixels",
        "raise max_visual_tokens or drop some images/frames",
    )


def plan_visuals(
    items: list[dict], cfg: VisualConfig, base_dir: str | None = None, factor: int = FACTOR
) -> list[VisualPlan]:
    """Plan every image/video item of a sample, in order of appearance, under the budget
    (``factor``: the model family's pixels per merged token side)."""
    return apply_budget([plan_item(it, cfg, base_dir, factor) for it in items], cfg)


# ----------------------------------------------------------------------------- loading


def load_image(plan: VisualPlan) -> Image.Image:
    img = open_image(plan.source, decode=True)
    img = img.convert("RGB") if img.mode != "RGBA" else _flatten_alpha(img)
    h, w = plan.hw
    return img.resize((w, h), Image.Resampling.BICUBIC) if img.size != (w, h) else img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    bg = Image.new("RGB", img.size, (255, 255, 255))
    bg.paste(img, mask=img.split()[3])
    return bg


def load_video(plan: VisualPlan, cfg: VisualConfig) -> torch.Tensor:
    """Sampled, resized frames as float tensor [F, 3, H, W] in 0..255 (what the video processor takes)."""
    import torch

    h, w = plan.hw
    if isinstance(plan.source, (list, tuple)):
        frames = [
            torch.from_numpy(np.array(load_image(VisualPlan("image", f, (0, 0), (h, w))))).permute(2, 0, 1)
            for f in plan.source
        ]
        frames += frames[-1:] * (plan.frames - len(frames))
        return torch.stack(frames).float()
    info = probe_video(plan.source)
    idx, _ = _frame_indices(info, plan.item, cfg)
    video = read_video_frames(plan.source, idx).float()
    from torchvision.transforms.functional import InterpolationMode, resize

    return resize(video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp_(0, 255)


def load_visuals(plans: list[VisualPlan], cfg: VisualConfig) -> tuple[list[Image.Image], list[torch.Tensor]]:
    """Decode every planned item at its planned size: (images, videos) in order of appearance."""
    images = [load_image(p) for p in plans if p.kind == "image"]
    videos = [load_video(p, cfg) for p in plans if p.kind == "video"]
    return images, videos
