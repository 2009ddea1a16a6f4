"""``mmpost rollout-server MODEL``: a vLLM engine server of its own, for trainers and servers that
name it (``rollout.vllm.address`` / ``--vllm.address``) instead of starting one themselves, e.g.
on GPUs of its own; the policy's weights reach it from the trainer before every rollout."""

from __future__ import annotations

import argparse


def add_rollout_server(p: argparse.ArgumentParser, words) -> None:
    from mmpost.flags import add_config_flags
    from vision_tools.generation.vllm import VLLMConfig

    p.add_argument("model", help="a preset ('small', 'tiny-h32', ...) or a local checkpoint folder")
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)"
    )
    p.add_argument("--port", type=int, default=8100, help="(default %(default)s)")
    add_config_flags(
        p,
        VLLMConfig,
        title="the vLLM engine (VLLMConfig)",
        exclude=("placement", "address", "model_dir", "sleep", "startup_timeout", "log"),
    )
    p.set_defaults(func=cmd_rollout_server)


def cmd_rollout_server(args) -> int:
    import os
    import signal
    import subprocess
    import tempfile

    import torch

    from mmpost.flags import config_from_args
    from vision_tools.generation.vllm import VLLMConfig, engine_command, export

    cfg = config_from_args(VLLMConfig, args)
    cuda = torch.cuda.is_available() or bool(cfg.devices)
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cuda else "float32")
    with tempfile.TemporaryDirectory(prefix="mmpost-vllm-model-") as tmp:
        folder = args.model
        if not os.path.isdir(folder):  # a preset: exported for vLLM as load_model builds it
            from mm import load_model

            model, processor = load_model(folder, dtype=dtype)
            folder = export(model, processor, tmp)
        cmd, env = engine_command(cfg, folder, dtype)
        cmd += ["--host", args.host, "--port", str(args.port), "--parent-pid", str(os.getpid())]
        print(
            f"vLLM engine for {args.model} on {args.host}:{args.port} ({dtype}); Ctrl-C stops it", flush=True
        )
        proc = subprocess.Popen(cmd, env=env)  # it also ends by itself once this process is gone
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            return proc.wait()
