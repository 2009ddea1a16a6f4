"""Spatial Forcing on the synthetic reaching task: does alignment speed up learning, and what does
the teacher cost per step live vs precomputed?

    python benchmarks/spatial_forcing.py                       # tiny model, random teacher, 3 seeds
    python benchmarks/spatial_forcing.py --quick               # smoke run (seconds, numbers meaningless)
    python benchmarks/spatial_forcing.py --teacher timm:vit_small_patch14_dinov2 --teacher-weights W.safetensors
    python benchmarks/spatial_forcing.py --closed-loop         # + success rates in MetaWorld (mmpost[sim])

1. Steps to threshold: for each seed, train the same VLA with alpha = 0 (action loss only) and
   alpha = 0.5 (+ L_align) on the same data order, and count the optimizer steps until the
   training action L1 (normalised actions, running mean over --window steps) first falls below
   --threshold. Reported: per-seed steps, medians and the ratio without / with alignment (the
   paper claims up to 3.8x faster training for OpenVLA-OFT on LIBERO with a VGGT teacher).
2. Step time: alpha = 0.5 with the live teacher vs features precomputed by
   ``mmpost data teacher-features``; runs interleaved for --rounds rounds, median step time over
   the steps after the first epoch (encoded samples are cached by then), ratio live / precomputed.
3. Closed loop (``--closed-loop``): MetaWorld expert demonstrations of --sim-task (seed 0
   variations), the VLA of configs/spatial_forcing/metaworld_reach.yaml trained per seed with
   alpha = 0 and alpha = 0.5 (same data order), each run for --sim-episodes episodes on held-out
   variations (seed 1). Reported: per-seed success counts, the pooled success rate with its 95%
   Wilson interval, and mean steps to success, without and with alignment.

Caveats: the tiny model (0.25M parameters) and the random conv teacher are stand-ins; the random
teacher carries local image structure, not 3-D knowledge, and tiny-model learning curves are
noisy, so read the per-seed numbers, not only the median. At toy size a step is dominated by
Python overhead, which hides most of a teacher's cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MMPOST_PROGRESS", "0")
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "spatial_forcing" / "vla_sf.yaml")


def run(
    data: str, out: str, args, alpha: float, steps: int, seed: int, features: str | None = None
) -> list[dict]:
    from alignment.infra.metrics import read_metrics
    from alignment.train import train

    over = [
        f"data.train={data}",
        f"data.micro_batch_size={args.batch_size}",
        f"align.alpha={alpha}",
        f"align.teacher={args.teacher}",
        f"train.max_steps={steps}",
        f"train.seed={seed}",
        f"optim.lr={args.lr}",
        "optim.warmup_ratio=0",
        "optim.schedule=constant",
        "train.export=false",
        "train.resume=never",
        "train.log_every=1",
        "train.deepspeed=zero0",
    ]
    if args.teacher_weights:
        over.append(f"align.teacher_weights={args.teacher_weights}")
    if features:
        over.append(f"align.features={features}")
    train(CONFIG, over, output_dir=out)
    return read_metrics(out)


SIM_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "spatial_forcing" / "metaworld_reach.yaml")


def closed_loop(args, tmp: str) -> None:
    from alignment.train import train
    from vla.closed_loop import ClosedLoopConfig, evaluate_policy, summarize
    from vla.demos import write_metaworld_demos

    views = ("corner", "gripperPOV")
    data = os.path.join(tmp, "sim-demos")
    d = write_metaworld_demos(
        data,
        [args.sim_task],
        args.sim_demos,
        views,
        args.sim_size,
        0,
        show_goal=args.sim_show_goal,
        progress=False,
    )
    print(
        f"== closed loop: {args.sim_task}, {d['records']} expert steps from {args.sim_demos} episodes, "
        f"{args.sim_epochs} epochs, {args.sim_episodes} held-out episodes per run =="
    )
    pooled: dict[str, list] = {"without": [], "with": []}
    for seed in range(args.seeds):
        row = []
        for name, alpha in (("without", 0.0), ("with", 0.5)):
            out = os.path.join(tmp, f"sim-{name}-{seed}")
            over = [
                f"data.train={data}/train.jsonl",
                f"align.alpha={alpha}",
                f"align.teacher={args.teacher}",
                f"train.epochs={args.sim_epochs}",
                f"train.seed={seed}",
                "train.resume=never",
                "train.deepspeed=zero0",
            ]
            if args.teacher_weights:
                over.append(f"align.teacher_weights={args.teacher_weights}")
            train(SIM_CONFIG, over, output_dir=out)
            cfg = ClosedLoopConfig(
                env=f"metaworld:{args.sim_task}",
                episodes=args.sim_episodes,
                seed=1,
                max_steps=args.sim_steps,
                views=list(views),
                size=args.sim_size,
                show_goal=args.sim_show_goal,
                execute=4,
                videos=[],
                out=os.path.join(out, "eval"),
            )
            r = evaluate_policy(os.path.join(out, "final"), cfg, progress=False)
            pooled[name] += r["per_episode"]
            row.append(f"{name} alignment {r['successes']}/{r['episodes']}")
        print(f"seed {seed}: " + "; ".join(row), flush=True)
    for name, eps in pooled.items():
        s = summarize(eps)
        steps = s["mean_steps_to_success"]
        print(
            f"{name} alignment: success {s['successes']}/{s['episodes']} = {s['success_rate']:.2f} "
            f"(95% CI {s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}), mean steps to success "
            f"{'-' if steps is None else f'{steps:.1f}'}"
        )


def steps_to(metrics: list[dict], threshold: float, window: int) -> int | None:
    l1 = [m["m_action_l1"] for m in metrics]
    for i in range(window - 1, len(l1)):
        if statistics.fmean(l1[i - window + 1 : i + 1]) < threshold:
            return i + 1
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="training scenes")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per run (threshold part)")
    ap.add_argument("--threshold", type=float, default=0.2, help="running-mean action L1 to reach")
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--time-steps", type=int, default=24, help="optimizer steps per timing run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved live / precomputed timing rounds")
    ap.add_argument("--teacher", default="random", help="random, timm:NAME or vggt")
    ap.add_argument("--teacher-weights", default=None)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, one seed, one round")
    ap.add_argument(
        "--closed-loop", action="store_true", help="also the MetaWorld success rates (mmpost[sim])"
    )
    ap.add_argument("--sim-task", default="reach-v3", help="MT1 task of the closed-loop arm")
    ap.add_argument("--sim-demos", type=int, default=16, help="expert episodes to train on")
    ap.add_argument("--sim-epochs", type=int, default=3, help="training epochs over the demonstrations")
    ap.add_argument("--sim-episodes", type=int, default=20, help="evaluation episodes per run")
    ap.add_argument("--sim-steps", type=int, default=150, help="step limit per evaluation episode")
    ap.add_argument("--sim-size", type=int, default=64, help="side of the rendered views")
    ap.add_argument(
        "--sim-show-goal", action="store_true", help="goal markers visible in demos and evaluation"
    )
    args = ap.parse_args()
    if args.quick:
        args.n, args.steps, args.seeds, args.time_steps, args.rounds, args.batch_size = 8, 4, 1, 3, 1, 4
        args.sim_demos, args.sim_epochs, args.sim_episodes, args.sim_steps, args.sim_size = 1, 1, 1, 8, 32
    from vla.spatial.features import write_features
    from vla.spatial.teacher import build_teacher
    from vla.synth import write_vla_synth

    tmp = tempfile.mkdtemp(prefix="sf-bench-")
    data = write_vla_synth(os.path.join(tmp, "data"), n=args.n, n_test=0, seed=0)["train"]

    print(f"== steps to action L1 < {args.threshold} (running mean of {args.window}), {args.n} scenes ==")
    reached: dict[str, list] = {"without": [], "with": []}
    for seed in range(args.seeds):
        row = []
        for name, alpha in (("without", 0.0), ("with", 0.5)):
            m = run(data, os.path.join(tmp, f"{name}-{seed}"), args, alpha, args.steps, seed)
            s = steps_to(m, args.threshold, args.window)
            reached[name].append(s if s is not None else float("inf"))
            final = statistics.fmean(x["m_action_l1"] for x in m[-args.window :])
            row.append(
                f"{name} alignment: {s if s is not None else '>' + str(args.steps)} steps (final L1 {final:.3f})"
            )
        print(f"seed {seed}: " + "; ".join(row), flush=True)
    med = {k: statistics.median(v) for k, v in reached.items()}
    ratio = med["without"] / med["with"] if med["with"] not in (0, float("inf")) else float("nan")
    print(
        f"median steps: without {med['without']}, with {med['with']}; speed-up without / with alignment: {ratio:.2f}x"
    )

    print(f"== step time, teacher {args.teacher}: live vs precomputed ==")
    teacher = build_teacher(args.teacher, args.teacher_weights)
    feats = os.path.join(tmp, "features")
    write_features(data, feats, teacher, progress=False)
    per_epoch = args.n // args.batch_size
    times: dict[str, list[float]] = {"live": [], "precomputed": []}
    for r in range(args.rounds):
        for name in ("live", "precomputed"):
            out = os.path.join(tmp, f"time-{name}-{r}")
            m = run(data, out, args, 0.5, args.time_steps, 0, feats if name == "precomputed" else None)
            warm = m[per_epoch:] or m[-1:]
            times[name].append(statistics.median(args.batch_size / x["samples_per_s"] for x in warm))
    t = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"median step time: live {1000 * t['live']:.1f} ms, precomputed {1000 * t['precomputed']:.1f} ms; "
        f"live / precomputed: {t['live'] / t['precomputed']:.2f}x"
    )
    if args.closed_loop:
        closed_loop(args, tmp)


if __name__ == "__main__":
    main()
