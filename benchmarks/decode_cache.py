"""Decoding with a KV cache that appends in place against transformers' DynamicLayer (torch.cat
of the whole cache at every step, for every layer).

    python benchmarks/decode_cache.py                          # small preset, 32 rows x 256 tokens
    python benchmarks/decode_cache.py --preset tiny --rows 8 --tokens 64 --rounds 1   # smoke run

The ViRC prompt (tool system prompt + one 224 x 224 image, ~1,100 tokens) repeated --rows
times, as a GRPO group: prefilled once, the cache expanded to the rows, then greedy decoding of
--tokens tokens with ``CachedGenerator`` (``in_place`` True vs False; the same ids, checked).
Runs alternate for --rounds rounds; medians and the ratio are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from mm.loading import load_model
    from mm.synthetic import shapes_image
    from vision_tools.api import build_prompt
    from vision_tools.engine import EngineConfig, ToolEngine
    from vision_tools.generation import Sampling
    from vision_tools.generation.cached import CachedGenerator

    model, processor = load_model(args.preset)
    engine = ToolEngine(model, processor, config=EngineConfig(max_turns=1, max_turn_tokens=args.tokens))
    image, _ = shapes_image(224, 224, seed=0)
    contexts = [c.context() for c in engine.start([build_prompt(image, "How many shapes?")] * args.rows)]
    arms = {"in_place": True, "concatenate": False}
    times: dict[str, list[float]] = {name: [] for name in arms}
    outputs = {}
    for r in range(args.rounds):
        for name in arms if r % 2 == 0 else reversed(arms):
            gen = CachedGenerator(model, processor)
            gen.in_place = arms[name]
            for c in contexts:
                c.session = {}
            t0 = time.perf_counter()
            outputs[name] = gen.generate(contexts, [args.tokens] * args.rows, Sampling())
            times[name].append(time.perf_counter() - t0)
            print(f"  round {r}: {name:12s} {times[name][-1]:7.2f} s", flush=True)
    assert outputs["in_place"] == outputs["concatenate"], "the two caches gave different ids"
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = sum(len(o) for o in outputs["in_place"])
    print(f"{args.preset}: {args.rows} rows, prompt {len(contexts[0].input_ids)} tokens, {tokens} generated, "
          f"medians of {args.rounds} rounds")  # fmt: skip
    for k, v in med.items():
        print(f"  {k:12s} {v:7.2f} s  {tokens / v:7.1f} tok/s")
    print(f"  concatenate / in_place: {med['concatenate'] / med['in_place']:.2f}x")


if __name__ == "__main__":
    main()
