"""The HTTP tool-call API (``mmpost serve``): an OpenAI-style chat endpoint that runs the tool
loop server-side, direct tool calls, and tool schemas. See docs/api.md.

    POST /v1/chat/completions   messages with images as data: URLs -> answer + trajectory
    POST /v1/tools/{name}       {"images": [data URL, ...], "arguments": {...}} -> one tool result
    GET  /v1/tools              the tool schemas
    GET  /health                liveness, model name, queue length

Concurrent chat requests are collected for a few milliseconds and run through the engine as one
batch (requests with the same generation options share a run). The model is used by one worker
thread only. Every error is JSON ``{"error": {"code", "message"}}`` with a proper status; images
come only as data URLs or from the folders named at start-up (paths that leave them are
refused), and nothing is fetched from the network.
"""

import asyncio
import base64
import io
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

from PIL import Image

from mm.visual import VisualConfig, VisualError, open_image
from vision_tools.api import build_prompt, engine_config, shown_image
from vision_tools.engine import EngineConfig, ToolEngine, Trajectory
from vision_tools.protocol import system_prompt
from vision_tools.tools import ToolContext, ToolError, as_toolset


@dataclass
class ServeConfig:
    image_dirs: list[str] = field(default_factory=list)  # folders images may be read from by path
    max_body_bytes: int = 32 * 2**20
    max_image_bytes: int = 16 * 2**20  # per decoded image file
    max_image_pixels: int = 8192 * 8192  # refuse larger images (decompression bombs)
    max_images: int = 8  # per request
    max_turns: int = 16  # upper bound a request may ask for
    max_turn_tokens: int = 1024  # upper bound of a request's max_tokens (per turn)
    max_batch: int = 16  # conversations per engine run
    batch_wait_ms: float = 20.0  # how long the worker waits for more requests to batch
    engine: EngineConfig = field(default_factory=EngineConfig)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ----------------------------------------------------------------------------- images


def _data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load_request_image(ref, cfg: ServeConfig, where: str, visual: VisualConfig | None = None) -> Image.Image:
    """A data URL, or a path inside one of ``cfg.image_dirs``; anything else is refused. With
    ``visual``, the image comes back as the model would see it (smart_resize under its limits)."""
    if isinstance(ref, dict):  # OpenAI: {"url": ...}
        ref = ref.get("url")
    if not isinstance(ref, str) or not ref:
        raise ApiError(400, "bad_image", f"{where}: an image must be a data URL or a path string")
    if ref.startswith(("http://", "https://", "ftp://")):
        raise ApiError(400, "remote_url", f"{where}: the server does not fetch URLs; send a data: URL")
    if ref.startswith("data:"):
        if not ref.startswith("data:image/") or ";base64," not in ref:
            raise ApiError(400, "bad_image", f"{where}: use data:image/<type>;base64,<payload>")
        if len(ref) * 3 // 4 > cfg.max_image_bytes:
            raise ApiError(413, "image_too_large", f"{where}: image over {cfg.max_image_bytes} bytes")
        src = ref
    else:
        src = _safe_path(ref[7:] if ref.startswith("file://") else ref, cfg, where)
        if os.path.getsize(src) > cfg.max_image_bytes:
            raise ApiError(413, "image_too_large", f"{where}: image over {cfg.max_image_bytes} bytes")
    try:
        img = open_image(src)
        if img.width * img.height > cfg.max_image_pixels:
            raise ApiError(
                413,
                "image_too_large",
                f"{where}: {img.width} x {img.height} pixels exceed {cfg.max_image_pixels}",
            )
        img.load()
        img = img.convert("RGB")
        return shown_image(img, visual) if visual is not None else img
    except VisualError as e:
        raise ApiError(400, "bad_image", f"{where}: {e.message}") from e
    except Image.DecompressionBombError as e:
        raise ApiError(413, "image_too_large", f"{where}: {e}") from e


def _safe_path(path: str, cfg: ServeConfig, where: str) -> str:
    if not cfg.image_dirs:
        raise ApiError(
            403, "path_refused", f"{where}: this server reads no files (start it with --image-dir)"
        )
    inside = False
    for root in cfg.image_dirs:
        try:
            root = os.path.realpath(root)
            full = os.path.realpath(os.path.join(root, path))
        except (ValueError, OSError) as e:  # e.g. a NUL byte
            raise ApiError(400, "bad_image", f"{where}: invalid path") from e
        if os.path.commonpath([root, full]) != root:
            continue
        inside = True
        if os.path.isfile(full):
            return full
    if inside:
        raise ApiError(404, "missing_image", f"{where}: no file {path!r} in the image folder(s)")
    raise ApiError(403, "path_refused", f"{where}: {path!r} is outside the image folder(s)")


# ----------------------------------------------------------------------------- requests


