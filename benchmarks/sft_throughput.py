"""SFT throughput on trajectory-like data: packed (flex / dense mask) vs padded, and TRL's SFTTrainer.

    python benchmarks/sft_throughput.py                         # small-151k preset, 24 trajectories
    python benchmarks/sft_throughput.py --preset tiny-151k --n 12 --rounds 1   # smoke run

Data: generated multi-turn tool-use trajectories (``mm.synthetic.trajectory_records``): one
question image, 0-4 crop rounds each adding an image, log-normal reasoning lengths, so samples
run from a few hundred to several thousand tokens with a long tail (ViRC-like). Model: a preset
with Qwen's real 151,936-token vocabulary ("-151k"), so the LM head and the loss cost what they
cost in the real model (mmpost computes logits only at supervised positions).

Layouts, all through ``alignment.train`` (one epoch, AdamW, fp32 on a CPU and bf16 on CUDA, no
gradient checkpointing):
* padded: --batch-size samples per step, padded to the longest;
* packed_dense: rows of at most --max-tokens (default: batch-size x the mean length, so a step
  carries about the padded step's real tokens), one row per step, isolated by the
  block-diagonal [1, 1, L, L] mask under SDPA (attention over all L x L pairs);
* packed_flex: the same rows with ``attn: flex`` (FlexAttention on CUDA; on a CPU SDPA per
  sample segment, see mm/packed_attention.py): one flat row, no mask, attention per sample;
* trl_defaults: TRL's SFTTrainer with the same model, data, batch size and lr, everything else
  SFTConfig's defaults (gradient checkpointing on, bf16 autocast) except ``max_length=None``
  (its default 1024 would cut the long trajectories, so it would train on other data);
* trl_tuned: the same with gradient checkpointing off and mmpost's dtype (fp32 on a CPU, bf16 on
  CUDA, where mmpost's ``precision: auto`` trains in bf16).
  TRL arms run only if TRL is installed; otherwise printed as not measured. TRL computes the
  loss over every token (its default for conversational data) and logits over the full
  vocabulary at every position; mmpost supervises the assistant turns and computes logits
  only there.

Throughput is real (non-padding) tokens of the epoch over the training-loop time (setup and
model loading excluded). With --peak-tflops (the accelerator's dense peak in the training
dtype, e.g. 989 for an H100/H200 in bf16) each arm's MFU is printed: 6 x N x tokens/s over the
peak, N = the language model's matmul weights (per layer 2h^2 + 2h*kv*head_dim + 3h*mlp, plus
the LM head h x vocab; the vision tower and attention scores left out), the same N for every arm
(so MFU ratios are throughput ratios). Runs alternate in order for --rounds rounds; medians and ratios
against padded are printed, with each layout's padding fraction and attention pairs computed
per pair needed.
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

MAX_PIXELS = 200704  # 256 visual tokens per image at most

TRL_ARMS = ("trl_defaults", "trl_tuned")
LAYOUTS = {  # name -> (data.layout, model.attn)
    "padded": ("pad", "sdpa"),
    "packed_dense": ("pack", "sdpa"),
    "packed_flex": ("pack", "flex"),
}


def run_epoch(data: str, out: str, preset: str, name: str, batch: int, max_tokens: int, lr: float):
    """One epoch of arm ``name`` in a fresh process (models of earlier runs otherwise stay in
    memory): (seconds of the training loop, real tokens trained)."""
    import subprocess

    args = [data, out, preset, name, str(batch), str(max_tokens), str(lr)]
    r = subprocess.run([sys.executable, __file__, "--one-epoch", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{name} epoch failed:\n{r.stderr[-3000:]}")
    s = json.loads(r.stdout.strip().splitlines()[-1])
    return s["seconds"], s["tokens"]


def one_epoch(data: str, out: str, preset: str, name: str, batch: str, max_tokens: str, lr: str) -> None:
    from alignment.train import train

    batch, max_tokens = int(batch), int(max_tokens)
    if name.startswith("trl"):
        sec, tokens = trl_epoch(data, out, preset, batch, float(lr), tuned=name == "trl_tuned")
        print(json.dumps({"seconds": sec, "tokens": tokens}))
        return
    layout, attn = LAYOUTS[name]
    over = [
        f"model.name_or_path={preset}",
        f"model.attn={attn}",
        f"data.train={data}",
        f"data.layout={layout}",
        f"data.max_tokens={max_tokens}",
        f"data.micro_batch_size={batch}",  # samples per micro-batch in every layout (the same steps)
        f"data.visual.max_pixels={MAX_PIXELS}",
        "train.epochs=1",
        "train.save_every=0",
        "train.export=false",
        "train.deepspeed=zero0",
        "train.log_every=1000000",
        "train.resume=never",
        f"optim.lr={lr}",
        "optim.warmup_ratio=0",
        "optim.schedule=constant",
    ]
    s = train(None, over, output_dir=out)
    print(json.dumps({"seconds": s["seconds"], "tokens": s["tokens"]}))


def layout_costs(lengths: list[int], batch: int, max_tokens: int) -> dict:
    """Per layout: (padding fraction, causal attention pairs computed / pairs needed) of the epoch plan."""
    from alignment.data import DataConfig, StepPlanner

    def plan(layout, mb):
        cfg = DataConfig(layout=layout, max_tokens=max_tokens, micro_batch_size=mb)
        return StepPlanner.of(lengths, cfg, 1, 1, 0).micro_batches(0)  # seed 0: train.seed's default

    out = {}
    for name, (layout, attn) in LAYOUTS.items():
        real = slots = needed = computed = 0
        for mb in plan(layout, batch):
            rows = [[lengths[i]] for i in mb] if layout == "pad" else [[lengths[i] for i in r] for r in mb]
            width, tokens = max(sum(r) for r in rows), sum(map(sum, rows))
            pairs = sum(n * (n + 1) // 2 for r in rows for n in r)  # causal pairs within each sample
            real, needed = real + tokens, needed + pairs
            if attn == "sdpa":  # rows padded to the widest; attention over each whole row
                slots, computed = slots + len(rows) * width, computed + len(rows) * width * (width + 1) // 2
            else:  # one flat row, attention per sample
                slots, computed = slots + tokens, computed + pairs
        out[name] = (1 - real / slots, computed / needed)
    return out


def trl_epoch(data: str, out: str, preset: str, batch: int, lr: float, tuned: bool) -> tuple[float, int]:
    """TRL SFTTrainer over the same records (images in order as the messages name them):
    (seconds of ``train``, the non-padding tokens TRL counted)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mm.loading import load_model
    from mm.visual import VisualConfig, load_visuals, plan_visuals

    model, processor = load_model(preset, attn="sdpa")
    model.config.use_cache = False  # as mmpost trains (and as TRL's gradient checkpointing sets it)
    base, cfg = os.path.dirname(data), VisualConfig(max_pixels=MAX_PIXELS)
    rows = []
    for line in open(data):
        msgs, items = [], []
        for m in json.loads(line)["messages"]:
            content = (
                m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            )
            items += [c for c in content if c["type"] == "image"]
            msgs.append(
                {
                    "role": m["role"],
                    "content": [{"type": "image"} if c["type"] == "image" else c for c in content],
                }
            )
        images, _ = load_visuals(plan_visuals(items, cfg, base), cfg)  # the sizes mmpost trains on
        rows.append({"messages": msgs, "images": images})
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
        use_cpu=not torch.cuda.is_available(),
        max_length=None,
        **({"bf16": torch.cuda.is_available(), "gradient_checkpointing": False} if tuned else {}),
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    processor.image_processor.max_pixels = cfg.max_pixels
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor
    )
    result = trainer.train()
    tokens = next(
        (float(h["num_tokens"]) for h in reversed(trainer.state.log_history) if "num_tokens" in h), 0
    )
    return result.metrics["train_runtime"], int(tokens)


