"""Conversation -> model inputs: ids, assistant-only labels, visual tensors, M-RoPE positions.

The chat is rendered once by the processor's chat template and tokenised once; each
``<|image_pad|>`` / ``<|video_pad|>`` placeholder is then expanded in id space to the exact
number of visual tokens planned by ``mm.visual`` (which the image/video processors produce
with resizing switched off, so counts cannot drift). Labels cover the content of assistant
turns plus their ``<|im_end|>``; system, user and tool turns, the ``<|im_start|>assistant\\n``
header and turns marked ``"train": false`` are ignored (-100). (A reply that opens with a newline
merges it into the header's newline token with Qwen's tokenizer, ``\\n\\n``: that token is the
header's, as in StreamingVLM's released training code.)

The model family (``mm.models``, found from the processor's class) decides the visual-token
arithmetic (28 or 32 pixels per token), the default M-RoPE rule, and how a video is written:
one placeholder (Qwen2/2.5-VL) or, for Qwen3-VL, ``<t seconds>`` plus a placeholder per frame
group, inserted in the rendered text before tokenisation exactly where Qwen3-VL's processor
puts them (so the timestamps tokenise in context as there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mm.chat_template import (
    ASSISTANT_HEADER,
    IM_END,
    IMAGE_PAD,
    VIDEO_PAD,
    VIDEO_PLACEHOLDER,
    timestamped_video,
)
from mm.models import family_of_processor
from mm.records import Message, RecordError, parse_message
from mm.rope import IMAGE, TEXT, VIDEO, RopeSpec, mrope_positions
from mm.visual import VisualConfig, VisualPlan, load_visuals, plan_visuals

IGNORE = -100
VISUAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)


@dataclass
class EncodedSample:
    """One conversation ready for the model (unbatched)."""

    input_ids: torch.Tensor  # [L]
    labels: torch.Tensor  # [L], IGNORE where not trained
    mm_token_type_ids: torch.Tensor  # [L] 0 text, 1 image, 2 video
    position_ids: torch.Tensor  # [3, L]
    pixel_values: torch.Tensor | None = None  # [n_patches, 3*2*patch*patch]
    image_grid_thw: torch.Tensor | None = None  # [n_images, 3]
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None  # [n_videos, 3]
    second_per_grid_ts: torch.Tensor | None = None  # [n_videos]
    next_position: int = 0  # first free M-RoPE position after the sample (decoding continues here)
    id: str | None = None
    plans: list[VisualPlan] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def visual_tokens(self) -> int:
        return int((self.mm_token_type_ids != TEXT).sum())

    @property
    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def model_inputs(self) -> dict:
        """Batch-of-one kwargs for ``model(**...)`` (no mask needed: one unpadded row)."""
        out = {"input_ids": self.input_ids[None], "position_ids": self.position_ids[:, None]}
        for k in VISUAL_KEYS:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


class ConversationEncoder:
    """Encodes conversations for one processor under one visual config (``rope``: the model's
    rule, ``RopeSpec.from_config(model.config)``; None: the processor's family default)."""

    def __init__(
        self,
        processor,
        visual: VisualConfig | None = None,
        rope: RopeSpec | None = None,
        max_length: int | None = None,
    ):
        self.processor = processor
        self.tok = processor.tokenizer
        self.visual = visual or VisualConfig()
        self.family = family_of_processor(processor)
        self.rope = rope or RopeSpec.for_family(self.family)
        self.max_length = max_length
        ids = self.tok.convert_tokens_to_ids
        self.image_id, self.video_id, self.end_id = (
            ids(IMAGE_PAD),
            ids(VIDEO_PAD),
            ids(IM_END),
        )
        if getattr(processor.video_processor, "cap_pixels_per_frame", False) is None:
            processor.video_processor.cap_pixels_per_frame = (
                True  # mmpost sizes frames itself; silences a warning
            )
        self.header = np.asarray(self.tok(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"])

    # -- public ---------------------------------------------------------------------------

    def plan(self, messages: list[Message], base_dir: str | None = None) -> list[VisualPlan]:
        """Visual plans (sizes and token counts) without decoding pixels."""
        items = [it for m in messages for it in m.visual_items()]
        return plan_visuals(items, self.visual, base_dir, self.family.factor)

    def count_tokens(
        self, messages: list[Message], base_dir: str | None = None, add_generation_prompt: bool = False
    ) -> tuple[int, int]:
        """(total tokens, visual tokens) of a conversation, from headers only."""
        plans = self.plan(messages, base_dir)
        ids = self._render_ids(messages, add_generation_prompt, plans)
        visual = sum(p.tokens for p in plans)
        n_pads = int(np.isin(ids, (self.image_id, self.video_id)).sum())
        return len(ids) - n_pads + visual, visual

    def encode(
        self,
        messages: list[Message] | list[dict],
        base_dir: str | None = None,
        add_generation_prompt: bool = False,
        sample_id: str | None = None,
    ) -> EncodedSample:
        messages = [
            m if isinstance(m, Message) else parse_message(m, f"messages[{i}]")
            for i, m in enumerate(messages)
        ]
        plans = self.plan(messages, base_dir)
        images, videos = load_visuals(plans, self.visual)
        vis = self._visual_tensors(images, videos, plans)

        ids = self._render_ids(messages, add_generation_prompt, plans)
        labels = self._labels(ids, messages, add_generation_prompt)
        ids, labels, types = self._expand(ids, labels, vis)
        if self.max_length is not None and len(ids) > self.max_length:
            raise RecordError(
                "too_long",
                f"sample has {len(ids)} tokens, more than max_length={self.max_length}",
                "raise max_length or lower the pixel limits / visual-token budget",
            )
        pos, nxt = mrope_positions(
            types,
            vis.get("image_grid_thw"),
            vis.get("video_grid_thw"),
            vis.get("second_per_grid_ts"),
            self.rope,
        )
        return EncodedSample(ids, labels, types, pos, next_position=nxt, id=sample_id, plans=plans, **vis)

    # -- steps ----------------------------------------------------------------------------

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(
            [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _render_ids(self, messages: list[Message], add_generation_prompt: bool, plans) -> np.ndarray:
        text = self.render(messages, add_generation_prompt)
        if self.family.video_time == "timestamps":
            text = self._timestamped(text, [p for p in plans if p.kind == "video"])
        return np.asarray(self.tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def _timestamped(self, text: str, videos: list[VisualPlan]) -> str:
        """Each rendered video placeholder -> its frame groups with their timestamps (Qwen3-VL)."""
        parts = text.split(VIDEO_PLACEHOLDER)
        if len(parts) - 1 != len(videos):
            raise RecordError(
                "visual_mismatch",
                f"{len(parts) - 1} video placeholders for {len(videos)} videos",
                "every video content item must be rendered by the chat template",
            )
        tp = self.family.temporal_patch_size
        out = [parts[0]]
        for video, rest in zip(videos, parts[1:]):
            out += [timestamped_video(video.seconds, tp), rest]
        return "".join(out)

    def _labels(self, ids: np.ndarray, messages: list[Message], add_generation_prompt: bool) -> np.ndarray:
        labels = np.full_like(ids, IGNORE)
        role = self.header[:-1]  # "<|im_start|>assistant"; then the token holding its newline
        n = len(role)
        starts = np.flatnonzero(ids == role[0])
        heads = [
            s + n + 1
            for s in starts
            if s + n < len(ids)
            and np.array_equal(ids[s : s + n], role)
            and self.tok.decode([int(ids[s + n])]).startswith("\n")
        ]
        turns = [m for m in messages if m.role == "assistant"]
        if add_generation_prompt:
            heads = heads[:-1]
        if len(heads) != len(turns):
            raise RuntimeError(
                f"found {len(heads)} assistant headers for {len(turns)} assistant turns; "
                "the chat template is not a Qwen-style <|im_start|>role template"
            )
        ends = np.flatnonzero(ids == self.end_id)
        for start, msg in zip(heads, turns):
            end = ends[np.searchsorted(ends, start)]  # the turn's <|im_end|>
            if msg.train:
                labels[start : end + 1] = ids[start : end + 1]
        return labels

    def _visual_tensors(self, images, videos, plans) -> dict:
        out: dict = {}
        if images:
            r = self.processor.image_processor(images=images, do_resize=False, return_tensors="pt")
            out["pixel_values"], out["image_grid_thw"] = r["pixel_values"], r["image_grid_thw"]
        if videos:
            r = self.processor.video_processor(
                videos=videos, do_resize=False, do_sample_frames=False, return_tensors="pt"
            )
            out["pixel_values_videos"], out["video_grid_thw"] = r["pixel_values_videos"], r["video_grid_thw"]
            if self.family.video_time != "timestamps":  # Qwen3-VL's time is in the text, not the positions
                tp = self.processor.video_processor.temporal_patch_size
                fps = [p.fps for p in plans if p.kind == "video"]
                out["second_per_grid_ts"] = torch.tensor([tp / f for f in fps], dtype=torch.float32)
        # the processors must produce exactly the planned sizes (else pads and features would disagree)
        merge = self.rope.spatial_merge_size**2
        got = [
            int(g.prod()) // merge for k in ("image_grid_thw", "video_grid_thw") if k in out for g in out[k]
        ]
        want = [p.tokens for p in plans if p.kind == "image"] + [p.tokens for p in plans if p.kind == "video"]
        if got != want:
            raise RuntimeError(f"processor produced {got} visual tokens, planned {want}")
        return out

    def _expand(self, ids, labels, vis) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        merge = self.rope.spatial_merge_size**2
        counts = np.ones(len(ids), dtype=np.int64)
        for pad, key in ((self.image_id, "image_grid_thw"), (self.video_id, "video_grid_thw")):
            where = np.flatnonzero(ids == pad)
            grids = vis.get(key)
            sizes = [] if grids is None else (grids.prod(-1) // merge).tolist()
            if grids is not None and pad == self.video_id and self.family.video_time == "timestamps":
                sizes = [
                    int(h * w) // merge for t, h, w in grids.tolist() for _ in range(t)
                ]  # per frame group
            if len(where) != len(sizes):
                raise RecordError(
                    "visual_mismatch",
                    f"{len(where)} placeholders for {len(sizes)} visual inputs",
                    "every image/video content item must be rendered by the chat template",
                )
            if sizes:
                counts[where] = sizes
        ids = np.repeat(ids, counts)
        labels = np.repeat(labels, counts)
        types = np.where(ids == self.image_id, IMAGE, np.where(ids == self.video_id, VIDEO, TEXT))
        labels[types != TEXT] = IGNORE
        return torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(types)
