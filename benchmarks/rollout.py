"""Tool-engine rollouts: batched vs one conversation at a time.

    python benchmarks/rollout.py                       # tiny and small presets (a few minutes on 2 CPU cores)
    python benchmarks/rollout.py --preset tiny --n 8   # quick smoke run

N conversations (images of mixed sizes, the ViRC prompt) run through ``ToolEngine`` greedily
with fixed limits (turns, tokens per turn, no resampling), once as one batch and once one
conversation at a time, alternately for --rounds rounds. Greedy decoding makes both modes
produce the same ids (the script checks), so they do the same work. Printed: median
conversations per second and generated tokens per second of each mode, and the ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm.loading import load_model  # noqa: E402
from mm.synthetic import shapes_image  # noqa: E402
from vision_tools.api import build_prompt  # noqa: E402
from vision_tools.engine import EngineConfig, ToolEngine  # noqa: E402


def prompts(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.choice([(224, 224), (336, 224), (280, 392), (448, 336)])
        img, _ = shapes_image(w, h, seed=i)
        out.append(build_prompt(img, f"How many shapes are in picture {i}?"))
    return out


def run(engine: ToolEngine, batch: list, one_at_a_time: bool) -> tuple[float, int, list]:
    t0 = time.perf_counter()
    trajs = [engine.run([p])[0] for p in batch] if one_at_a_time else engine.run(batch)
    return time.perf_counter() - t0, sum(t.generated_tokens for t in trajs), trajs


def bench(preset: str, n: int, turns: int, tokens: int, rounds: int, device: str | None) -> None:
    model, processor = load_model(preset, device=device)
    model.eval()
    cfg = EngineConfig(max_turns=turns, max_turn_tokens=tokens, max_resamples=0, batch_size=n)
    engine = ToolEngine(model, processor, config=cfg)
    batch = prompts(n)
    run(engine, batch[:2], False)  # warm-up
    times = {"batched": [], "one at a time": []}
    for r in range(rounds):
        for mode in ("batched", "one at a time") if r % 2 == 0 else ("one at a time", "batched"):
            sec, gen, trajs = run(engine, batch, mode != "batched")
            times[mode].append((sec, gen, trajs))
    ref = [t.input_ids for t in times["batched"][0][2]]
    same = all(torch.equal(a, t.input_ids) for a, t in zip(ref, times["one at a time"][0][2]))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"\n{preset} ({params:.1f}M params), {n} conversations, <= {turns} turns x {tokens} tokens, {rounds} rounds"
    )
    print(f"  identical ids batched vs one at a time: {same}")
    res = {}
    for mode, rows in times.items():
        sec = statistics.median(s for s, _, _ in rows)
        gen = rows[0][1]
        res[mode] = (n / sec, gen / sec)
        print(
            f"  {mode:>14}: {sec:7.2f} s   {n / sec:6.2f} conversations/s   {gen / sec:8.1f} generated tokens/s"
        )
    ratio = res["batched"][1] / res["one at a time"][1]
    print(f"  batched / one at a time: {ratio:.2f}x generated tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small", "both"], default="both")
    ap.add_argument("--n", type=int, default=16, help="conversations")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens per turn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default=None, help="e.g. cuda (default: cuda if available)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    for preset in ("tiny", "small") if args.preset == "both" else (args.preset,):
        bench(preset, args.n, args.turns, args.tokens, args.rounds, device)


if __name__ == "__main__":
    main()
