"""`mmpost stream` output: JSON lines, WebVTT and the summary."""

import io
import json

from streaming.demo import run_stream, vtt_cue, vtt_time
from streaming.engine import Segment, StreamConfig


def test_jsonl_and_vtt(tmp_path):
    out, vtt = io.StringIO(), tmp_path / "c.vtt"
    summary = run_stream(
        "synthetic:4", "tiny", StreamConfig(seed=0, max_new_tokens=5), jsonl=True, vtt=str(vtt), out=out
    )
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    segs = [ln for ln in lines if ln["type"] == "segment"]
    assert [(s["start"], s["end"]) for s in segs] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert lines[-1] == {**summary, "type": "summary"} and summary["seconds"] == 4
    assert all(s["latency_ms"] > 0 and s["cache_tokens"] > 0 for s in segs)
    text = vtt.read_text()
    assert text.startswith("WEBVTT\n\n")
    spoken = [s for s in segs if s["text"]]
    assert text.count(" --> ") == len(spoken)
    for s in spoken:
        assert f"{vtt_time(s['start'])} --> {vtt_time(s['end'])}\n" in text


def test_vtt_formatting():
    assert vtt_time(3725.5) == "01:02:05.500"
    seg = Segment(1.0, 2.0, "a --> b\nc", "", 1.0, 10, 3)
    assert vtt_cue(seg) == "00:00:01.000 --> 00:00:02.000\na -> b c\n\n"


def test_max_seconds_stops_an_endless_source():
    out = io.StringIO()
    summary = run_stream(
        "synthetic", "tiny", StreamConfig(seed=0, max_new_tokens=2), jsonl=True, max_seconds=3, out=out
    )
    assert summary["seconds"] == 3
