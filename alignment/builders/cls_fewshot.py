"""Few-shot classification data for CLS-RL (``mmpost data cls-fewshot``).

From an image-folder data set (``ROOT/<class name>/*.png``; underscores in folder names read as
spaces) build, in the RL form of the one data format:

* ``train.jsonl``: ``shots`` images per class (of the base classes with ``--base-to-new``),
* ``test.jsonl`` (or ``test_base.jsonl`` and ``test_new.jsonl``): every other image,

with CLS-RL's prompt rules: ``<question>\\nPlease choose one from list [ c1, c2, ..., ck].``
where k = int(0.4 x #classes) candidates (all classes when k < 30, at most 100), the true class
inserted if it was not drawn, the list shuffled; then the variant's suffix (``cls_rl``: think and
answer tags; ``no_think``: answer directly). The label is the ``answer``.
"""

from __future__ import annotations

import json
import os
import random

from mm.config import ConfigError
from mm.dataset import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SUFFIX = {
    "cls_rl": "Please output the thinking process in <think> </think> and final answer in <answer> </answer> tags.",
    "no_think": "Please directly output the answer.",
}


def candidates(label: str, classes: list[str], rng: random.Random) -> list[str]:
    """CLS-RL's candidate list for one question."""
    k = int(0.4 * len(classes))
    if k < 30:
        pool = list(classes)
    else:
        pool = rng.sample(classes, min(k, 100))
        if label not in pool:
            pool[rng.randrange(len(pool))] = label
    rng.shuffle(pool)
    return pool


def prompt_text(label: str, classes: list[str], question: str, variant: str, rng: random.Random) -> str:
    names = ", ".join(candidates(label, classes, rng))
    return f"{question}\nPlease choose one from list [ {names}]. {SUFFIX[variant]}"


def scan(root: str) -> dict[str, list[str]]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such folder (expected one sub-folder per class)")
    classes = {}
    for d in sorted(os.listdir(root)):
        full = os.path.join(root, d)
        if os.path.isdir(full):
            files = sorted(f for f in os.listdir(full) if f.lower().endswith(IMAGE_EXTS))
            if files:
                classes[d] = [os.path.join(full, f) for f in files]
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s) with images; need at least 2")
    return classes


def build_fewshot(
    root: str,
    out_dir: str,
    shots: int = 4,
    variant: str = "cls_rl",
    question: str = "What is in this image?",
    base_to_new: bool = False,
    seed: int = 0,
) -> dict[str, int]:
    """Write the few-shot train set and the test set(s); returns record counts per file."""
    if variant not in SUFFIX:
        raise ConfigError(f"variant must be one of {sorted(SUFFIX)}, got {variant!r}")
    rng = random.Random(seed)
    folders = scan(root)
    names = {d: d.replace("_", " ") for d in folders}
    all_classes = [names[d] for d in folders]
    half = (len(all_classes) + 1) // 2
    base, new = all_classes[:half], all_classes[half:]
    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, list[dict]] = {"train": [], "test_base" if base_to_new else "test": []}
    if base_to_new:
        files["test_new"] = []
    for d, paths in folders.items():
        label = names[d]
        is_new = base_to_new and label in new
        space = (new if is_new else base) if base_to_new else all_classes  # candidates from its own split
        picked = set() if is_new else set(rng.sample(paths, min(shots, len(paths))))
        held_out = "test_new" if is_new else ("test_base" if base_to_new else "test")
        for p in paths:
            split = "train" if p in picked else held_out
            text = prompt_text(label, space, question, variant, rng)
            files[split].append(
                {
                    "id": f"{d}/{os.path.basename(p)}",
                    "prompt": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image", "image": os.path.relpath(p, out_dir)},
                                {"type": "text", "text": text},
                            ],
                        }
                    ],
                    "answer": label,
                    "meta": {"label": label, "split": split},
                }
            )
    counts = {}
    for split, recs in files.items():
        rng.shuffle(recs)
        with open(os.path.join(out_dir, f"{split}.jsonl"), "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        counts[split] = len(recs)
    return counts


def write_shape_classes(root: str, per_class: int = 10, size: int = 56, seed: int = 0) -> str:
    """A small generated image-folder set: six classes of coloured shapes, varied in place and size."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    classes = {
        "red_circle": ("circle", (210, 40, 40)),
        "blue_square": ("square", (40, 70, 210)),
        "green_triangle": ("triangle", (40, 170, 60)),
        "yellow_circle": ("circle", (220, 200, 30)),
        "purple_square": ("square", (140, 50, 170)),
        "orange_triangle": ("triangle", (240, 140, 30)),
    }
    for name, (kind, color) in classes.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), (245, 245, 240))
            draw = ImageDraw.Draw(img)
            s = rng.randint(size // 3, size - 8)
            x, y = rng.randint(2, size - s - 2), rng.randint(2, size - s - 2)
            box = [x, y, x + s, y + s]
            if kind == "circle":
                draw.ellipse(box, fill=color)
            elif kind == "square":
                draw.rectangle(box, fill=color)
            else:
                draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=color)
            img.save(os.path.join(root, name, f"{i:03d}.png"))
    return root
