"""The HTTP API driven with the official ``openai`` SDK against a real server process.

Greedy decoding with resampling off makes the served model's answer a function of the prompt, so
each request is checked against the engine run in this process on the conversation the docs
describe, written out by hand here (images numbered in order, ViRC question text, tool results
as user turns)."""

import asyncio
import base64
import io
import json

import pytest

from tests.conftest import SERVED, free_port, serving, solid, start_server
from vision_tools.serve_config import ServeConfig

openai = pytest.importorskip("openai", reason="the openai SDK is in the dev extra")
httpx = pytest.importorskip("httpx", reason="httpx is in the dev extra")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

FORMAT = (
    "Format strictly as: <think>...</think> <tool_call>...</tool_call> (if tools needed) "
    "<answer>...</answer> (if available)."
)
ASK = "\n\nLet's think step by step. Call **tool** if needed, then answer. " + FORMAT
RESULT = "Fully utilize the tools and make comprehensive use of the results. Keep thinking."
GREEDY = {"max_resamples": 0}  # resampling samples; off, the served answer is deterministic


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_part(img) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(img)}}


@pytest.fixture(scope="module")
def server(serve_engine):
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpost", "serve", *serving(serve_engine), "--port", str(port),
           "--max-turns", "3", "--max-turn-tokens", "16"]  # fmt: skip
    proc = start_server(cmd, url + "/health")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def local(serve_engine):
    """The same tiny model in this process: ``run(messages, **options)`` -> Trajectory."""
    from mm import load_model
    from vision_tools import EngineConfig, ToolEngine, system_prompt

    model, processor = load_model(SERVED[serve_engine])

    def run(messages: list[dict], system: str | None = None, **options) -> object:
        cfg = EngineConfig(**{"max_turns": 3, "max_turn_tokens": 16, "max_resamples": 0, **options})
        preamble = {} if system is None else {"preamble": system}  # the client's system text, tools appended
        prompt = [{"role": "system", "content": system_prompt(**preamble)}, *messages]
        return ToolEngine(model, processor, None, cfg).run([prompt])[0]

    return run


def user(images: list, text: str) -> dict:
    return {
        "role": "user",
        "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}],
    }


def same_run(reply, choice_index: int, expected) -> None:
    """The served choice is the conversation ``expected`` ran here: same turns, same token counts."""
    choice = reply.choices[choice_index]
    turns = choice.trajectory["turns"]
    assert [t["text"] for t in turns] == [r.text for r in expected.turns]
    assert choice.trajectory["prompt_tokens"] == expected.prompt_length
    assert choice.trajectory["generated_tokens"] == expected.generated_tokens


def test_models_lists_the_served_model(client, serve_engine):
    assert [m.id for m in client.models.list().data] == [SERVED[serve_engine]]


def test_multi_image_request(client, local, server):
    a, b = solid(56, 84), solid(112, 56, color=(20, 200, 40))  # sizes the model sees unchanged
    q = "Which image is wider?"
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [image_part(a), image_part(b), {"type": "text", "text": q}]}],
        max_completion_tokens=8,
        extra_body=GREEDY,
    )
    expected = local(
        [user([a, b], f"Image 0: 56 x 84.\nImage 1: 112 x 56.\nQuestion: {q}{ASK}")], max_turn_tokens=8
    )
    same_run(reply, 0, expected)
    assert all(t["tokens"] <= 8 for t in reply.choices[0].trajectory["turns"])
    assert reply.usage.prompt_tokens == expected.prompt_length
    # a tool call addresses the second image by image_index 1
    r = httpx.post(
        server + "/v1/tools/crop_image",
        json={
            "images": [data_url(a), data_url(b)],
            "arguments": {"bbox_2d": [56, 0, 112, 56], "image_index": 1},  # outside image 0
        },
    )
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (56, 56)


