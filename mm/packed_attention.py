"""Attention over packed rows without a dense L x L mask: FlexAttention, or SDPA per sample segment.

Both are registered with transformers (``AttentionInterface`` for the attention function,
``AttentionMaskInterface`` for the mask) under our own ``attn_implementation`` names, so the model
code stays transformers' own. A packed row arrives as one flat row with 4-row position ids
``[text; t; h; w]`` whose text row restarts at every sample (``mm.collate.pack_batch``); the
decoder layers hand that text row to the attention function as ``position_ids``, and the
document of each token is where it starts (``document_ids``), as for flash-attn's ``cu_seqlens``.

* ``mmpost_flex``: ``torch.nn.attention.flex_attention`` with a document-causal ``BlockMask``
  built from block-level document bounds (O((L/128)^2), never an L x L tensor), compiled once
  with dynamic shapes. On CPU tensors it runs the segments kernel instead: torch 2.14's
  FlexAttention has no backward on CPU, and its compiled CPU forward is slower than SDPA per
  segment (benchmarks/packed_attention.py; plus ~40-70 s to compile). ``FLEX_ON_CPU = True``
  runs the flex kernel on CPU anyway (forward only; tests).
* ``mmpost_segments``: ``scaled_dot_product_attention(is_causal=True)`` on each sample's slice.

Everything that is not a packed training forward (a 2-D padding mask, a KV cache, the vision
tower, which already attends per image through ``cu_seqlens`` chunks) runs transformers' SDPA
with the mask SDPA would have had, so outputs equal ``attn_implementation="sdpa"`` there.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

FLEX = "mmpost_flex"
SEGMENTS = "mmpost_segments"
FLEX_BLOCK = 128  # FlexAttention's default block size (tokens per side of a mask block)
FLEX_ON_CPU = False  # run the flex kernel on CPU tensors too (no backward there; for tests)


class DeferredMask:
    """What ``create_causal_mask`` returns under our backends: its arguments, materialised on demand.

    One instance per forward is shared by all decoder layers, so the document ids and the flex
    ``BlockMask`` are computed once per forward and cached here.
    """

    def __init__(self, **mask_kwargs):
        self.kwargs = mask_kwargs
        self.cache: dict = {}

    @property
    def packable(self) -> bool:
        """No padding mask and no KV cache: queries and keys are the same tokens of one forward."""
        k = self.kwargs
        return (
            k.get("attention_mask") is None and k.get("q_offset", 0) == 0 and k["q_length"] == k["kv_length"]
        )

    def dense(self):
        """The mask transformers' SDPA path would have built (None for plain causal)."""
        if "dense" not in self.cache:
            from transformers.masking_utils import sdpa_mask

            self.cache["dense"] = sdpa_mask(**self.kwargs)
        return self.cache["dense"]


def document_ids(text_positions: torch.Tensor) -> torch.Tensor:
    """[B, L] text positions -> [B, L] document index: a new document wherever positions do not step by 1."""
    starts = torch.ones_like(text_positions, dtype=torch.bool)
    starts[:, 1:] = text_positions[:, 1:] != text_positions[:, :-1] + 1
    return starts.long().cumsum(-1) - 1


def document_block_mask(doc: torch.Tensor, block: int = FLEX_BLOCK):
    """Causal, same-document FlexAttention ``BlockMask`` for ``doc`` [B, L] (non-decreasing ids).

    Block (i, j) with j <= i is visited iff the last document of key block j reaches the first
    document of query block i; it is full (no per-token mask) iff j < i and both blocks lie in
    one document (and the query block ends inside the row). Equals ``create_block_mask`` of the
    same mask_mod without evaluating L x L pairs.
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, L = doc.shape
    n = -(-L // block)
    padded = F.pad(doc, (0, n * block - L), value=-1)  # the tail of the last block never matches
    first = doc[:, ::block]  # [B, n]
    last = torch.cat([doc[:, block - 1 :: block], doc[:, -1:]], dim=1)[:, :n]  # [B, n]
    i = torch.arange(n, device=doc.device)
    lower = i[None, :, None] >= i[None, None, :]  # [1, n(q), n(kv)]
    visited = lower & (last[:, None, :] >= first[:, :, None])
    full = lower & (i[:, None] != i[None, :]) & (first[:, None, :] == last[:, :, None])
    full[:, -1] &= L % block == 0  # a query block that runs past L is never full (as create_block_mask)
    partial = visited & ~full

    def indices(m: torch.Tensor):  # [B, n, n] bool -> counts [B, 1, n], indices [B, 1, n, n] (True first)
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True)
        return m.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    def mask_mod(b, h, q, kv):
        return (padded[b, q] == padded[b, kv]) & (q >= kv)

    kv_num, kv_idx = indices(partial)
    full_num, full_idx = indices(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(L, L)
    )


@cache
def compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _documents(mask, position_ids) -> torch.Tensor | None:
    """Document ids of a packed forward (cached on the shared mask), or None when not packable."""
    if not isinstance(mask, DeferredMask) or not mask.packable or position_ids is None:
        return None
    if "doc" not in mask.cache:
        mask.cache["doc"] = document_ids(position_ids)
    return mask.cache["doc"]


def _fallback(module, q, k, v, mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dense = mask.dense() if isinstance(mask, DeferredMask) else mask
    return sdpa_attention_forward(module, q, k, v, dense, **kwargs)


def flex_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_ids=None, **kwargs
):
    """transformers attention function: FlexAttention with a document mask for packed rows."""
    doc = _documents(attention_mask, position_ids)
    if doc is None:
        return _fallback(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if query.device.type == "cpu" and not FLEX_ON_CPU:
        return segments_forward(module, query, key, value, attention_mask, scaling, dropout, position_ids)
    if dropout > 0:
        raise ValueError(f"attn=flex does not support attention dropout ({dropout}); set attention_dropout=0")
    if "block_mask" not in attention_mask.cache:
        attention_mask.cache["block_mask"] = document_block_mask(doc)
    out = compiled_flex()(
        query,
        key,
        value,
        block_mask=attention_mask.cache["block_mask"],
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )  # [B, H, L, D]
    return out.transpose(1, 2).contiguous(), None


def segments_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_ids=None, **kwargs
):
    """transformers attention function: causal SDPA on each sample's slice of a packed row."""
    doc = _documents(attention_mask, position_ids)
    if doc is None:
        return _fallback(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if "lengths" not in attention_mask.cache:  # one host sync per forward, not per layer
        attention_mask.cache["lengths"] = [torch.bincount(d).tolist() for d in doc]
    p = dropout if module.training else 0.0
    rows = []
    for b, lengths in enumerate(attention_mask.cache["lengths"]):
        parts = zip(*(t[b : b + 1].split(lengths, dim=2) for t in (query, key, value)))  # [1, H, n, D] each
        rows.append(
            torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q,
                        k,
                        v,
                        dropout_p=p,
                        is_causal=True,
                        scale=scaling,
                        enable_gqa=q.shape[1] != k.shape[1],
                    )
                    for q, k, v in parts
                ],
                dim=2,
            )
        )
    return torch.cat(rows).transpose(1, 2).contiguous(), None  # [B, L, H, D]


@cache
def register() -> None:
    """Register both backends with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, fn in ((FLEX, flex_forward), (SEGMENTS, segments_forward)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, DeferredMask)
