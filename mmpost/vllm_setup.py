"""``mmpost vllm-setup``: the vLLM environment the ``vllm`` generator runs in
(``vision_tools.generation.vllm_setup``)."""

from __future__ import annotations

import argparse


def add_vllm_setup(p: argparse.ArgumentParser, words) -> None:
    from vision_tools.generation.vllm_setup import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_vllm_setup)


def cmd_vllm_setup(args) -> int:
    from vision_tools.generation.vllm_setup import setup

    setup(args.venv, args.device, args.version, args.python)
    return 0
