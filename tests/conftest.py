"""Shared fixtures: the tiny model and processor (built once per session), image helpers, and
the per-family fixtures that run a test once per model family: ``preset`` is each family's tiny
preset, ``family_model`` its (model, processor), ``family_encoder`` its encoder with the model's
own M-RoPE rule. The Qwen2.5-VL instances are the session's ``tiny`` and ``encoder``."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from PIL import Image

from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.models import family_of
from mm.rope import RopeSpec
from mm.visual import VisualConfig


@pytest.fixture(scope="session")
def tiny():
    model, processor = load_model("tiny", attn="sdpa")
    return model.eval(), processor


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """A small generated CRU data set (train and test files)."""
    from vision_tools.crux import write_synth

    return write_synth(str(tmp_path_factory.mktemp("synth")), n_train=24, n_test=6, seed=1)


@pytest.fixture(scope="session")
def encoder(tiny):
    model, processor = tiny
    return ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))


FAMILIES = ["tiny", "tiny-qwen3vl"]  # one tiny preset per family: Qwen2.5-VL, Qwen3-VL


@pytest.fixture(scope="session", params=FAMILIES)
def preset(request) -> str:
    return request.param


@cache
def _load(preset: str):
    model, processor = load_model(preset, attn="sdpa")
    return model.eval(), processor


@pytest.fixture(scope="session")
def family_model(request, preset):
    if preset == "tiny":
        return request.getfixturevalue("tiny")
    return _load(preset)


@pytest.fixture(scope="session")
def qwen3vl():
    """The tiny Qwen3-VL (model, processor), for tests of what only Qwen3-VL does."""
    return _load("tiny-qwen3vl")


@pytest.fixture(scope="session")
def family(family_model):
    return family_of(family_model[0].config)


@pytest.fixture(scope="session")
def family_encoder(request, preset, family_model):
    if preset == "tiny":
        return request.getfixturevalue("encoder")
    model, processor = family_model
    return ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))


def qwen3_5_model(full_attention_only: bool = False):
    """A tiny Qwen3.5 (one Gated DeltaNet and one full-attention layer; no preset builds one) and
    the Qwen3-VL processor it reads; ``full_attention_only``: both layers full attention."""
    from mm.models import family_named
    from mm.tiny import PRESETS, tiny_processor

    f = family_named("qwen3_5")
    processor = tiny_processor("qwen3_vl")  # Qwen3.5 reads Qwen3-VL's processor; the tokens are Qwen3's
    config = f.tiny_config(processor.tokenizer, PRESETS["tiny"])
    if full_attention_only:
        config.text_config.layer_types = ["full_attention"] * len(config.text_config.layer_types)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = f.model_class("qwen3_5")(config).eval()
    return model, processor


DIST_VARS = ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def subprocess_env(**extra: str) -> dict:
    """os.environ without the distributed variables in-process training runs leave behind."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(extra)
    return env


# the decoding backends the `mmpost serve` test servers run on, and the model each serves (vllm:
# tiny-h32, as vLLM-CPU runs no head size 16; skipped without the vLLM environment)
SERVE_ENGINES = ["cached", pytest.param("vllm", marks=pytest.mark.slow)]
SERVED = {"cached": "tiny", "vllm": "tiny-h32"}


@pytest.fixture(scope="module", params=SERVE_ENGINES)
def serve_engine(request) -> str:
    if request.param == "vllm":
        from tests.vllm_utils import vllm_python_or_skip

        vllm_python_or_skip()
    return request.param


def serving(engine: str, model: str | None = None) -> list[str]:
    """The `mmpost serve` flags choosing a test server's model (default: the engine's) and backend."""
    flags = ["--model", model or SERVED[engine]]
    if engine == "vllm":
        flags += ["--engine", "vllm", "--vllm.kv-cache-gib", "1"]
    return flags


def start_server(cmd: list[str], url: str, timeout: float = 300):
    """Start ``cmd`` and wait until ``url`` answers 200; fail with its output if it exits first."""
    import subprocess
    import time

    import httpx

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=subprocess_env())
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{cmd[3]} exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{url} did not answer within {timeout:.0f} s")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list[str]:
    """The start of a command running a script or module on ``nproc`` local processes."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
    ]


def reply_chat(handler, content: str) -> None:
    """Answer an http.server request as an OpenAI chat completion whose message is ``content``
    (the fake judges of the reward, ViRC and benchmark tests)."""
    import json

    out = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(out)))
    handler.end_headers()
    handler.wfile.write(out)


def solid(w: int, h: int, color=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", (w, h), color)
    # a gradient so different crops/sizes give different features
    px = img.load()
    for x in range(0, w, 3):
        for y in range(0, h, 3):
            px[x, y] = ((x * 7) % 256, (y * 5) % 256, (x + y) % 256)
    return img


def user_assistant(content: list | str, answer: str) -> list[dict]:
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


def tiny_qwen2_vl_config(like):
    """A toy Qwen2-VL config sharing the tiny tokenizer's special-token ids (from ``like``)."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=like.text_config.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, spatial_merge_size=2
        ),
        image_token_id=like.image_token_id,
        video_token_id=like.video_token_id,
        vision_start_token_id=like.vision_start_token_id,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
