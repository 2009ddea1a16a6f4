"""M-RoPE position ids (temporal, height, width) for one sample, by the model's own rule.

Text tokens get the same 1-D position on all three axes. A vision block of an image (or
video) with merged grid t x h x w gets, starting at the current position p:
temporal ``p + floor(i * interval)``, height ``p + row``, width ``p + col``. ``interval`` is 1
for images and for Qwen2-VL videos; for Qwen2.5-VL videos it is
``tokens_per_second * seconds_per_temporal_patch`` (absolute time alignment). Qwen3-VL
(``frame_blocks``) keeps time out of the positions: each temporal patch of a video is its own
t = 1 block, with its ``<t seconds>`` timestamp as text before it, as ``get_rope_index`` of
Qwen3-VL splits ``video_grid_thw`` per frame group.

Where the text after a block continues is the ``rule``:

* ``"qwen"`` (default): at the block's largest position (any of the three rows) + 1, as Qwen's
  own fine-tuning code, vLLM and transformers 4.x do; the released checkpoints were trained so.
* ``"transformers"``: at ``p + max(h, w)``, as ``get_rope_index`` of transformers 5.x does. It
  ignores the temporal extent, so after a video whose ``(t - 1) * interval >= max(h, w)`` (e.g.
  60 s at 2 fps) the text positions fall inside the video's temporal positions.

The two agree for images and Qwen3-VL's frame groups (t = 1). Tests check ``"transformers"`` against the installed
``get_rope_index`` and both rules against hand-computed positions. Computing positions here
needs no model instance, runs per sample in the data pipeline, and lets packed rows, rollouts
(``vision_tools.generation``) and streaming carry the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mm.config import opt

TEXT, IMAGE, VIDEO = 0, 1, 2


RULES = ("qwen", "transformers")


@dataclass(frozen=True)
class RopeSpec:
    spatial_merge_size: int = opt(2, "vision tokens merged per side")
    tokens_per_second: float | None = opt(2, "video time scaling; None: Qwen2-VL (no absolute time)")
    rule: Literal["qwen", "transformers"] = opt(
        "qwen", "text after a vision block: 'qwen' = block max + 1, 'transformers' = start + max(h, w)"
    )
    frame_blocks: bool = opt(False, "each temporal patch of a video is its own t = 1 block (Qwen3-VL)")

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"RopeSpec.rule={self.rule!r}: use one of {', '.join(RULES)}")

    @classmethod
    def from_config(cls, config, rule: str = "qwen") -> RopeSpec:
        """The rule of ``config``'s model family (``mm.models``)."""
        from mm.models import family_of

        return cls.for_family(family_of(config), config, rule)

    @classmethod
    def for_family(cls, family, config=None, rule: str = "qwen") -> RopeSpec:
        """The M-RoPE rule of a model family (``mm.models.ModelFamily``); ``config`` (a
        checkpoint's) gives its merge size and time scale."""
        vision = getattr(config, "vision_config", None)
        merge = vision.spatial_merge_size if vision is not None else family.merge_size
        if family.video_time == "absolute":
            tps = getattr(vision, "tokens_per_second", None) if vision is not None else 2
            return cls(merge, tps, rule)
        return cls(merge, None, rule, frame_blocks=family.video_time == "timestamps")


def _runs(types: torch.Tensor) -> list[tuple[int, int, int]]:
    """(modality, start, end) for each run of equal token types."""
    if types.numel() == 0:
        return []
    change = torch.nonzero(types[1:] != types[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), types.numel()]
    return [(int(types[s]), s, e) for s, e in zip(bounds[:-1], bounds[1:])]


def mrope_positions(
    mm_token_type_ids: torch.Tensor,  # [L] 0 text, 1 image, 2 video
    image_grid_thw: torch.Tensor | None = None,  # [n_images, 3]
    video_grid_thw: torch.Tensor | None = None,  # [n_videos, 3]
    second_per_grid_ts: torch.Tensor | None = None,  # [n_videos]
    spec: RopeSpec = RopeSpec(),
    start: int = 0,
) -> tuple[torch.Tensor, int]:
    """Positions [3, L] of one sample, and the next free position (for decoding after it)."""
    images = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    video_grids = video_grid_thw.tolist() if video_grid_thw is not None else []
    if spec.frame_blocks:  # one block per frame group: [t, h, w] -> t x [1, h, w]
        video_grids = [[1, h, w] for t, h, w in video_grids for _ in range(t)]
    videos = iter(video_grids)
    seconds = iter(second_per_grid_ts if second_per_grid_ts is not None else [])
    m = spec.spatial_merge_size
    parts, cur = [], start
    for kind, s, e in _runs(mm_token_type_ids):
        if kind == TEXT:
            parts.append(torch.arange(cur, cur + e - s).expand(3, -1))
            cur += e - s
            continue
        t, h, w = next(images) if kind == IMAGE else next(videos)
        h, w = h // m, w // m
        interval = 1
        if kind == VIDEO and spec.tokens_per_second is not None and not spec.frame_blocks:
            sec = next(seconds, 1.0)
            interval = spec.tokens_per_second * (sec if torch.is_tensor(sec) else torch.tensor(sec))
        tt = (torch.arange(t) * interval).long() + cur
        hh = torch.arange(h) + cur
        ww = torch.arange(w) + cur
        grid = torch.stack(torch.meshgrid(tt, hh, ww, indexing="ij")).reshape(3, -1)
        if grid.shape[1] != e - s:
            raise ValueError(f"vision block of {e - s} tokens does not match its grid {t}x{h}x{w}")
        parts.append(grid)
        cur = int(grid.max()) + 1 if spec.rule == "qwen" else cur + max(h, w)
    if not parts:
        return torch.zeros(3, 0, dtype=torch.long), start
    pos = torch.cat(parts, dim=1).long()
    return pos, int(pos.max()) + 1
