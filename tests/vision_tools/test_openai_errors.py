"""Error bodies the server builds without a live request (the scheduler's 429 / 499 / 503 / 504 /
500, a stream's error event) against OpenAI's ErrorResponse, and ``logprobs`` refused where the
decoding backend cannot serve it."""

import json

import pytest

from tests.vision_tools.openai_schemas import conforms, sse_events
from vision_tools.engine import EngineConfig
from vision_tools.generation import GENERATORS, Generator
from vision_tools.openai_schema import parse_chat
from vision_tools.request_images import ApiError
from vision_tools.serve_config import ServeConfig

ASK = {"messages": [{"role": "user", "content": "2 + 2?"}]}


@pytest.mark.parametrize(
    "status, code, message, param, kind",
    [
        (400, "bad_request", "messages[2].content[0]: expected a text or image_url part", "messages[2].content[0]", "invalid_request_error"),
        (400, "bad_request", "'max_tokens' must be a int in [1, 64], got 100000", "max_tokens", "invalid_request_error"),
        (403, "path_refused", "images[0]: 'x.png' is outside the image folder(s)", "images[0]", "permission_error"),
        (404, "not_found", "Not Found", None, "not_found_error"),
        (413, "body_too_large", "request body over 1024 bytes", None, "invalid_request_error"),
        (429, "queue_full", "3 requests are waiting; retry in 2 s", None, "rate_limit_error"),
        (499, "client_disconnected", "the client closed the connection", None, "invalid_request_error"),
        (500, "internal_error", "TypeError: 'NoneType' object is not iterable", None, "server_error"),
        (503, "shutting_down", "the server is shutting down", None, "server_error"),
        (504, "request_timeout", "the request took longer than the server's --request-timeout", None, "server_error"),
    ],
)  # fmt: skip
def test_every_error_is_openais_error_object(status, code, message, param, kind):
    body = conforms("error", ApiError(status, code, message).body())
    assert body["error"] == {"message": message, "type": kind, "param": param, "code": code}


def test_a_stream_error_event_is_openais_error_object():
    from vision_tools.openai_response import ChunkWriter

    req = parse_chat(ASK, ServeConfig(), {})
    (event,) = sse_events(ChunkWriter(req, "tiny").error(ApiError(504, "request_timeout", "too slow")))
    assert conforms("error", event)["error"]["type"] == "server_error"


class Silent(Generator):
    """A backend that returns no log-probs (supports_logprobs keeps its default, False)."""

    def __init__(self, model, processor, **options):
        pass


def test_logprobs_are_refused_where_the_backend_cannot_serve_them(monkeypatch):
    monkeypatch.setitem(GENERATORS, "silent", Silent)
    cfg = ServeConfig(engine=EngineConfig(generator="silent"))
    with pytest.raises(ApiError) as e:
        parse_chat({**ASK, "logprobs": True}, cfg, {})
    assert (e.value.status, e.value.code, e.value.param) == (400, "unsupported_parameter", "logprobs")
    assert "does not return log-probs" in e.value.message
    assert parse_chat(ASK, cfg, {}).logprobs is False  # asked for nothing, served as before
    req = parse_chat({**ASK, "logprobs": True, "top_logprobs": 0}, ServeConfig(), {})
    assert req.logprobs and req.engine.logprobs  # the cached backend serves them
    json.dumps(conforms("error", e.value.body()))
