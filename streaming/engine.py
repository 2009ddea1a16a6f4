"""The per-second streaming engine: frames in, commentary out, memory and latency flat.

Round k (one second of video):

1. evict what the windows no longer hold (``StreamingKVCache.evict``), re-laying positions;
2. prefill ``Time=k.0-(k+1).0s`` + that second's frames (one temporal patch of ``fps`` frames);
   the first round first prefills the sink (system prompt, the previous-text block) and puts
   the query after its frames;
3. decode up to ``max_new_tokens`` tokens (sampling with temperature and repetition penalty, or
   greedy) until ``<|im_end|>``; every reply ends with ``" ..."``, alone it means silence.

New tokens get positions incrementally from ``cache.next_position`` with the model's own
M-RoPE rule (``mm.rope.mrope_positions``), never recomputed over the whole sequence. The
layout is StreamingVLM's released one, which the chunk builder (``streaming.chunks``) trains
on token for token; after eviction the cache still reads as a training chunk starting at the
first kept second (the query moves with it)::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>previous text\\n{previous}<|im_end|>
    \\n<|im_start|>user\\nTime=0.0-1.0s<|vision_start|>...<|vision_end|>{query}<|im_end|>
    \\n<|im_start|>assistant\\n\\n{words} ...<|im_end|>
    \\n<|im_start|>user\\nTime=1.0-2.0s<|vision_start|>...

The model family decides the frames' form (``mm.models``): frames are sized to multiples of its
``factor`` (28 px for Qwen2.5-VL, 32 for Qwen3-VL); Qwen2.5-VL's time is in the temporal
positions (``second_per_grid_ts``), Qwen3-VL's is text: each frame group of the second is
``<t seconds><|vision_start|>...<|vision_end|>`` with ``t`` its frames' mean time in the stream
(``mm.chat_template.timestamped_video``), as the encoder writes a training chunk's video
(``{"video_start": k, "video_end": k + 1}``: the same frames, the same times), and every group
is a t = 1 block of the positions. The earlier commentary is StreamingVLM's own ``previous
text`` turn where the chat template renders any role (Qwen2/2.5-VL); Qwen3-VL's template renders
only system, user, assistant and tool turns and drops the others, so there the block is a
``user`` turn (:func:`previous_role`; the chunk builder writes the same). Families that cannot
keep a bounded cache are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from mm.chat_template import (
    ASSISTANT_HEADER,
    IM_END,
    TURN_END,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    timestamped_video,
    turn,
    turn_header,
)
from mm.config import opt
from mm.models import family_of
from mm.records import RESERVED
from mm.rope import TEXT, VIDEO, RopeSpec, mrope_positions
from streaming.cache import CacheConfig, StreamingKVCache
from streaming.sources import Second, Source

SILENCE = " ..."  # closes every reply; alone, the model said nothing
TURN = TURN_END + ASSISTANT_HEADER + "\n"  # the reply opens with a newline, as trained
PREVIOUS = "previous text"  # StreamingVLM's role of the earlier-commentary block


def previous_role(processor) -> str:
    """The role of the previous-text block under ``processor``'s (or a tokenizer's) chat template:
    StreamingVLM's ``previous text`` where the template renders it (Qwen2/2.5-VL), else ``user``
    (Qwen3-VL's template drops roles other than system, user, assistant and tool, with their
    content, so a ``previous text`` turn would vanish from the training chunk)."""
    probe = [{"role": "system", "content": "s"}, {"role": PREVIOUS, "content": "p"}]
    try:
        text = processor.apply_chat_template(probe, tokenize=False)
    except ValueError:  # no chat template: StreamingVLM's own layout
        return PREVIOUS
    return PREVIOUS if turn_header(PREVIOUS) in text else "user"


def time_prompt(second: int) -> str:
    """The text that opens a second's user turn (one decimal, as the released model was trained)."""
    return f"Time={second:.1f}-{second + 1:.1f}s"


