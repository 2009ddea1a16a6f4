"""The bounded streaming KV cache (StreamingVLM), with contiguous M-RoPE kept by rotation.

Layout. The cache is a transformers ``DynamicCache``: per layer ``keys`` / ``values`` of shape
``[1, kv_heads, S, head_dim]``; keys are stored **after** RoPE. Beside it, ``spans`` describe
the S slots in the order the model reads them (StreamingVLM's chat layout, see
``streaming.engine``); each span is a run of tokens that arrived together::

    [sink: system prompt + "<|im_start|>previous text\\n"]   pinned
    [previous: words of replies older than R rounds]      first T_sink + last T_window tokens
    [close: "<|im_end|>" of the previous-text block]        pinned
    [user k: "\\n<|im_start|>user\\nTime=k.0-(k+1).0s"]        the last R seconds
    [frames k: <|vision_start|> frames <|vision_end|>]     the last V seconds (V <= R)
    [query]                                                pinned, ends the first kept user turn
    [turn k: "<|im_end|>\\n<|im_start|>assistant\\n\\n"]      the last R seconds
    [reply k: the model's words, " ...", <|im_end|>]        the last R seconds, then previous
    ... user, frames, turn, reply per second ...

Every span records its M-RoPE positions (``[3, n]``: temporal, height, width; equal rows for
text), where it starts and the next free position after it. Eviction happens once per round
(:meth:`StreamingKVCache.evict`), before second k is added: frames of seconds <= k - V leave;
seconds <= k - R lose their turn, their reply's words (without ``" ..."`` and ``<|im_end|>``)
join the previous-text block, which loses its middle; the query moves to the end of the first
kept user turn. So the cache always reads as a training chunk that starts at its first kept
second (``streaming.chunks``). Slot order follows the spans (eviction reorders the slots).

Contiguous RoPE. After eviction the kept spans are laid out again from the sink onwards, each
starting where the previous one ends, so positions never grow beyond what the windows hold
(plus ``relayout_slack``: re-laying only once positions run that far ahead means a key is
rotated, and rounded to bf16, a few times in its life rather than every second).
A span that moves left by ``d`` positions has every position (all three M-RoPE axes alike)
shifted by ``d``, so its cached keys only need a rotation by ``-d`` (angles ``-d * inv_freq``):
rotations compose, so this equals rotating the pre-RoPE keys at the new positions (tested
against that slow computation). It happens once per round, only for spans that moved. It holds
for interleaved M-RoPE too (Qwen3-VL: each frequency is driven by one of the three axes, and
all three moved by ``d``); the text rotary is the family's ``ModelFamily.rotary``. Families
whose layers keep a running state (Qwen3.5) are refused (``ModelFamily.streaming``).
``mode="native"`` keeps the original, ever-growing positions (the ablation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from mm.config import opt


@dataclass
class CacheConfig:
    sink_text: int = opt(512, "T_sink: first tokens of earlier commentary kept in the previous-text block")
    window_text: int = opt(512, "T_window: last tokens of earlier commentary kept in the previous-text block")
    recent_rounds: int = opt(16, "R: seconds whose turn (Time=, reply) stays, the current one included")
    vision_seconds: int = opt(16, "V_window: seconds whose frames stay, the current one included (<= R)")
    mode: Literal["contiguous", "native"] = opt(
        "contiguous", "re-lay positions after eviction, or keep growing"
    )
    relayout_slack: int = opt(
        1024,
        "contiguous: re-lay once positions run this far past the kept tokens (each re-lay rounds bf16 keys once)",
    )

    def __post_init__(self):
        if not 1 <= self.vision_seconds <= self.recent_rounds:
            raise ValueError(
                f"cache windows: need 1 <= vision_seconds <= recent_rounds (a second's frames live inside "
                f"its turn), got vision_seconds={self.vision_seconds}, recent_rounds={self.recent_rounds}"
            )


@dataclass
class Span:
    kind: Literal["sink", "previous", "close", "user", "frames", "query", "turn", "reply"]
    round: int
    positions: torch.Tensor  # [3, n]
    end: int  # next free position after the span
    token_ids: list[int] = field(default_factory=list)
    origin: torch.Tensor | None = None  # [n] arrival index of each slot (0 = first token ever cached)
    kept: torch.Tensor | None = field(default=None, repr=False)  # which slots survived a conversion

    @property
    def start(self) -> int:
        return int(self.positions[0, 0]) if self.n else self.end

    @property
    def n(self) -> int:
        return int(self.positions.shape[1])


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys ``[B, H, n, D]`` as if their positions moved by ``-delta`` ``[n]``.

    With the same shift on the temporal, height and width axes, every M-RoPE frequency turns by
    the same angle whichever axis drives it, so the 1-D rotation is exact for any
    ``mrope_section``, contiguous (Qwen2/2.5-VL) or interleaved (Qwen3-VL).
    """
    inv_freq = inv_freq.to(keys.device)
    angles = -delta.to(keys.device, inv_freq.dtype)[:, None] * inv_freq[None, :]  # [n, D/2]
    emb = torch.cat([angles, angles], dim=-1)  # [n, D]
    cos, sin = emb.cos().to(keys.dtype), emb.sin().to(keys.dtype)
    half = keys.shape[-1] // 2
    rotated_half = torch.cat([-keys[..., half:], keys[..., :half]], dim=-1)
    return keys * cos + rotated_half * sin


