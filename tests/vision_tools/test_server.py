"""The HTTP API as a real server process on 127.0.0.1, driven with an HTTP client."""

import asyncio
import base64
import io
import os
import subprocess
import sys

import pytest

from tests.conftest import free_port, serving, solid, start_server
from tests.vision_tools.openai_schemas import conforms, error_code

httpx = pytest.importorskip("httpx", reason="httpx is in the dev extra")
pytest.importorskip("fastapi", reason="the serve extra is not installed")


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, serve_engine):
    images = tmp_path_factory.mktemp("served")
    solid(112, 84).save(images / "inside.png")
    secret = images.parent / "secret.png"
    solid(56, 56).save(secret)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpost", "serve", *serving(serve_engine), "--port", str(port),
           "--image-dir", str(images), "--max-turns", "4", "--max-turn-tokens", "64",
           "--max-image-mb", "0.25", "--batch-wait-ms", "50"]  # fmt: skip
    proc = start_server(cmd, url + "/health")
    yield url, secret
    proc.terminate()
    proc.wait(timeout=20)


def chat_body(img_url: str, question: str = "How many shapes?", **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": img_url}}, {"type": "text", "text": question}]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def test_chat_completion_runs_the_tool_loop(server):
    url, _ = server
    r = httpx.post(
        url + "/v1/chat/completions", json=chat_body(data_url(solid(280, 224)), max_tokens=12), timeout=120
    )
    assert r.status_code == 200, r.text
    j = conforms("completion", r.json())  # OpenAI's CreateChatCompletionResponse
    assert j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant"
    assert j["choices"][0]["logprobs"] is None and j["choices"][0]["message"]["refusal"] is None
    t = j["choices"][0]["trajectory"]
    assert 1 <= len(t["turns"]) <= 4 and all(turn["tokens"] <= 12 for turn in t["turns"])
    assert (
        j["usage"]["completion_tokens"] == t["generated_tokens"] == sum(turn["tokens"] for turn in t["turns"])
    )
    assert t["finish_reason"] in ("answer", "max_turns", "max_tokens")
    assert j["usage"]["prompt_tokens"] + j["usage"]["completion_tokens"] <= j["usage"]["total_tokens"]


def test_tool_endpoints(server):
    url, _ = server
    names = [t["function"]["name"] for t in httpx.get(url + "/v1/tools").json()["tools"]]
    assert names == ["crop_image", "scale_image", "display_image"]
    body = {
        "images": [data_url(solid(280, 224))],
        "arguments": {"bbox_2d": [0, 0, 140, 112], "image_index": 0},
    }
    r = httpx.post(url + "/v1/tools/crop_image", json=body)
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (140, 112)
    assert r.json()["image"].startswith("data:image/png;base64,")
    r = httpx.post(
        url + "/v1/tools/scale_image",
        json={"images": ["inside.png"], "arguments": {"scale_factor": 2, "image_index": 0}},
    )
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (224, 168)
    bad = {**body, "arguments": {"bbox_2d": [0, 0, 999, 10], "image_index": 0}}
    r = httpx.post(url + "/v1/tools/crop_image", json=bad)
    assert r.status_code == 422 and error_code(r) == "bbox_out_of_bounds"
    r = httpx.post(url + "/v1/tools/rotate_image", json=body)
    assert r.status_code == 404 and error_code(r) == "unknown_tool"


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        ("/v1/chat/completions", b"{not json", 400, "bad_json"),
        ("/v1/chat/completions", b"[1, 2]", 400, "bad_json"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "bad_request"),
        ("/v1/tools/crop_image", b'{"images": "x"}', 400, "bad_request"),
    ],
)
def test_malformed_requests(server, path, body, status, code):
    r = httpx.post(server[0] + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and error_code(r) == code


def test_bad_inputs_get_clear_errors(server):
    url, secret = server
    chat = url + "/v1/chat/completions"
    noise = os.urandom(400_000)  # a PNG of noise over the 0.25 MiB limit
    import numpy as np
    from PIL import Image

    big = Image.fromarray(np.frombuffer(noise[: 360 * 360 * 3], dtype=np.uint8).reshape(360, 360, 3))
    r = httpx.post(chat, json=chat_body(data_url(big)))
    assert r.status_code == 413 and error_code(r) == "image_too_large"
    r = httpx.post(chat, json=chat_body(os.path.relpath(secret, secret.parent / "x")))  # ../secret.png
    assert r.status_code == 403 and error_code(r) == "path_refused"
    r = httpx.post(chat, json=chat_body(str(secret)))  # an absolute path outside the folder
    assert r.status_code == 403
    r = httpx.post(chat, json=chat_body("http://example.com/a.png"))
    assert r.status_code == 400 and error_code(r) == "remote_url"
    r = httpx.post(chat, json=chat_body("data:image/png;base64,!!!"))
    assert r.status_code == 400 and error_code(r) == "bad_image"
    r = httpx.post(chat, json=chat_body("data:image/png;base64," + base64.b64encode(b"not a png").decode()))
    assert r.status_code == 400 and error_code(r) == "bad_image"
    r = httpx.post(chat, json=chat_body(data_url(solid(56, 56)), max_tokens=100000))
    assert r.status_code == 400 and "max_tokens" in conforms("error", r.json())["error"]["message"]
    nine = chat_body(data_url(solid(56, 56)))  # the server allows 8 images per request
    nine["messages"][0]["content"] += [
        {"type": "image_url", "image_url": {"url": data_url(solid(56, 56))}}
    ] * 8
    r = httpx.post(chat, json=nine)
    assert r.status_code == 400 and error_code(r) == "too_many_images"
    asst = chat_body(data_url(solid(56, 56)))
    asst["messages"].append({"role": "assistant", "content": "hi"})
    r = httpx.post(chat, json=asst)  # nothing left for the model to answer
    assert r.status_code == 400 and "last message" in conforms("error", r.json())["error"]["message"]
    r = httpx.post(chat, json={"messages": [{"role": "tool", "content": "x"}]})
    assert r.status_code == 400 and "messages[0]" in conforms("error", r.json())["error"]["message"]
    r = httpx.post(chat, json=chat_body("missing.png"))
    assert r.status_code == 404 and error_code(r) == "missing_image"
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_twenty_concurrent_requests_are_batched(server):
    url, _ = server

    async def main():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=b) for b in bodies))

    bodies = [
        chat_body(data_url(solid(56 + 28 * (i % 4), 84)), f"Question {i}?", max_tokens=8, max_resamples=0)
        for i in range(20)
    ]
    responses = asyncio.run(main())
    assert 8 <= httpx.get(url + "/health").json()["peak_batch"] <= 16  # 20 requests share 16 slots
    assert [r.status_code for r in responses] == [200] * 20
    for r in responses:
        conforms("completion", r.json())
    assert len({r.json()["id"] for r in responses}) == 20
    for i in (0, 7, 13, 19):  # each answer belongs to its own request: greedy, so alone it is the same
        alone = httpx.post(url + "/v1/chat/completions", json=bodies[i], timeout=120).json()
        texts = [
            [t["text"] for t in j["choices"][0]["trajectory"]["turns"]] for j in (alone, responses[i].json())
        ]
        assert texts[0] == texts[1]
        assert alone["usage"] == responses[i].json()["usage"]
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_image_paths_are_confined_to_the_image_folders(tmp_path):
    from vision_tools.server import ApiError, ServeConfig, load_request_image

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    solid(56, 56).save(b / "x.png")
    solid(56, 56).save(tmp_path / "secret.png")
    cfg = ServeConfig(image_dirs=[str(a), str(b)])
    assert load_request_image("x.png", cfg, "t").size == (56, 56)  # found in the second folder
    for path, status in [
        ("../secret.png", 403),
        (str(tmp_path / "secret.png"), 403),
        ("nope.png", 404),
        ("a\x00b.png", 400),
        ("https://x.org/a.png", 400),
    ]:
        with pytest.raises(ApiError) as e:
            load_request_image(path.replace("\\x00", "\x00"), cfg, "t")
        assert e.value.status == status, path
    with pytest.raises(ApiError) as e:
        load_request_image("x.png", ServeConfig(), "t")
    assert e.value.status == 403


