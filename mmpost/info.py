"""``mmpost info`` (versions and backends) and ``mmpost quickstart`` (the tiny model end to end)."""

from __future__ import annotations


def add_info(p, words) -> None:
    p.set_defaults(func=cmd_info)


def add_quickstart(p, words) -> None:
    p.add_argument(
        "--model", default="tiny", help="'tiny', 'small' or a local checkpoint folder (default %(default)s)"
    )
    p.add_argument("--record", type=int, default=0, help="which sample record to run (default %(default)s)")
    p.set_defaults(func=cmd_quickstart)


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


def cmd_quickstart(args) -> int:
    from mmpost.quickstart import quickstart

    return quickstart(args.model, args.record)
