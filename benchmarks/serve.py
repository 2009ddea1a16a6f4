"""The HTTP API under concurrent load: request latency p50 / p95 at 1, 20 and 100 concurrent requests.

    python benchmarks/serve.py                         # tiny model, 8 tokens x 2 turns per request
    python benchmarks/serve.py --levels 1 20 --rounds 3 --max-tokens 32 --max-turns 4
    python benchmarks/serve.py --defaults --levels 1 20 --servers continuous no_loop_cut   # long

``mmpost serve`` processes run side by side: ``continuous`` (the defaults: up to 16
conversations batched, a round is one turn of each, a finished conversation frees its slot for a
waiting one; the cached generator keeping each conversation's KV cache across turns; the system
prompt's keys and values kept across requests), ``chunked`` (``--chunk-tokens 32``: rounds of at
least 32 tokens that end when a waiting request fits or a quarter of the rows ended their turns,
so nobody waits for the batch's longest turn), ``hf_generate`` (whole turns over
``model.generate``, which re-prefills every turn, and no prefix cache: the server before both),
and ``one_at_a_time`` (``--max-batch 1``); ``no_loop_cut`` (not run unless named: the default
server but a turn caught in a repetition loop runs to its token limit, as before
``EngineConfig.cut_loops``). ``--defaults`` sends requests with no generation options (the
server's defaults: 16 turns of up to 1024 tokens, 4 resamples of a violating turn; with the
random tiny model a request takes its 16 turns, and every greedy turn loops). For each concurrency level, the same requests (greedy, no resampling,
images of mixed sizes, the tool system prompt) go to each server in turn, alternately for
--rounds rounds, after one warm-up request per server. Printed per level: p50 and p95 latency of each server (medians over rounds),
p50 relative to one request alone on the same server, and each server's p50 over
``continuous``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mm.synthetic import shapes_image  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVERS = {  # name -> flags
    "continuous": [],
    "chunked": ["--chunk-tokens", "32"],
    "hf_generate": ["--engine.generator", "hf", "--prefix-cache", "0", "--no-engine.cut-loops"],
    "one_at_a_time": ["--max-batch", "1"],
    "no_loop_cut": ["--no-engine.cut-loops"],
}


def start(model: str, flags: list[str], limits: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "mmpost", "serve", "--model", model, "--port", str(port),
           *flags, "--max-queue", "1000", *limits]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server at {url} did not start")


def bodies(n: int, max_tokens: int, max_turns: int, defaults: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        w, h = [(224, 224), (336, 224), (280, 392)][i % 3]
        img, _ = shapes_image(w, h, seed=i)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": f"How many shapes in {i}?"},
        ]
        body = {"model": "bench", "messages": [{"role": "user", "content": content}], "include_images": False}
        if not defaults:
            body.update(max_tokens=max_tokens, max_turns=max_turns, max_resamples=0)
        out.append(body)
    return out


async def latencies(url: str, reqs: list[dict]) -> list[float]:
    import httpx

    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=len(reqs))) as client:

        async def one(body: dict) -> float:
            t0 = time.perf_counter()
            r = await client.post(url + "/v1/chat/completions", json=body)
            r.raise_for_status()
            return time.perf_counter() - t0

        return list(await asyncio.gather(*(one(b) for b in reqs)))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 20, 100])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per turn")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument(
        "--servers",
        nargs="+",
        choices=list(SERVERS),
        default=["continuous", "chunked", "hf_generate", "one_at_a_time"],
    )
    ap.add_argument("--defaults", action="store_true", help="requests without generation options")
    args = ap.parse_args()
    limits = (
        []
        if args.defaults
        else ["--max-turn-tokens", str(args.max_tokens), "--max-turns", str(args.max_turns)]
    )
    shape = args.max_tokens, args.max_turns, args.defaults
    servers = {name: start(args.model, SERVERS[name], limits) for name in args.servers}
    try:
        for _, url in servers.values():  # warm: a serving server has its system prompt cached
            asyncio.run(latencies(url, bodies(1, *shape)))
        stats: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for level in args.levels:
                reqs = bodies(level, *shape)
                for name, (
                    _,
                    url,
                ) in servers.items():  # interleaved: same requests, one server after the other
                    lat = asyncio.run(latencies(url, reqs))
                    stats.setdefault((name, level), []).append((pct(lat, 0.5), pct(lat, 0.95)))
        med = {
            k: (statistics.median(p for p, _ in v), statistics.median(q for _, q in v))
            for k, v in stats.items()
        }
        what = (
            "the server's defaults"
            if args.defaults
            else f"{args.max_turns} turns x {args.max_tokens} tokens, greedy"
        )
        print(f"{args.model}: {what} per request, {args.rounds} round(s), medians")
        print(f"{'server':<14} {'concurrent':>10} {'p50 s':>8} {'p95 s':>8} {'p50 / alone':>12}")
        for name in servers:
            for level in args.levels:
                p50, p95 = med[(name, level)]
                alone = med.get((name, 1), (float("nan"),))[0]
                print(f"{name:<14} {level:>10} {p50:>8.2f} {p95:>8.2f} {p50 / alone:>12.2f}")
        first = args.servers[0]
        for name in args.servers[1:]:
            for level in args.levels:
                ratio = med[(name, level)][0] / med[(first, level)][0]
                print(f"p50 {name} / {first} at {level} concurrent: {ratio:.2f}x")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
