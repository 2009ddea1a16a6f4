"""Spatial Forcing on the synthetic reaching task: does alignment speed up learning, and what does
the teacher cost per step live vs precomputed?

    python benchmarks/spatial_forcing.py                       # tiny model, random teacher, 3 seeds
    python benchmarks/spatial_forcing.py --quick               # smoke run (seconds, numbers meaningless)
    python benchmarks/spatial_forcing.py --teacher timm:vit_small_patch14_dinov2 --teacher-weights W.safetensors
    python benchmarks/spatial_forcing.py --closed-loop         # + success rates in MetaWorld (mmpost[sim])
    OMP_NUM_THREADS=1 python benchmarks/spatial_forcing.py --sim-only --sim-dir runs/sf-closed-loop  # that alone

1. Steps to threshold: for each seed, train the same VLA with alpha = 0 (action loss only) and
   alpha = 0.5 (+ L_align) on the same data order, and count the optimizer steps until the
   training action L1 (normalised actions, running mean over --window steps) first falls below
   --threshold. Reported: per-seed steps, medians and the ratio without / with alignment (the
   paper claims up to 3.8x faster training for OpenVLA-OFT on LIBERO with a VGGT teacher).
2. Step time: alpha = 0.5 with the live teacher vs features precomputed by
   ``mmpost data teacher-features``; runs interleaved for --rounds rounds, median step time over
   the steps after the first epoch (encoded samples are cached by then), ratio live / precomputed.
3. Closed loop (``--closed-loop``, or ``--sim-only`` for this part alone): per task (reach-v3,
   push-v3) --sim-demos expert episodes (MT1 seed 0 variations) at --sim-size px with the goal
   markers shown (radius --sim-goal-size; reach's drawn green, unlike the red puck), written once
   with the geometry teacher's features and shared by every arm; the VLA of
   configs/spatial_forcing/metaworld_reach.yaml trained per (task, arm, seed) with
   ``alpha0`` (action loss only), ``geometry`` (alpha --sim-alpha, the geometric teacher:
   MuJoCo's depth back-projected to world points, per-token Fourier features, normalised per
   token position) and ``random`` (alpha --sim-alpha, mmpost's random conv teacher, live); runs
   interleaved (seed, task, then arm, the arms' order turning with the seed). Each model runs
   --sim-episodes episodes on held-out variations (MT1 seed 1) at most --sim-steps steps,
   executing 4 actions per chunk. Reported per task and arm, pooled over seeds: success with its
   95% Wilson interval, per-seed successes, mean steps to success, and the optimizer steps until
   the training action L1 (running mean over --sim-window) first falls below --sim-threshold.
   Set OMP_NUM_THREADS=1 on a shared machine (torch's threads collapse under load); with
   --sim-dir the runs and ``results.jsonl`` are kept and a rerun resumes.

Caveats: the tiny model (0.25M parameters) and the random conv teacher are stand-ins; the random
teacher carries local image structure, not 3-D knowledge, and tiny-model learning curves are
noisy, so read the per-seed numbers, not only the median. At toy size a step is dominated by
Python overhead, which hides most of a teacher's cost.
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
# reach's goal marker is red like the puck and the finger pads: draw it green (push's is green already)
GOAL_RGBA = {"reach-v3": [0.0, 0.8, 0.0]}
SIM_ARMS = {  # name -> (alpha, align.teacher, precomputed geometry features)
    "alpha0": (0.0, "random", False),
    "geometry": (None, "geometry", True),
    "random": (None, "random", False),
}


def per_task(spec: str, tasks: list[str]) -> dict[str, int]:
    """``8`` or ``reach-v3=4,push-v3=8`` (a bare number is every task's)."""
    out, default = {}, None
    for part in filter(None, spec.split(",")):
        task, _, n = part.rpartition("=")
        if task:
            out[task] = int(n)
        else:
            default = int(n)
    missing = [t for t in tasks if t not in out and default is None]
    if missing:
        raise SystemExit(f"--sim-epochs {spec!r} gives no value for {', '.join(missing)}")
    return {t: out.get(t, default) for t in tasks}


def sim_run(args, task: str, arm: str, seed: int, data: str, epochs: int, out: str) -> dict:
    """Train one arm on the task's demonstrations, then run it closed loop on held-out variations."""
    from alignment.infra.metrics import read_metrics
    from alignment.train import train
    from vla.closed_loop import ClosedLoopConfig, evaluate_policy

    alpha, teacher, features = SIM_ARMS[arm]
    alpha = args.sim_alpha if alpha is None else alpha
    over = [
        f"data.train={data}/train.jsonl",
        f"align.alpha={alpha}",
        f"align.teacher={teacher}",
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        "train.resume=never",
        "train.deepspeed=zero0",
        "train.log_every=1",
    ]
    if features:
        over.append(f"align.features={data}/teacher-geometry")
    t0 = time.perf_counter()
    train(SIM_CONFIG, over, output_dir=out)
    train_s = time.perf_counter() - t0
    m = read_metrics(out)
    l1 = [x["m_action_l1"] for x in m if "m_action_l1" in x]
    align = [x["m_align"] for x in m if "m_align" in x]
    w = args.sim_window
    cfg = ClosedLoopConfig(
        env=f"metaworld:{task}",
        episodes=args.sim_episodes,
        seed=1,
        max_steps=args.sim_steps,
        views=["corner", "gripperPOV"],
        size=args.sim_size,
        show_goal=not args.sim_hide_goal,
        goal_size=args.sim_goal_size,
        goal_rgba=GOAL_RGBA.get(task, []),
        execute=4,
        workers=args.sim_workers,
        videos=[],
        out=os.path.join(out, "eval"),
    )
    t0 = time.perf_counter()
    r = evaluate_policy(os.path.join(out, "final"), cfg, progress=False)
    return {
        "task": task,
        "arm": arm,
        "seed": seed,
        "alpha": alpha,
        "steps": len(l1),
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
        "steps_to_threshold": first_below(l1, args.sim_threshold, w),
        "final_l1": statistics.fmean(l1[-w:]),
        "align_start": statistics.fmean(align[:w]) if align else None,
        "align_end": statistics.fmean(align[-w:]) if align else None,
        "per_episode": [{k: e[k] for k in ("variation", "success", "steps")} for e in r["per_episode"]],
    }


def closed_loop(args, root: str) -> None:
    """The MetaWorld arm: demos per task (shared by every arm and seed), then (seed, task, arm)
    runs interleaved, each appended to ROOT/results.jsonl as it ends (a rerun skips those done)."""
    from vla.demos import write_metaworld_demos

    tasks = [t for t in args.sim_tasks.split(",") if t]
    arms = [a for a in args.sim_arms.split(",") if a]
    bad = [a for a in arms if a not in SIM_ARMS]
    if bad:
        raise SystemExit(f"--sim-arms: unknown {bad}; choose from {', '.join(SIM_ARMS)}")
    epochs = per_task(args.sim_epochs, tasks)
    os.makedirs(root, exist_ok=True)
    log = os.path.join(root, "results.jsonl")
    done = {}
    if os.path.isfile(log):
        for line in open(log):
            r = json.loads(line)
            done[(r["task"], r["arm"], r["seed"])] = r
    show = not args.sim_hide_goal
    print(
        f"== closed loop: {', '.join(tasks)}; arms {', '.join(arms)}; {args.sim_seeds} seeds; "
        f"{args.sim_demos} expert episodes (MT1 seed 0) per task; {args.sim_size} px views; goal markers "
        f"{'r = ' + str(args.sim_goal_size or 0.02) + ' m' if show else 'hidden'}; epochs {epochs}; "
        f"{args.sim_episodes} held-out episodes (MT1 seed 1) per run, {args.sim_steps} steps, execute 4 =="
    )
    data = {}
    for task in tasks:
        data[task] = os.path.join(root, f"demos-{task}")
        if not os.path.isfile(os.path.join(data[task], "teacher-geometry", "meta.json")):
            t0 = time.perf_counter()
            d = write_metaworld_demos(
                data[task],
                [task],
                args.sim_demos,
                ("corner", "gripperPOV"),
                args.sim_size,
                0,
                show_goal=show,
                goal_size=args.sim_goal_size,
                goal_rgba=GOAL_RGBA.get(task),
                teacher_features="geometry",
                feature_normalize=args.sim_normalize,
                progress=False,
            )
            print(
                f"{task}: {d['records']} expert steps (expert {d['success'][task][0]}/{args.sim_demos}), "
                f"geometry features {d['features']['grid']} x {d['features']['dim']}, "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    results = []
    for seed in range(args.sim_seeds):
        for task in tasks:
            for k in range(len(arms)):  # the arms' order turns with the seed: no arm always runs first
                arm = arms[(k + seed) % len(arms)]
                r = done.get((task, arm, seed))
                if r is None:
                    out = os.path.join(root, f"{task}-{arm}-s{seed}")
                    r = sim_run(args, task, arm, seed, data[task], epochs[task], out)
                    with open(log, "a") as f:
                        f.write(json.dumps(r) + "\n")
                results.append(r)
                k_ok = sum(e["success"] for e in r["per_episode"])
                print(
                    f"{task} {arm:8s} seed {seed}: {k_ok}/{len(r['per_episode'])}; steps to L1 < "
                    f"{args.sim_threshold}: {r['steps_to_threshold']} of {r['steps']}; final L1 "
                    f"{r['final_l1']:.3f}; train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s",
                    flush=True,
                )
    print(sim_table(results, tasks, arms, args))


def sim_table(results: list[dict], tasks: list[str], arms: list[str], args) -> str:
    """The markdown table: per task and arm, pooled over seeds."""
    from vla.closed_loop import summarize

    w, thr = args.sim_window, args.sim_threshold
    rows = [
        f"| task | arm | success (pooled, 95% Wilson) | per seed | mean steps to success | "
        f"train steps to L1 < {thr} (running mean of {w}), per seed | median | final L1 | L_align start -> end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        for arm in arms:
            rs = sorted(
                (r for r in results if r["task"] == task and r["arm"] == arm), key=lambda r: r["seed"]
            )
            if not rs:
                continue
            s = summarize([e for r in rs for e in r["per_episode"]])
            seeds = " / ".join(str(sum(e["success"] for e in r["per_episode"])) for r in rs)
            reach = [r["steps_to_threshold"] for r in rs]
            med = statistics.median(x if x is not None else float("inf") for x in reach)
            steps = s["mean_steps_to_success"]
            al = [r for r in rs if r["align_start"] is not None]
            align = (
                f"{statistics.fmean(r['align_start'] for r in al):.2f} -> "
                f"{statistics.fmean(r['align_end'] for r in al):.2f}"
                if al
                else "-"
            )
            name = arm if arm == "alpha0" else f"{arm} (alpha {rs[0]['alpha']})"
            rows.append(
                f"| {task} | {name} | {s['successes']}/{s['episodes']} = {s['success_rate']:.2f} "
                f"({s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}) | {seeds} | "
                f"{'-' if steps is None else f'{steps:.1f}'} | "
                f"{' / '.join('>' + str(r['steps']) if x is None else str(x) for r, x in zip(rs, reach))} | "
                f"{med if med != float('inf') else '-'} | "
                f"{statistics.fmean(r['final_l1'] for r in rs):.3f} | {align} |"
            )
    return "\n".join(rows)


def first_below(values: list[float], threshold: float, window: int) -> int | None:
    """The first step (1-based) whose running mean over ``window`` steps is below ``threshold``."""
    for i in range(window - 1, len(values)):
        if statistics.fmean(values[i - window + 1 : i + 1]) < threshold:
            return i + 1
    return None


def steps_to(metrics: list[dict], threshold: float, window: int) -> int | None:
    return first_below([m["m_action_l1"] for m in metrics], threshold, window)


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
    ap.add_argument("--sim-only", action="store_true", help="the closed-loop arm alone")
    ap.add_argument("--sim-tasks", default="reach-v3,push-v3", help="MT1 tasks of the closed-loop arm")
    ap.add_argument("--sim-arms", default="alpha0,geometry,random", help=f"of {', '.join(SIM_ARMS)}")
    ap.add_argument("--sim-seeds", type=int, default=3, help="training seeds (data order and init) per arm")
    ap.add_argument("--sim-demos", type=int, default=50, help="expert episodes per task to train on")
    ap.add_argument(
        "--sim-epochs", default="reach-v3=4,push-v3=8", help="training epochs: N, or TASK=N,TASK=N"
    )
    ap.add_argument("--sim-episodes", type=int, default=50, help="held-out evaluation episodes per run")
    ap.add_argument("--sim-steps", type=int, default=150, help="step limit per evaluation episode")
    ap.add_argument(
        "--sim-size", type=int, default=112, help="side of the rendered views (112: 4 x 4 tokens)"
    )
    ap.add_argument("--sim-goal-size", type=float, default=0.05, help="goal marker radius in metres")
    ap.add_argument("--sim-hide-goal", action="store_true", help="goal markers hidden (a control)")
    ap.add_argument("--sim-alpha", type=float, default=0.5, help="alpha of the aligned arms")
    ap.add_argument(
        "--sim-normalize", default="residual", help="geometry feature normalisation: residual, zscore, none"
    )
    ap.add_argument("--sim-threshold", type=float, default=0.15, help="training action L1 to reach")
    ap.add_argument("--sim-window", type=int, default=20, help="running mean of the training L1")
    ap.add_argument("--sim-workers", type=int, default=1, help="processes per closed-loop evaluation")
    ap.add_argument(
        "--sim-dir",
        default=None,
        help="folder of demos, runs and results.jsonl (a rerun resumes; default: temporary)",
    )
    args = ap.parse_args()
    if args.quick:
        args.n, args.steps, args.seeds, args.time_steps, args.rounds, args.batch_size = 8, 4, 1, 3, 1, 4
        args.sim_demos, args.sim_epochs, args.sim_episodes, args.sim_steps, args.sim_size = 1, "1", 1, 8, 32
        args.sim_seeds, args.sim_window, args.sim_tasks = 1, 2, "reach-v3"
    tmp = tempfile.mkdtemp(prefix="sf-bench-")
    if args.sim_only:
        closed_loop(args, args.sim_dir or os.path.join(tmp, "closed-loop"))
        return
    from vla.spatial.features import write_features
    from vla.spatial.teacher import build_teacher
    from vla.synth import write_vla_synth

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
        closed_loop(args, args.sim_dir or os.path.join(tmp, "closed-loop"))


if __name__ == "__main__":
    main()
