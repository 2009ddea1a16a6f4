"""``mmpost data ...``: check, describe and generate data files.

    validate FILE             every problem with its line (or row) and a fix hint (mm.data_cli)
    stats FILE                counts, token lengths, visual tokens
    convert IN OUT.jsonl      any format (ShareGPT, parquet, TRL, EasyR1, ...) -> mmpost JSONL
    synth DIR                 the generated visual-reasoning set
    crux PROBLEMS OUT         CRU trajectories (ViRC stage 1 + 2) from problems
    stream-chunks V T OUT     streaming SFT chunks from a video and word timestamps
    vla-synth OUT             the synthetic two-view reaching task (VLA / Spatial Forcing; --format lerobot)
    metaworld-demos OUT       MetaWorld expert demonstrations as VLA records (needs mmpost[sim])
    teacher-features D O      precomputed Spatial Forcing teacher features
    specs-pairs ...           SPECS preference pairs (zero vs corrupted base responses)

Each subcommand is an ``add_*(parser)`` that declares its arguments and a ``cmd_*(args)`` handler;
only the subcommand named on the command line is built.
"""

from __future__ import annotations

import argparse
import collections
import os


def add_data(p: argparse.ArgumentParser, words) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    for name, (add, text) in COMMANDS.items():
        q = sub.add_parser(name, help=text, description=text)
        if words[:1] == [name]:
            add(q)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


# ----------------------------------------------------------------------------- validate, stats


DATA_FILE_HELP = "data file: JSONL, JSON, parquet, arrow, or a save_to_disk / parquet folder (docs/data.md)"
FORMAT_HELP = "auto (told by the columns), mmpost, sharegpt, alpaca, openai, trl or rl (default %(default)s)"


def _add_data_file(p, format_help: str = FORMAT_HELP) -> None:
    p.add_argument("file", help=DATA_FILE_HELP)
    p.add_argument("--format", default="auto", help=format_help)


def _add_file(p) -> None:
    from mm.cli.flags import add_config_flags
    from mm.visual import VisualConfig

    _add_data_file(p, FORMAT_HELP.replace(" or rl", ", rl or lerobot (a LeRobot v3.0 dataset folder)"))
    add_config_flags(p, VisualConfig, title="visual limits (VisualConfig)")


def add_validate(p) -> None:
    _add_file(p)
    p.set_defaults(func=cmd_validate)


def _lerobot(args) -> bool:
    """True for a LeRobot v3.0 dataset folder (VLA data): told by its meta/info.json, or --format lerobot."""
    from alignment.vla.lerobot import is_lerobot

    return args.format == "lerobot" or (args.format == "auto" and is_lerobot(args.file))


def validate_lerobot_cli(path: str) -> int:
    from alignment.vla.lerobot import lerobot_stats, validate_lerobot

    problems = validate_lerobot(path)
    for p in problems:
        print(p)
    if not problems:
        s = lerobot_stats(path)
        print(f"{path}: LeRobot v3.0, {s['episodes']} episode(s), {s['frames']} frame(s), 0 with problems")
        return 0
    codes = collections.Counter(p.code for p in problems)
    print(
        f"{path}: LeRobot v3.0, {len(problems)} problem(s) ("
        + ", ".join(f"{c}: {n}" for c, n in codes.most_common())
        + ")"
    )
    return 1


def stats_lerobot_cli(path: str) -> int:
    from alignment.vla.lerobot import lerobot_stats
    from mm.data_cli import _quantiles, print_table
    from mm.dataset import DataError

    try:
        s = lerobot_stats(path)
    except DataError as e:
        print(e.problem)
        return 1
    cams = ", ".join(f"{k} {h}x{w}" for k, (h, w) in s["cameras"].items())
    print(
        f"{path}: LeRobot v3.0, {s['episodes']} episode(s), {s['frames']} frame(s) at {s['fps']} fps, "
        f"{s['tasks']} task(s), camera(s): {cams}; action dims {s['action_dim']}, state dims {s['state_dim']}"
    )
    print_table(
        [["", "min", "median", "p95", "max", "mean"], ["episode frames", *_quantiles(s["episode_lengths"])]]
    )
    return 0


def cmd_validate(args) -> int:
    from mm.cli.flags import config_from_args
    from mm.data_cli import run_validate
    from mm.visual import VisualConfig

    if _lerobot(args):
        return validate_lerobot_cli(args.file)
    return run_validate(args.file, config_from_args(VisualConfig, args), fmt=args.format)


def add_stats(p) -> None:
    _add_file(p)
    p.add_argument(
        "--model", default="tiny", help="processor to count tokens with: 'tiny' or a local checkpoint folder"
    )
    p.set_defaults(func=cmd_stats)


def cmd_stats(args) -> int:
    from mm.cli.flags import config_from_args
    from mm.data_cli import run_stats
    from mm.visual import VisualConfig

    if _lerobot(args):
        return stats_lerobot_cli(args.file)
    return run_stats(
        args.file, load_processor(args.model), config_from_args(VisualConfig, args), fmt=args.format
    )


