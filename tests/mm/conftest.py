"""Helpers of the mm tests; the per-family fixtures (``preset``, ``family_model``, ``family``,
``family_encoder``, ``qwen3vl``) live in tests/conftest.py, shared by every test folder."""

from __future__ import annotations

from mm.visual import VisualConfig


def hf_inputs(processor, conv, images=(), videos=(), **kwargs):
    """The HF processor's own inputs for ``conv`` (rendered by its template), images resized by
    it under mmpost's default pixel limits (the tiny Qwen2.5-VL processor's own limits)."""
    cfg = VisualConfig()
    text = processor.apply_chat_template(conv, tokenize=False)
    size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    extra = {"images": list(images), "size": size} if images else {}
    if videos:
        extra["videos"] = list(videos)
    return processor(text=[text], return_tensors="pt", **extra, **kwargs)