def test_the_curl_examples_in_the_docs_work(server):
    """docs/api.md's curl commands, pointed at this server, get the answers the docs describe."""
    import json
    import re
    import shutil
    from pathlib import Path

    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("curl/base64 not installed")
    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```bash\n(.*?)```", (root / "docs" / "api.md").read_text(), flags=re.S)
    chat = next(b for b in blocks if "/v1/chat/completions" in b)
    tools = next(b for b in blocks if "/v1/tools/crop_image" in b)
    script = (chat + "\necho\n" + tools).replace("http://127.0.0.1:8000", server[0])
    r = subprocess.run(["bash", "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    docs, text, decoder = [], r.stdout.strip(), json.JSONDecoder()
    while text:  # curl prints the replies back to back
        obj, end = decoder.raw_decode(text)
        docs.append(obj)
        text = text[end:].strip()
    completion, crop, listed, health = docs
    assert conforms("completion", completion).get("object") == "chat.completion", completion
    assert completion["choices"][0]["trajectory"]["turns"]
    assert (crop["width"], crop["height"]) == (168, 224)
    assert len(listed["tools"]) == 3 and health["status"] == "ok"


def test_an_image_that_cannot_be_shown_is_a_bad_request():
    from PIL import Image

    from mm.visual import VisualConfig
    from vision_tools.server import ApiError, ServeConfig, load_request_image

    with pytest.raises(ApiError) as e:  # 500:1 is beyond smart_resize's 200:1 limit
        load_request_image(data_url(Image.new("RGB", (1000, 2))), ServeConfig(), "t", VisualConfig())
    assert (e.value.status, e.value.code) == (400, "bad_image")
    shown = load_request_image(data_url(solid(300, 200)), ServeConfig(), "t", VisualConfig())
    assert shown.size == (308, 196)  # as the model sees it: 300 x 200 -> smart_resize


def test_every_curl_example_in_the_docs_succeeds(server):
    """Each curl command of docs/api.md, pointed at this server, gets a 2xx reply."""
    import re
    import shutil
    from pathlib import Path

    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("curl/base64 not installed")
    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```bash\n(.*?)```", (root / "docs" / "api.md").read_text(), flags=re.S)
    curls = [b for b in blocks if "curl " in b]
    assert len(curls) >= 6
    script = "set -e\n" + "\n".join(curls).replace("http://127.0.0.1:8000", server[0])
    script = script.replace("curl -s", "curl --fail-with-body -s")
    r = subprocess.run(["bash", "-c", script], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "data: [DONE]" in r.stdout and '"object": "chat.completion"' in r.stdout.replace('":"', '": "')


def test_the_sdk_examples_in_the_docs_work(server):
    """docs/api.md's ``python sdk`` blocks, run in order against this server with the openai SDK."""
    import re
    from pathlib import Path

    pytest.importorskip("openai", reason="the openai SDK is in the dev extra")
    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```python sdk\n(.*?)```", (root / "docs" / "api.md").read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace = {"__name__": "__doc_example__"}
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for block in blocks:
            exec(compile(block.replace("http://127.0.0.1:8000", server[0]), "docs/api.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["reply"].object == "chat.completion"


def test_chunked_rounds_let_a_short_request_pass_a_long_turn(server, serve_engine):
    """``--chunk-tokens``: a short request that arrives while a 600-token turn runs (a loop the
    tiny model writes, not cut here) is answered long before that turn ends (whole-turn rounds
    make it wait for the turn), and greedy answers are the ones the default server gives."""
    default_url, _ = server
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpost", "serve", *serving(serve_engine), "--port", str(port),
           "--max-turns", "4", "--max-turn-tokens", "600", "--chunk-tokens", "4", "--batch-wait-ms", "0",
           "--no-engine.cut-loops"]  # fmt: skip
    proc = start_server(cmd, url + "/health")
    greedy = {"max_resamples": 0, "max_turns": 1}
    long = chat_body(data_url(solid(112, 84)), "Long?", max_tokens=600, **greedy)
    short = chat_body(data_url(solid(84, 84)), "Short?", max_tokens=4, **greedy)

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            order = []

            async def send(body):
                r = await client.post("/v1/chat/completions", json=body)
                order.append(body["messages"][0]["content"][1]["text"])
                return r

            first = asyncio.create_task(send(long))
            while (await client.get("/health")).json()["running"] == 0:  # the long turn is running
                await asyncio.sleep(0.01)
            second = await send(short)
            busy = await send(seeded)  # a seeded request beside the long turn samples as alone
            return order, (await first), second, busy

    seeded = chat_body(data_url(solid(84, 84)), "Seeded?", max_tokens=48, seed=7, temperature=1.0, **greedy)

    def text(reply) -> str:  # the first turn's text
        return reply.json()["choices"][0]["trajectory"]["turns"][0]["text"]

    def post(body):  # to the default server (whole-turn rounds)
        return httpx.post(default_url + "/v1/chat/completions", json=body, timeout=120)

    try:
        order, first, second, busy = asyncio.run(main())
        assert first.json()["usage"]["completion_tokens"] == 600  # the premise: a turn of 600 tokens
        assert order == ["Short?", "Seeded?", "Long?"]
        alone = httpx.post(url + "/v1/chat/completions", json=seeded, timeout=120)
        assert text(busy) == text(alone) and len(text(alone)) > 20
        assert text(second) == text(post(short))
        head = text(post({**long, "max_tokens": 64}))[:-2]  # its first 64 tokens (a cut character aside)
        assert text(first).startswith(head) and len(head) > 20
        # log-probs of a turn resumed every 4 tokens are those of the whole turn
        scored = {**chat_body(data_url(solid(84, 84)), "Scored?", max_tokens=24, **greedy), "logprobs": True}
        cut, whole = (
            conforms("completion", r.json())
            for r in (httpx.post(url + "/v1/chat/completions", json=scored, timeout=120), post(scored))
        )
        lps = [[e["logprob"] for e in j["choices"][0]["logprobs"]["content"]] for j in (cut, whole)]
        assert len(lps[0]) == cut["usage"]["completion_tokens"] > 4
        assert max(abs(a - b) for a, b in zip(*lps)) < 1e-5 and len(lps[0]) == len(lps[1])
    finally:
        proc.terminate()
        proc.wait(timeout=20)
