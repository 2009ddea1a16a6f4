"""``mmpost data validate``, ``stats`` and ``convert``: check, describe and convert any data file
(LeRobot v3.0 dataset folders too)."""

from __future__ import annotations

import collections

DATA_FILE_HELP = "data file: JSONL, JSON, parquet, arrow, or a save_to_disk / parquet folder (docs/data.md)"
FORMAT_HELP = (
    "auto (told by the columns), mmpost, sharegpt, alpaca, openai, trl, llamafactory_v1 or rl "
    "(default %(default)s)"
)


def _add_data_file(p, format_help: str = FORMAT_HELP) -> None:
    p.add_argument("file", help=DATA_FILE_HELP)
    p.add_argument("--format", default="auto", help=format_help)


def _add_file(p) -> None:
    from mm.visual import VisualConfig
    from mmpost.flags import add_config_flags

    _add_data_file(p, FORMAT_HELP.replace(" or rl", ", rl or lerobot (a LeRobot v3.0 dataset folder)"))
    add_config_flags(p, VisualConfig, title="visual limits (VisualConfig)")


def add_validate(p) -> None:
    _add_file(p)
    p.set_defaults(func=cmd_validate)


def _lerobot(args) -> bool:
    """True for a LeRobot v3.0 dataset folder (VLA data): told by its meta/info.json, or --format lerobot."""
    from vla.lerobot import is_lerobot

    return args.format == "lerobot" or (args.format == "auto" and is_lerobot(args.file))


def validate_lerobot_cli(path: str) -> int:
    from vla.lerobot import lerobot_stats, validate_lerobot

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
    from mm.dataset import DataError
    from mmpost.data.checks import _quantiles, print_table
    from vla.lerobot import lerobot_stats

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
    from mm.visual import VisualConfig
    from mmpost.data.checks import run_validate
    from mmpost.flags import config_from_args

    if _lerobot(args):
        return validate_lerobot_cli(args.file)
    return run_validate(args.file, config_from_args(VisualConfig, args), fmt=args.format)


def add_stats(p) -> None:
    _add_file(p)
    p.add_argument(
        "--model",
        default="tiny",
        help="processor to count tokens with: a preset ('tiny', 'tiny-qwen3vl', ...) or a local checkpoint folder",
    )
    p.set_defaults(func=cmd_stats)


def cmd_stats(args) -> int:
    from mm.visual import VisualConfig
    from mmpost.data.checks import run_stats
    from mmpost.flags import config_from_args

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
    from mmpost.data.checks import run_convert

    return run_convert(args.file, args.out, fmt=args.format)


def load_processor(name: str):
    """The processor of a preset (``tiny``, ``tiny-qwen3vl``, ...: its family's, built offline) or
    of a local checkpoint."""
    from mm.tiny import preset_names, resolve_preset, tiny_processor

    if name in preset_names():
        return tiny_processor(resolve_preset(name)[0])
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name, local_files_only=True)
