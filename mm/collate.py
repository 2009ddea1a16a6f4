"""Batching encoded samples: padding, or exact packing with per-sample isolation.

Padding: rows are right-padded to the longest sample (a 2-D attention mask).

Packing: several samples are concatenated into rows of at most ``max_tokens``. Each sample
keeps its own M-RoPE positions (starting at 0) and attends only to itself:

* SDPA / eager: a block-diagonal causal 4-D mask ``[B, 1, L, L]``: boolean for SDPA (True =
  attend), additive float (0 or the dtype's minimum) for eager, which adds the mask to its scores
  (transformers passes a 4-D mask through as it is). Position resets alone do not isolate samples
  under SDPA.
* flash-attn, flex, segments (``mm.attention.uses_varlen``): one flat row (no padding at all)
  and 4-row position ids ``[text; t; h; w]`` whose text row restarts at 0 for every sample;
  transformers derives ``cu_seqlens`` from it for flash-attn's varlen kernels, and
  ``mm.packed_attention`` the document of each token for FlexAttention's block mask or for
  SDPA per sample. No ``[B, 1, L, L]`` tensor exists for these.

So a packed row gives the same logits and loss as its samples run one by one.
"""

from __future__ import annotations

import torch

from mm.attention import EAGER, uses_varlen
from mm.encode import IGNORE, VISUAL_KEYS, EncodedSample
from mm.logprobs import labelled_logprobs


def concat_visuals(samples: list[EncodedSample]) -> dict:
    out = {}
    for k in VISUAL_KEYS:
        parts = [getattr(s, k) for s in samples if getattr(s, k) is not None]
        if parts:
            out[k] = torch.cat(parts)
    return out


def pad_batch(samples: list[EncodedSample], pad_id: int, side: str = "right") -> dict:
    """Pad samples into ``[B, L]`` rows with a 2-D attention mask (``side="left"`` for generation)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    B, L = len(samples), max(len(s) for s in samples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    types = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(3, B, L, dtype=torch.long)
    for i, s in enumerate(samples):
        sl = slice(0, len(s)) if side == "right" else slice(L - len(s), L)
        ids[i, sl], labels[i, sl], mask[i, sl], types[i, sl] = s.input_ids, s.labels, 1, s.mm_token_type_ids
        pos[:, i, sl] = s.position_ids
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "position_ids": pos,
        "mm_token_type_ids": types,
        **concat_visuals(samples),
    }


def plan_packs(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group sample indices into rows of at most ``max_tokens`` (first-fit decreasing).

    A sample longer than ``max_tokens`` is an error: the caller should filter or raise the limit.
    """
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s) exceed max_tokens={max_tokens} (first: index {too_long[0]}, "
            f"{lengths[too_long[0]]} tokens); raise max_tokens or lower the visual-token budget"
        )
    # First fit in O(n log n): a max-tree over the room left in each row; rows not opened yet have
    # max_tokens of room, so the leftmost row that fits is exactly first fit's choice.
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    room = [max_tokens] * (2 * size)
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        node = 1
        while node < size:  # descend to the leftmost leaf with enough room
            node = 2 * node if room[2 * node] >= lengths[i] else 2 * node + 1
        r = node - size
        if r == len(rows):
            rows.append([])
        rows[r].append(i)
        room[node] -= lengths[i]
        while node > 1:
            node //= 2
            room[node] = max(room[2 * node], room[2 * node + 1])
    return [sorted(r) for r in rows]


def pack_batch(rows: list[list[EncodedSample]], pad_id: int, attn_implementation: str = "sdpa") -> dict:
    """Concatenate each group of samples into one row, isolated per sample.

    Returns the model kwargs plus ``labels`` and ``seq_ids`` ([B, L]: index of the sample within
    the batch, -1 on padding) for per-sample losses.
    """
    if uses_varlen(attn_implementation):
        rows = [[s for row in rows for s in row]]  # varlen kernels want one flat row
    flat = [s for row in rows for s in row]
    B, L = len(rows), max(sum(len(s) for s in row) for row in rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    types = torch.zeros(B, L, dtype=torch.long)
    seq = torch.full((B, L), -1, dtype=torch.long)
    text_pos = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(3, B, L, dtype=torch.long)
    k = 0
    for b, row in enumerate(rows):
        off = 0
        for s in row:
            n = len(s)
            sl = slice(off, off + n)
            ids[b, sl], labels[b, sl], types[b, sl] = s.input_ids, s.labels, s.mm_token_type_ids
            labels[b, off] = IGNORE  # never predict a sample's first token from the previous sample
            pos[:, b, sl], text_pos[b, sl], seq[b, sl] = s.position_ids, torch.arange(n), k
            off, k = off + n, k + 1
    # use_cache=False matters: with a cache, transformers ignores the packed layout of position ids
    batch = {
        "input_ids": ids,
        "labels": labels,
        "mm_token_type_ids": types,
        "seq_ids": seq,
        "use_cache": False,
        **concat_visuals(flat),
    }
    if uses_varlen(attn_implementation):
        text_pos[seq < 0] = torch.arange(int((seq < 0).sum()))  # trailing padding forms its own segment
        batch["position_ids"] = torch.cat([text_pos[None], pos])  # [4, 1, L]
    else:
        batch["position_ids"] = pos
        mask = block_causal_mask(seq)
        if attn_implementation == EAGER:  # eager adds the mask to its scores: a bool mask would add 0 / 1
            mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
        batch["attention_mask"] = mask
    return batch


def block_causal_mask(seq_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool: query i may attend key j iff same sample and j <= i.

    Padding (seq_id -1) attends to itself only, so no row is fully masked (which would give NaN).
    """
    L = seq_ids.shape[1]
    same = seq_ids[:, :, None] == seq_ids[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    pad = seq_ids < 0
    mask = same & causal & ~pad[:, :, None]
    mask |= torch.eye(L, dtype=torch.bool) & pad[:, :, None]
    return mask[:, None]


def per_sample_nll(
    logits: torch.Tensor, labels: torch.Tensor, seq_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token NLL of each sample over its supervised tokens.

    ``logits`` [B, L, V], ``labels`` [B, L]; with ``seq_ids`` (packed rows) one value per packed
    sample, else one per row. Samples with no supervised token get NaN.
    """
    total, count = labelled_logprobs(logits, None, labels).per_sample(seq_ids)
    return -total / count
