"""Streaming: per-second latency and KV-cache memory over a long stream, four cache schemes.

    python benchmarks/streaming.py                                   # tiny, 10 / 100 / 1000 s (CPU: ~15 min)
    python benchmarks/streaming.py --preset small --device cuda      # where compute matters
    python benchmarks/streaming.py --checkpoints 10,100 --tokens 4   # quick

Schemes, all greedy on the same synthetic video (a moving dot, 2 fps):
  ours        bounded cache (sink + previous text + last R rounds + last V s of frames),
              contiguous positions kept by rotating the kept keys once per round
  full        full attention, nothing evicted (memory and latency grow)
  recompute   sliding window with recompute: every second re-prefills the sink and the
              last V seconds from scratch (the StreamingVLM paper's overlap baseline)
  rerotate    the reference's scheme: the same windows, but the whole cache is re-rotated
              at every decoded token (pre-RoPE keys, positions recomputed every step)
Printed per scheme: median latency per second around each checkpoint (the 20 seconds before
it, 5 at the first), memory at it (KV-cache bytes on CPU; peak allocated GPU memory on CUDA), and ratios:
latency at the last checkpoint over the first (flatness; also from 100 s, once the windows
have filled) and the other schemes' latency over ours.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm.chat_template import ASSISTANT_HEADER, TURN_END, VISION_END, VISION_START, turn, turn_header  # noqa: E402
from mm.loading import load_model  # noqa: E402
from mm.rope import TEXT, VIDEO, mrope_positions  # noqa: E402
from streaming.cache import CacheConfig, StreamingKVCache, rotate_keys  # noqa: E402
from streaming.engine import StreamConfig, StreamingEngine  # noqa: E402
from streaming.sources import SyntheticSource  # noqa: E402

HUGE = 10**9


class Rerotate(StreamingEngine):
    """Re-rotates every cached key after every decoded token (the cost the reference pays)."""

    def _forward(self, ids, pos, **kwargs):
        logits = super()._forward(ids, pos, **kwargs)
        if len(ids) == 1:
            for layer in self.cache.cache.layers:
                zero = torch.zeros(layer.keys.shape[2], dtype=torch.long)
                layer.keys = rotate_keys(layer.keys.float(), zero, self.cache.inv_freq).to(layer.keys.dtype)
        return logits


class Recompute(StreamingEngine):
    """A fresh cache every second: prefill the sink and the last V seconds again, then decode."""

    def reset(self) -> None:
        super().reset()
        self.history: list[tuple] = []  # (user ids, pixels, grid, reply ids) per second

    def step(self, second, on_token=None, forced=None):
        t0 = time.perf_counter()
        k = self.round
        self.cache = StreamingKVCache(self.model, self.cfg.cache)
        head = turn("system", self.cfg.system) + turn_header("user") + f"{self.cfg.query}\n"
        pixels, grid = self._frames(second.frames)
        user = self._ids(("" if k == 0 else "\n" + turn_header("user")) + f"Time={k}-{k + 1}s{VISION_START}")
        user += [self.video_id] * (int(grid.prod()) // self.merge) + self._ids(
            VISION_END + TURN_END + ASSISTANT_HEADER
        )
        window = (
            self.history[-(self.cfg.cache.vision_seconds - 1) :] if self.cfg.cache.vision_seconds > 1 else []
        )
        ids, pix, grids = self._ids(head), [], []
        for u, p, g, r in window:
            ids += u + r
            pix.append(p)
            grids.append(g)
        ids += user
        pix.append(pixels)
        grids.append(grid)
        types = torch.tensor([VIDEO if t == self.video_id else TEXT for t in ids])
        sec = torch.full((len(grids),), self.processor.video_processor.temporal_patch_size / self.cfg.fps)
        pos, end = mrope_positions(types, None, torch.stack(grids), sec, self.rope)
        logits = self._forward(
            ids,
            pos,
            pixel_values_videos=torch.cat(pix),
            video_grid_thw=torch.stack(grids),
            second_per_grid_ts=sec,
        )
        self.cache.append("user", k, pos, end, ids)
        reply = self._decode(logits, k, None, None)
        self.history.append(
            (user, pixels, grid, reply + ([] if reply and reply[-1] == self.end_id else [self.end_id]))
        )
        self.round += 1
        ms = (time.perf_counter() - t0) * 1000
        self.summary.seconds += 1
        self.summary.latencies_ms.append(ms)
        return None


def cache_bytes(engine: StreamingEngine) -> int:
    return sum(
        t.numel() * t.element_size()
        for layer in engine.cache.cache.layers
        for t in (layer.keys, layer.values)
    )


def run(scheme: str, model, processor, checkpoints: list[int], tokens: int) -> dict:
    windows = CacheConfig()
    if scheme == "full":
        windows = CacheConfig(sink_text=HUGE, window_text=HUGE, recent_rounds=HUGE, vision_seconds=HUGE)
    cfg = StreamConfig(do_sample=False, max_new_tokens=tokens, cache=windows)
    cls = {"ours": StreamingEngine, "full": StreamingEngine, "rerotate": Rerotate, "recompute": Recompute}[
        scheme
    ]
    engine = cls(model, processor, cfg)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out, memory = {}, {}
    for second in SyntheticSource(max(checkpoints), size=112).seconds():
        engine.step(second)
        n = second.index + 1
        if n in checkpoints:
            lat = engine.summary.latencies_ms[-max(5, min(20, n // 2)) :]  # smooth this noisy machine
            out[n] = statistics.median(lat)
            memory[n] = cache_bytes(engine)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            print(
                f"  {scheme:>9} @ {n:>5} s: {out[n]:8.1f} ms/s   cache {memory[n] / 2**20:8.2f} MiB",
                flush=True,
            )
    return {"latency": out, "memory": memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small", "medium"], default="tiny")
    ap.add_argument("--checkpoints", default="10,100,1000", help="seconds at which to report")
    ap.add_argument("--tokens", type=int, default=8, help="max new tokens per second (greedy)")
    ap.add_argument("--schemes", default="ours,full,recompute,rerotate")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    model, processor = load_model(args.preset, device=device)
    model.eval()
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    print(
        f"{args.preset} on {device or 'cpu'}, greedy, <= {args.tokens} tokens per second, 112 x 112 frames at 2 fps"
    )
    res = {s: run(s, model, processor, checkpoints, args.tokens) for s in args.schemes.split(",")}
    first, last = checkpoints[0], checkpoints[-1]
    print(f"\nlatency at {last} s / at {first} s (flat = 1.0):")
    for s, r in res.items():
        print(
            f"  {s:>9}: {r['latency'][last] / r['latency'][first]:6.2f}x   cache {r['memory'][last] / 2**20:.2f} MiB"
        )
    print("\nreal-time factor (compute per second of video / 1 s; < 1 keeps up with a live stream):")
    for s, r in res.items():
        print(f"  {s:>9}: " + "   ".join(f"{c} s: {r['latency'][c] / 1000:.3f}" for c in checkpoints))
    if "ours" in res:
        print(f"\nlatency per second vs ours at {last} s:")
        for s, r in res.items():
            if s != "ours":
                print(f"  {s:>9}: {r['latency'][last] / res['ours']['latency'][last]:6.2f}x")
        ours = res["ours"]["latency"]
        full_at = next((c for c in checkpoints if c >= 100), first)  # the windows are full by then
        print(
            f"\ngoal, flat (<= 1.2x): ours {ours[last] / ours[first]:.2f}x from {first} s, "
            f"{ours[last] / ours[full_at]:.2f}x from {full_at} s (after the windows fill)"
        )


if __name__ == "__main__":
    main()