def add_convert(p) -> None:
    _add_data_file(p)
    p.add_argument("out", help="output JSONL; embedded images are written to OUT_STEM_images/ beside it")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from mm.data_cli import run_convert

    return run_convert(args.file, args.out, fmt=args.format)


def load_processor(name: str):
    from mm.tiny import PRESETS, tiny_processor

    if name in PRESETS:
        return tiny_processor()
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name, local_files_only=True)


# ----------------------------------------------------------------------------- visual reasoning (ViRC, CLS)


def add_synth(p) -> None:
    p.add_argument("out", help="output folder, e.g. data/synth")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from alignment.builders.virc_turns import write_next_turn_records
    from vision_tools.crux import write_synth

    paths = write_synth(args.out, args.n_train, args.n_test, args.seed)
    rl = os.path.join(args.out, "train_rl.jsonl")
    n = write_next_turn_records(paths["train"], rl)
    print(
        f"wrote {paths['train']} ({args.n_train} SFT trajectories), {paths['stage1']} (the same, tool-result "
        f"images dropped), {rl} ({n} next-turn RL records) and {paths['test']} ({args.n_test} RL prompts)"
    )
    return 0


def add_crux(p) -> None:
    p.add_argument(
        "problems", help="problems JSONL: image, question, answer, optional regions (docs/data.md)"
    )
    p.add_argument("out", help="output folder (stage1.jsonl, stage2.jsonl, images/)")
    p.add_argument("--stage", choices=("1", "2", "both"), default="both", help="which SFT stage variant(s)")
    p.add_argument(
        "--coords", choices=("dynamic", "fixed"), default="dynamic", help="coordinate mode of the calls"
    )
    p.set_defaults(func=cmd_crux)


def cmd_crux(args) -> int:
    from vision_tools.crux import build_crux

    counts = build_crux(args.problems, args.out, stages=args.stage, coords=args.coords)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def add_virc_rl(p) -> None:
    p.add_argument("trajectories", help="CRU SFT trajectories (e.g. data/synth/train.jsonl)")
    p.add_argument("out", help="output JSONL of RL records")
    p.add_argument("--cuts", choices=("all", "hard"), default="all", help="every turn, or ViRC's hard cases")
    p.add_argument("--min-turns", type=int, default=15, help="hard: answer turns after more turns than this")
    p.set_defaults(func=cmd_virc_rl)


def cmd_virc_rl(args) -> int:
    from alignment.builders.virc_turns import write_next_turn_records

    n = write_next_turn_records(args.trajectories, args.out, args.cuts, args.min_turns)
    print(f"wrote {n} next-turn RL record(s) to {args.out}")
    return 0


def add_cls_fewshot(p) -> None:
    p.add_argument("root", help="image-folder data set: ROOT/<class>/*.png")
    p.add_argument("out", help="output folder (train.jsonl, test.jsonl or test_base/test_new.jsonl)")
    p.add_argument(
        "--shots", type=int, default=4, help="images per class in train.jsonl (default %(default)s)"
    )
    p.add_argument("--variant", choices=("cls_rl", "no_think"), default="cls_rl", help="prompt suffix")
    p.add_argument("--question", default="What is in this image?")
    p.add_argument("--base-to-new", action="store_true", help="train on the first half of the classes only")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cls_fewshot)


def cmd_cls_fewshot(args) -> int:
    from alignment.builders.cls_fewshot import build_fewshot

    counts = build_fewshot(
        args.root, args.out, args.shots, args.variant, args.question, args.base_to_new, args.seed
    )
    print(", ".join(f"{k}.jsonl: {v}" for k, v in counts.items()) + f" (in {args.out})")
    return 0


def add_cls_synth(p) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=10)
    p.set_defaults(func=cmd_cls_synth)


def cmd_cls_synth(args) -> int:
    from alignment.builders.cls_fewshot import write_shape_classes

    print(f"wrote six shape classes to {write_shape_classes(args.out, args.per_class)}")
    return 0


# ----------------------------------------------------------------------------- streaming


def add_stream_chunks(p) -> None:
    p.add_argument("video", help="the video file")
    p.add_argument("transcript", help='word timestamps: {"words": [{"word", "start", "end"}, ...]}')
    p.add_argument("out", help="output JSONL")
    p.add_argument("--chunk", type=int, default=24, help="W: seconds per chunk (default %(default)s)")
    p.add_argument(
        "--overlap", type=int, default=12, help="O: seconds shared by neighbours (default %(default)s)"
    )
    p.add_argument("--query", default="Commentate on this match")
    p.add_argument(
        "--model", default="tiny", help="tokenizer for the previous-text cut: 'tiny' or a checkpoint"
    )
    p.set_defaults(func=cmd_stream_chunks)