def matmul_params(preset: str) -> int:
    """The language model's matmul weights of ``preset`` (see the module docstring)."""
    from mm.tiny import PRESETS, tiny_config, tiny_tokenizer

    p, vocab = PRESETS[preset], tiny_config(tiny_tokenizer(), preset).text_config.vocab_size
    h, hd = p["hidden"], p["hidden"] // p["heads"]
    layer = 2 * h * h + 2 * h * p["kv"] * hd + 3 * h * p["mlp"]
    return p["layers"] * layer + h * vocab


def main() -> None:
    if sys.argv[1:2] == ["--one-epoch"]:
        return one_epoch(*sys.argv[2:])
    from mm.imports import is_available
    from mm.tiny import PRESETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small-151k", choices=list(PRESETS))
    ap.add_argument("--peak-tflops", type=float, default=0, help="print MFU against this peak")
    ap.add_argument("--n", type=int, default=24, help="trajectories in the generated set")
    ap.add_argument("--median-words", type=int, default=200, help="median words of the final reasoning turn")
    ap.add_argument("--batch-size", type=int, default=4, help="samples per padded step (and TRL's)")
    ap.add_argument(
        "--max-tokens", type=int, default=0, help="packed row length (default: batch-size x mean)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--arms", nargs="+", choices=[*LAYOUTS, *TRL_ARMS], default=[*LAYOUTS, *TRL_ARMS])
    args = ap.parse_args()

    from mm.dataset import RecordDataset
    from mm.encode import ConversationEncoder
    from mm.synthetic import trajectory_records
    from mm.tiny import tiny_processor
    from mm.visual import VisualConfig

    tmp = tempfile.mkdtemp()
    data = trajectory_records(args.n, os.path.join(tmp, "data"), seed=0, median_words=args.median_words)
    ds = RecordDataset(data, ConversationEncoder(tiny_processor(), VisualConfig(max_pixels=MAX_PIXELS)))
    lengths = ds.lengths(progress=False)
    srt = sorted(lengths)
    max_tokens = args.max_tokens or max(srt[-1], round(args.batch_size * sum(srt) / len(srt)))
    print(
        f"preset={args.preset} trajectories={args.n} tokens={sum(srt)} (min {srt[0]}, median "
        f"{statistics.median(srt):.0f}, p90 {srt[int(0.9 * (len(srt) - 1))]}, max {srt[-1]}); "
        f"padded: {args.batch_size} samples/step; packed: 1 row of <= {max_tokens} tokens/step"
    )
    costs = layout_costs(lengths, args.batch_size, max_tokens)
    for name, (pad, attn_ratio) in costs.items():
        print(f"  {name:13s} padding {pad:6.1%}   attention pairs computed / needed {attn_ratio:5.2f}")

    trl = is_available("trl")
    runs = {name: [] for name in args.arms if trl or name not in TRL_ARMS}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            out = os.path.join(tmp, f"{name}_{r}")
            t0 = time.perf_counter()
            sec, tokens = run_epoch(data, out, args.preset, name, args.batch_size, max_tokens, args.lr)
            runs[name].append(tokens / sec)
            print(
                f"  round {r}: {name:13s} {tokens / sec:8.0f} tok/s  ({tokens} tokens, loop {sec:.1f} s, "
                f"with setup {time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\nmedians of {args.rounds} interleaved rounds (real tokens / s):")
    base = next(iter(med))
    for k, v in med.items():
        print(f"  {k:13s} {v:8.0f} tok/s   {v / med[base]:.2f}x {base}")
    for t in [t for t in TRL_ARMS if t in med]:
        for k in [k for k in LAYOUTS if k in med]:
            print(f"  {k} vs {t}: {med[k] / med[t]:.2f}x")
    if not trl:
        print("  trl           not measured (TRL is not installed: pip install trl)")
    if args.peak_tflops:
        n = matmul_params(args.preset)
        for k, v in med.items():
            print(f"  MFU {k:13s} {6 * n * v / (args.peak_tflops * 1e12):6.1%}  (N = {n / 1e6:.0f} M)")


if __name__ == "__main__":
    main()
