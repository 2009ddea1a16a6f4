"""Data that mmpost makes itself: the bundled sample set, mixed-length sets and trajectories for benchmarks.

Nothing here downloads. Images are drawn with PIL (shapes on a plain background), videos are
written with OpenCV when it is installed. ``python -m mm.synthetic DIR`` rewrites the bundled
sample set (``mm/assets/sample``).
"""

from __future__ import annotations

import json
import os
import random
import sys

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
WORDS = (
    "the triangle circle square angle side length area point line shaded region equals degrees so therefore "
    "answer image crop look closer left right top bottom number count"
).split()


def shapes_image(width: int, height: int, seed: int = 0, n: int = 3) -> tuple[Image.Image, list[dict]]:
    """An image with ``n`` coloured shapes; returns the image and the shapes (kind, colour, bbox)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    shapes = []
    for _ in range(n):
        w, h = rng.randint(width // 8, width // 3), rng.randint(height // 8, height // 3)
        x, y = rng.randint(0, width - w - 1), rng.randint(0, height - h - 1)
        kind, color = rng.choice(["circle", "square", "triangle"]), rng.choice(list(COLORS))
        box = [x, y, x + w, y + h]
        if kind == "circle":
            draw.ellipse(box, fill=COLORS[color])
        elif kind == "square":
            draw.rectangle(box, fill=COLORS[color])
        else:
            draw.polygon([(x, y + h), (x + w, y + h), (x + w // 2, y)], fill=COLORS[color])
        shapes.append({"kind": kind, "color": color, "bbox": box})
    return img, shapes


def write_video(path: str, frames: list[np.ndarray], fps: float = 4.0) -> str:
    """Write RGB uint8 frames [H, W, 3] with OpenCV: .webm as VP8 (plays in browsers), else mp4v."""
    from mm.imports import require

    cv2 = require("cv2", "writing videos")
    h, w = frames[0].shape[:2]
    codec = "VP80" if path.endswith(".webm") else "mp4v"
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened() and not os.environ.get("MM_WRITE_VIDEO_CHILD"):
        # seen in a long test process: OpenCV's libvpx encoder refuses to open (error -22) after
        # other video code ran in the process; a fresh process writes the same file
        return _write_video_elsewhere(path, frames, fps)
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _write_video_elsewhere(path: str, frames: list[np.ndarray], fps: float) -> str:
    """:func:`write_video` in a fresh Python process."""
    import subprocess
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "MM_WRITE_VIDEO_CHILD": "1", "PYTHONPATH": root}
    with tempfile.TemporaryDirectory() as tmp:
        arr = os.path.join(tmp, "frames.npy")
        np.save(arr, np.stack(frames))
        code = "import sys, numpy as np; from mm.synthetic import write_video; "
        code += "write_video(sys.argv[1], list(np.load(sys.argv[2])), float(sys.argv[3]))"
        subprocess.run(
            [sys.executable, "-c", code, path, arr, str(fps)], env=env, check=True, capture_output=True
        )
    if not os.path.exists(path):
        raise OSError(f"{path}: OpenCV could not write this video (codec of {os.path.splitext(path)[1]})")
    return path


def moving_dot_frames(n: int, size: int = 56, seed: int = 0) -> list[np.ndarray]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        f = np.full((size, size, 3), 240, np.uint8)
        x = int((i / max(1, n - 1)) * (size - 12))
        y = size // 2 - 6 + rng.randint(-2, 2)
        f[y : y + 12, x : x + 12] = (220, 40, 40)
        out.append(f)
    return out


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def mixed_records(n: int, out_dir: str, seed: int = 0, max_side: int = 448, max_words: int = 200) -> str:
    """A mixed-length multimodal SFT set: 0-2 images of random sizes, text of random length.

    Writes ``out_dir/data.jsonl`` plus images; returns the JSONL path.
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, "data.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            content = []
            for j in range(rng.choice([0, 1, 1, 1, 2])):
                w, h = rng.randint(56, max_side), rng.randint(56, max_side)
                name = f"images/{i:05d}_{j}.png"
                shapes_image(w, h, seed=seed * 100003 + i * 7 + j)[0].save(os.path.join(out_dir, name))
                content.append({"type": "image", "image": name})
            content.append({"type": "text", "text": _sentence(rng, rng.randint(5, max_words // 4)) + "?"})
            answer = _sentence(rng, rng.randint(3, max_words))
            rec = {
                "id": f"mixed-{i:05d}",
                "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}],
            }
            f.write(json.dumps(rec) + "\n")
    return path


def _lognormal_words(rng: random.Random, median: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(rng.lognormvariate(np.log(median), 0.9))))


def trajectory_records(n: int, out_dir: str, seed: int = 0, median_words: int = 200) -> str:
    """Multi-turn tool-use trajectories with a ViRC-like spread of lengths (for benchmarks).

    Each record: a question on one image (sides 224-896), 0-4 crop rounds (an assistant turn of
    reasoning plus a ``crop_image`` call, then the crop as a user turn), and a final answer after
    long reasoning. Reasoning lengths are log-normal (median ``median_words`` for the final turn,
    a quarter of it per tool turn, sigma 0.9, capped at 12x the median), so samples run from
    hundreds to several thousand tokens with a long tail, as real trajectories do. Writes
    ``out_dir/data.jsonl`` plus images; returns the JSONL path.
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, "data.jsonl")

    def image(name: str, w: int, h: int, k: int) -> dict:
        shapes_image(w, h, seed=seed * 100003 + k)[0].save(os.path.join(out_dir, name))
        return {"type": "image", "image": name}

    with open(path, "w") as f:
        for i in range(n):
            w, h = rng.randint(224, 896), rng.randint(224, 896)
            question = f"Image 0: {w} x {h}.\nQuestion: " + _sentence(rng, rng.randint(10, 40)) + "?"
            msgs = [
                {
                    "role": "user",
                    "content": [
                        image(f"images/{i:05d}_0.png", w, h, i * 11),
                        {"type": "text", "text": question},
                    ],
                }
            ]
            rounds = rng.choices(range(5), weights=[30, 30, 20, 12, 8])[0]
            for r in range(1, rounds + 1):
                think = _sentence(rng, _lognormal_words(rng, median_words / 4, 10, 3 * median_words))
                box = [
                    rng.randint(0, w // 2),
                    rng.randint(0, h // 2),
                    rng.randint(w // 2 + 1, w),
                    rng.randint(h // 2 + 1, h),
                ]
                call = json.dumps({"name": "crop_image", "arguments": {"bbox_2d": box, "image_index": 0}})
                msgs.append(
                    {"role": "assistant", "content": f"<think>{think}</think><tool_call>{call}</tool_call>"}
                )
                cw, ch = max(56, box[2] - box[0]), max(56, box[3] - box[1])
                crop = image(f"images/{i:05d}_{r}.png", cw, ch, i * 11 + r)
                msgs.append(
                    {"role": "user", "content": [crop, {"type": "text", "text": f"Image {r}: {cw} x {ch}."}]}
                )
            think = _sentence(rng, _lognormal_words(rng, median_words, 20, 12 * median_words))
            msgs.append(
                {
                    "role": "assistant",
                    "content": f"<think>{think}</think><answer>{rng.randint(0, 99)}</answer>",
                }
            )
            f.write(json.dumps({"id": f"traj-{i:05d}", "messages": msgs}) + "\n")
    return path


def write_sample_data(out_dir: str) -> str:
    """The bundled sample set: one record of each kind the format supports."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    img, shapes = shapes_image(320, 240, seed=1)
    img.save(os.path.join(out_dir, "images/shapes.png"))
    s = shapes[0]
    crop = img.crop(s["bbox"])
    crop.save(os.path.join(out_dir, "images/shapes_crop1.png"))
    shapes_image(160, 120, seed=2)[0].save(os.path.join(out_dir, "images/small.png"))
    have_video = True
    try:
        write_video(os.path.join(out_dir, "dot.mp4"), moving_dot_frames(8), fps=4.0)
    except ImportError:
        have_video = False
    call = json.dumps({"name": "crop_image", "arguments": {"bbox_2d": s["bbox"], "image_index": 0}})
    records = [
        {
            "id": "sample-tool",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "images/shapes.png"},
                        {
                            "type": "text",
                            "text": f"Image 0: 320 x 240.\nQuestion: What colour is the {s['kind']}?",
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": f"<think>Let me look closer at the {s['kind']}.</think><tool_call>{call}</tool_call>",
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "images/shapes_crop1.png"},
                        {"type": "text", "text": f"Image 1: {crop.width} x {crop.height}. Keep thinking."},
                    ],
                },
                {
                    "role": "assistant",
                    "content": f"<think>The crop shows a {s['color']} {s['kind']}.</think><answer>{s['color']}</answer>",
                },
            ],
            "answer": s["color"],
            "meta": {"source": "mmpost-sample", "bbox": [s["bbox"]]},
        },
        {
            "id": "sample-text",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is 7 times 6?"},
                {"role": "assistant", "content": "<think>7 x 6 = 42.</think><answer>42</answer>"},
            ],
            "answer": "42",
        },
        {
            "id": "sample-two-images",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "images/shapes.png"},
                        {"type": "image", "image": "images/small.png"},
                        {"type": "text", "text": "Which image has more shapes?"},
                    ],
                },
                {"role": "assistant", "content": "They both have three shapes."},
            ],
        },
        {
            "id": "sample-rl",
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "images/shapes.png"},
                        {"type": "text", "text": f"What colour is the {s['kind']}?"},
                    ],
                }
            ],
            "answer": s["color"],
            "meta": {"bbox": [s["bbox"]]},
        },
        {
            "id": "sample-preference",
            "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
            "chosen": [{"role": "assistant", "content": "<think>2 + 2 = 4.</think><answer>4</answer>"}],
            "rejected": [{"role": "assistant", "content": "2 + 2 = 4. Answer: 4"}],
        },
    ]
    if have_video:
        records.append(
            {
                "id": "sample-video",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "video", "video": "dot.mp4", "fps": 2.0},
                            {"type": "text", "text": "Where does the dot move?"},
                        ],
                    },
                    {"role": "assistant", "content": "From left to right."},
                ],
            }
        )
    path = os.path.join(out_dir, "sample.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def sample_data_path() -> str:
    """Path of the bundled sample JSONL."""
    return os.path.join(os.path.dirname(__file__), "assets", "sample", "sample.jsonl")


if __name__ == "__main__":
    print(write_sample_data(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(sample_data_path())))
