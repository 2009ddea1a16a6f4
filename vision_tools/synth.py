"""Procedurally generated visual-reasoning problems (``mmpost data synth``).

Each problem is an image of coloured shapes or a small bar chart, a question whose answer is
computed from the scene, a planning note, and the reference regions (bbox + guiding question +
reasoning steps) that solve it: the input of the CRU builder (``vision_tools.crux``). Everything
is drawn here; nothing is downloaded.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from mm.synthetic import COLORS

KINDS = ("circle", "square", "triangle")


def _draw(draw: ImageDraw.ImageDraw, kind: str, box: list[int], color: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=color)
    elif kind == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=color)


def count_problem(rng: random.Random) -> tuple[Image.Image, dict]:
    """Shapes in two halves; the question asks for the count of one colour in one half."""
    w, h = rng.choice([(336, 224), (280, 280), (392, 196)])
    img = Image.new("RGB", (w, h), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    side = rng.choice(["left", "right"])
    color = rng.choice(list(COLORS))
    count = 0
    for half in ("left", "right"):
        x_lo = 0 if half == "left" else w // 2
        for _ in range(rng.randint(1, 4)):
            s = rng.randint(24, 40)
            x, y = rng.randint(x_lo + 4, x_lo + w // 2 - s - 4), rng.randint(4, h - s - 4)
            c = rng.choice(list(COLORS))
            _draw(draw, rng.choice(KINDS), [x, y, x + s, y + s], COLORS[c])
            count += half == side and c == color
    bbox = [0, 0, w // 2, h] if side == "left" else [w // 2, 0, w, h]
    q = f"How many {color} shapes are in the {side} half of the image?"
    plan = f"The image shows coloured shapes on both halves. The question is about the {side} half only."
    region = {
        "bbox": bbox,
        "question": f"How many {color} shapes does the {side} half hold?",
        "steps": [f"In the crop I count the {color} shapes one by one: there are {count}."],
    }
    return img, {"question": q, "answer": str(count), "plan": plan, "regions": [region]}


def bar_problem(rng: random.Random) -> tuple[Image.Image, dict]:
    """A bar chart of 3-5 labelled bars; the question asks for one bar's value, or which of two
    bars is taller (two regions)."""
    n = rng.randint(3, 5)
    w, h = 56 * n + 56, 224
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    labels = "ABCDE"[:n]
    values = rng.sample(range(1, 10), n)
    boxes = []
    for i, v in enumerate(values):
        x0 = 28 + 56 * i
        top = h - 20 - v * 20
        draw.rectangle([x0, top, x0 + 36, h - 20], fill=COLORS["blue"])
        draw.text((x0 + 14, h - 16), labels[i], fill=(0, 0, 0))
        draw.text((x0 + 14, top - 12), str(v), fill=(0, 0, 0))
        boxes.append([x0 - 8, max(0, top - 16), x0 + 44, h])
    plan = f"The image is a bar chart with {n} labelled bars, each with its value written above it."

    def region(i: int) -> dict:
        return {
            "bbox": boxes[i],
            "question": f"What value does bar {labels[i]} have?",
            "steps": [f"The crop shows bar {labels[i]} with the value {values[i]} written above it."],
        }

    if rng.random() < 0.5:
        i = rng.randrange(n)
        q = f"What is the value of bar {labels[i]}?"
        return img, {"question": q, "answer": str(values[i]), "plan": plan, "regions": [region(i)]}
    i, j = sorted(rng.sample(range(n), 2))
    top = labels[i] if values[i] > values[j] else labels[j]
    return img, {
        "question": f"Which bar is taller, {labels[i]} or {labels[j]}?",
        "answer": top,
        "plan": plan + f" I compare bars {labels[i]} and {labels[j]} one at a time.",
        "regions": [region(i), region(j)],
        "final": f"{max(values[i], values[j])} is larger than {min(values[i], values[j])}, so bar {top} is taller.",
    }


def make_problem(rng: random.Random) -> tuple[Image.Image, dict]:
    return (count_problem if rng.random() < 0.5 else bar_problem)(rng)