def test_text_only_request(client, local):
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What is 2 + 2?"}], extra_body=GREEDY
    )
    same_run(reply, 0, local([user([], f"Question: What is 2 + 2?{ASK}")]))
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_multi_turn_history(client, local):
    """Earlier user and assistant turns and an earlier tool result continue the conversation."""
    img, crop = solid(112, 84), solid(56, 56, color=(0, 0, 200))
    call = {"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 56, 56], "image_index": 0}}
    messages = [
        {"role": "system", "content": "You count shapes."},
        {"role": "user", "content": [image_part(img), {"type": "text", "text": "How many shapes?"}]},
        {"role": "assistant", "content": "<think>look closer</think>", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "crop_image", "arguments": json.dumps(call["arguments"])}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [image_part(crop)]},
        {"role": "assistant", "content": "<think>one</think><answer>1</answer>"},
        {"role": "user", "content": "Are you sure?"},
    ]  # fmt: skip
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, extra_body=GREEDY)
    expected = [  # images numbered in order; the tool result is a user turn
        user([img], f"Image 0: 112 x 84.\nQuestion: How many shapes?{ASK}"),
        {
            "role": "assistant",
            "content": "<think>look closer</think><tool_call>" + json.dumps(call) + "</tool_call>",
        },
        user([crop], f"Image 1: 56 x 56. {RESULT}"),
        {"role": "assistant", "content": "<think>one</think><answer>1</answer>"},
        {"role": "user", "content": [{"type": "text", "text": "Are you sure?"}]},
    ]
    same_run(reply, 0, local(expected, system="You count shapes.", max_turn_tokens=12))


def test_n_seed_and_stop(client):
    ask = [{"role": "user", "content": [image_part(solid(56, 56)), {"type": "text", "text": "Shapes?"}]}]
    opts = {
        "model": "tiny",
        "messages": ask,
        "max_tokens": 16,
        "extra_body": {"max_resamples": 0, "max_turns": 1},
    }
    greedy = client.chat.completions.create(n=2, **opts)
    assert len(greedy.choices) == 2 and [c.index for c in greedy.choices] == [0, 1]
    assert greedy.choices[0].message.content == greedy.choices[1].message.content  # greedy: identical
    sampled = [client.chat.completions.create(n=3, temperature=1.0, seed=s, **opts) for s in (11, 11, 12)]
    texts = [[c.trajectory["turns"][0]["text"] for c in r.choices] for r in sampled]
    assert texts[0] == texts[1]  # the same seed samples the same trajectories
    assert texts[0] != texts[2] and len(set(texts[0])) > 1  # another seed, and each choice, differ

    first = greedy.choices[0].trajectory["turns"][0]["text"]
    stop = first[6:9]  # a piece of the greedy turn: generation ends where it appears
    stopped = client.chat.completions.create(stop=[stop], **opts)
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop" and choice.trajectory["finish_reason"] == "stop"
    assert choice.message.content == first[: first.index(stop)]
    assert choice.trajectory["generated_tokens"] < greedy.choices[0].trajectory["generated_tokens"]


def test_streaming_matches_the_completion(client):
    ask = [{"role": "user", "content": [image_part(solid(84, 56)), {"type": "text", "text": "Shapes?"}]}]
    opts = {"model": "tiny", "messages": ask, "max_tokens": 10, "extra_body": GREEDY}
    whole = client.chat.completions.create(**opts)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **opts))
    turns = [
        c.choices[0].delta.model_extra["reasoning_content"]
        for c in chunks
        if c.choices and "reasoning_content" in (c.choices[0].delta.model_extra or {})
    ]
    assert turns == [t["text"] for t in whole.choices[0].trajectory["turns"]]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


@pytest.mark.slow
def test_a_hundred_concurrent_requests_are_all_answered(server):
    def ask(i: int) -> list[dict]:
        img = image_part(solid(56, 56 + 28 * (i % 3)))
        return [{"role": "user", "content": [img, {"type": "text", "text": f"Q{i}?"}]}]

    async def main():
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=600)
        opts = {"model": "tiny", "max_tokens": 4, "extra_body": {"max_resamples": 0, "max_turns": 2}}
        return await asyncio.gather(
            *(client.chat.completions.create(messages=ask(i), **opts) for i in range(100))
        )

    replies = asyncio.run(main())
    assert len({r.id for r in replies}) == 100 and all(r.choices[0].trajectory["turns"] for r in replies)
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["queued"] == 0 and health["running"] == 0
    assert health["peak_batch"] == ServeConfig().max_batch  # slots were refilled as conversations finished