def cmd_stream_chunks(args) -> int:
    from streaming.chunks import write_chunks

    n = write_chunks(
        args.video,
        args.transcript,
        args.out,
        tokenizer=load_processor(args.model).tokenizer,
        chunk=args.chunk,
        overlap=args.overlap,
        query=args.query,
    )
    print(f"wrote {n} chunk record(s) to {args.out}")
    return 0


def add_stream_synth(p) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--seconds", type=int, default=120)
    p.set_defaults(func=cmd_stream_synth)


def cmd_stream_synth(args) -> int:
    from streaming.chunks import write_stream_synth

    paths = write_stream_synth(args.out, seconds=args.seconds)
    print(f"wrote {paths['video']}, {paths['transcript']} and {paths['chunks']}")
    return 0


# ----------------------------------------------------------------------------- SPECS


def add_specs_pairs(p) -> None:
    from alignment.builders.specs_pairs import PairsConfig
    from mm.cli.flags import add_config_flags

    add_config_flags(p, PairsConfig, title="pairs (PairsConfig)")
    p.add_argument("--out", required=True, help="output preference JSONL (counts in OUT.counts.json)")
    p.add_argument(
        "--judge-url",
        help="OpenAI-compatible endpoint scoring reasoning-answer consistency (key: MMPOST_JUDGE_KEY); "
        "responses it fails on are counted (zero_judge_failed), not kept",
    )
    p.add_argument("--judge-model", default="judge", help="model name sent to the judge")
    p.set_defaults(func=cmd_specs_pairs)


def cmd_specs_pairs(args) -> int:
    from alignment.builders.specs_pairs import PairsConfig, build_pairs, http_judge
    from mm.cli.flags import config_from_args
    from mm.config import ConfigError

    cfg = config_from_args(PairsConfig, args)
    missing = [f"--{k}" for k in ("zero", "base", "prompts") if not getattr(cfg, k)]
    if missing:
        raise ConfigError(f"specs-pairs needs {', '.join(missing)}")
    judge = None
    if args.judge_url:
        judge = http_judge(args.judge_url, args.judge_model, os.environ.get("MMPOST_JUDGE_KEY", ""))
    counts = build_pairs(cfg, args.out, judge)
    return 0 if counts["pairs"] else 1


def add_specs_toy(p) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_specs_toy)


def cmd_specs_toy(args) -> int:
    from alignment.builders.specs_toy import write_toy

    counts = write_toy(args.out, args.seed)
    print(", ".join(f"{k}.jsonl: {v}" for k, v in counts.items()) + f" (in {args.out})")
    return 0


# ----------------------------------------------------------------------------- VLA


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
    from alignment.vla.synth import write_vla_synth, write_vla_synth_lerobot

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

    from alignment.spatial.features import write_features
    from alignment.spatial.teacher import build_teacher
    from mm.config import ConfigError

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
    p.set_defaults(func=cmd_metaworld_demos)


def cmd_metaworld_demos(args) -> int:
    from alignment.vla.demos import write_metaworld_demos

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
    )
    ok = ", ".join(f"{t} {k}/{n}" for t, (k, n) in s["success"].items())
    print(
        f"wrote {s['records']} VLA records to {os.path.join(args.out, 'train.jsonl')} (expert success: {ok})"
    )
    return 0


# name -> (adds the arguments and the handler, one-line help)
COMMANDS = {
    "validate": (add_validate, "check every line; print each problem with its line number and a fix"),
    "stats": (add_stats, "counts, token lengths and visual tokens as a table"),
    "convert": (add_convert, "write any data file as mmpost JSONL (what the trainers read)"),
    "synth": (add_synth, "write the procedurally generated visual-reasoning set (train + test)"),
    "crux": (add_crux, "CRU trajectories (planning, guiding question, crop, steps, answer)"),
    "stream-chunks": (add_stream_chunks, "streaming SFT records: overlapped chunks of a commented video"),
    "stream-synth": (add_stream_synth, "a generated commented clip and its chunks (data/stream)"),
    "cls-fewshot": (add_cls_fewshot, "CLS-RL few-shot sets from an image folder (one folder per class)"),
    "virc-rl": (add_virc_rl, "ViRC Strategic-RL records: trajectories cut before one turn each"),
    "specs-pairs": (
        add_specs_pairs,
        "SPECS preference pairs: zero-model chosen vs format-corrupted base-model rejected",
    ),
    "specs-toy": (add_specs_toy, "the toy SPECS task the tiny model runs end to end (data/specs)"),
    "cls-synth": (add_cls_synth, "a generated image-folder set of six shape classes"),
    "vla-synth": (add_vla_synth, "the synthetic two-view reaching task for VLA / Spatial Forcing"),
    "metaworld-demos": (add_metaworld_demos, "MetaWorld scripted-expert episodes as VLA records (rendered)"),
    "teacher-features": (
        add_teacher_features,
        "precompute Spatial Forcing teacher features for a VLA data set",
    ),
}
