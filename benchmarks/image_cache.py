"""GRPO step time with the image-feature cache on and off, on image prompts.

    python benchmarks/image_cache.py                   # small preset, 448x448 images (CPU: a few minutes)
    python benchmarks/image_cache.py --preset tiny --size 224 --steps 2 --rounds 1   # smoke run

Each step rolls out 4 prompts x G = 8 completions (one image per prompt, at most 16 new tokens)
and updates once. Without the cache the vision tower encodes every prompt image G times in
generation and again in the training pass; with it, once per rollout (and, when the tower and
merger are frozen, the training pass reuses the features too). Runs alternate between the two
settings and medians are reported, with the ratio, for a frozen and a trainable vision tower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MMPOST_PROGRESS", "0")
ROOT = Path(__file__).resolve().parents[1]


def write_task(folder: str, size: int, n: int = 16) -> str:
    """n image prompts (noise images of size x size) whose reward is an x in the completion."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    path = os.path.join(folder, "train.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            img = os.path.join(folder, f"{i}.png")
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(img)
            prompt = [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": img}, {"type": "text", "text": "Find the x."}],
                }
            ]
            f.write(json.dumps({"id": str(i), "prompt": prompt, "answer": "x"}) + "\n")
    return path


def step_time(data: str, preset: str, steps: int, cache: bool, frozen: bool, out: str) -> float:
    from alignment.train import train

    over = [
        f"model.name_or_path={preset}",
        f"data.train={data}",
        "data.prompts_per_step=4",
        "data.visual.max_pixels=1048576",
        "rollout.num_generations=8",
        "rollout.max_completion_length=16",
        "rewards={contains_answer: 1.0}",
        "loss.beta=0",
        "optim.lr=1e-4",
        f"model.freeze={'[vision_tower,merger]' if frozen else '[]'}",
        f"rollout.image_cache={str(cache).lower()}",
        f"train.max_steps={steps}",
        "train.export=false",
        "train.save_every=0",
        "train.epochs=100",
    ]
    summary = train(str(ROOT / "configs" / "cls_rl" / "grpo.yaml"), over, output_dir=out)
    return summary["seconds"] / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small"], default="small")
    ap.add_argument("--size", type=int, default=448, help="image side in pixels (448: 1024 patches)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_task(tmp, args.size)
        for frozen in (True, False):
            times = {True: [], False: []}
            for r in range(args.rounds):
                for cache in (True, False) if r % 2 == 0 else (False, True):
                    out = os.path.join(tmp, f"run{frozen}{cache}{r}")
                    times[cache].append(step_time(data, args.preset, args.steps, cache, frozen, out))
            on, off = statistics.median(times[True]), statistics.median(times[False])
            what = "frozen" if frozen else "trainable"
            print(
                f"{args.preset}, {args.size}x{args.size} images, vision {what}: cache on {on:.3f} s/step, "
                f"off {off:.3f} s/step, off / on = {off / on:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
