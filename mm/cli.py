"""The ``mmpost`` command: the top floor that dispatches each subcommand lazily.

    mmpost info                       versions and available backends
    mmpost quickstart                 tiny model + bundled sample: validate, encode, forward, loss
    mmpost data validate FILE.jsonl   every problem with its line number and a fix hint
    mmpost data stats FILE.jsonl      counts, token lengths, visual tokens

Heavy imports (torch, transformers) happen inside the handlers, so ``--help`` is instant.
Errors the user can fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys


def _add_visual_args(p: argparse.ArgumentParser) -> None:
    from mm.visual import VisualConfig

    d = VisualConfig()
    g = p.add_argument_group("visual limits")
    g.add_argument(
        "--min-pixels", type=int, default=d.min_pixels, help="per-image minimum pixels (default %(default)s)"
    )
    g.add_argument(
        "--max-pixels", type=int, default=d.max_pixels, help="per-image maximum pixels (default %(default)s)"
    )
    g.add_argument(
        "--max-visual-tokens",
        type=int,
        default=d.max_visual_tokens,
        help="total visual tokens per sample (default %(default)s)",
    )
    g.add_argument(
        "--budget-policy",
        choices=("shrink", "reject"),
        default=d.budget_policy,
        help="over budget: shrink images proportionally, or reject the record (default %(default)s)",
    )


def _visual_config(args):
    from mm.visual import VisualConfig

    return VisualConfig(
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_visual_tokens=args.max_visual_tokens,
        budget_policy=args.budget_policy,
    )


def cmd_info(args) -> int:
    import platform

    import torch

    from mm.attention import choose_backend, flash_attn_usable
    from mm.imports import is_available, version_of

    rows = [
        ("python", platform.python_version()),
        ("mmpost", version_of("mmpost") or "(not installed)"),
        ("torch", torch.__version__),
        ("transformers", version_of("transformers")),
        ("qwen-vl-utils", version_of("qwen-vl-utils")),
        ("tokenizers", version_of("tokenizers")),
    ]
    cuda = torch.cuda.is_available()
    gpus = (
        ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none"
    )
    backends = [
        ("CUDA", f"yes ({gpus})" if cuda else "no"),
        ("flash-attn", _avail(is_available("flash_attn"), version_of("flash-attn"), "mmpost[cuda]")),
        ("deepspeed", _avail(is_available("deepspeed"), version_of("deepspeed"), "mmpost[deepspeed]")),
        ("peft (LoRA)", _avail(is_available("peft"), version_of("peft"), "mmpost[lora]")),
        ("decord", _avail(is_available("decord"), version_of("decord"), "mmpost[video]")),
        ("opencv", _avail(is_available("cv2"), version_of("opencv-python-headless"), "mmpost[video]")),
        (
            "attention",
            f"{choose_backend('auto')} (flash-attn usable: {'yes' if flash_attn_usable() else 'no'})",
        ),
    ]
    width = max(len(k) for k, _ in rows + backends)
    print("versions")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    print("backends")
    for k, v in backends:
        print(f"  {k.ljust(width)}  {v}")
    return 0


def _avail(ok: bool, version: str | None, extra: str) -> str:
    return f"yes ({version})" if ok else f"no (pip install '{extra}')"


def cmd_validate(args) -> int:
    from mm.data_cli import run_validate

    return run_validate(args.file, _visual_config(args))


def cmd_stats(args) -> int:
    from mm.data_cli import run_stats

    return run_stats(args.file, _load_processor(args.model), _visual_config(args))


def _load_processor(name: str):
    if name in ("tiny", "small"):
        from mm.tiny import tiny_processor

        return tiny_processor()
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name, local_files_only=True)


def cmd_quickstart(args) -> int:
    from mm.quickstart import quickstart

    return quickstart(args.model, args.record)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmpost", description="Post-training for Qwen2.5-VL vision-language(-action) models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions and available backends (flash-attn, deepspeed, decord, CUDA)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "quickstart", help="tiny model + bundled sample record: validate, encode, forward pass, loss"
    )
    p.add_argument(
        "--model", default="tiny", help="'tiny', 'small' or a local checkpoint folder (default %(default)s)"
    )
    p.add_argument("--record", type=int, default=0, help="which sample record to run (default %(default)s)")
    p.set_defaults(func=cmd_quickstart)

    data = sub.add_parser("data", help="check and describe data files")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser(
        "validate", help="check every line; print each problem with its line number and a fix"
    )
    p.add_argument("file", help="JSONL file in the mmpost data format")
    _add_visual_args(p)
    p.set_defaults(func=cmd_validate)
    p = dsub.add_parser("stats", help="counts, token lengths and visual tokens as a table")
    p.add_argument("file", help="JSONL file in the mmpost data format")
    p.add_argument(
        "--model", default="tiny", help="processor to count tokens with: 'tiny' or a local checkpoint folder"
    )
    _add_visual_args(p)
    p.set_defaults(func=cmd_stats)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if argv is None and len(sys.argv) <= 1 else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"mmpost {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
