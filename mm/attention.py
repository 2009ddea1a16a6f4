"""Attention backend choice: flash-attn on CUDA when importable, PyTorch SDPA otherwise.

This module is the only one that decides (and the only one that imports ``flash_attn``).
Tests flip the choice with ``force_backend``. The backend also decides how packed rows are
isolated: a block-diagonal 4-D ``[B, 1, L, L]`` mask for SDPA and eager; for flash-attn
(``cu_seqlens``, varlen kernels), ``flex`` (FlexAttention with a document block mask) and
``segments`` (SDPA run on each sample's slice) one flat row whose text positions restart at
every sample, so no L x L mask exists (``mm.packed_attention`` implements the last two).

On CPU tensors ``flex`` runs the ``segments`` kernel (torch 2.14's FlexAttention has no CPU
backward, and its compiled CPU forward was slower); on CUDA it runs FlexAttention's compiled
kernel (not measured here yet: docs/performance.md has the CPU numbers).
"""

from __future__ import annotations

import contextlib
import os

import torch

from mm.imports import is_available

SDPA = "sdpa"
FLASH = "flash_attention_2"
EAGER = "eager"
FLEX = "mmpost_flex"  # registered with transformers by mm.packed_attention
SEGMENTS = "mmpost_segments"
VARLEN = (FLASH, FLEX, SEGMENTS)  # backends that isolate packed samples by their positions
_forced: str | None = os.environ.get("MMPOST_ATTN") or None


def flash_attn_usable(device: torch.device | str | None = None) -> bool:
    """flash-attn is importable and the tensors will live on CUDA."""
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return on_cuda and is_available("flash_attn")


def choose_backend(requested: str = "auto", device: torch.device | str | None = None) -> str:
    """Resolve "auto" (or a forced choice) into a transformers ``attn_implementation`` name."""
    choice = _forced or requested
    if choice == "auto":
        return FLASH if flash_attn_usable(device) else SDPA
    if choice in ("flash", "flash_attn", FLASH):
        if not flash_attn_usable(device):
            raise RuntimeError(
                "attention backend flash_attention_2 was requested but flash-attn is not importable "
                "or there is no CUDA device; install 'mmpost[cuda]' on a GPU machine or use attn='sdpa'"
            )
        return FLASH
    if choice in (SDPA, EAGER):
        return choice
    if choice in ("flex", FLEX, "segments", SEGMENTS):
        from mm.packed_attention import register

        register()
        return FLEX if choice in ("flex", FLEX) else SEGMENTS
    raise ValueError(
        f"unknown attention backend {choice!r}; use auto, sdpa, eager, flash_attention_2, flex or segments"
    )


@contextlib.contextmanager
def force_backend(name: str | None):
    """Force the backend chosen by ``choose_backend`` inside the block (for tests)."""
    global _forced
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def uses_varlen(attn_implementation: str) -> bool:
    """Packed rows are one flat row isolated by position restarts (True) or by a block-diagonal mask (False)."""
    return attn_implementation in VARLEN
