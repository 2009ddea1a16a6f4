"""Client-side tools in OpenAI's function-calling protocol, round trip with the official SDK.

The tiny model is first fitted (a few dozen steps) to one ViRC conversation: a ``crop_image``
call, then ``<answer>7</answer>`` after the crop. Served, it must make that call as
``tool_calls``; the client runs it with ``POST /v1/tools/crop_image`` and sends the image back in
a ``role: "tool"`` message; the model then answers. The server-side loop on the same question
(no ``tools`` in the request) must run the same two turns with the same crop.
"""

import json
import sys

import pytest

from tests.conftest import SERVED, free_port, serving, solid, start_server
from tests.vision_tools.openai_schemas import conforms, stream_conforms

openai = pytest.importorskip("openai", reason="the openai SDK is in the dev extra")
httpx = pytest.importorskip("httpx", reason="httpx is in the dev extra")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

pytestmark = pytest.mark.slow

QUESTION = "How many shapes?"
ARGS = {"bbox_2d": [0, 0, 56, 56], "image_index": 0}
CALL = (
    '<think>look left</think><tool_call>{"name": "crop_image", "arguments": '
    + json.dumps(ARGS)
    + "}</tool_call>"
)
ANSWER = "<think>two</think><answer>7</answer>"


def data_url(img) -> str:
    from vision_tools.request_images import data_url as encode

    return encode(img)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, serve_engine):
    """A tiny checkpoint that, greedy, replays CALL then ANSWER on the ViRC prompt."""
    import torch

    from mm import load_model
    from vision_tools import EngineConfig, ToolEngine
    from vision_tools.api import build_prompt
    from vision_tools.generation import ScriptedGenerator

    torch.manual_seed(0)
    model, processor = load_model(SERVED[serve_engine])
    cfg = EngineConfig(max_turns=3, max_turn_tokens=128, max_resamples=0)
    prompt = build_prompt(solid(112, 84), QUESTION)
    script = ScriptedGenerator(processor, [[CALL, ANSWER]])
    sample = ToolEngine(model, processor, None, cfg, script).run([prompt])[0].encoded()
    inputs = {**sample.model_inputs(), "mm_token_type_ids": sample.mm_token_type_ids[None]}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = model(**inputs, labels=sample.labels[None]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    model.eval()
    texts = [t.text for t in ToolEngine(model, processor, None, cfg).run([prompt])[0].turns]
    assert texts == [CALL, ANSWER], f"the fit did not take (loss {loss.item():.3f})"
    folder = tmp_path_factory.mktemp("fitted")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def server(fitted, serve_engine):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpost", "serve", *serving(serve_engine, fitted), "--port", str(port),
           "--max-turns", "3", "--max-turn-tokens", "128"]  # fmt: skip
    proc = start_server(cmd, url + "/health")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_client_side_tool_round_trip(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)
    tools = httpx.get(server + "/v1/tools").json()["tools"]  # the client declares the built-in tools
    img = solid(112, 84)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(img)}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]
    opts = {"model": "tiny", "tools": tools, "extra_body": {"max_resamples": 0}}
    sent = client.chat.completions.with_raw_response.create(messages=messages, **opts)
    conforms("completion", sent.http_response.json())  # tool_calls as OpenAI's schema has them
    first = sent.parse()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "crop_image" and json.loads(call.function.arguments) == ARGS
    assert choice.message.content == "<think>look left</think>"

    # the client runs the call with the server's tool endpoint, and sends the image back
    result = httpx.post(
        server + "/v1/tools/crop_image", json={"images": [data_url(img)], "arguments": ARGS}
    ).json()
    assert (result["width"], result["height"]) == (56, 56)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": [{"type": "image_url", "image_url": {"url": result["image"]}}]},
    ]  # fmt: skip
    second = client.chat.completions.create(messages=messages, **opts)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content == "7"

    # the same question without tools: the server runs both turns and the same crop itself
    loop = client.chat.completions.create(
        messages=messages[:1], model="tiny", extra_body={"max_resamples": 0}
    )
    traj = loop.choices[0].trajectory
    assert [t["text"] for t in traj["turns"]] == [CALL, ANSWER] and loop.choices[0].message.content == "7"
    assert [im["url"] for im in traj["images"]] == [result["image"]]
    assert first.usage.prompt_tokens == loop.usage.prompt_tokens  # the same prompt either way


def test_a_streamed_tool_call_reads_as_tool_calls(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)
    tools = httpx.get(server + "/v1/tools").json()["tools"]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(solid(112, 84))}},
                                             {"type": "text", "text": QUESTION}]}]  # fmt: skip
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, tools=tools, stream=True, extra_body={"max_resamples": 0}
        )
    )
    with httpx.stream(
        "POST",
        server + "/v1/chat/completions",
        json={"messages": messages, "tools": tools, "stream": True, "max_resamples": 0},
        timeout=300,
    ) as r:
        events = stream_conforms(r.read().decode())  # every chunk as OpenAI's schema has it
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in events)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [("crop_image", ARGS)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_bad_tool_declarations_are_refused(server):
    chat = server + "/v1/chat/completions"
    ask = [{"role": "user", "content": "hi"}]
    for tools, fragment in [
        ([], "non-empty list"),
        ([{"type": "function", "function": {"name": "a b"}}], "function name"),
        ([{"type": "function", "function": {"name": "f"}}] * 2, "same name"),
        ([{"type": "retrieval"}], "tools[0]"),
    ]:
        r = httpx.post(chat, json={"messages": ask, "tools": tools})
        assert r.status_code == 400 and fragment in conforms("error", r.json())["error"]["message"], (
            tools,
            r.text,
        )
