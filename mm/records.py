"""The one data format (JSONL, one record per line) as typed classes, with validation.

Three variants share the OpenAI/Qwen content-list message form:

* SFT:        {"id", "messages": [...], "answer"?, "meta"?, "actions"?, "proprio"?}
* preference: {"id", "prompt": [...], "chosen": [...assistant turns], "rejected": [...], "meta"?}
* RL:         {"id", "prompt": [...], "answer": "...", "meta"?}

``parse_record`` turns a decoded JSON object into one of them or raises ``RecordError`` with
a stable code, a message naming the offending place, and a fix hint. Visual files are not
opened here (that is ``mm.visual``'s job), so parsing is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool", "previous text")  # "previous text": StreamingVLM
CONTENT_TYPES = ("text", "image", "image_url", "video")
# Text must not smuggle in control tokens: they would corrupt turn boundaries or image-token counts.
RESERVED = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_pad|>",
)


class RecordError(ValueError):
    """A record does not follow the data format. ``code`` is stable; ``hint`` says how to fix it."""

    def __init__(self, code: str, message: str, hint: str = ""):
        super().__init__(message + (f" (fix: {hint})" if hint else ""))
        self.code, self.message, self.hint = code, message, hint


def is_video(item: dict) -> bool:
    return "video" in item or item.get("type") == "video"


def is_visual(item: dict) -> bool:
    """An image or video content item (anything that is not plain text)."""
    return item.get("type", "text") != "text" or "image" in item or "video" in item


@dataclass
class Message:
    role: str
    content: str | list[dict]
    train: bool = True  # assistant turns only: False excludes the turn from the loss

    def visual_items(self) -> list[dict]:
        if isinstance(self.content, str):
            return []
        return [c for c in self.content if is_visual(c)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(c.get("text", "") for c in self.content if c.get("type", "text") == "text")

    def to_dict(self) -> dict:
        d = {"role": self.role, "content": self.content}
        if not self.train:
            d["train"] = False
        return d


@dataclass
class SFTRecord:
    messages: list[Message]
    id: str | None = None
    answer: Any = None
    meta: dict = field(default_factory=dict)
    actions: list | None = None  # VLA: chunk x dims floats
    proprio: list | None = None

    kind = "sft"

    def conversations(self) -> list[list[Message]]:
        return [self.messages]


@dataclass
class PreferenceRecord:
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    id: str | None = None
    meta: dict = field(default_factory=dict)

    kind = "preference"

    def conversations(self) -> list[list[Message]]:
        return [self.prompt + self.chosen, self.prompt + self.rejected]


@dataclass
class RLRecord:
    prompt: list[Message]
    answer: Any = None
    id: str | None = None
    meta: dict = field(default_factory=dict)

    kind = "rl"

    def conversations(self) -> list[list[Message]]:
        return [self.prompt]


Record = SFTRecord | PreferenceRecord | RLRecord


def parse_message(obj: Any, where: str) -> Message:
    if not isinstance(obj, dict):
        raise RecordError(
            "bad_message",
            f"{where} is {type(obj).__name__}, not an object",
            'write {"role": ..., "content": ...}',
        )
    role = obj.get("role")
    if role not in ROLES:
        raise RecordError(
            "unknown_role", f"{where} has unknown role {role!r}", f"use one of {', '.join(ROLES)}"
        )
    content = obj.get("content")
    if isinstance(content, str):
        _check_text(content, where)
    elif isinstance(content, list):
        if not content:
            raise RecordError(
                "empty_content", f"{where} has an empty content list", "add a text item or remove the message"
            )
        for j, item in enumerate(content):
            _check_item(item, f"{where}.content[{j}]")
    else:
        raise RecordError(
            "bad_content",
            f"{where} content is {type(content).__name__}",
            "content must be a string or a list of items",
        )
    train = obj.get("train", True)
    if not isinstance(train, bool):
        raise RecordError("bad_message", f"{where} 'train' must be true or false, got {train!r}")
    if not train and role != "assistant":
        raise RecordError(
            "bad_message",
            f"{where} sets train=false on a {role} turn",
            "only assistant turns are trained; drop the key",
        )
    return Message(role, content, train)


def _check_text(text: str, where: str) -> None:
    for tok in RESERVED:
        if tok in text:
            raise RecordError(
                "reserved_token",
                f"{where} text contains the control token {tok}",
                "remove it; images and turns are added by mmpost",
            )


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise RecordError(
            "bad_content",
            f"{where} is {type(item).__name__}, not an object",
            'write {"type": "text", "text": ...}',
        )
    kind = item.get("type") or next((k for k in ("image", "video", "text") if k in item), None)
    if kind not in CONTENT_TYPES:
        raise RecordError(
            "unsupported_content",
            f"{where} has unsupported content type {kind!r}",
            f"use one of {', '.join(CONTENT_TYPES)}",
        )
    if kind == "text":
        if not isinstance(item.get("text"), str):
            raise RecordError("bad_content", f"{where} text item has no 'text' string")
        _check_text(item["text"], where)
    elif kind in ("image", "image_url") and item.get("image", item.get("image_url")) in (None, ""):
        raise RecordError(
            "missing_image", f"{where} image item has no 'image' value", "give a path, data URL or PIL image"
        )
    elif kind == "video" and not item.get("video"):
        raise RecordError(
            "missing_video", f"{where} video item has no 'video' value", "give a path or a list of frames"
        )


def _messages(obj: dict, key: str, need_assistant: bool, only_assistant: bool = False) -> list[Message]:
    raw = obj.get(key)
    if not isinstance(raw, list):
        raise RecordError(
            "missing_field",
            f"'{key}' is missing or not a list",
            f'add "{key}": [{{"role": ..., "content": ...}}]',
        )
    if not raw:
        raise RecordError(
            "empty_messages", f"'{key}' is empty", "add at least one user and one assistant turn"
        )
    msgs = [parse_message(m, f"{key}[{i}]") for i, m in enumerate(raw)]
    if only_assistant and any(m.role != "assistant" for m in msgs):
        raise RecordError("bad_message", f"'{key}' must hold assistant turns only")
    if need_assistant and not any(m.role == "assistant" for m in msgs):
        raise RecordError(
            "no_assistant",
            f"'{key}' has no assistant turn, so nothing would be trained",
            "add the target answer as an assistant turn",
        )
    return msgs


def _numbers(xs: Any) -> bool:
    return (
        isinstance(xs, list)
        and bool(xs)
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")
            for x in xs
        )
    )


def _vla_fields(obj: dict) -> tuple[list | None, list | None]:
    """``actions`` (chunk x dims finite numbers, equal widths) and ``proprio`` (finite numbers)."""
    actions, proprio = obj.get("actions"), obj.get("proprio")
    if actions is not None:
        if not isinstance(actions, list) or not actions or not all(_numbers(a) for a in actions):
            raise RecordError(
                "bad_actions",
                "'actions' must be a non-empty list of steps, each a non-empty list of finite numbers",
                'write "actions": [[dx, dy, dz, droll, dpitch, dyaw, grip], ...] (chunk x dims)',
            )
        widths = sorted({len(a) for a in actions})
        if len(widths) > 1:
            raise RecordError(
                "bad_actions", f"'actions' steps have different lengths {widths}", "every step has all dims"
            )
    if proprio is not None and not _numbers(proprio):
        raise RecordError(
            "bad_proprio",
            "'proprio' must be a non-empty list of finite numbers",
            'write "proprio": [x, y, z, ...]',
        )
    return actions, proprio


def parse_record(obj: Any) -> Record:
    """Validate a decoded JSON object and return the typed record (variant picked by its keys)."""
    if not isinstance(obj, dict):
        raise RecordError(
            "bad_record", f"record is {type(obj).__name__}, not an object", "one JSON object per line"
        )
    rid = obj.get("id")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError("bad_record", "'meta' must be an object")
    if "messages" in obj:
        actions, proprio = _vla_fields(obj)
        return SFTRecord(
            _messages(obj, "messages", need_assistant=actions is None),  # VLA records train the actions
            rid,
            obj.get("answer"),
            meta,
            actions,
            proprio,
        )
    if "chosen" in obj or "rejected" in obj:
        prompt = _messages(obj, "prompt", need_assistant=False)
        return PreferenceRecord(
            prompt, _messages(obj, "chosen", True, True), _messages(obj, "rejected", True, True), rid, meta
        )
    if "prompt" in obj:
        if "answer" not in obj:
            raise RecordError(
                "missing_field",
                "RL record has 'prompt' but no 'answer'",
                "add the reference answer the rewards check",
            )
        return RLRecord(_messages(obj, "prompt", need_assistant=False), obj["answer"], rid, meta)
    raise RecordError(
        "missing_field",
        "record has none of 'messages', 'prompt', 'chosen'",
        "SFT records need 'messages'; RL records 'prompt' + 'answer'; preference records 'prompt', 'chosen', 'rejected'",
    )


def drop_tool_result_images(messages: list[Message]) -> list[Message]:
    """Remove the images of every user turn after the first assistant turn (tool results)."""
    out, seen_assistant = [], False
    for m in messages:
        if m.role == "user" and seen_assistant and not isinstance(m.content, str):
            kept = [c for c in m.content if not is_visual(c)]
            m = Message(m.role, kept or [{"type": "text", "text": ""}], m.train)
        seen_assistant |= m.role == "assistant"
        out.append(m)
    return out
