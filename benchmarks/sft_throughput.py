"""SFT throughput: mmpost (packed, and padded) against TRL's SFTTrainer, same model, data and batches.

    python benchmarks/sft_throughput.py                    # "small" preset (30M), a few minutes on 2 CPU cores
    python benchmarks/sft_throughput.py --preset tiny      # toy size (Python overhead decides)

Both train one epoch over the same generated multimodal set (0-2 images of random sizes per
sample, text of random length) with the same samples per step (--batch-size; mmpost packed:
rows of the longest sample's length, as many per step as carry the same real tokens), AdamW and
the same learning rate, on CPU in fp32 without gradient checkpointing (TRL's SFTConfig defaults
to bf16 autocast and gradient checkpointing; both are switched off here so the arithmetic is the same). Throughput is real (non-padding) tokens of the epoch divided
by the training-loop time (model loading and setup excluded for both). Runs alternate between
frameworks for --rounds rounds; medians are reported with ratios against TRL.

Differences to keep in mind: TRL refuses packing for vision data, processes images in its
collator at every step, and (without generation tags in the chat template) trains on every
token; mmpost encodes images once per sample in its loader, masks the loss to assistant turns
and computes logits only at supervised positions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MMPOST_PROGRESS", "0")


def mmpost_epoch(
    data: str, out: str, preset: str, layout: str, batch: int, max_tokens: int, lr: float, rows: int
) -> tuple[float, int]:
    from alignment.train import train

    over = [
        f"model.name_or_path={preset}",
        f"data.train={data}",
        f"data.layout={layout}",
        f"data.max_tokens={max_tokens}",
        f"data.micro_batch_size={batch if layout == 'pad' else 1}",
        "train.epochs=1",
        "train.save_every=0",
        "train.export=false",
        "train.deepspeed=zero0",
        f"optim.lr={lr}",
        "optim.warmup_ratio=0",
        "optim.schedule=constant",
        "train.log_every=1000000",
        "data.visual.max_pixels=200704",
        "train.resume=never",
    ]
    s = train(None, over, output_dir=out)
    return s["seconds"], s["tokens"]


def trl_epoch(data: str, out: str, preset: str, batch: int, lr: float) -> tuple[float, int]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mm.loading import load_model
    from mm.visual import VisualConfig, load_visuals, plan_visuals

    model, processor = load_model(preset)
    base = os.path.dirname(data)
    rows = []
    cfg = VisualConfig(max_pixels=200704)
    for line in open(data):
        rec = json.loads(line)
        user, assistant = rec["messages"]
        items = [c for c in user["content"] if c["type"] == "image"]
        images, _ = load_visuals(plan_visuals(items, cfg, base), cfg)  # same sizes as mmpost
        content = [{"type": "image"} if c["type"] == "image" else c for c in user["content"]]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": assistant["content"]}]},
                ],
                "images": images,
            }
        )
    args = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=None,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    # TRL's processor resizes with its own limits; give it the ones mmpost used so token counts agree
    processor.image_processor.max_pixels = cfg.max_pixels
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor
    )
    result = trainer.train()
    return result.metrics["train_runtime"], 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--n", type=int, default=48, help="samples in the generated set")
    ap.add_argument("--batch-size", type=int, default=4, help="samples per step (TRL and mmpost padded)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()

    from mm.dataset import RecordDataset
    from mm.encode import ConversationEncoder
    from mm.synthetic import mixed_records
    from mm.tiny import tiny_processor
    from mm.visual import VisualConfig

    tmp = tempfile.mkdtemp()
    data = mixed_records(args.n, os.path.join(tmp, "data"), seed=0, max_side=448, max_words=160)
    ds = RecordDataset(data, ConversationEncoder(tiny_processor(), VisualConfig(max_pixels=200704)))
    lengths = ds.lengths(progress=False)
    total = sum(lengths)
    # packed: rows as long as the longest sample (SFT-sized rows keep SDPA's dense attention cheap),
    # and as many rows per step as give the padded step's real tokens
    max_tokens = max(lengths)
    rows = max(1, round(args.batch_size * total / len(lengths) / max_tokens))
    print(
        f"preset={args.preset} samples={args.n} tokens={total} (mean {total / len(lengths):.0f}, max {max(lengths)}) "
        f"batch={args.batch_size} samples/step; packed: {rows} rows of <= {max_tokens} tokens per step"
    )
    runs = {"trl": [], "mmpost_padded": [], "mmpost_packed": []}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            out = os.path.join(tmp, f"{name}_{r}")
            t0 = time.perf_counter()
            if name == "trl":
                sec, _ = trl_epoch(data, out, args.preset, args.batch_size, args.lr)
            else:
                layout = "pad" if name.endswith("padded") else "pack"
                sec, _ = mmpost_epoch(
                    data, out, args.preset, layout, args.batch_size, max_tokens, args.lr, rows
                )
            runs[name].append(total / sec)
            print(
                f"  round {r}: {name:14s} {total / sec:9.0f} tok/s  (loop {sec:.1f}s, with setup {time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in med.items():
        print(f"{k:14s} {v:9.0f} tok/s  ratio vs TRL {v / med['trl']:.2f}x")


if __name__ == "__main__":
    main()
