"""Packing vs padding: forward+backward throughput and padding fraction on a mixed multimodal set.

    python benchmarks/packing.py                      # "small" preset, generated data (a few minutes on 2 CPU cores)
    python benchmarks/packing.py --preset tiny --n 24 # quick smoke run

The data set is generated (0-2 images of random sizes, text of random length). One epoch is
run padded (random batches of --batch-size samples, padded to the longest) and one packed
(rows of at most --max-tokens, first-fit decreasing), alternately for --rounds rounds; the
script prints median real (non-padding) tokens per second of each and their ratio, plus the
padding fraction of both layouts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm.collate import pack_batch, pad_batch, per_sample_nll, plan_packs  # noqa: E402
from mm.dataset import RecordDataset  # noqa: E402
from mm.encode import ConversationEncoder  # noqa: E402
from mm.loading import load_model  # noqa: E402
from mm.rope import RopeSpec  # noqa: E402
from mm.synthetic import mixed_records  # noqa: E402
from mm.visual import VisualConfig  # noqa: E402


def epoch(model, batches, make) -> tuple[float, int, int]:
    """Forward+backward over all batches: (seconds, real tokens, padded positions)."""
    real = slots = 0
    t0 = time.perf_counter()
    for group in batches:
        batch = make(group)
        seq = batch.pop("seq_ids", None)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        per_sample_nll(logits, labels, seq).sum().backward()
        model.zero_grad(set_to_none=True)
        flat = [x for r in group for x in r] if isinstance(group[0], list) else group
        real += sum(len(s) for s in flat)
        slots += batch["input_ids"].numel()
    return time.perf_counter() - t0, real, slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--n", type=int, default=48, help="samples in the generated set")
    ap.add_argument("--batch-size", type=int, default=4, help="samples per padded batch")
    ap.add_argument(
        "--max-tokens", type=int, default=0, help="tokens per packed row (default: batch-size x mean length)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model, processor = load_model(args.preset, attn="sdpa")
    model.train()
    enc = ConversationEncoder(
        processor, VisualConfig(max_pixels=448 * 448), RopeSpec.from_config(model.config)
    )
    with tempfile.TemporaryDirectory() as tmp:
        ds = RecordDataset(mixed_records(args.n, tmp, seed=args.seed, max_side=448, max_words=160), enc)
        samples = [ds[i] for i in range(len(ds))]
    lengths = [len(s) for s in samples]
    mean_len = sum(lengths) / len(lengths)
    # Rows as long as the longest sample, batch-size rows per step: the same step shape as the worst
    # padded batch. (One long row would make SDPA's dense L x L attention pay for masked-out blocks.)
    max_tokens = args.max_tokens or max(lengths)
    order = list(range(len(samples)))
    random.Random(args.seed).shuffle(order)
    pad_groups = [
        [samples[i] for i in order[k : k + args.batch_size]] for k in range(0, len(order), args.batch_size)
    ]
    rows = [[samples[i] for i in row] for row in plan_packs(lengths, max_tokens)]
    rows_per_step = args.batch_size
    pack_groups = [rows[k : k + rows_per_step] for k in range(0, len(rows), rows_per_step)]
    pad_id = processor.tokenizer.pad_token_id

    def make_pad(group):
        return pad_batch(group, pad_id)

    def make_pack(group):
        return pack_batch(group, pad_id, "sdpa")

    print(
        f"preset={args.preset} params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M samples={len(samples)} "
        f"tokens/sample min/mean/max={min(lengths)}/{mean_len:.0f}/{max(lengths)} "
        f"padded steps={len(pad_groups)} ({args.batch_size} samples each), packed steps={len(pack_groups)} "
        f"({rows_per_step} rows of <= {max_tokens} tokens each)"
    )
    epoch(model, pad_groups[:1], make_pad)  # warm-up
    res = {"padded": [], "packed": []}
    for r in range(args.rounds):
        for name, groups, make in (("padded", pad_groups, make_pad), ("packed", pack_groups, make_pack))[
            :: 1 if r % 2 == 0 else -1
        ]:
            sec, real, slots = epoch(model, groups, make)
            res[name].append((real / sec, 1 - real / slots))
            print(
                f"  round {r}: {name:6s} {real / sec:8.0f} real tok/s  padding {100 * (1 - real / slots):5.1f}%  ({sec:.1f}s)"
            )
    med = {k: statistics.median(x for x, _ in v) for k, v in res.items()}
    padf = {k: v[0][1] for k, v in res.items()}
    print(f"padded: {med['padded']:.0f} tok/s, padding fraction {100 * padf['padded']:.1f}%")
    print(f"packed: {med['packed']:.0f} tok/s, padding fraction {100 * padf['packed']:.1f}%")
    print(
        f"packed/padded throughput ratio: {med['packed'] / med['padded']:.2f}x (median of {args.rounds} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
