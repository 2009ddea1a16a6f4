"""Shared fixtures: the tiny model and processor (built once per session), image helpers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.rope import RopeSpec
from mm.visual import VisualConfig


@pytest.fixture(scope="session")
def tiny():
    model, processor = load_model("tiny", attn="sdpa")
    return model.eval(), processor


@pytest.fixture(scope="session")
def encoder(tiny):
    model, processor = tiny
    return ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))


def solid(w: int, h: int, color=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", (w, h), color)
    # a gradient so different crops/sizes give different features
    px = img.load()
    for x in range(0, w, 3):
        for y in range(0, h, 3):
            px[x, y] = ((x * 7) % 256, (y * 5) % 256, (x + y) % 256)
    return img


def user_assistant(content: list | str, answer: str) -> list[dict]:
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
