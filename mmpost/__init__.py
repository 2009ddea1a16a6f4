"""The ``mmpost`` command: the top floor, the one face that imports every other package (lazily).

    mmpost info                       versions and available backends
    mmpost quickstart                 tiny model + bundled sample: validate, encode, forward, loss
    mmpost data COMMAND ...           validate, describe and generate data files (``mmpost data -h``)
    mmpost train CONFIG [k=v ...]     train (SFT, DPO, GRPO, VLA) from a YAML config
    mmpost pipeline PIPELINE.yaml     run training stages in order
    mmpost eval MODEL --data FILE     greedy generation + accuracy (+ --base B --ood F: SPECS GF;
                                      --benchmark NAME: a standard benchmark, its own protocol)
    mmpost eval-policy MODEL --env metaworld:push-v3   closed-loop VLA success rate in MetaWorld
    mmpost serve --model tiny         the HTTP tool-call API on 127.0.0.1:8000
    mmpost stream VIDEO               live commentary (StreamingVLM), terminal / --jsonl / --vtt / --web
    mmpost vllm-setup                 the vLLM environment (.venv-vllm) of the vllm generator
    mmpost rollout-server MODEL       a vLLM engine of its own (rollout.vllm.address)

One module per command group (``info``, ``train``, ``eval``, ``data/``, ``eval_policy``, ``serve``, ``stream``, ``vllm_setup``, ``rollout_server``). Only the
command named on the command line gets its flags, which are generated from the config dataclasses
(``mmpost.flags``), so ``mmpost --help`` imports neither torch nor the configs. Errors the user
can fix (config, data, visual input, missing dependency, missing file) print as one line with exit
status 2; anything else shows its traceback.
"""

from __future__ import annotations

import argparse
import sys

from mm.plugins import import_ref

# command -> ("module:function" that adds its arguments, one-line help)
COMMANDS = {
    "info": ("info:add_info", "versions and available backends (flash-attn, deepspeed, decord, CUDA)"),
    "quickstart": (
        "info:add_quickstart",
        "tiny model + bundled sample record: validate, encode, forward pass, loss",
    ),
    "train": ("train:add_train", "train from a YAML config (SFT, DPO, GRPO, VLA)"),
    "pipeline": (
        "train:add_pipeline",
        "run the stages of a pipeline YAML in order (e.g. ViRC SFT -> SFT -> RL)",
    ),
    "eval": (
        "eval:add_eval",
        "generate answers (greedy, batched; the tool loop for prompts with tools) and report accuracy",
    ),
    "eval-policy": (
        "eval_policy:add_eval_policy",
        "run a VLA (or the scripted expert) in MetaWorld: success rate, Wilson interval, videos",
    ),
    "serve": ("serve:add_serve", "the HTTP tool-call API (chat completions with server-side tool loop)"),
    "stream": ("stream:add_stream", "live commentary on a video, camera or stream (StreamingVLM)"),
    "data": ("data:add_data", "check, describe and generate data files"),
    "rollout-server": (
        "rollout_server:add_rollout_server",
        "a vLLM engine of its own for rollout.vllm.address / serve --vllm.address (mmpost vllm-setup first)",
    ),
    "vllm-setup": (
        "vllm_setup:add_vllm_setup",
        "make the vLLM environment (.venv-vllm) for rollout.generator vllm and serve --engine vllm",
    ),
}


def build_parser(argv: list[str] | tuple = ()) -> argparse.ArgumentParser:
    """The mmpost parser; the command named first in ``argv`` (if any) gets its arguments."""
    parser = argparse.ArgumentParser(
        prog="mmpost",
        description="Post-training for Qwen2.5-VL vision-language(-action) models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    words = [a for a in argv if not a.startswith("-")]
    for name, (ref, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if words[:1] == [name]:
            import_ref(f"{__name__}.{ref}")(p, words[1:])
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's errors whose message says what to fix: shown as one line, no traceback."""
    from mm.config import ConfigError
    from mm.dataset import DataError
    from mm.imports import MissingDependency
    from mm.records import RecordError
    from mm.visual import VisualError

    return (ConfigError, DataError, RecordError, VisualError, MissingDependency, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise  # a bug, an OOM, a shape mismatch: the traceback says where
        where = " ".join(w for w in (args.command, getattr(args, "data_command", None)) if w)
        print(f"mmpost {where}: error: {e}", file=sys.stderr)
        return 2
