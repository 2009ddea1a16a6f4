"""Attention over one packed row: dense block-diagonal mask vs SDPA per segment vs FlexAttention.

    python benchmarks/packed_attention.py                    # 6 documents, 4,000 tokens, 8 heads
    python benchmarks/packed_attention.py --lengths 4000,4000,4000,4000 --heads 16 --head-dim 128

The kernels alone (forward, and forward+backward where the kernel has one), on one row of
documents of --lengths tokens, fp32, on CPU (or CUDA with --device cuda): ``dense`` is SDPA with
the block-diagonal [1, 1, L, L] mask (what ``attn: sdpa`` packing builds), ``segments`` is SDPA
with ``is_causal`` on each document's slice, ``flex`` is FlexAttention with the document
``BlockMask`` of mm.packed_attention (compiled once before timing; torch 2.14 has no CPU
backward for it). The kernels run interleaved for --rounds rounds; medians and ratios against
dense are printed, after a check that all three agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm.collate import block_causal_mask  # noqa: E402
from mm.packed_attention import compiled_flex, document_block_mask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="700,300,1500,200,900,400", help="document lengths of the row")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    lengths = [int(x) for x in args.lengths.split(",")]
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None].to(args.device)  # [1, L]
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, args.heads, doc.shape[1], args.head_dim, generator=g).to(args.device) for _ in range(3)
    )
    dense_mask = block_causal_mask(doc)  # [1, 1, L, L]
    block_mask = document_block_mask(doc)
    flex = compiled_flex()

    def dense(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask)

    def segments(q, k, v):
        parts = zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))
        return torch.cat([F.scaled_dot_product_attention(a, b, c, is_causal=True) for a, b, c in parts], 2)

    def flex_attn(q, k, v):
        return flex(q, k, v, block_mask=block_mask)

    kernels = {"dense": dense, "segments": segments, "flex": flex_attn}
    t0 = time.perf_counter()
    ref = dense(q, k, v)
    for name, fn in kernels.items():
        err = (fn(q, k, v) - ref).abs().max().item()  # the first flex call compiles
        assert err < 1e-4, (name, err)
    print(
        f"row of {doc.shape[1]} tokens in {len(lengths)} documents, {args.heads} heads x {args.head_dim}, "
        f"{args.device}; outputs agree (checked, incl. flex compile: {time.perf_counter() - t0:.1f} s)"
    )
    backward = {"dense", "segments"} | ({"flex"} if args.device != "cpu" else set())
    times: dict[str, list[float]] = {f"{n} fwd": [] for n in kernels}
    times.update({f"{n} fwd+bwd": [] for n in kernels if n in backward})
    for _ in range(args.rounds):
        for name, fn in kernels.items():
            t = time.perf_counter()
            with torch.no_grad():
                fn(q, k, v)
            times[f"{name} fwd"].append(time.perf_counter() - t)
            if name in backward:
                qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
                t = time.perf_counter()
                fn(qq, kk, vv).sum().backward()
                times[f"{name} fwd+bwd"].append(time.perf_counter() - t)
    med = {n: statistics.median(t) for n, t in times.items()}
    for n, m in med.items():
        base = med["dense " + n.split(" ")[1]]
        print(f"  {n:18s} {m * 1e3:9.1f} ms   {base / m:5.2f}x dense")
    if "flex fwd+bwd" not in med:
        print("  flex fwd+bwd       not measured (FlexAttention has no backward on CPU in this torch)")


if __name__ == "__main__":
    main()
