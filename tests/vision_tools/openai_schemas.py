"""OpenAI's published chat-completions schemas, as JSON Schema, for checking every body the server
sends: written from openai/openai-openapi's ``openapi.json`` (``components/schemas``:
CreateChatCompletionResponse, ChatCompletionResponseMessage, ChatCompletionTokenLogprob,
ChatCompletionMessageToolCall, CompletionUsage, CreateChatCompletionStreamResponse,
ChatCompletionStreamResponseDelta, ChatCompletionMessageToolCallChunk, ErrorResponse / Error,
ListModelsResponse / Model), keeping each object's ``required`` fields and every field's type and
nullability (``anyOf [..., null]`` / ``nullable: true`` there). Extra fields (mmpost's
``trajectory``, ``turn``, ``reasoning_content``) are allowed, as the document allows them."""

from __future__ import annotations

import json

jsonschema = __import__("pytest").importorskip("jsonschema")

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NULLABLE_STRING = {"anyOf": [STRING, {"type": "null"}]}
BYTES = {"anyOf": [{"type": "array", "items": INTEGER}, {"type": "null"}]}
FINISH = ["stop", "length", "tool_calls", "content_filter", "function_call"]

TOP_LOGPROB = {
    "type": "object",
    "required": ["token", "logprob", "bytes"],
    "properties": {"token": STRING, "logprob": {"type": "number"}, "bytes": BYTES},
}
TOKEN_LOGPROB = {  # ChatCompletionTokenLogprob
    "type": "object",
    "required": ["token", "logprob", "bytes", "top_logprobs"],
    "properties": {
        "token": STRING,
        "logprob": {"type": "number"},
        "bytes": BYTES,
        "top_logprobs": {"type": "array", "items": TOP_LOGPROB},
    },
}
TOKEN_LIST = {"anyOf": [{"type": "array", "items": TOKEN_LOGPROB}, {"type": "null"}]}
CHOICE_LOGPROBS = {
    "anyOf": [
        {
            "type": "object",
            "required": ["content", "refusal"],
            "properties": {"content": TOKEN_LIST, "refusal": TOKEN_LIST},
        },
        {"type": "null"},
    ]
}
TOOL_CALL = {  # ChatCompletionMessageToolCall
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": STRING,
        "type": {"enum": ["function"]},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": STRING, "arguments": STRING},
        },
    },
}
MESSAGE = {  # ChatCompletionResponseMessage
    "type": "object",
    "required": ["role", "content", "refusal"],
    "properties": {
        "content": NULLABLE_STRING,
        "refusal": NULLABLE_STRING,
        "tool_calls": {"type": "array", "items": TOOL_CALL},
        "annotations": {"type": "array"},
        "role": {"enum": ["assistant"]},
    },
}
USAGE = {  # CompletionUsage
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER},
}
COMPLETION = {  # CreateChatCompletionResponse
    "type": "object",
    "required": ["choices", "created", "id", "model", "object"],
    "properties": {
        "id": STRING,
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["finish_reason", "index", "message", "logprobs"],
                "properties": {
                    "finish_reason": {"enum": FINISH},
                    "index": INTEGER,
                    "message": MESSAGE,
                    "logprobs": CHOICE_LOGPROBS,
                },
            },
        },
        "created": INTEGER,
        "model": STRING,
        "system_fingerprint": STRING,
        "object": {"enum": ["chat.completion"]},
        "usage": USAGE,
    },
}
TOOL_CALL_CHUNK = {  # ChatCompletionMessageToolCallChunk
    "type": "object",
    "required": ["index"],
    "properties": {
        "index": INTEGER,
        "id": STRING,
        "type": {"enum": ["function"]},
        "function": {"type": "object", "properties": {"name": STRING, "arguments": STRING}},
    },
}
DELTA = {  # ChatCompletionStreamResponseDelta
    "type": "object",
    "properties": {
        "content": NULLABLE_STRING,
        "tool_calls": {"type": "array", "items": TOOL_CALL_CHUNK},
        "role": {"enum": ["developer", "system", "user", "assistant", "tool"]},
        "refusal": NULLABLE_STRING,
    },
}
CHUNK = {  # CreateChatCompletionStreamResponse
    "type": "object",
    "required": ["choices", "created", "id", "model", "object"],
    "properties": {
        "id": STRING,
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["delta", "finish_reason", "index"],
                "properties": {
                    "delta": DELTA,
                    "logprobs": CHOICE_LOGPROBS,
                    "finish_reason": {"enum": [*FINISH, None]},
                    "index": INTEGER,
                },
            },
        },
        "created": INTEGER,
        "model": STRING,
        "object": {"enum": ["chat.completion.chunk"]},
        "usage": {"anyOf": [USAGE, {"type": "null"}]},
    },
}
ERROR = {  # ErrorResponse
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message", "param", "code"],
            "properties": {
                "code": NULLABLE_STRING,
                "message": STRING,
                "param": NULLABLE_STRING,
                "type": STRING,
            },
        }
    },
}
MODELS = {  # ListModelsResponse
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"enum": ["list"]},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object", "created", "owned_by"],
                "properties": {
                    "id": STRING,
                    "object": {"enum": ["model"]},
                    "created": INTEGER,
                    "owned_by": STRING,
                },
            },
        },
    },
}
SCHEMAS = {"completion": COMPLETION, "chunk": CHUNK, "error": ERROR, "models": MODELS}


def conforms(kind: str, body: dict) -> dict:
    """``body`` if it validates against OpenAI's ``kind`` schema (else the validation error)."""
    jsonschema.Draft202012Validator(SCHEMAS[kind]).validate(body)
    return body


def error_code(response) -> str:
    """An HTTP error response's code, after checking its body is OpenAI's error object."""
    return conforms("error", response.json())["error"]["code"]


def sse_events(text: str) -> list[dict]:
    """The JSON objects of a server-sent-events stream (``data: {...}`` lines; not ``[DONE]``)."""
    return [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def stream_conforms(text: str) -> list[dict]:
    """Every event of a streamed completion, each checked: chunks, or an error object."""
    events = sse_events(text)
    for e in events:
        conforms("error" if "error" in e else "chunk", e)
    return events
