"""The HTTP tool-call API (``mmpost serve``): OpenAI's chat-completions protocol over the ViRC
tool loop, direct tool calls, and tool schemas. See docs/api.md.

    POST /v1/chat/completions   OpenAI chat request (images as data URLs) -> completion (or SSE chunks)
    POST /v1/tools/{name}       {"images": [data URL, ...], "arguments": {...}} -> one tool result
    GET  /v1/tools              the tool schemas
    GET  /v1/models             the served model
    GET  /health                liveness and scheduler counters (queued, running, cancelled, ...)

Requests are parsed into :class:`~vision_tools.openai_schema.ChatRequest` and run by the
:class:`~vision_tools.scheduler.Scheduler` (continuous batching on one worker thread). Every
error is OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}`` with a proper status; images come only as data
URLs or from the folders named at start-up, and nothing is fetched from the network. SIGTERM and
SIGINT answer in-flight requests with 503 and stop the server within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

from vision_tools.engine import Trajectory
from vision_tools.openai_response import ChunkWriter, TokenText, completion
from vision_tools.openai_schema import parse_chat
from vision_tools.request_images import ApiError, data_url, load_request_image
from vision_tools.scheduler import Job, Scheduler
from vision_tools.serve_config import ServeConfig
from vision_tools.tools import ToolContext, ToolError, as_toolset

__all__ = ["ApiError", "ServeConfig", "create_app", "load_request_image", "serve"]

POLL_S = 0.2  # how often a waiting request checks its client and deadline


def disconnected() -> ApiError:
    return ApiError(499, "client_disconnected", "the client closed the connection")


# ----------------------------------------------------------------------------- request bodies


async def json_body(request, cfg: ServeConfig) -> dict:
    """The request's JSON object: 413 over ``max_body_bytes`` (the body is still read, up to 8x the
    limit, so the client receives the answer rather than a reset), 400 if malformed or nested
    deeper than ``max_json_depth``."""
    limit = cfg.max_body_bytes
    size = request.headers.get("content-length")
    too_large = ApiError(413, "body_too_large", f"request body over {limit} bytes", {"Connection": "close"})
    if size is not None and size.isdigit() and int(size) > 8 * limit:
        raise too_large
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > 8 * limit:
            break
        if n <= limit:
            chunks.append(chunk)
    if n > limit:
        raise too_large
    try:
        body = json.loads(b"".join(chunks))
    except RecursionError as e:
        raise ApiError(400, "too_deep", f"JSON nested deeper than {cfg.max_json_depth} levels") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_json", f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    if json_depth(body) > cfg.max_json_depth:
        raise ApiError(400, "too_deep", f"JSON nested deeper than {cfg.max_json_depth} levels")
    return body


def json_depth(obj) -> int:
    """Nesting depth of parsed JSON (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


# ----------------------------------------------------------------------------- endpoints


async def health(request) -> dict:
    s = request.app.state
    return {"status": "ok", "model": s.model_name, **s.scheduler.health()}


async def list_models(request) -> dict:
    s = request.app.state
    return {
        "object": "list",
        "data": [{"id": s.model_name, "object": "model", "created": s.created, "owned_by": "mmpost"}],
    }


async def list_tools(request) -> dict:
    return {"tools": [t.schema() for t in request.app.state.toolset.values()]}


async def call_tool(request) -> dict:
    """Run one built-in tool on the images sent (as the model sees them) and return its image."""
    s, name = request.app.state, request.path_params["name"]
    cfg, toolset = s.cfg, s.toolset
    if name not in toolset:
        raise ApiError(404, "unknown_tool", f"no tool {name!r}; available: {', '.join(toolset)}")
    body = await json_body(request, cfg)
    refs = body.get("images")
    if not isinstance(refs, list) or not refs:
        raise ApiError(400, "bad_request", "'images' must be a non-empty list of data URLs (or paths)")
    if len(refs) > cfg.max_images:
        raise ApiError(400, "too_many_images", f"at most {cfg.max_images} images per request")
    coords = body.get("coords", cfg.engine.coords)
    if coords not in ("dynamic", "fixed"):
        raise ApiError(400, "bad_request", "'coords' must be 'dynamic' or 'fixed'")
    v = cfg.engine.visual

    def run_tool():  # coordinates refer to the images as the model would see them (smart_resize)
        images = [load_request_image(r, cfg, f"images[{i}]", v, s.factor) for i, r in enumerate(refs)]
        ctx = ToolContext(
            images=images, coords=coords, min_pixels=v.min_pixels, max_pixels=v.max_pixels, factor=s.factor
        )
        return toolset[name](ctx, body.get("arguments", {}))

    try:
        out = await asyncio.to_thread(run_tool)
    except ToolError as e:
        raise ApiError(422, e.code, e.message) from e
    return {"image": data_url(out), "width": out.width, "height": out.height}


async def chat(request):
    """``/v1/chat/completions``: parse, queue, then answer (JSON) or stream (SSE)."""
    from starlette.responses import StreamingResponse

    s = request.app.state
    body = await json_body(request, s.cfg)
    req = await asyncio.to_thread(parse_chat, body, s.cfg, s.toolset, s.factor)
    job = s.scheduler.submit(req, stream=req.stream)
    if req.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        writer = ChunkWriter(req, s.model_name, s.tokens)
        return StreamingResponse(stream(job, writer), media_type="text/event-stream", headers=headers)
    return completion(await wait_for(job, request), req, s.model_name, tokens=s.tokens)


async def wait_for(job: Job, request) -> list[Trajectory]:
    """The job's trajectories; a client that goes away or a passed deadline cancels the job."""
    while True:
        done, _ = await asyncio.wait({job.result}, timeout=POLL_S)
        if done:
            return job.result.result()
        if job.stopped():  # e.g. its deadline passed while it waited in the queue
            raise job.error
        if await request.is_disconnected():
            job.cancel(disconnected())
            raise job.error


async def stream(job: Job, writer: ChunkWriter):
    """SSE: each committed turn as it comes, then the answer, the finish chunk(s) and [DONE]. A
    client that disconnects cancels the generator, and with it the job."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), POLL_S)
            except TimeoutError:
                if job.stopped():
                    raise job.error from None
                continue
            if event is None:
                break
            yield writer.turn(*event)
        yield writer.finish(job.result.result())
    except ApiError as e:
        yield writer.error(e)
    finally:
        if not job.result.done():  # the client went away mid-stream
            job.cancel(disconnected())


# ----------------------------------------------------------------------------- the app


def error_response(e: ApiError):
    from starlette.responses import JSONResponse

    return JSONResponse(e.body(), status_code=e.status, headers=e.headers or None)


async def on_api_error(request, e: ApiError):
    return error_response(e)


async def on_http_error(request, e):
    code = "not_found" if e.status_code == 404 else "http_error"
    return error_response(ApiError(e.status_code, code, str(e.detail)))


async def on_internal_error(request, e):
    return error_response(ApiError(500, "internal_error", f"{type(e).__name__}: {e}"))


def json_endpoint(fn):
    """A Starlette endpoint from an async function returning a dict (or a Response)."""
    from starlette.responses import JSONResponse, Response

    async def endpoint(request):
        out = await fn(request)
        return out if isinstance(out, Response) else JSONResponse(out)

    return endpoint


def create_app(model, processor, cfg: ServeConfig | None = None, tools=None, model_name: str = "mmpost"):
    """The ASGI app; its scheduler (``app.state.scheduler``) starts its worker thread now."""
    from mm.imports import require
    from mm.models import family_of

    require("fastapi", "the HTTP API")  # the serve extra: FastAPI brings Starlette
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    cfg = cfg or ServeConfig()
    routes = [
        Route("/health", json_endpoint(health), methods=["GET"]),
        Route("/v1/models", json_endpoint(list_models), methods=["GET"]),
        Route("/v1/tools", json_endpoint(list_tools), methods=["GET"]),
        Route("/v1/tools/{name}", json_endpoint(call_tool), methods=["POST"]),
        Route("/v1/chat/completions", json_endpoint(chat), methods=["POST"]),
    ]
    handlers = {ApiError: on_api_error, HTTPException: on_http_error, Exception: on_internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.cfg, app.state.model_name, app.state.created = cfg, model_name, int(time.time())
    app.state.toolset = as_toolset(tools)
    app.state.tokens = TokenText(processor.tokenizer)  # token ids -> log-prob entries
    app.state.factor = family_of(model.config).factor  # images are sized as the model sees them
    app.state.scheduler = Scheduler(model, processor, list(app.state.toolset.values()), cfg)
    return app


def serve(model_name: str, host: str = "127.0.0.1", port: int = 8000, cfg: ServeConfig | None = None) -> None:
    """Load the model and run the API with uvicorn until SIGTERM / SIGINT."""
    from mm.imports import require

    require("uvicorn", "the HTTP API")
    import torch
    import uvicorn

    from mm.loading import load_model

    cfg = cfg or ServeConfig()
    model, processor = load_model(model_name, device="cuda" if torch.cuda.is_available() else None)
    model.eval()
    app = create_app(model, processor, cfg, model_name=model_name)

    class Server(uvicorn.Server):
        signal: int | None = None

        def handle_exit(self, sig, frame):  # answer in-flight requests with 503 and stop generating
            self.signal = sig
            threading.Thread(target=app.state.scheduler.shutdown, daemon=True).start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=cfg.shutdown_timeout
    )
    server = Server(config)
    print(f"mmpost serve: {model_name} on http://{host}:{port}", flush=True)
    try:
        server.run()
    finally:  # the worker stops within a decoding step once everything is cancelled
        app.state.scheduler.thread.join(timeout=cfg.shutdown_timeout)
        app.state.scheduler.generator.close()  # vllm: its server process
        if server.signal is not None:  # skip the interpreter's teardown (seconds with torch loaded)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + server.signal)