class StreamingKVCache:
    """A DynamicCache plus the span bookkeeping that bounds it; see the module docstring."""

    def __init__(self, model, config: CacheConfig | None = None, drop_ids=(), silence_ids=()):
        """``drop_ids``: tokens a reply loses when it becomes previous text (end of turn), as
        does its closing ``silence_ids`` (" ..."). A model family whose layers keep state that
        cannot lose tokens (Qwen3.5's Gated DeltaNet) is refused with the family's reason."""
        from transformers import DynamicCache

        from mm.models import family_of

        family = family_of(model.config)
        family.require("streaming", "the streaming KV cache")
        self.cfg = config or CacheConfig()
        self.drop_ids, self.silence_ids = set(drop_ids), list(silence_ids)
        rotary = family.submodule(model, family.rotary)
        self.inv_freq = rotary.inv_freq.detach().float()
        self.cache = DynamicCache(config=model.config.text_config)
        self.spans: list[Span] = []
        self.next_position = 0
        self.arrived = 0  # tokens ever appended
        self.rotations = 0  # spans rotated so far (for tests and the summary)

    # -- growth ---------------------------------------------------------------------------

    def append(self, kind: str, round_: int, positions: torch.Tensor, end: int, token_ids=()) -> None:
        """Record ``positions.shape[1]`` slots just written to the cache by a forward pass."""
        n = positions.shape[1]
        origin = torch.arange(self.arrived, self.arrived + n)
        self.arrived += n
        if self.spans and self.spans[-1].kind == kind and self.spans[-1].round == round_:
            last = self.spans[-1]  # one reply grows token by token
            last.positions = torch.cat([last.positions, positions], dim=1)
            last.origin = torch.cat([last.origin, origin])
            last.end = end
            last.token_ids += list(token_ids)
        else:
            self.spans.append(Span(kind, round_, positions, end, list(token_ids), origin))
        self.next_position = end

    def __len__(self) -> int:
        return sum(s.n for s in self.spans)

    def tokens(self, kind: str) -> int:
        return sum(s.n for s in self.spans if s.kind == kind)

    # -- eviction -------------------------------------------------------------------------

    def evict(self, current_round: int) -> int:
        """Apply the windows before second ``current_round``; returns the number of evicted slots."""
        cfg, k = self.cfg, current_round
        head, prev, close, query, seconds = [], [], [], [], []  # (span, slot indices it keeps)
        slot = 0
        for s in self.spans:
            idx = torch.arange(slot, slot + s.n)
            slot += s.n
            past_turn = s.round <= k - cfg.recent_rounds
            if (s.kind == "frames" and s.round <= k - cfg.vision_seconds) or (
                s.kind in ("user", "turn") and past_turn
            ):
                continue
            if s.kind == "reply" and past_turn:
                s = self._as_previous(s)
                if s.n:
                    prev.append((s, idx[s.kept]))
                continue
            {"sink": head, "previous": prev, "close": close, "query": query}.get(s.kind, seconds).append(
                (s, idx)
            )
        # the query ends the first kept user turn, after its frames (where a training chunk has it)
        q = next((i for i, (s, _) in enumerate(seconds) if s.kind == "turn"), len(seconds))
        keep = head + self._cut_previous(prev) + close + seconds[:q] + query + seconds[q:]
        kept_idx = torch.cat([i for _, i in keep]) if keep else torch.zeros(0, dtype=torch.long)
        evicted = len(self) - int(kept_idx.numel())
        if not torch.equal(kept_idx, torch.arange(len(self))):
            for layer in self.cache.layers:
                at = kept_idx.to(layer.keys.device)  # kept slots, in the layout's order
                layer.keys = layer.keys[:, :, at]
                layer.values = layer.values[:, :, at]
        self.spans = [s for s, _ in keep]
        extent = sum(s.end - s.start for s in self.spans)
        if cfg.mode == "contiguous" and evicted and self.next_position - extent > cfg.relayout_slack:
            self._relay()
        return evicted

    def _as_previous(self, s: Span) -> Span:
        """A reply as previous text: its words only (no end of turn, no closing " ...")."""
        ids = s.token_ids
        keep = torch.tensor([t not in self.drop_ids for t in ids], dtype=torch.bool)
        words = keep.nonzero().flatten()
        n = len(self.silence_ids)
        if n and [ids[i] for i in words[-n:].tolist()] == self.silence_ids:
            keep[words[-n:]] = False
        part = Span(
            "previous", s.round, s.positions[:, keep], 0, [t for t, k in zip(ids, keep) if k], s.origin[keep]
        )
        part.end = int(part.positions[0, -1]) + 1 if part.n else s.end
        part.kept = keep
        return part

    def _cut_previous(self, prev: list) -> list:
        """Keep the first T_sink and the last T_window tokens of the previous-text block."""
        total = sum(s.n for s, _ in prev)
        if total <= self.cfg.sink_text + self.cfg.window_text:
            return prev
        lo, hi = self.cfg.sink_text, total - self.cfg.window_text  # drop previous tokens [lo, hi)
        out, seen = [], 0
        for s, i in prev:
            a, b = seen, seen + s.n
            seen = b
            for x, y in ((a, min(b, lo)), (max(a, hi), b)):  # the parts of [a, b) outside [lo, hi)
                if x < y:
                    part = Span(
                        "previous",
                        s.round,
                        s.positions[:, x - a : y - a],
                        0,
                        s.token_ids[x - a : y - a],
                        s.origin[x - a : y - a],
                    )
                    part.end = int(part.positions[0, -1]) + 1
                    out.append((part, i[x - a : y - a]))
        return out

    def _relay(self) -> None:
        """Give the kept spans contiguous positions again, rotating the keys of those that moved."""
        cursor, slot = 0, 0
        moved, deltas = [], []
        for s in self.spans:
            d = s.start - cursor
            if d:
                s.positions = s.positions - d
                s.end -= d
                moved.append(torch.arange(slot, slot + s.n))
                deltas.append(torch.full((s.n,), d))
                self.rotations += 1
            cursor, slot = s.end, slot + s.n
        self.next_position = cursor
        if not moved:
            return
        idx, delta = torch.cat(moved), torch.cat(deltas)
        for layer in self.cache.layers:
            idx = idx.to(layer.keys.device)
            k = layer.keys[:, :, idx].float()
            layer.keys[:, :, idx] = rotate_keys(k, delta, self.inv_freq).to(layer.keys.dtype)
