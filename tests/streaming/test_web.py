"""The browser demo: headless Chromium plays a generated clip; captions arrive in order, on time."""

import subprocess
import sys
import time

import pytest

from mm.synthetic import moving_dot_frames, write_video
from tests.conftest import free_port, start_server
from tests.testing_utils import CHROMIUM, require_chromium

httpx = pytest.importorskip("httpx", reason="httpx is in the dev extra")
pytest.importorskip("fastapi", reason="the serve extra is not installed")


@require_chromium
def test_captions_arrive_in_order_while_their_second_plays(tmp_path):
    clip = write_video(str(tmp_path / "clip.webm"), moving_dot_frames(48, size=112), fps=8)  # 6 s
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpost", "stream", clip, "--web", "--port", str(port), "--seed", "0",
           "--max-new-tokens", "4"]  # fmt: skip
    server = start_server(cmd, url + "/")
    browser = None
    try:
        assert httpx.get(url + "/video").headers["content-type"] == "video/webm"
        browser = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                f"--user-data-dir={tmp_path / 'profile'}",
                url + "/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 90
        while (r := httpx.get(url + "/report")).status_code != 200:
            assert time.time() < deadline, "the page never reported"
            time.sleep(0.5)
        report = r.json()
    finally:
        for p in (browser, server):
            if p is not None:
                p.terminate()
                p.wait(timeout=20)
    segs = report["segments"]
    assert [s["start"] for s in segs] == [float(k) for k in range(6)]  # every second, in order
    assert report["summary"]["seconds"] == 6
    print(segs)
    assert not report["video_paused"] or segs[-1]["video_time"] >= 5  # it played (and may have ended)
    for s in segs:  # each caption arrives while (or just after) its second plays
        assert s["start"] - 0.5 <= s["video_time"] <= s["end"] + 2.0, s
