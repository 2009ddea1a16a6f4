"""``mmpost stream``: live commentary in the terminal, as JSON lines, as WebVTT, or in a browser.

mmpost stream video.mp4 --model tiny --query "Commentate on this match"
mmpost stream video.mp4 --jsonl > segments.jsonl      # one {"type": "segment", ...} per second
mmpost stream video.mp4 --vtt captions.vtt            # WebVTT cues, written as they come
mmpost stream camera:0                                # a live source, paced to the wall clock
mmpost stream video.mp4 --web                         # the browser demo on 127.0.0.1
"""

from __future__ import annotations

import json
import sys

from streaming.engine import Segment, StreamConfig, StreamingEngine


def vtt_time(t: float) -> str:
    ms = round(t * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def vtt_cue(seg: Segment) -> str:
    text = " ".join(seg.text.replace("-->", "->").split())  # one line; no cue-timing arrows
    return f"{vtt_time(seg.start)} --> {vtt_time(seg.end)}\n{text}\n\n"


def run_stream(
    source_spec: str,
    model_name: str = "tiny",
    config: StreamConfig | None = None,
    jsonl: bool = False,
    vtt: str | None = None,
    max_seconds: int | None = None,
    out=None,
) -> dict:
    """Stream ``source_spec`` through the model; returns the summary."""
    import torch

    from mm.loading import load_model
    from streaming.sources import open_source

    out = out or sys.stdout
    cfg = config or StreamConfig()
    source = open_source(source_spec, cfg.fps)
    model, processor = load_model(model_name, device="cuda" if torch.cuda.is_available() else None)
    model.eval()
    engine = StreamingEngine(model, processor, cfg)
    vtt_file = open(vtt, "w") if vtt else None
    if vtt_file:
        vtt_file.write("WEBVTT\n\n")
    live_text = not jsonl and out.isatty() if hasattr(out, "isatty") else False
    try:
        for seg in engine.run(
            source, on_token=(lambda t: out.write(t) or out.flush()) if live_text else None
        ):
            if jsonl:
                out.write(json.dumps(seg.to_json()) + "\n")
            elif live_text:
                out.write(f"  [{seg.latency_ms:.0f} ms]\n" if seg.text else "\r")
            elif seg.text:
                out.write(f"[{vtt_time(seg.start)[3:]}] {seg.text}\n")
            if seg.skipped:
                print(f"(fell behind: skipped {seg.skipped} s)", file=sys.stderr)
            out.flush()
            if vtt_file and seg.text:
                vtt_file.write(vtt_cue(seg))
                vtt_file.flush()
            if max_seconds and engine.summary.seconds >= max_seconds:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if vtt_file:
            vtt_file.close()
    summary = engine.summary.to_json()
    if jsonl:
        out.write(json.dumps(summary) + "\n")
    else:
        print(
            f"{summary['seconds']} s streamed ({summary['skipped_seconds']} skipped), latency per second "
            f"mean {summary['latency_ms_mean']:.0f} ms, p95 {summary['latency_ms_p95']:.0f} ms, "
            f"cache {summary['cache_tokens']} tokens (max {summary['max_cache_tokens']})",
            file=sys.stderr,
        )
    return summary
