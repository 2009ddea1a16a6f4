"""``mmpost stream VIDEO --web``: a page on 127.0.0.1 that plays the video with live captions.

    GET  /         the page: the video, the current caption, a latency and cache-size readout
    GET  /video    the video file given on the command line (nothing else is served)
    GET  /events   server-sent events: one ``segment`` per second of video, then ``summary``
    POST /report   the page posts what it received and when (the browser test reads it back)
    GET  /report   the last report

When the video starts playing the page opens ``/events``; the server then runs the engine over
the file paced to the wall clock, so captions arrive while their second plays. One stream runs
at a time (the model is shared); a second viewer is told so (a ``failure`` event) until the first ends.
"""

import json
import mimetypes
import os
import threading
from dataclasses import replace

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>mmpost stream</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; background: #111; color: #eee; }
video { max-width: 640px; width: 100%; background: #000; }
#caption { font-size: 1.4rem; min-height: 2em; margin: .6rem 0; }
#stats { color: #9ab; font-size: .9rem; }
#log { font-size: .85rem; color: #bbb; max-height: 40vh; overflow: auto; }
</style></head>
<body>
<h3>mmpost · live commentary</h3>
<video id="video" src="/video" muted autoplay playsinline controls></video>
<div id="caption">…</div>
<div id="stats">second <span id="sec">-</span> · latency <span id="lat">-</span> ms · cache
<span id="cache">-</span> tokens · <span id="state">waiting for playback</span></div>
<ol id="log"></ol>
<script>
const video = document.getElementById("video");
const got = [];
let started = false;
function start() {
  if (started) return;
  started = true;
  document.getElementById("state").textContent = "streaming";
  const events = new EventSource("/events");
  events.addEventListener("segment", (e) => {
    const s = JSON.parse(e.data);
    got.push({start: s.start, end: s.end, text: s.text, latency_ms: s.latency_ms,
              cache_tokens: s.cache_tokens, video_time: video.currentTime});
    document.getElementById("sec").textContent = s.start.toFixed(0);
    document.getElementById("lat").textContent = s.latency_ms.toFixed(0);
    document.getElementById("cache").textContent = s.cache_tokens;
    if (s.text) {
      document.getElementById("caption").textContent = s.text;
      const li = document.createElement("li");
      li.textContent = `[${s.start.toFixed(0)}s] ${s.text}`;
      document.getElementById("log").appendChild(li);
    }
  });
  events.addEventListener("failure", (e) => {
    events.close();
    document.getElementById("state").textContent = "failed: " + JSON.parse(e.data).message;
  });
  events.addEventListener("summary", (e) => {
    events.close();
    document.getElementById("state").textContent = "done";
    fetch("/report", {method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({segments: got, summary: JSON.parse(e.data), video_paused: video.paused})});
  });
}
video.addEventListener("playing", start);
setTimeout(start, 3000);  // autoplay refused: stream anyway
</script></body></html>
"""


def create_demo_app(video_path: str, model, processor, config):
    from mm.imports import require

    require("fastapi", "the web demo")
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

    from streaming.engine import StreamingEngine
    from streaming.sources import open_source

    path = os.path.realpath(video_path)
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    app = FastAPI(title="mmpost stream demo")
    lock = threading.Lock()
    reports: list[dict] = []  # only the last one is kept

    @app.get("/")
    def page():
        return HTMLResponse(PAGE)

    @app.get("/video")
    def video():
        return FileResponse(path, media_type=media)

    @app.get("/events")
    def events():
        def run():
            if not lock.acquire(blocking=False):  # one stream at a time; nobody waits on a thread
                yield f"event: failure\ndata: {json.dumps({'message': 'a stream is already playing'})}\n\n"
                return
            try:
                engine = StreamingEngine(model, processor, replace(config, realtime=True))
                for seg in engine.run(open_source(path, config.fps)):
                    yield f"event: segment\ndata: {json.dumps(seg.to_json())}\n\n"
                yield f"event: summary\ndata: {json.dumps(engine.summary.to_json())}\n\n"
            except Exception as e:  # tell the page (which then stops), keep the server
                yield f"event: failure\ndata: {json.dumps({'message': f'{type(e).__name__}: {e}'})}\n\n"
            finally:
                lock.release()

        return StreamingResponse(run(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.post("/report")
    async def post_report(request: Request):
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > 2**20:
                return JSONResponse(
                    {"error": {"code": "body_too_large", "message": "report over 1 MiB"}}, 413
                )
        try:
            reports[:] = [json.loads(raw)]
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": {"code": "bad_json", "message": "the report is not JSON"}}, 400)
        return {"ok": True}

    @app.get("/report")
    def get_report():
        if not reports:
            return JSONResponse({"error": {"code": "no_report", "message": "no report yet"}}, 404)
        return reports[-1]

    return app


def serve_demo(video_path: str, model_name: str, config, host: str = "127.0.0.1", port: int = 8010) -> None:
    import torch

    from mm.imports import require
    from mm.loading import load_model
    from streaming.sources import open_source

    require("uvicorn", "the web demo")
    import uvicorn

    if not os.path.isfile(video_path):
        raise FileNotFoundError(f"{video_path}: --web plays a video file")
    open_source(video_path, config.fps)  # a clear error now rather than in the browser
    model, processor = load_model(model_name, device="cuda" if torch.cuda.is_available() else None)
    model.eval()
    app = create_demo_app(video_path, model, processor, config)
    print(f"mmpost stream: open http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