def parse_chat(body: dict, cfg: ServeConfig, tools) -> tuple[list[dict], str, EngineConfig]:
    """An OpenAI chat request -> (the ViRC prompt, the question, engine options). Raises ApiError."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "bad_request", "'messages' must be a non-empty list")
    system, images, texts = None, [], []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user"):
            raise ApiError(
                400,
                "bad_request",
                f"messages[{i}]: send system and user messages (the server runs the turns)",
            )
        content = m.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(items, list):
            raise ApiError(400, "bad_request", f"messages[{i}].content must be a string or a list")
        for j, it in enumerate(items):
            kind = it.get("type") if isinstance(it, dict) else None
            where = f"messages[{i}].content[{j}]"
            if kind == "text" and isinstance(it.get("text"), str) and m["role"] == "user":
                texts.append(it["text"])
            elif kind == "text" and isinstance(it.get("text"), str):
                system = it["text"]
            elif kind in ("image_url", "image") and m["role"] == "user":
                images.append((it.get("image_url", it.get("image")), where))
            else:
                raise ApiError(400, "bad_request", f"{where}: expected a text or image_url item")
    if len(images) != 1:
        raise ApiError(400, "bad_request", f"send exactly one image with the question (got {len(images)})")
    question = "\n".join(texts).strip()
    if not question:
        raise ApiError(400, "bad_request", "the user message has no question text")
    gen = _options(body, cfg)
    econf = engine_config(cfg.engine, **gen)
    ref, where = images[0]
    image = load_request_image(ref, cfg, where, econf.visual)
    prompt = build_prompt(image, question, tools, econf.coords)
    if system is not None:  # the client's system text, with the tool declarations appended
        prompt[0]["content"] = system_prompt(tools, preamble=system)
    return prompt, question, econf


def _options(body: dict, cfg: ServeConfig) -> dict:
    out = {}
    spec = {
        "max_tokens": ("max_turn_tokens", int, 1, cfg.max_turn_tokens),
        "max_turns": ("max_turns", int, 1, cfg.max_turns),
        "temperature": ("temperature", float, 0.0, 2.0),
        "top_p": ("top_p", float, 0.0, 1.0),
        "top_k": ("top_k", int, 0, 1000),
        "max_resamples": ("max_resamples", int, 0, 8),
    }
    for key, (name, tp, lo, hi) in spec.items():
        v = body.get(key)
        if v is None:
            continue
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or (tp is int and v != int(v))
            or not lo <= v <= hi
        ):
            raise ApiError(400, "bad_request", f"'{key}' must be a {tp.__name__} in [{lo}, {hi}], got {v!r}")
        out[name] = tp(v)
    if "temperature" in out:
        out["do_sample"] = out["temperature"] > 0
        out["temperature"] = out["temperature"] or 1.0
    return out


def trajectory_json(t: Trajectory, include_images: bool = True) -> dict:
    turns = []
    for r in t.turns:
        call = getattr(r.parsed, "call", None)
        turns.append(
            {
                "text": r.text,
                "kind": r.parsed.kind if r.parsed.ok else "violation",
                "tool_call": {"name": call.name, "arguments": call.arguments} if call else None,
                "violation": None if r.parsed.ok else {"code": r.parsed.code, "message": r.parsed.message},
                "image_index": r.image_index,
                "error": r.error,
                "attempts": r.attempts,
                "tokens": r.span[1] - r.span[0],
                "seconds": round(r.seconds, 4),
            }
        )
    out = {
        "finish_reason": t.finish_reason,
        "answer": t.answer,
        "turns": turns,
        "violations": t.violations,
        "prompt_tokens": t.prompt_length,
        "generated_tokens": t.generated_tokens,
        "total_tokens": int(t.input_ids.numel()),
    }
    if include_images:
        out["images"] = [
            {"index": k, "width": im.width, "height": im.height, "url": _data_url(im)}
            for k, im in enumerate(t.images)
            if k
        ]
    return out


# ----------------------------------------------------------------------------- batching worker


class Batcher:
    """One thread owns the model: it takes queued conversations, groups those with the same
    options, and runs each group through the engine as one batch."""

    def __init__(self, model, processor, tools, cfg: ServeConfig):
        self.model, self.processor, self.tools, self.cfg = model, processor, tools, cfg
        self.queue: queue.Queue = queue.Queue()
        self.batches = 0
        threading.Thread(target=self._loop, daemon=True, name="mmpost-engine").start()

    async def submit(self, prompt: list[dict], question: str, econf: EngineConfig) -> Trajectory:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.queue.put((prompt, question, econf, loop, fut))
        return await fut

    def _loop(self) -> None:
        while True:
            items = [self.queue.get()]
            deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
            while len(items) < self.cfg.max_batch:
                try:
                    items.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[str, list] = {}
            for it in items:
                groups.setdefault(repr(it[2]), []).append(it)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list) -> None:
        self.batches += 1
        try:
            engine = ToolEngine(self.model, self.processor, self.tools, group[0][2])
            results = engine.run([it[0] for it in group], questions=[it[1] for it in group])
        except Exception as e:  # never let one bad batch kill the worker
            results = [e] * len(group)
        for (_, _, _, loop, fut), r in zip(group, results):
            loop.call_soon_threadsafe(_resolve, fut, r)


def _resolve(fut: asyncio.Future, result) -> None:
    if fut.done():
        return
    if isinstance(result, Exception):
        fut.set_exception(result)
    else:
        fut.set_result(result)


# ----------------------------------------------------------------------------- the app


def create_app(model, processor, cfg: ServeConfig | None = None, tools=None, model_name: str = "mmpost"):
    from mm.imports import require

    require("fastapi", "the HTTP API")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    cfg = cfg or ServeConfig()
    toolset = as_toolset(tools)
    batcher = Batcher(model, processor, list(toolset.values()), cfg)
    app = FastAPI(title="mmpost tool-call API", version="0.1")

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error(e.status, e.code, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return error(e.status_code, "not_found" if e.status_code == 404 else "http_error", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return error(400, "bad_request", str(e.errors()[:3]))

    @app.exception_handler(Exception)
    async def _internal(request, e):
        return error(500, "internal_error", f"{type(e).__name__}: {e}")

    async def json_body(request: Request) -> dict:
        too_large = ApiError(413, "body_too_large", f"request body over {cfg.max_body_bytes} bytes")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_body_bytes:
            raise too_large
        chunks, n = [], 0
        async for chunk in request.stream():  # stop reading as soon as the limit is passed
            n += len(chunk)
            if n > cfg.max_body_bytes:
                raise too_large
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, "bad_json", f"the request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the request body must be a JSON object")
        return body

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": model_name,
            "queued": batcher.queue.qsize(),
            "batches": batcher.batches,
        }

    @app.get("/v1/tools")
    async def list_tools():
        return {"tools": [t.schema() for t in toolset.values()]}

    @app.post("/v1/tools/{name}")
    async def call_tool(name: str, request: Request):
        if name not in toolset:
            raise ApiError(404, "unknown_tool", f"no tool {name!r}; available: {', '.join(toolset)}")
        body = await json_body(request)
        refs = body.get("images")
        if not isinstance(refs, list) or not refs:
            raise ApiError(400, "bad_request", "'images' must be a non-empty list of data URLs (or paths)")
        if len(refs) > cfg.max_images:
            raise ApiError(400, "too_many_images", f"at most {cfg.max_images} images per request")
        coords = body.get("coords", cfg.engine.coords)
        if coords not in ("dynamic", "fixed"):
            raise ApiError(400, "bad_request", "'coords' must be 'dynamic' or 'fixed'")
        v = cfg.engine.visual

        def run_tool():
            # coordinates refer to the images as the model would see them (smart_resize)
            images = [load_request_image(r, cfg, f"images[{i}]", v) for i, r in enumerate(refs)]
            ctx = ToolContext(images=images, coords=coords, min_pixels=v.min_pixels, max_pixels=v.max_pixels)
            return toolset[name](ctx, body.get("arguments", {}))

        try:
            out = await asyncio.to_thread(run_tool)
        except ToolError as e:
            raise ApiError(422, e.code, e.message) from e
        return {"image": _data_url(out), "width": out.width, "height": out.height}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await json_body(request)
        prompt, question, econf = await asyncio.to_thread(parse_chat, body, cfg, list(toolset.values()))
        traj = await batcher.submit(prompt, question, econf)
        last = traj.turns[-1].text if traj.turns else ""
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": traj.answer if traj.answer is not None else last,
                    },
                    "finish_reason": "stop" if traj.finish_reason == "answer" else "length",
                }
            ],
            "usage": {
                "prompt_tokens": traj.prompt_length,
                "completion_tokens": traj.generated_tokens,
                "total_tokens": int(traj.input_ids.numel()),
            },
            "trajectory": trajectory_json(traj, include_images=body.get("include_images", True) is not False),
        }

    return app


def serve(model_name: str, host: str = "127.0.0.1", port: int = 8000, cfg: ServeConfig | None = None) -> None:
    """Load the model and run the API with uvicorn until interrupted."""
    from mm.imports import require

    require("uvicorn", "the HTTP API")
    import torch
    import uvicorn

    from mm.loading import load_model

    model, processor = load_model(model_name, device="cuda" if torch.cuda.is_available() else None)
    model.eval()
    app = create_app(model, processor, cfg, model_name=model_name)
    print(f"mmpost serve: {model_name} on http://{host}:{port} (docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
