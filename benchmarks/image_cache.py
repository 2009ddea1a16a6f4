"""GRPO step time on image prompts: what encoding each image once, and scoring each prompt
once, save.

    python benchmarks/image_cache.py                   # small preset, 224x224 images (CPU: ~10 minutes)
    python benchmarks/image_cache.py --preset medium --size 448 --device cuda   # GPU
    python benchmarks/image_cache.py --preset tiny --steps 2 --rounds 1          # smoke run

Each step rolls out 4 prompts x G = 8 completions (one image per prompt, at most 16 new tokens)
and updates once. Three settings, alternated run by run (medians reported):

* mmpost: the defaults: each distinct image encoded once per rollout (``rollout.image_cache``;
  the training pass reuses the features when the tower and merger are frozen) and each group's
  prompt scored once (``data.share_prompt``);
* no cache: every prompt image encoded G times in generation (the training pass still sees
  each prompt once);
* neither: also padded rows, so the training pass runs each prompt and its image G times.
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


ARMS = {
    "mmpost": [],
    "no cache": ["rollout.image_cache=false"],
    "neither": ["rollout.image_cache=false", "data.share_prompt=false"],
}


def step_time(data: str, args, arm: str, frozen: bool, out: str) -> float:
    from alignment.train import train

    over = [
        f"model.name_or_path={args.preset}",
        f"data.train={data}",
        "data.prompts_per_step=4",
        "data.visual.max_pixels=1048576",
        "rollout.num_generations=8",
        "rollout.max_completion_length=16",
        "rewards={contains_answer: 1.0}",
        "loss.beta=0",
        "optim.lr=1e-5",
        f"model.freeze={'[vision_tower,merger]' if frozen else '[]'}",
        f"train.max_steps={args.steps}",
        f"train.device={args.device}",
        "train.precision=fp32",
        "train.export=false",
        "train.save_every=0",
        "train.epochs=100",
        *ARMS[arm],
    ]
    summary = train(str(ROOT / "configs" / "cls_rl" / "grpo.yaml"), over, output_dir=out)
    return summary["seconds"] / args.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small", "medium"], default="small")
    ap.add_argument("--size", type=int, default=224, help="image side in pixels (224: 64 visual tokens)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--trainable", action="store_true", help="also time a trainable vision tower")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_task(tmp, args.size)
        for frozen in (True, False) if args.trainable else (True,):
            times: dict[str, list[float]] = {a: [] for a in ARMS}
            for r in range(args.rounds):
                for arm in list(ARMS) if r % 2 == 0 else list(reversed(ARMS)):
                    out = os.path.join(tmp, f"run{frozen}{arm}{r}".replace(" ", ""))
                    times[arm].append(step_time(data, args, arm, frozen, out))
            med = {a: statistics.median(t) for a, t in times.items()}
            what = "frozen" if frozen else "trainable"
            print(f"{args.preset}, {args.size}x{args.size} images, vision {what}:", flush=True)
            for arm, t in med.items():
                print(f"  {arm:>8}: {t:.3f} s/step  ({t / med['mmpost']:.2f}x mmpost's time)", flush=True)


if __name__ == "__main__":
    main()
