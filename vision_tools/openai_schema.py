"""OpenAI chat requests -> :class:`ChatRequest`: the conversation in the one data format, the
engine options, and what the client asked for (n, streaming, its own tools).

Messages are read the way the official ``openai`` SDK sends them:

* ``system``: its text becomes the system prompt, with the tool declarations appended;
* ``user``: text and ``image_url`` parts; images are numbered in order of appearance over the
  whole conversation (``Image k: W x H.``), the first user turn carries the ViRC question text;
* ``assistant``: earlier turns as text, with their ``tool_calls`` written back as
  ``<tool_call>{...}</tool_call>`` (the model's own format);
* ``tool``: a tool result; its image becomes the next image (``Image k: W x H. ...``), a text-only
  result (an error) is shown as text.

With ``tools`` in the request the client runs the tools (OpenAI function calling): the server
generates one assistant turn, and a tool call comes back as ``tool_calls``. Without, the server
runs the whole ViRC loop with its own tools.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from PIL import Image

from vision_tools.engine import EngineConfig
from vision_tools.generation import generator_class
from vision_tools.protocol import QUESTION, result_text, system_prompt
from vision_tools.request_images import ApiError, load_request_image
from vision_tools.serve_config import ServeConfig
from vision_tools.tools import FACTOR, Tool, ToolContext, display_size


@dataclass
class ChatRequest:
    """One parsed ``/v1/chat/completions`` request."""

    prompt: list[dict]  # the conversation in the one data format (PIL images), ending with a user turn
    question: str | None  # the last question (ViRC repeats it after scale_image)
    engine: EngineConfig  # the request's generation options
    tools: list[Tool]  # what the model is told it may call
    client_tools: bool  # True: the client runs them (one turn per request, tool_calls back)
    n: int = 1
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    include_images: bool = True  # tool-result images in the trajectory
    logprobs: bool = False  # each generated token's log-prob in choices[].logprobs


class ClientTool(Tool):
    """A tool declared by the client (an OpenAI function definition): the model may call it, the
    server checks the arguments against its schema (and, for a built-in name, against the
    images), and the client runs it."""

    def __init__(self, spec: dict, builtin: Tool | None, where: str):
        fn = (
            spec.get("function")
            if isinstance(spec, dict) and spec.get("type", "function") == "function"
            else None
        )
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(
                400, "bad_request", f'{where}: expected {{"type": "function", "function": {{"name": ...}}}}'
            )
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", fn["name"]):
            raise ApiError(400, "bad_request", f"{where}: a function name is 1-64 letters, digits, _ or -")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict) or not isinstance(params.get("properties", {}), dict):
            raise ApiError(400, "bad_request", f"{where}.function.parameters must be a JSON schema object")
        self.name, self.repeat_question = fn["name"], False
        self.description = str(fn.get("description", ""))
        self.parameters = {**params}  # as sent: the system prompt declares it verbatim
        self.parameters.setdefault("properties", {})
        self.parameters.setdefault("required", [])
        same = builtin is not None and set(self.parameters["properties"]) == set(
            builtin.parameters["properties"]
        )
        self.fn, self.ctx_param = (builtin.fn, builtin.ctx_param) if same else (None, None)

    def __call__(self, ctx: ToolContext, arguments: dict) -> None:
        return None  # the client runs it; the engine takes one turn per request in this mode


def parse_chat(body: dict, cfg: ServeConfig, tools: dict[str, Tool], factor: int = FACTOR) -> ChatRequest:
    """An OpenAI chat request -> :class:`ChatRequest`. Raises :class:`ApiError` (400) naming the field.
    ``factor``: the model family's pixels per visual-token side (images are sized as it sees them)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "bad_request", "'messages' must be a non-empty list")
    client = body.get("tools") is not None
    declared = client_tools(body.get("tools"), tools) if client else list(tools.values())
    logprobs = sampled_logprobs(body, cfg)
    econf = replace(engine_options(body, cfg), logprobs=logprobs, **({"max_turns": 1} if client else {}))
    prompt, question = conversation(msgs, declared, econf, cfg, factor)
    stream_opts = body.get("stream_options") or {}
    if not isinstance(stream_opts, dict):
        raise ApiError(400, "bad_request", "'stream_options' must be an object")
    return ChatRequest(
        prompt,
        question,
        econf,
        declared,
        client,
        n=_number(body, "n", int, 1, cfg.max_n) or 1,
        seed=_number(body, "seed", int, -(2**63), 2**63 - 1),
        stream=_flag(body, "stream", False),
        include_usage=_flag(stream_opts, "include_usage", False),
        include_images=_flag(body, "include_images", True),
        logprobs=logprobs,
    )


