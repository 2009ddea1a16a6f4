"""The Python API: ``reason(model, processor, image, question)`` -> answer and trajectory.

    from mm import load_model
    from vision_tools import reason

    model, processor = load_model("tiny")
    result = reason(model, processor, "mm/assets/sample/shapes.png", "How many circles?", max_turns=4)
    print(result.answer, result.trajectory.finish_reason, len(result.trajectory.images))

Generation options (``max_turns``, ``max_turn_tokens``, ``do_sample``, ``temperature``,
``max_resamples``, ``coords``, ...) are fields of :class:`~vision_tools.engine.EngineConfig`.
``reason_batch`` takes lists and runs the conversations together.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from PIL import Image

from mm.visual import FACTOR, VisualConfig, open_image, smart_size
from vision_tools.engine import EngineConfig, ToolEngine, Trajectory
from vision_tools.protocol import question_text, system_prompt
from vision_tools.tools import display_size


@dataclass
class Reasoning:
    answer: str | None
    trajectory: Trajectory


def shown_image(image: Any, visual: VisualConfig, factor: int = FACTOR) -> Image.Image:
    """An image (path, data URL or PIL) resized as the model will see it (``factor``: the model
    family's pixels per visual-token side, ``ModelFamily.factor``)."""
    img = open_image(image, decode=True).convert("RGB")
    h, w = smart_size(img.height, img.width, visual.min_pixels, visual.max_pixels, factor)
    return img if (w, h) == img.size else img.resize((w, h), Image.Resampling.BICUBIC)


def build_prompt(
    image: Image.Image | list[Image.Image], question: str, tools=None, coords: str = "dynamic"
) -> list[dict]:
    """The ViRC prompt: system prompt with the tools, then image 0 (or images 0..n-1) and the question."""
    images = image if isinstance(image, list) else [image]
    sizes = [display_size(im.size, coords) for im in images]
    return [
        {"role": "system", "content": system_prompt(tools)},
        {
            "role": "user",
            "content": [{"type": "image", "image": im} for im in images]
            + [{"type": "text", "text": question_text(question, sizes)}],
        },
    ]


def engine_config(config: EngineConfig | None = None, **gen) -> EngineConfig:
    """``config`` with keyword overrides; unknown keywords are an error naming the valid ones."""
    names = {f.name for f in fields(EngineConfig)}
    unknown = sorted(set(gen) - names)
    if unknown:
        raise TypeError(f"unknown generation option(s) {unknown}; valid: {sorted(names)}")
    return replace(config or EngineConfig(), **gen)


def reason_batch(
    model,
    processor,
    images: list,
    questions: list[str],
    tools=None,
    config: EngineConfig | None = None,
    **gen,
) -> list[Reasoning]:
    """Answer several (image, question) pairs with tool use, generated together."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    cfg = engine_config(config, **gen)
    engine = ToolEngine(model, processor, tools, cfg)
    factor = engine.encoder.family.factor
    prompts = [
        build_prompt(shown_image(img, cfg.visual, factor), q, tools, cfg.coords)
        for img, q in zip(images, questions)
    ]
    return [Reasoning(t.answer, t) for t in engine.run(prompts, questions=questions)]


def reason(
    model, processor, image, question: str, tools=None, config: EngineConfig | None = None, **gen
) -> Reasoning:
    """Answer one question about one image with tool use; returns the answer and the trajectory."""
    return reason_batch(model, processor, [image], [question], tools, config, **gen)[0]


__all__ = ["Reasoning", "build_prompt", "engine_config", "reason", "reason_batch", "shown_image"]
