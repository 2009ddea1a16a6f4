"""GRPO step time: mmpost against TRL's GRPOTrainer, same model, prompts, G and lengths.

    python benchmarks/grpo_step.py                    # tiny model, 8 steps each, 3 rounds (CPU: a few minutes)
    python benchmarks/grpo_step.py --preset small     # where compute matters

Needs TRL (not in the dev extra): pip install trl

Both run the quickstart letter-spotting task (data/letters: text prompts, reward 1 when the
completion contains an x) with 4 prompts x G = 8 completions per step, at most 12 new tokens,
temperature 1.0, no KL, one update per rollout batch, AdamW, fp32 for both
(on a GPU too, where both run on the device).
Time per step is the training loop's wall time divided by the steps (model loading and setup
excluded for both); runs alternate between frameworks and medians are reported with the ratio,
plus mmpost's split into generation and the rest (scoring, log-probs, update).
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
ROOT = Path(__file__).resolve().parents[1]
PROMPTS, G, TOKENS, LR = 4, 8, 12, 3e-3


def mmpost_run(preset: str, steps: int, out: str, share_prompt: bool = True) -> tuple[float, float]:
    from alignment.infra.metrics import read_metrics
    from alignment.train import train

    over = [
        f"model.name_or_path={preset}",
        f"train.max_steps={steps}",
        "train.export=false",
        "train.save_every=0",
        "train.epochs=100",
        f"data.prompts_per_step={PROMPTS}",
        f"rollout.num_generations={G}",
        f"rollout.max_completion_length={TOKENS}",
        f"optim.lr={LR}",
        f"data.share_prompt={str(share_prompt).lower()}",
        "train.precision=fp32",
    ]
    summary = train(str(ROOT / "configs" / "quickstart" / "grpo.yaml"), over, output_dir=out)
    rows = read_metrics(out)
    gen = sum(r["generation_s"] for r in rows)
    return summary["seconds"] / steps, gen / steps


def trl_run(preset: str, steps: int, out: str) -> float:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignment.rewards import contains_answer
    from mm.loading import load_model

    model, processor = load_model(preset)
    rows = [json.loads(ln) for ln in open(ROOT / "data" / "letters" / "train.jsonl")]
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows] * 100)

    def reward(completions, answer, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [contains_answer([t], answer=a)[0] for t, a in zip(texts, answer)]

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.t0

    clock = Clock()
    args = GRPOConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=PROMPTS * G,
        num_generations=G,
        max_completion_length=TOKENS,
        temperature=1.0,
        beta=0.0,
        learning_rate=LR,
        bf16=False,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=ds,
        processing_class=processor,
        callbacks=[clock],
    )
    trainer.train()
    return clock.seconds / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small", "medium"], default="tiny")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"mmpost": [], "padded": [], "trl": []}
    gens = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(times) if r % 2 == 0 else list(reversed(times))
            for who in order:
                out = os.path.join(tmp, f"{who}{r}")
                if who == "trl":
                    times[who].append(trl_run(args.preset, args.steps, out))
                else:
                    step, gen = mmpost_run(args.preset, args.steps, out, share_prompt=who == "mmpost")
                    times[who].append(step)
                    if who == "mmpost":
                        gens.append(gen)
                print(f"  round {r}: {who:>6} {times[who][-1]:.3f} s/step", flush=True)
    a, p, b = (statistics.median(times[k]) for k in ("mmpost", "padded", "trl"))
    g = statistics.median(gens)
    print(
        f"\n{args.preset}: {PROMPTS} prompts x G={G}, <= {TOKENS} new tokens, {args.steps} steps, {args.rounds} rounds"
    )
    print(
        f"  mmpost: {a:.3f} s/step (generation {g:.3f} s = {g / a:.0%}, scoring + log-probs + update {a - g:.3f} s)"
    )
    print(f"  mmpost, padded rows (data.share_prompt=false): {p:.3f} s/step")
    print(f"  TRL:    {b:.3f} s/step")
    print(f"  TRL / mmpost: {b / a:.2f}x   (padded rows / shared prompts: {p / a:.2f}x)")


if __name__ == "__main__":
    main()
