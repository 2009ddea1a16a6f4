"""``mmpost stream``: live commentary (StreamingVLM); its options are ``streaming.engine.StreamConfig``."""

from __future__ import annotations

import argparse

# the flags' names before they were generated from StreamConfig (still accepted)
ALIASES = {
    "cache.mode": ("--positions",),
    "cache.sink_text": ("--sink-text",),
    "cache.window_text": ("--window-text",),
    "cache.recent_rounds": ("--recent-rounds",),
    "cache.vision_seconds": ("--vision-seconds",),
}


def add_stream(p: argparse.ArgumentParser, words) -> None:
    from mmpost.flags import add_config_flags
    from streaming.engine import StreamConfig

    p.add_argument("source", help="video file, folder of frames, camera:N, rtsp://..., or synthetic:SECONDS")
    p.add_argument(
        "--model",
        default="tiny",
        help="a preset ('tiny', 'tiny-qwen3vl', ...) or a local checkpoint folder (default %(default)s)",
    )
    p.add_argument(
        "--jsonl", action="store_true", help="one JSON segment per second on stdout, then a summary"
    )
    p.add_argument("--vtt", help="also write WebVTT captions to this file")
    p.add_argument("--max-seconds", type=int, default=0, help="stop after N seconds (0: the whole source)")
    p.add_argument("--web", action="store_true", help="serve the browser demo instead of printing")
    p.add_argument("--host", default="127.0.0.1", help="--web: bind address (default %(default)s)")
    p.add_argument("--port", type=int, default=8010, help="--web: port (default %(default)s)")
    g = add_config_flags(
        p, StreamConfig, title="commentary and cache windows (StreamConfig)", aliases=ALIASES
    )
    g.add_argument(
        "--greedy", dest="do_sample", action="store_false", help="greedy decoding (= --no-do-sample)"
    )
    p.set_defaults(func=cmd_stream)


def cmd_stream(args) -> int:
    from mmpost.flags import config_from_args
    from streaming.engine import StreamConfig

    cfg = config_from_args(StreamConfig, args)
    if args.web:
        from streaming.web import serve_demo

        serve_demo(args.source, args.model, cfg, host=args.host, port=args.port)
        return 0
    from streaming.demo import run_stream

    run_stream(args.source, args.model, cfg, jsonl=args.jsonl, vtt=args.vtt, max_seconds=args.max_seconds)
    return 0
