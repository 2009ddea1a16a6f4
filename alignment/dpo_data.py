"""Preference pairs for DPO: encoding, and batches whose chosen and rejected share the images once.

A pair is two samples, prompt + chosen and prompt + rejected (labels on the response only: any
assistant turn inside the prompt is context). Batches lay the samples out as
``[chosen_0, rejected_0, chosen_1, rejected_1, ...]`` (``seq_ids`` numbers them; sample ``2p``
is pair p's chosen, ``2p + 1`` its rejected), padded or exactly packed (both sides of a pair in
one row, each isolated by the block-diagonal mask with its own M-RoPE positions).

The prompt's images are in the batch once per pair (``pixel_values`` of the chosen side only);
``image_order`` lists, in the order the image placeholders appear in the batch, which of those
images fills them, so the vision tower runs once per pair and both sides read its features.
"""

from __future__ import annotations

import dataclasses

import torch

from mm.collate import concat_visuals, pack_batch, pad_batch
from mm.dataset import DataError, Problem, RecordDataset
from mm.encode import VISUAL_KEYS, EncodedSample
from mm.records import Message, RecordError
from mm.visual import VisualError


def _context(prompt: list[Message]) -> list[Message]:
    """The prompt with its own assistant turns marked untrained (they are context, not the response)."""
    return [Message(m.role, m.content, False) if m.role == "assistant" else m for m in prompt]


class PairDataset(RecordDataset):
    """Preference records of one JSONL file; item i is the pair (chosen, rejected) of record i."""

    def __init__(self, path: str, encoder, on_error: str = "raise", format: str = "auto"):
        super().__init__(path, encoder, on_error, format=format)
        keep = []
        for i, rec in enumerate(self.records):
            problem = self._check(i, rec)
            if problem is None:
                keep.append(i)
            else:
                self._fail(problem)
        self.records = [self.records[i] for i in keep]
        self.lines = [self.lines[i] for i in keep]
        if not self.records:
            raise DataError(f"{path}: no preference records (need 'prompt', 'chosen', 'rejected' per line)")

    def _check(self, i: int, rec) -> Problem | None:
        if rec.kind != "preference":
            return Problem(
                self.path,
                self.lines[i],
                "not_preference",
                f"DPO needs preference records, got a {rec.kind} record",
                'write {"prompt": [...], "chosen": [...], "rejected": [...]} (mmpost data specs-pairs makes them)',
            )
        for side in ("chosen", "rejected"):
            if any(m.visual_items() for m in getattr(rec, side)):
                return Problem(
                    self.path,
                    self.lines[i],
                    "visual_in_response",
                    f"'{side}' holds an image; both responses must share the prompt's images",
                    "move the image into the prompt",
                )
        return None

    def conversations(self, i: int) -> tuple[list[Message], list[Message]]:
        rec = self.records[i]
        prompt = _context(rec.prompt)
        return prompt + rec.chosen, prompt + rec.rejected

    def __getitem__(self, i: int) -> tuple[EncodedSample, EncodedSample] | None:
        rec = self.records[i]
        try:
            c, r = (
                self.encoder.encode(conv, self.base_dir, sample_id=rec.id) for conv in self.conversations(i)
            )
        except (RecordError, VisualError) as e:
            self._fail(Problem(self.path, self.lines[i], e.code, e.message, e.hint))
            return None
        for side, s in (("chosen", c), ("rejected", r)):
            if not s.trained_tokens:
                self._fail(
                    Problem(self.path, self.lines[i], "empty_response", f"the {side} response has no tokens")
                )
                return None
        return c, r

    def side_lengths(self) -> list[tuple[int, int]]:
        """Tokens of each pair's sequences (prompt + chosen, prompt + rejected), from file headers;
        (0, 0) for a pair that cannot be encoded."""
        out = []
        for i in range(len(self.records)):
            try:
                c, r = (self.encoder.count_tokens(conv, self.base_dir)[0] for conv in self.conversations(i))
            except (RecordError, VisualError) as e:
                self._fail(Problem(self.path, self.lines[i], e.code, e.message, e.hint))
                c = r = 0
            out.append((c, r))
        return out

    def lengths(self, progress: bool = True) -> list[int]:
        """Tokens of each pair (chosen + rejected; they share a packed row), from file headers."""
        return [c + r for c, r in self.side_lengths()]


def _strip(s: EncodedSample) -> EncodedSample:
    return dataclasses.replace(s, **{k: None for k in VISUAL_KEYS})


def _order(pairs: list[tuple[EncodedSample, EncodedSample]], grid_key: str) -> torch.Tensor | None:
    """For each placeholder group in batch order (c0, r0, c1, r1, ...): the pair's image index."""
    order, start = [], 0
    for c, _ in pairs:
        grid = getattr(c, grid_key)
        n = 0 if grid is None else len(grid)
        order += list(range(start, start + n)) * 2  # chosen, then rejected: the same images
        start += n
    return torch.tensor(order, dtype=torch.long) if order else None


def collate_pairs(
    rows: list[list[tuple[EncodedSample, EncodedSample]]], layout: str, pad_id: int, attn: str = "sdpa"
) -> dict:
    """One micro-batch of pairs: ``rows`` are packed rows of pairs (pack) or one list of pairs (pad).

    Returns the model kwargs, ``labels``, ``seq_ids`` (sample index per token, -1 on padding) and
    the shared visuals with their ``image_order`` / ``video_order``.
    """
    pairs = [p for row in rows for p in row]
    if layout == "pack":
        batch = pack_batch([[_strip(s) for p in row for s in p] for row in rows], pad_id, attn)
    else:
        batch = pad_batch([_strip(s) for p in pairs for s in p], pad_id)
        B = batch["input_ids"].shape[0]
        batch["seq_ids"] = torch.where(batch["attention_mask"] > 0, torch.arange(B)[:, None], -1)
    batch.update(concat_visuals([c for c, _ in pairs]))  # the prompt's visuals, once per pair
    for grid_key, name in (("image_grid_thw", "image_order"), ("video_grid_thw", "video_order")):
        order = _order(pairs, grid_key)
        if order is not None:
            batch[name] = order
    return batch


def collate_pair_plan(
    ds: PairDataset, layout: str, pad_id: int, attn: str, ref: torch.Tensor | None, spec: list
) -> dict | None:
    """The micro-batch of a plan entry (pair indices, pad; rows of them, pack), with ``pair_index``
    and, when ``ref`` [n_pairs, 2] holds precomputed reference log-probs, ``ref_logps``; None when
    every pair of it was skipped."""
    groups = [spec] if layout == "pad" else spec
    rows, index = [], []
    for g in groups:
        row = []
        for i in g:
            p = ds[i]
            if p is not None:
                row.append(p)
                index.append(i)
        if row:
            rows.append(row)
    if not rows:
        return None
    batch = collate_pairs(rows, layout, pad_id, attn)
    batch["pair_index"] = torch.tensor(index, dtype=torch.long)
    if ref is not None:
        batch["ref_logps"] = ref[batch["pair_index"]].flatten()  # [2P] c0, r0, c1, r1, ...
    return batch
