"""Fixtures that run a test once per model family: ``preset`` is each family's tiny preset,
``family_model`` its (model, processor), ``family_encoder`` its encoder with the model's own
M-RoPE rule. The Qwen2.5-VL instances are the session's ``tiny`` and ``encoder``."""

from __future__ import annotations

from functools import cache

import pytest

from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.models import family_of
from mm.rope import RopeSpec
from mm.visual import VisualConfig

FAMILIES = ["tiny", "tiny-qwen3vl"]  # one tiny preset per family: Qwen2.5-VL, Qwen3-VL


@pytest.fixture(scope="session", params=FAMILIES)
def preset(request) -> str:
    return request.param


@cache
def _load(preset: str):
    model, processor = load_model(preset, attn="sdpa")
    return model.eval(), processor


@pytest.fixture(scope="session")
def family_model(request, preset):
    if preset == "tiny":
        return request.getfixturevalue("tiny")
    return _load(preset)


@pytest.fixture(scope="session")
def qwen3vl():
    """The tiny Qwen3-VL (model, processor), for tests of what only Qwen3-VL does."""
    return _load("tiny-qwen3vl")


@pytest.fixture(scope="session")
def family(family_model):
    return family_of(family_model[0].config)


@pytest.fixture(scope="session")
def family_encoder(request, preset, family_model):
    if preset == "tiny":
        return request.getfixturevalue("encoder")
    model, processor = family_model
    return ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))


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