@dataclass
class StreamConfig:
    query: str = opt(
        "Commentate on this match", "the user's request, pinned (it ends the first kept user turn)"
    )
    system: str = opt("You are a helpful assistant.", "system prompt, pinned in the sink")
    previous_text: str = opt("", "earlier commentary to start from (the previous-text block's first content)")
    fps: float = opt(2.0, "frames per second read from the source (one temporal patch per second at 2)")
    frame_min_pixels: int = opt(4 * 28 * 28, "per-frame minimum pixels")
    frame_max_pixels: int = opt(768 * 28 * 28, "per-frame maximum pixels (768 tokens per second at 2 fps)")
    max_new_tokens: int = opt(20, "tokens of commentary per second at most")
    do_sample: bool = opt(True, "sample (True) or greedy (False)")
    temperature: float = opt(0.9, "sampling temperature")
    repetition_penalty: float = opt(
        1.05, "penalty on words said in the last 256 reply tokens (1 = off; end-of-turn and silence exempt)"
    )
    realtime: bool = opt(False, "pace a file to the wall clock (live sources always are)")
    seed: int | None = opt(None, "torch seed for sampling")
    cache: CacheConfig = opt(factory=CacheConfig, help="attention sink and windows")


@dataclass
class Segment:
    """One second of commentary."""

    start: float
    end: float
    text: str  # "" when the model stayed silent (" ...")
    raw: str  # the decoded reply as generated
    latency_ms: float  # wall time of the round: eviction, prefill, decoding
    cache_tokens: int  # slots in the KV cache after the round
    tokens: int  # tokens generated
    skipped: int = 0  # seconds of a live source dropped before this one (the model fell behind)

    @property
    def silent(self) -> bool:
        return not self.text

    def to_json(self) -> dict:
        return {
            "type": "segment",
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "latency_ms": round(self.latency_ms, 2),
            "cache_tokens": self.cache_tokens,
        }


