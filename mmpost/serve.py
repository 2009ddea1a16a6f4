"""``mmpost serve``: the HTTP tool-call API; its limits are ``vision_tools.server.ServeConfig``."""

from __future__ import annotations

import argparse

MIB = 2**20
# a request's max_turns / max_tokens default to the server's bounds (ServeConfig.max_turns, ...)
BOUNDED = ("max_turns", "max_turn_tokens")


def add_serve(p: argparse.ArgumentParser, words) -> None:
    from mmpost.flags import add_config_flags
    from vision_tools.server import ServeConfig

    p.add_argument(
        "--model",
        default="tiny",
        help="a preset ('tiny', 'tiny-qwen3vl', ...) or a local checkpoint folder (default %(default)s)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="(default %(default)s)")
    d = ServeConfig()
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=d.max_body_bytes / MIB,
        help="largest request body in MiB (ServeConfig.max_body_bytes; default %(default)s)",
    )
    p.add_argument(
        "--max-image-mb",
        type=float,
        default=d.max_image_bytes / MIB,
        help="largest image file in MiB (ServeConfig.max_image_bytes; default %(default)s)",
    )
    add_config_flags(
        p,
        ServeConfig,
        title="server limits and engine (ServeConfig)",
        # logprobs: asked for per request ("logprobs": true), not a server default
        exclude=("max_body_bytes", "max_image_bytes", "engine.logprobs", *(f"engine.{k}" for k in BOUNDED)),
        aliases={"image_dirs": ("--image-dir",), "engine.generator": ("--engine",)},
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import os

    from mmpost.flags import config_from_args
    from vision_tools.server import ServeConfig, serve

    args.max_body_bytes = int(args.max_body_mb * MIB)
    args.max_image_bytes = int(args.max_image_mb * MIB)
    for k in BOUNDED:
        setattr(args, f"engine.{k}", getattr(args, k))
    cfg = config_from_args(ServeConfig, args)
    for d in cfg.image_dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"--image-dir {d}: no such folder")
    serve(args.model, args.host, args.port, cfg)
    return 0
