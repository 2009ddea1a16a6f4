"""DPO step time: mmpost against TRL's DPOTrainer, same model, pairs, batch and loss.

    python benchmarks/dpo_step.py                    # tiny model, 3 rounds (CPU: a minute or two)
    python benchmarks/dpo_step.py --preset small     # where compute matters (30M parameters)

Needs TRL for the comparison (not in the dev extra: pip install trl); without it only mmpost runs.

Both train one epoch over the same generated pairs (one image of random size per prompt, chosen
and rejected texts of random length) with the same pairs per step (--batch-size; mmpost padded
so the steps hold the same pairs), sigmoid DPO beta 0.1 plus the SFT term on the chosen side
(mmpost ``loss.sft_weight=1``; TRL ``loss_type=["sigmoid", "sft"]``), AdamW, the same learning
rate, fp32 on CPU without gradient checkpointing (TRL's DPOConfig defaults to bf16 and
checkpointing; both switched off). Step time is the training loop's wall time over the steps
(model loading and setup excluded for both). Three runs alternate each round:

* ``mmpost``: reference log-probs precomputed once at setup (the default). Its one no-grad pass
  over the pairs is timed on its own and added back: ``mmpost_epoch`` is the epoch including the
  precompute, per step. Over one epoch the precompute does the reference forwards the live
  reference would do, only earlier, so most of the saving is accounting; it pays off only over
  several epochs (or resumed runs, which read the cache back);
* ``mmpost_live_ref``: a frozen reference copy scores every micro-batch, as TRL must (TRL refuses
  ``precompute_ref_log_probs`` for vision data);
* ``trl``: DPOTrainer, which also runs the vision tower on each prompt's images twice (chosen and
  rejected) and processes images in its collator at every step.

One untimed mmpost step first absorbs one-off process costs (DeepSpeed builds an op on its first
start). Medians are reported; the like-for-like ratio (live reference against TRL) comes first.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MMPOST_PROGRESS", "0")
MAX_PIXELS = 200704
PRESETS = {  # pairs, pairs per step, largest image side, longest response (words)
    "tiny": dict(n=32, batch=4, max_side=224, max_words=60),
    "small": dict(n=16, batch=4, max_side=448, max_words=160),
}


def write_pairs(out: str, n: int, max_side: int, max_words: int, seed: int = 0) -> str:
    from mm.synthetic import WORDS, shapes_image

    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    path = os.path.join(out, "pairs.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            name = f"images/{i:04d}.png"
            w, h = rng.randint(56, max_side), rng.randint(56, max_side)
            shapes_image(w, h, seed=i)[0].save(os.path.join(out, name))
            answer = words(1)
            rec = {
                "id": f"pair-{i:04d}",
                "prompt": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": name},
                            {"type": "text", "text": words(rng.randint(5, 20)) + "?"},
                        ],
                    }
                ],
                "chosen": [
                    {
                        "role": "assistant",
                        "content": f"<think>{words(rng.randint(3, max_words))}</think><answer>{answer}</answer>",
                    }
                ],
                "rejected": [
                    {"role": "assistant", "content": f"{words(rng.randint(3, max_words))} Answer: {answer}"}
                ],
            }
            f.write(json.dumps(rec) + "\n")
    return path


def mmpost_run(data: str, out: str, preset: str, batch: int, steps: int, lr: float, live: bool):
    from alignment.train import train

    over = [
        "algorithm=dpo",
        f"model.name_or_path={preset}",
        f"data.train={data}",
        "data.layout=pad",
        f"data.micro_batch_size={batch}",
        "data.max_tokens=100000",
        f"data.visual.max_pixels={MAX_PIXELS}",
        f"train.max_steps={steps}",
        "train.save_every=0",
        "train.export=false",
        "train.deepspeed=zero0",
        "train.log_every=1000000",
        "train.resume=never",
        f"optim.lr={lr}",
        "optim.warmup_ratio=0",
        "optim.schedule=constant",
        f"loss.precompute_ref={'false' if live else 'true'}",
    ]
    from alignment.dpo import DPOTrainer

    spent = [0.0]
    precompute = DPOTrainer._cached_reference

    def timed(self, state, device):  # the reference precompute alone (not model loading or engine start)
        t0 = time.perf_counter()
        out = precompute(self, state, device)
        spent[0] = time.perf_counter() - t0
        return out

    DPOTrainer._cached_reference = timed
    try:
        s = train(None, over, output_dir=out)
    finally:
        DPOTrainer._cached_reference = precompute
    return s["seconds"] / steps, spent[0]


def trl_run(data: str, out: str, preset: str, batch: int, steps: int, lr: float) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from mm.loading import load_model
    from mm.visual import VisualConfig, load_visuals, plan_visuals

    model, processor = load_model(preset)
    base = os.path.dirname(data)
    cfg = VisualConfig(max_pixels=MAX_PIXELS)
    rows = []
    for line in open(data):
        rec = json.loads(line)
        user = rec["prompt"][0]
        items = [c for c in user["content"] if c["type"] == "image"]
        images, _ = load_visuals(plan_visuals(items, cfg, base), cfg)  # the sizes mmpost uses
        content = [{"type": "image"} if c["type"] == "image" else c for c in user["content"]]
        rows.append(
            {
                "images": images,
                "prompt": [{"role": "user", "content": content}],
                "chosen": [
                    {"role": "assistant", "content": [{"type": "text", "text": rec["chosen"][0]["content"]}]}
                ],
                "rejected": [
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": rec["rejected"][0]["content"]}],
                    }
                ],
            }
        )
    args = DPOConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.1,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 1.0],
        max_length=None,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    processor.image_processor.max_pixels = MAX_PIXELS  # TRL's processor resizes with its own limits
    ref = copy.deepcopy(model).eval().requires_grad_(False)  # TRL would reload it from a hub id
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    return trainer.train().metrics["train_runtime"] / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=0, help="pairs in the generated set (default: the preset's)")
    ap.add_argument("--batch-size", type=int, default=0, help="pairs per step (default: the preset's)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-trl", action="store_true", help="time mmpost only")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    n, batch = args.pairs or p["n"], args.batch_size or p["batch"]
    steps = max(1, n // batch)
    have_trl = importlib.util.find_spec("trl") is not None and not args.no_trl
    if not have_trl and not args.no_trl:
        print("TRL is not installed (pip install trl): timing mmpost only, no ratio against TRL")
    names = ["mmpost", "mmpost_live_ref"] + (["trl"] if have_trl else [])
    runs: dict[str, list[float]] = {k: [] for k in names}
    pre: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_pairs(os.path.join(tmp, "data"), n, p["max_side"], p["max_words"])
        print(
            f"preset={args.preset}: {n} pairs, {batch} pairs per step, {steps} steps per run, {args.rounds} rounds"
        )
        # untimed: one-off process costs (DeepSpeed's op build, first-call kernels) land here
        mmpost_run(data, os.path.join(tmp, "warmup"), args.preset, batch, 1, args.lr, False)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else list(reversed(names)):
                out = os.path.join(tmp, f"{name}{r}")
                if name == "trl":
                    runs[name].append(trl_run(data, out, args.preset, batch, steps, args.lr))
                else:
                    step, precompute_s = mmpost_run(
                        data, out, args.preset, batch, steps, args.lr, name.endswith("live_ref")
                    )
                    runs[name].append(step)
                    if name == "mmpost":
                        pre.append(precompute_s)
                print(f"  round {r}: {name:>15} {runs[name][-1]:.3f} s/step", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    pre_s = statistics.median(pre)
    # the precompute is one no-grad pass over the pairs before the first step: in a one-epoch run
    # it is paid once per epoch, so the honest per-step cost of the default is step + pre / steps
    med["mmpost_epoch"] = med["mmpost"] + pre_s / steps
    print(f"\n{args.preset}: median s/step over {args.rounds} rounds ({steps} steps = one epoch)")
    if "trl" in med:
        print(
            f"  like for like (live reference, as TRL): TRL / mmpost {med['trl'] / med['mmpost_live_ref']:.2f}x"
        )
        print(
            f"  precomputed reference, epoch incl. the precompute: TRL / mmpost {med['trl'] / med['mmpost_epoch']:.2f}x"
        )
    rows = [
        ("mmpost_live_ref", "live reference copy, every step"),
        ("mmpost_epoch", f"precomputed reference: epoch incl. the {pre_s:.2f} s precompute, per step"),
        ("mmpost", "precomputed reference: training steps only (the precompute excluded)"),
    ] + ([("trl", "TRL DPOTrainer")] if "trl" in med else [])
    for k, what in rows:
        print(f"  {k:>15} {med[k]:.3f} s/step  {what}")


if __name__ == "__main__":
    main()
