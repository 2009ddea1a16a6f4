"""``mmpost data`` commands for VLA data: the synthetic reaching task, MetaWorld expert
demonstrations and precomputed Spatial Forcing teacher features."""

from __future__ import annotations

import os


def add_vla_synth(p) -> None:
    p.add_argument("out", help="output folder (train.jsonl, test.jsonl, images/)")
    p.add_argument("--n", type=int, default=256, help="training records (default %(default)s)")
    p.add_argument("--n-test", type=int, default=32, help="test records (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=112, help="side of each rendered view in pixels")
    p.add_argument("--chunk", type=int, default=8, help="K: actions per chunk")
    p.add_argument("--dims", type=int, default=7, help="D: dimensions per action")
    p.add_argument("--distractors", type=int, default=0, help="extra balls of other colours per scene")
    p.add_argument(
        "--format",
        choices=("jsonl", "lerobot"),
        default="jsonl",
        help="jsonl (records + PNGs) or lerobot (LeRobot v3.0 datasets OUT/train, OUT/test: one episode per scene)",
    )
    p.add_argument(
        "--lossless", action="store_true", help="lerobot: lossless RGB H.264 instead of 4:2:0 H.264"
    )
    p.set_defaults(func=cmd_vla_synth)


def cmd_vla_synth(args) -> int:
    from vla.synth import write_vla_synth, write_vla_synth_lerobot

    if args.format == "lerobot":
        paths = write_vla_synth_lerobot(
            args.out,
            args.n,
            args.n_test,
            args.seed,
            args.size,
            args.chunk,
            args.dims,
            args.distractors,
            lossless=args.lossless,
        )
        print(
            f"wrote LeRobot v3.0 datasets {paths['train']} ({args.n} episodes) and {paths['test']} ({args.n_test})"
        )
        return 0
    paths = write_vla_synth(
        args.out, args.n, args.n_test, args.seed, args.size, args.chunk, args.dims, args.distractors
    )
    print(f"wrote {paths['train']} ({args.n} VLA records, 2 views each) and {paths['test']} ({args.n_test})")
    return 0


def add_teacher_features(p) -> None:
    p.add_argument("data", help="VLA records JSONL")
    p.add_argument("out", help="output folder (meta.json + one tensor per record)")
    p.add_argument("--teacher", default="random", help="random, timm:NAME or vggt (default %(default)s)")
    p.add_argument("--teacher-weights", default=None, help="local weights file of a timm or VGGT teacher")
    p.add_argument("--image-size", type=int, default=0, help="teacher input side (0: the teacher's default)")
    p.add_argument("--batch-size", type=int, default=16, help="records per teacher forward")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.set_defaults(func=cmd_teacher_features)


def cmd_teacher_features(args) -> int:
    import torch

    from mm.config import ConfigError
    from vla.spatial.features import write_features
    from vla.spatial.teacher import build_teacher

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        teacher = build_teacher(args.teacher, args.teacher_weights, args.image_size)
    except ValueError as e:  # an unknown teacher, weights that do not fit it, a bad size: the flags
        raise ConfigError(f"--teacher {args.teacher}: {e}") from e
    meta = write_features(args.data, args.out, teacher.to(device), args.batch_size)
    print(
        f"wrote {len(meta['ids'])} feature grids {meta['grid']} x {meta['dim']} of teacher {meta['teacher']} "
        f"to {args.out}; train with align.features={args.out}"
    )
    return 0


def add_metaworld_demos(p) -> None:
    p.add_argument("out", help="output folder (train.jsonl, images/, demos.json)")
    p.add_argument("--tasks", default="reach-v3", help="comma-separated MT1 tasks (default %(default)s)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default %(default)s)")
    p.add_argument(
        "--views", default="corner,gripperPOV", help="comma-separated cameras, in order (default %(default)s)"
    )
    p.add_argument("--size", type=int, default=224, help="side of each view in pixels (default %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="MT1 seed: which task variations (default %(default)s)"
    )
    p.add_argument("--chunk", type=int, default=8, help="K: actions per record (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=200, help="step limit per episode (default %(default)s)")
    p.add_argument("--keep-failed", action="store_true", help="also write episodes the expert failed")
    p.add_argument("--show-goal", action="store_true", help="render the goal markers (hidden by default)")
    p.add_argument(
        "--goal-size",
        type=float,
        default=0.0,
        help="radius of the goal markers in metres (0: MetaWorld's 0.02; pass the same to eval-policy)",
    )
    p.add_argument(
        "--goal-rgba",
        type=float,
        nargs="+",
        default=[],
        metavar="X",
        help="colour of the goal markers, r g b [a] in [0, 1] (default: the task's; pass the same to eval-policy)",
    )
    p.add_argument(
        "--teacher-features",
        choices=("geometry",),
        default=None,
        help="also write OUT/teacher-geometry: the geometric Spatial Forcing teacher's features of every "
        "record, from MuJoCo's depth and cameras (train with align.teacher=geometry "
        "align.features=OUT/teacher-geometry)",
    )
    p.add_argument(
        "--feature-normalize",
        choices=("residual", "zscore", "none"),
        default="residual",
        help="normalisation of the geometry features over the set: residual (each token position's mean "
        "removed, then per-channel std), zscore (per channel) or none (default %(default)s)",
    )
    p.set_defaults(func=cmd_metaworld_demos)


def cmd_metaworld_demos(args) -> int:
    from vla.demos import write_metaworld_demos

    s = write_metaworld_demos(
        args.out,
        [t for t in args.tasks.split(",") if t],
        args.episodes,
        tuple(v for v in args.views.split(",") if v),
        args.size,
        args.seed,
        args.chunk,
        args.max_steps,
        args.keep_failed,
        args.show_goal,
        args.goal_size,
        args.goal_rgba,
        args.teacher_features,
        args.feature_normalize,
    )
    ok = ", ".join(f"{t} {k}/{n}" for t, (k, n) in s["success"].items())
    print(
        f"wrote {s['records']} VLA records to {os.path.join(args.out, 'train.jsonl')} (expert success: {ok})"
    )
    if "features" in s:
        f = s["features"]
        print(
            f"  geometry teacher features {f['grid']} x {f['dim']} in {f['folder']}: train with "
            f"align.teacher=geometry align.features={f['folder']}"
        )
    return 0


# name -> (adds the arguments and the handler, one-line help)