def sampled_logprobs(body: dict, cfg: ServeConfig) -> bool:
    """Whether the request asks for its tokens' log-probs (``logprobs: true``); ``top_logprobs``
    above 0 is refused: the server returns the log-prob of each token it generated, not the
    other likely tokens at that position."""
    wanted = _flag(body, "logprobs", False)
    top = _number(body, "top_logprobs", int, 0, 20)
    if top is not None and not wanted:
        raise ApiError(400, "bad_request", "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    if top:
        raise ApiError(
            400,
            "unsupported_parameter",
            "'top_logprobs' > 0 is not supported: with 'logprobs': true each generated token comes with "
            "its own log-prob (top_logprobs is []); send top_logprobs 0 or leave it out",
            param="top_logprobs",
        )
    if wanted and not generator_class(cfg.engine.generator).supports_logprobs:
        raise ApiError(
            400,
            "unsupported_parameter",
            f"'logprobs': this server's decoding backend ({cfg.engine.generator}) does not return log-probs",
            param="logprobs",
        )
    return wanted


def client_tools(specs, builtin: dict[str, Tool]) -> list[Tool]:
    if not isinstance(specs, list) or not specs:
        raise ApiError(400, "bad_request", "'tools' must be a non-empty list of function definitions")
    out = []
    for i, spec in enumerate(specs):
        fn = spec.get("function") if isinstance(spec, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        out.append(ClientTool(spec, builtin.get(name) if isinstance(name, str) else None, f"tools[{i}]"))
    if len({t.name for t in out}) != len(out):
        raise ApiError(400, "bad_request", "'tools': two functions have the same name")
    return out


def engine_options(body: dict, cfg: ServeConfig) -> EngineConfig:
    """The request's generation options over the server's defaults, each within its bounds."""
    out = {}
    per_turn = [body.get(k) for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    if len(set(per_turn)) > 1:
        raise ApiError(400, "bad_request", "'max_tokens' and 'max_completion_tokens' differ; send one")
    spec = {
        "max_tokens": ("max_turn_tokens", int, 1, cfg.max_turn_tokens),
        "max_completion_tokens": ("max_turn_tokens", int, 1, cfg.max_turn_tokens),
        "max_turns": ("max_turns", int, 1, cfg.max_turns),
        "temperature": ("temperature", float, 0.0, 2.0),
        "top_p": ("top_p", float, 0.0, 1.0),
        "top_k": ("top_k", int, 0, 1000),
        "max_resamples": ("max_resamples", int, 0, 8),
    }
    for key, (name, tp, lo, hi) in spec.items():
        v = _number(body, key, tp, lo, hi)
        if v is not None:
            out[name] = v
    if "temperature" in out:
        out["do_sample"] = out["temperature"] > 0
        out["temperature"] = out["temperature"] or 1.0
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stop, list)
            or not 1 <= len(stop) <= 4
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise ApiError(400, "bad_request", "'stop' must be a non-empty string or a list of 1-4 of them")
        out["stop"] = stop
    return replace(cfg.base_engine(), **out)


def _number(body: dict, key: str, tp: type, lo, hi):
    v = body.get(key)
    if v is None:
        return None
    if (
        isinstance(v, bool)
        or not isinstance(v, int | float)
        or (tp is int and v != int(v))
        or not lo <= v <= hi
    ):
        raise ApiError(400, "bad_request", f"'{key}' must be a {tp.__name__} in [{lo}, {hi}], got {v!r}")
    return tp(v)


def _flag(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, "bad_request", f"'{key}' must be true or false, got {v!r}")
    return v


# ----------------------------------------------------------------------------- messages


class _Builder:
    """Turns OpenAI messages into the one data format, numbering images as they appear."""

    def __init__(self, econf: EngineConfig, cfg: ServeConfig, factor: int = FACTOR):
        self.econf, self.cfg, self.factor = econf, cfg, factor
        self.system: str | None = None
        self.messages: list[dict] = []
        self.images = 0
        self.question: str | None = None
        self.calls_open = False  # the last assistant turn called tools whose results may follow

    def image(self, ref, where: str) -> Image.Image:
        self.images += 1
        if self.images > self.cfg.max_images:
            raise ApiError(
                400, "too_many_images", f"{where}: at most {self.cfg.max_images} images per request"
            )
        return load_request_image(ref, self.cfg, where, self.econf.visual, self.factor)

    def parts(self, content, where: str, images: bool) -> tuple[list[Image.Image], str]:
        """(images, text) of a message's content: a string or a list of text / image_url parts."""
        if content is None:
            return [], ""
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(items, list):
            raise ApiError(400, "bad_request", f"{where}.content must be a string or a list of parts")
        pics, texts = [], []
        for j, it in enumerate(items):
            kind = it.get("type") if isinstance(it, dict) else None
            here = f"{where}.content[{j}]"
            if kind == "text" and isinstance(it.get("text"), str):
                texts.append(it["text"])
            elif kind in ("image_url", "image") and images:
                pics.append(self.image(it.get("image_url", it.get("image")), here))
            else:
                allowed = "text or image_url" if images else "text"
                raise ApiError(400, "bad_request", f"{here}: expected a {allowed} part")
        return pics, "\n".join(texts).strip()

    def user(self, pics: list[Image.Image], text: str) -> None:
        first = self.images - len(pics)
        lines = [
            f"Image {first + k}: {w} x {h}."
            for k, (w, h) in enumerate(display_size(p.size, self.econf.coords) for p in pics)
        ]
        if not any(m["role"] == "user" for m in self.messages):  # the ViRC question turn
            self.question = text
            tail = QUESTION.split("\n", 1)[1].format(question=text)
            body = "\n".join([*lines, tail])
        else:
            self.question = text or self.question
            body = "\n".join([*lines, text]) if text else "\n".join(lines)
        self.calls_open = False
        self._user_turn(pics, body)

    def tool_result(self, pics: list[Image.Image], text: str) -> None:
        """A tool result is a user turn (ViRC): ``Image k: W x H. ...`` per image, then any text."""
        first = self.images - len(pics)
        parts = [result_text(first + k, display_size(p.size, self.econf.coords)) for k, p in enumerate(pics)]
        self._user_turn(pics, "\n".join([*parts, text] if text else parts))

    def _user_turn(self, pics: list[Image.Image], body: str) -> None:
        images = [{"type": "image", "image": p} for p in pics]
        self.messages.append({"role": "user", "content": [*images, {"type": "text", "text": body}]})

    def assistant(self, m: dict, where: str) -> None:
        _, text = self.parts(m.get("content"), where, images=False)
        calls = m.get("tool_calls") or []
        if not isinstance(calls, list):
            raise ApiError(400, "bad_request", f"{where}.tool_calls must be a list")
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ApiError(400, "bad_request", f"{where}.tool_calls[{j}]: expected a function call")
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except (json.JSONDecodeError, TypeError) as e:
                raise ApiError(
                    400, "bad_request", f"{where}.tool_calls[{j}].function.arguments is not JSON"
                ) from e
            text += "<tool_call>" + json.dumps({"name": fn["name"], "arguments": args}) + "</tool_call>"
        self.calls_open = "<tool_call>" in text
        if not text:
            raise ApiError(400, "bad_request", f"{where}: an assistant message needs content or tool_calls")
        self.messages.append({"role": "assistant", "content": text})


def conversation(
    msgs: list, tools: list[Tool], econf: EngineConfig, cfg: ServeConfig, factor: int = FACTOR
) -> tuple[list[dict], str | None]:
    """OpenAI messages -> (the prompt in the one data format, the last question)."""
    b = _Builder(econf, cfg, factor)
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            if b.messages:
                raise ApiError(400, "bad_request", f"{where}: the system message comes first")
            b.system = b.parts(m.get("content"), where, images=False)[1]
        elif role == "user":
            b.user(*b.parts(m.get("content"), where, images=True))
        elif role == "assistant":
            if not b.messages:
                raise ApiError(400, "bad_request", f"{where}: the conversation starts with a user message")
            b.assistant(m, where)
        elif role == "tool":
            if not b.calls_open:
                raise ApiError(400, "bad_request", f"{where}: a tool message answers an assistant tool call")
            b.tool_result(*b.parts(m.get("content"), where, images=True))
        else:
            raise ApiError(
                400, "bad_request", f"{where}: role must be system, user, assistant or tool, got {role!r}"
            )
    if not b.messages or b.messages[-1]["role"] != "user":
        raise ApiError(400, "bad_request", "the last message must be a user or tool message")
    if not b.question and len(b.messages) == 1 and b.images == 0:
        raise ApiError(400, "bad_request", "the user message has no question text")
    system = system_prompt(tools) if b.system is None else system_prompt(tools, preamble=b.system)
    return [{"role": "system", "content": system}, *b.messages], b.question