@dataclass
class Summary:
    seconds: int = 0
    skipped: int = 0  # seconds dropped because the model fell behind a live (or --realtime) source
    decode_errors: int = 0  # seconds the source could not decode
    latencies_ms: list[float] = field(default_factory=list)
    cache_tokens: int = 0
    max_cache_tokens: int = 0

    def to_json(self) -> dict:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {
            "type": "summary",
            "seconds": self.seconds,
            "skipped_seconds": self.skipped,
            "decode_errors": self.decode_errors,
            "latency_ms_mean": round(float(lat.mean()), 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
            "cache_tokens": self.cache_tokens,
            "max_cache_tokens": self.max_cache_tokens,
        }


class StreamingEngine:
    """Runs one stream with one model; see the module docstring."""

    def __init__(self, model, processor, config: StreamConfig | None = None):
        self.model, self.processor = model, processor
        self.tok = processor.tokenizer
        self.cfg = config or StreamConfig()
        self.rope = RopeSpec.from_config(model.config)
        self.merge = self.rope.spatial_merge_size**2
        self.family = family_of(model.config)
        self.timestamps = self.family.video_time == "timestamps"  # Qwen3-VL: <t seconds> text
        self.previous = previous_role(processor)  # "previous text", or "user" (Qwen3-VL)
        ids = self.tok.convert_tokens_to_ids
        self.end_id, self.video_id = ids(IM_END), ids(VIDEO_PAD)
        self.vision = ids(VISION_START), ids(VISION_END)
        # every added token (control, tool, FIM, ...) except <|im_end|>, and the padded ids past
        # the tokenizer; a <|video_pad|> without frames would break the model
        added = set(self.tok.added_tokens_decoder) | set(map(ids, RESERVED))
        vocab = model.get_output_embeddings().weight.shape[0]
        self.suppress = torch.tensor(sorted((added | set(range(len(self.tok), vocab))) - {self.end_id}))
        self.unpenalized = set(self._ids(SILENCE)) | {self.end_id}
        if getattr(processor.video_processor, "cap_pixels_per_frame", False) is None:
            processor.video_processor.cap_pixels_per_frame = True  # frames are sized here; silences a warning
        self.reset()

    def reset(self) -> None:
        self.cache = StreamingKVCache(self.model, self.cfg.cache, [self.end_id], self._ids(SILENCE))
        self.round = 0  # rounds run (seconds processed)
        self.summary = Summary()
        self.trace: list[torch.Tensor] | None = None  # logits of every fed position, when tracing

    # -- the loop ---------------------------------------------------------------------------

    def run(self, source: Source, on_token: Callable[[str], None] | None = None) -> Iterator[Segment]:
        """Comment on ``source`` second by second; ``on_token`` receives text as it is decoded.

        A live source (or a file with ``realtime``) is paced to the wall clock: second k is
        processed once it has fully arrived (k + 1 s after the start); a second more than one
        second late is dropped and counted as skipped."""
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        paced = source.live or self.cfg.realtime
        t0 = time.monotonic()
        expected = 0
        for second in source.seconds():
            self.summary.decode_errors = source.skipped
            if paced and not source.live:
                late = time.monotonic() - (t0 + second.index + 1)
                if late > 1.0:
                    continue  # counted as a gap below, when the next second is processed
                time.sleep(max(0.0, -late))
            gap = max(0, second.index - expected) if paced else 0
            seg = self.step(second, on_token=on_token)
            seg.skipped = gap
            self.summary.skipped += gap
            expected = second.index + 1
            yield seg
        self.summary.decode_errors = source.skipped

    @torch.no_grad()
    def step(self, second: Second, on_token=None, forced: list[int] | None = None) -> Segment:
        """One round. ``forced`` feeds these reply ids instead of decoding (tests, teacher forcing)."""
        t0 = time.perf_counter()
        k = second.index  # windows count seconds of video, not rounds
        first = self.round == 0
        pixels, grid = self._frames(second.frames)
        pieces = []  # (span kind, ids), prefilled in one forward
        if first:
            head = turn("system", self.cfg.system) + turn_header(self.previous)
            pieces += [
                ("sink", self._ids(head)),
                ("previous", self._previous_ids()),
                ("close", [self.end_id]),
            ]
        else:
            self.cache.evict(k)
        frames = self._frame_ids(grid, second.frame_times())
        pieces += [("user", self._ids("\n" + turn_header("user") + time_prompt(k))), ("frames", frames)]
        if first and self.cfg.query:
            pieces.append(("query", self._ids(self.cfg.query)))
        pieces.append(("turn", self._ids(TURN)))
        logits = self._prefill(pieces, k, pixels, grid)
        reply = self._decode(logits, k, on_token, forced)
        self.round += 1
        raw = self.tok.decode([t for t in reply if t != self.end_id])
        text = raw.strip()
        text = text[: -len(SILENCE.strip())].rstrip() if text.endswith(SILENCE.strip()) else text
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()  # the round's kernels belong to its latency
        ms = (time.perf_counter() - t0) * 1000
        n = len(self.cache)
        s = self.summary
        s.seconds, s.cache_tokens, s.max_cache_tokens = s.seconds + 1, n, max(s.max_cache_tokens, n)
        s.latencies_ms.append(ms)
        generated = len(reply) - (1 if forced is None and reply and reply[-1] == self.end_id else 0)
        return Segment(second.start, second.end, text, raw, ms, n, generated)

    # -- pieces ---------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _previous_ids(self) -> list[int]:
        """The starting previous text: its first ``sink_text`` and last ``window_text`` tokens."""
        ids = self._ids(self.cfg.previous_text)
        a, b = self.cfg.cache.sink_text, self.cfg.cache.window_text
        return ids if len(ids) <= a + b else ids[:a] + ids[-b:]

    def _frame_ids(self, grid: torch.Tensor, times: list[float]) -> list[int]:
        """The ids of one second's frames: one vision block (Qwen2.5-VL), or per frame group its
        ``<t seconds>`` and its own vision block (Qwen3-VL, ``times``: each frame's time)."""
        t, h, w = (int(x) for x in grid)
        if not self.timestamps:
            return [self.vision[0]] + [self.video_id] * (t * h * w // self.merge) + [self.vision[1]]
        ids = self._ids(timestamped_video(times, self.processor.video_processor.temporal_patch_size))
        per_group = h * w // self.merge
        return [x for i in ids for x in ([i] * per_group if i == self.video_id else [i])]

    def _frames(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """One second of frames -> (pixel_values_videos, video_grid_thw [3]) at a capped size
        (sides multiples of the family's factor)."""
        from mm.visual import smart_size

        n = self.processor.video_processor.temporal_patch_size
        frames = list(frames)
        if len(frames) % n:  # whole temporal patches: repeat the last frame
            frames += [frames[-1]] * (n - len(frames) % n)
        h, w = frames[0].shape[:2]
        f = self.family.factor
        th, tw = smart_size(h, w, self.cfg.frame_min_pixels, self.cfg.frame_max_pixels, f)
        assert th % f == 0 and tw % f == 0
        imgs = [
            np.asarray(Image.fromarray(f).resize((tw, th), Image.Resampling.BICUBIC))
            if f.shape[:2] != (th, tw)
            else f
            for f in frames
        ]
        video = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # [F, 3, H, W]
        r = self.processor.video_processor(
            videos=[video], do_resize=False, do_sample_frames=False, return_tensors="pt"
        )
        return r["pixel_values_videos"], r["video_grid_thw"][0]

    def _prefill(self, pieces: list[tuple[str, list[int]]], second: int, pixels, grid) -> torch.Tensor:
        """One forward over the pieces (the frames' among them); each becomes its own cache span."""
        ids = [t for _, p in pieces for t in p]
        types = torch.tensor([VIDEO if t == self.video_id else TEXT for t in ids])
        seconds = torch.tensor([self.processor.video_processor.temporal_patch_size / self.cfg.fps])
        pos, end = mrope_positions(
            types, None, grid[None], seconds, self.rope, start=self.cache.next_position
        )
        video = {"pixel_values_videos": pixels, "video_grid_thw": grid[None]}
        if not self.timestamps:  # Qwen3-VL's time is the <t seconds> text, not in the positions
            video["second_per_grid_ts"] = seconds
        logits = self._forward(ids, pos, **video)
        at = 0
        for kind, p in pieces:
            if p:  # a piece ends where the next one starts (after frames: by the rope rule)
                nxt = int(pos[0, at + len(p)]) if at + len(p) < len(ids) else end
                self.cache.append(kind, second, pos[:, at : at + len(p)], nxt, p)
                at += len(p)
        return logits

    def _forward(self, ids: list[int], pos: torch.Tensor, **kwargs) -> torch.Tensor:
        dev = self.model.device
        out = self.model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=pos[:, None].to(dev),
            cache=self.cache.cache,
            use_cache=True,
            logits_to_keep=0 if self.trace is not None else 1,
            **{k: v.to(dev) for k, v in kwargs.items()},
        )
        if self.trace is not None:
            self.trace.append(out.logits[0].float().cpu())
        return out.logits[0, -1].float()

    def _decode(self, logits: torch.Tensor, second: int, on_token, forced: list[int] | None) -> list[int]:
        reply: list[int] = []
        said = [t for sp in self.cache.spans if sp.kind in ("reply", "previous") for t in sp.token_ids]
        recent = [t for t in said[-256:] if t not in self.unpenalized]
        limit = len(forced) if forced is not None else self.cfg.max_new_tokens
        shown = ""
        while len(reply) < limit:
            tok = forced[len(reply)] if forced is not None else self._pick(logits, recent + reply)
            reply.append(tok)
            if on_token is not None and tok != self.end_id:
                text = self.tok.decode(reply)  # whole reply: multi-byte characters come out whole
                if not text.endswith("\ufffd"):
                    on_token(text[len(shown) :])
                    shown = text
            logits = self._feed(tok, second)
            if tok == self.end_id:
                return reply
        if forced is None:  # out of tokens: close the turn for the model (not generated)
            self._feed(self.end_id, second)
        return reply

    def _feed(self, tok: int, second: int) -> torch.Tensor:
        pos = torch.full((3, 1), self.cache.next_position)
        logits = self._forward([tok], pos)
        self.cache.append("reply", second, pos, self.cache.next_position + 1, [tok])
        return logits

    def _pick(self, logits: torch.Tensor, seen: list[int]) -> int:
        cfg = self.cfg
        logits = logits.clone()
        logits[self.suppress.to(logits.device)] = -float("inf")
        if cfg.repetition_penalty != 1.0 and seen:  # seen excludes end-of-turn and silence
            idx = torch.tensor(sorted(set(seen)), device=logits.device)
            vals = logits[idx]
            logits[idx] = torch.where(vals > 0, vals / cfg.repetition_penalty, vals * cfg.repetition_penalty)
        if not cfg.do_sample:
            return int(logits.argmax())
        probs = torch.softmax(logits / max(cfg.temperature, 1e-5), dim=-1)
        return int(torch.multinomial(probs, 1))
