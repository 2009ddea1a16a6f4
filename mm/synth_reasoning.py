"""``mmpost data synth``: a procedurally generated visual-reasoning set with CRU-style trajectories.

Each problem is an image of coloured shapes or a small bar chart and a question whose answer
is computed from the scene. The SFT trajectory follows ViRC's protocol: a planning thought and
a ``crop_image`` call on the relevant region, the crop returned as a user turn
(``Image 1: W x H. ...``), then the reasoning step and the answer. The test split is written in
the RL form (``prompt`` + ``answer``) for ``mmpost eval``. Everything is drawn here; nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageDraw

from mm.synthetic import COLORS

SYSTEM = (
    "You are a careful visual reasoner. You may call tools to look at parts of the image.\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "crop_image", "description": "Crop a region of an image.", '
    '"parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array", "items": {"type": "integer"}}, '
    '"image_index": {"type": "integer"}}, "required": ["bbox_2d", "image_index"]}}}\n'
    "</tools>"
)
PROMPT = (
    "Image 0: {w} x {h}.\nQuestion: {q}\n\nLet's think step by step. Call **tool** if needed, then answer. "
    "Format strictly as: <think>...</think> <tool_call>...</tool_call> (if tools needed) "
    "<answer>...</answer> (if available)."
)
RESULT = (
    "Image 1: {w} x {h}. Fully utilize the tools and make comprehensive use of the results. Keep thinking."
)
KINDS = ("circle", "square", "triangle")


def _draw(draw: ImageDraw.ImageDraw, kind: str, box: list[int], color: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=color)
    elif kind == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=color)


def count_problem(rng: random.Random) -> tuple[Image.Image, str, str, list[int], str, str]:
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
    plan = f"The question is about the {side} half only. I will crop the {side} half and count the {color} shapes."
    step = f"In the crop I count the {color} shapes one by one: there are {count}."
    return img, q, str(count), bbox, plan, step


def bar_problem(rng: random.Random) -> tuple[Image.Image, str, str, list[int], str, str]:
    """A bar chart of 3-5 labelled bars; the question asks for the tallest bar's label or a value."""
    n = rng.randint(3, 5)
    w, h = 56 * n + 56, 224
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    labels = "ABCDE"[:n]
    values = [rng.randint(1, 9) for _ in range(n)]
    boxes = []
    for i, v in enumerate(values):
        x0 = 28 + 56 * i
        top = h - 20 - v * 20
        draw.rectangle([x0, top, x0 + 36, h - 20], fill=COLORS["blue"])
        draw.text((x0 + 14, h - 16), labels[i], fill=(0, 0, 0))
        draw.text((x0 + 14, top - 12), str(v), fill=(0, 0, 0))
        boxes.append([x0 - 8, max(0, top - 16), x0 + 44, h])
    i = rng.randrange(n)
    q = f"What is the value of bar {labels[i]}?"
    plan = f"I need the height of bar {labels[i]}. I will crop that bar and read its value."
    step = f"The crop shows bar {labels[i]} with the value {values[i]} written above it."
    return img, q, str(values[i]), boxes[i], plan, step


def write_synth(out_dir: str, n_train: int = 200, n_test: int = 40, seed: int = 0) -> dict[str, str]:
    """Write ``train.jsonl`` (SFT trajectories) and ``test.jsonl`` (RL prompts) with their images."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        path = os.path.join(out_dir, f"{split}.jsonl")
        with open(path, "w") as f:
            for i in range(n):
                img, q, ans, bbox, plan, step = (count_problem if rng.random() < 0.5 else bar_problem)(rng)
                name = f"images/{split}_{i:04d}.png"
                img.save(os.path.join(out_dir, name))
                user = {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": name},
                        {"type": "text", "text": PROMPT.format(w=img.width, h=img.height, q=q)},
                    ],
                }
                meta = {"source": "mmpost-synth", "bbox": [bbox]}
                if split == "test":
                    f.write(
                        json.dumps(
                            {
                                "id": f"{split}-{i:04d}",
                                "prompt": [{"role": "system", "content": SYSTEM}, user],
                                "answer": ans,
                                "meta": meta,
                            }
                        )
                        + "\n"
                    )
                    continue
                crop = img.crop(bbox)
                crop_name = f"images/{split}_{i:04d}_crop1.png"
                crop.save(os.path.join(out_dir, crop_name))
                call = json.dumps({"name": "crop_image", "arguments": {"bbox_2d": bbox, "image_index": 0}})
                messages = [
                    {"role": "system", "content": SYSTEM},
                    user,
                    {"role": "assistant", "content": f"<think>{plan}</think><tool_call>{call}</tool_call>"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": crop_name},
                            {"type": "text", "text": RESULT.format(w=crop.width, h=crop.height)},
                        ],
                    },
                    {"role": "assistant", "content": f"<think>{step}</think><answer>{ans}</answer>"},
                ]
                f.write(
                    json.dumps({"id": f"{split}-{i:04d}", "messages": messages, "answer": ans, "meta": meta})
                    + "\n"
                )
        paths[split] = path
    return paths
