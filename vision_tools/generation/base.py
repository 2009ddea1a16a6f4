"""What every decoding backend is: :class:`Generator`, with each hook the engine and the server use
declared here with its default, and what a backend is handed (:class:`Context`, :class:`Sampling`).

The engine hands a generator a batch of contexts (token ids so far, their token types, and the
visual tensors of every image in them) and gets back, per row, the new token ids of one turn:
stopped after a stop string (``</tool_call>``, ``</answer>``, the row's own ``Sampling.stop``),
an end-of-turn token or the row's token limit. Positions are mm's M-RoPE positions
(:func:`context_positions`: the ones the trainer scores with), whatever the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mm.encode import EncodedSample
from mm.rope import RopeSpec, mrope_positions
from vision_tools.protocol import in_a_loop

STOP_STRINGS = ("</tool_call>", "</answer>")


@dataclass
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    stop: tuple[str, ...] = ()  # stop strings besides STOP_STRINGS
    # end a turn once it is caught in a repetition loop (protocol.in_a_loop; CachedGenerator)
    cut_loops: bool = False
    # hand back each token's log-prob (TurnIds.logprobs), where the backend supports_logprobs
    logprobs: bool = False


class TurnIds(list):
    """One turn's new ids as a backend returns them (a plain list of ints to every reader), with
    ``logprobs``: each id's log-prob under the model's own distribution (log-softmax of its raw
    logits: temperature 1, no top-k/top-p, no suppressed tokens), i.e. what the trainer computes
    for the same ids; None unless asked for (``Sampling.logprobs``) and supported."""

    logprobs: list[float] | None = None

    @classmethod
    def of(cls, ids, logprobs: list[float] | None = None) -> TurnIds:
        out = cls(ids)
        out.logprobs = logprobs
        return out


@dataclass
class Context:
    """A conversation so far, as the model reads it."""

    input_ids: list[int]
    types: list[int]  # 0 text, 1 image, 2 video (mm_token_type_ids)
    pixel_values: list[torch.Tensor]  # one [patches, dim] tensor per image, in order
    grids: list[torch.Tensor]  # one [3] (t, h, w) row per image
    key: int = 0  # which conversation (scripted generators replay per conversation)
    # one (pixel_values_videos [patches, dim], grid [3], seconds per temporal patch) per video;
    # the seconds are None where the time is text in the ids (Qwen3-VL's <t seconds>)
    videos: list[tuple[torch.Tensor, torch.Tensor, float | None]] = field(default_factory=list)
    # the conversation's cache state, kept by the engine between turns (CachedGenerator reads
    # and writes it; None: nothing is kept)
    session: dict | None = None
    # the last ``resumed`` ids are the current turn's tokens so far (a turn a resumable
    # generator stopped after ``steps`` tokens and goes on with)
    resumed: int = 0
    # the log-probs of those ``resumed`` tokens (``TurnIds.logprobs`` of the unfinished turn, which
    # the engine keeps), so a resumed turn hands back the log-probs of all its ids
    resumed_logprobs: list[float] | None = None

    @classmethod
    def of(cls, sample: EncodedSample, key: int = 0) -> Context:
        """An encoded prompt (``ConversationEncoder.encode(..., add_generation_prompt=True)``) as a
        context: its ids, types and each image's and video's own tensors."""
        pixels, grids, videos = [], [], []
        if sample.image_grid_thw is not None:
            grids = list(sample.image_grid_thw)
            pixels = list(torch.split(sample.pixel_values, sample.image_grid_thw.prod(-1).tolist()))
        if sample.video_grid_thw is not None:
            parts = torch.split(sample.pixel_values_videos, sample.video_grid_thw.prod(-1).tolist())
            seconds = sample.second_per_grid_ts  # None: timestamps in the ids (Qwen3-VL)
            seconds = seconds.tolist() if seconds is not None else [None] * len(parts)
            videos = list(zip(parts, sample.video_grid_thw, seconds))
        ids, types = sample.input_ids.tolist(), sample.mm_token_type_ids.tolist()
        return cls(ids, types, pixels, grids, key, videos=videos)


class Generator:
    """A decoding backend. Subclasses implement :meth:`generate`; the hooks below keep their
    defaults unless the backend supports more.

    Backends built from a config (``make_generator``) take ``(model, processor, *,
    synced_gpus=False, features=None, prefixes=0)``.
    """

    # ``generate(..., steps=k)`` may end a call after k tokens per row, handing back unfinished
    # turns that a later call resumes (``Context.resumed``); such a backend also takes one
    # Sampling per row. False: every call runs whole turns with one Sampling.
    resumable: bool = False
    # conversation key -> True: that row stops at once (a server cancelling the work of a client
    # that went away), asked at every token; None: never
    cancelled: Callable[[int], bool] | None = None
    # (rows done, rows) -> True ends a call made with ``steps`` at this step (a server ends a round
    # when a waiting request could join); asked from the ``steps``-th token on; None: at ``steps``
    pause: Callable[[int, int], bool] | None = None
    # whether ``Sampling.logprobs`` is honoured (the returned turns are TurnIds with logprobs)
    supports_logprobs: bool = False

    def close(self) -> None:
        """Release what the backend holds outside this process (vllm: its server); nothing here."""

    def agree(self, n: int) -> int:
        """How many generate calls (or rows) to make when this rank has ``n``: the largest over
        ranks when every rank must run the same forwards (ZeRO-3 over several ranks), else ``n``."""
        return n

    def generate(
        self,
        contexts: list[Context],
        max_new_tokens: list[int],
        sampling: Sampling | list[Sampling],
        steps: int | None = None,
    ) -> list[list[int]]:
        """New ids of one turn per context (ending at a stop string, end of turn, or the limit);
        ``steps`` and a per-row ``sampling`` list only where :attr:`resumable`."""
        raise NotImplementedError


def context_positions(c: Context, types: torch.Tensor, spec: RopeSpec) -> tuple[torch.Tensor, int]:
    """mm's M-RoPE positions of ``c`` ([3, len]) and the next position (``mm.rope.mrope_positions``)."""
    grids = torch.stack(c.grids) if c.grids else None
    v_grids = torch.stack([v[1] for v in c.videos]) if c.videos else None
    timed = c.videos and all(v[2] is not None for v in c.videos)
    seconds = torch.tensor([v[2] for v in c.videos]) if timed else None
    return mrope_positions(types, grids, v_grids, seconds, spec)


def sampled_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Each row's log-prob of its token under the model's own distribution: log-softmax of the
    raw ``logits`` ([B, V], fp32; no temperature, top-k/top-p or suppression), at ``tokens`` [B]
    (what ``TurnIds.logprobs`` holds and ``mm.logprobs`` computes for the same ids)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None])[:, 0]


def turn_over(tok, new: list[int], limit: int, stops: tuple[str, ...], end_ids, loops: bool = False) -> bool:
    """Whether a turn's ids so far end it: its token limit, an end token, a stop string in its
    last 8 tokens (where one just completed), or (``loops``) a repetition loop that makes the
    turn a ``repetition`` violation whatever follows."""
    if len(new) >= limit or (new and new[-1] in end_ids):
        return True
    if loops and in_a_loop(tok, new):
        return True
    return bool(new) and any(s in tok.decode(new[-8:]) for s in stops)
