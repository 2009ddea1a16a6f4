"""The HTTP API under abuse and load, as a real server process: body and JSON limits, a bounded
queue, deadlines, clients that go away, and SIGTERM / SIGINT on a busy server."""

import signal
import sys
import threading
import time

import pytest

from tests.conftest import free_port, serving, start_server
from tests.vision_tools.openai_schemas import error_code

httpx = pytest.importorskip("httpx", reason="httpx is in the dev extra")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

# a request that keeps the tiny model busy for far longer than any test waits: 16 turns of up to
# 1024 tokens, each violating turn resampled 4 times
LONG = {"messages": [{"role": "user", "content": "Count to a million."}], "max_tokens": 1024, "max_turns": 16}


def launch(engine: str, *flags: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpost", "serve", *serving(engine), "--port", str(port), *flags]
    return start_server(cmd, url + "/health"), url


@pytest.fixture(scope="module")
def server(serve_engine):
    flags = ("--max-body-mb", "1", "--max-batch", "1", "--max-queue", "1", "--request-timeout", "6")
    proc, url = launch(serve_engine, *flags)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def wait_until(cond, timeout: float) -> float:
    """Seconds until ``cond()`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - t0


def busy(url: str, n: int) -> bool:
    h = health(url)
    return h["running"] >= 1 and h["running"] + h["queued"] == n


def idle(url: str) -> bool:
    h = health(url)
    return h["running"] == 0 and h["queued"] == 0


@pytest.mark.parametrize("depth", [100, 100_000])
def test_json_nested_too_deep_is_a_bad_request(server, depth):
    body = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    r = httpx.post(
        server + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and error_code(r) == "too_deep"


def test_an_oversized_body_gets_a_413_response(server):
    body = b'{"messages": "' + b"x" * (40 * 2**20) + b'"}'  # 40 MB against a 1 MiB limit
    r = httpx.post(
        server + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    assert health(server)["status"] == "ok"


def test_a_full_queue_answers_429_with_retry_after(server):
    """One slot, one queue place: of three concurrent long requests the third is refused at once."""
    wait_until(lambda: idle(server), 30)
    results = []

    def post():
        try:
            results.append(httpx.post(server + "/v1/chat/completions", json=LONG, timeout=30))
        except httpx.HTTPError as e:
            results.append(e)

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.5)  # in order: running, waiting, refused
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [429, 504, 504]  # the other two hit the 6 s deadline
    refused = next(r for r in results if r.status_code == 429)
    assert error_code(refused) == "queue_full" and int(refused.headers["retry-after"]) >= 1
    wait_until(lambda: idle(server), 5)


def test_a_request_past_its_deadline_gets_504_and_its_work_stops(server):
    wait_until(lambda: idle(server), 30)
    before = health(server)
    t0 = time.monotonic()
    r = httpx.post(server + "/v1/chat/completions", json=LONG, timeout=60)
    assert r.status_code == 504 and error_code(r) == "request_timeout"
    assert 5.5 < time.monotonic() - t0 < 10
    wait_until(lambda: idle(server), 3)
    after = health(server)
    assert after["timed_out"] == before["timed_out"] + 1 and after["finished"] == before["finished"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_stops_its_work(server, stream):
    wait_until(lambda: idle(server), 30)
    before = health(server)
    # the client gives up after about 1 s and closes the connection: a streaming one mid-stream
    # (its chunks may come faster than any read timeout), a plain one on its read timeout
    if stream:
        t0 = time.monotonic()
        with httpx.stream(
            "POST", server + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=1
        ) as r:
            try:
                for _ in r.iter_bytes():
                    if time.monotonic() - t0 > 1:
                        break
            except httpx.ReadTimeout:
                pass
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server + "/v1/chat/completions", json=LONG, timeout=1)
    seconds = wait_until(lambda: idle(server), 3)  # well before the 6 s deadline
    after = health(server)
    assert after["cancelled"] == before["cancelled"] + 1, (seconds, after)
    assert after["timed_out"] == before["timed_out"] and after["finished"] == before["finished"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_busy_server_quickly(sig, serve_engine):
    proc, url = launch(serve_engine, "--max-batch", "2")
    replies = []

    def post():
        try:
            replies.append(httpx.post(url + "/v1/chat/completions", json=LONG, timeout=60))
        except httpx.HTTPError as e:
            replies.append(e)

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: busy(url, 3), 30)  # (a request arriving mid-turn waits for the turn's end)
        time.sleep(1.0)  # generating
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in threads:
        t.join(timeout=10)
    # every in-flight and queued request was answered with an error, not left hanging
    assert [getattr(r, "status_code", r) for r in replies] == [503] * 3
    assert all(error_code(r) == "shutting_down" for r in replies)
