"""What the format adapters share: media references under a data root, ``<image>`` / ``<video>``
placeholders matched in order to the ``images`` / ``videos`` lists, the tools system prompt, and
the checks that nothing of a row is silently lost (:func:`check_row`, :func:`check_leftovers`):
audio (a column or an ``<audio>`` placeholder), unpaired KTO labels, and media placeholders
left in the text of a record that no image fills are named problems, never dropped.

Every adapter turns one row (a dict) into one mmpost record (a dict that ``mm.records.parse_record``
then validates) and raises ``RecordError`` naming the key and the fix when it cannot.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from mm.records import RecordError

PLACEHOLDER = re.compile(r"(<image>|<video>|<audio>)")
AUDIO_COLUMNS = ("audios", "audio")  # LLaMA-Factory's column, and the singular spelling
CONVERSATION_COLUMNS = ("messages", "conversations", "completion", "output", "chosen", "chosen_messages")
DEFAULT_SYSTEM = "You are a helpful assistant."  # what the Qwen2-VL template adds when none is given
# The Qwen2.5 chat template's tools block (as LLaMA-Factory's qwen templates write it too).
TOOLS_BLOCK = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{schemas}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


@dataclass
class Context:
    """Where a row's relative media paths live, and the column / tag mapping of its file."""

    root: str  # the data root: relative paths resolve here and must stay inside it
    columns: dict = field(default_factory=dict)  # LLaMA-Factory dataset_info.json "columns"
    tags: dict = field(default_factory=dict)  # LLaMA-Factory dataset_info.json "tags"
    ranking: bool = False  # dataset_info.json "ranking": rows are (prompt, chosen, rejected) pairs

    def media(self, ref: Any, key: str) -> Any:
        """A media reference made loadable: relative paths become absolute (inside the root)."""
        if isinstance(ref, dict) and ("bytes" in ref or "path" in ref):  # a datasets Image value
            ref = ref.get("path")
        if ref is None or ref == "":
            raise RecordError("missing_image", f"'{key}' is empty", "give a path or embed the image")
        if isinstance(ref, (list, tuple)):  # a video as its frames
            return [self.media(f, f"{key}[{j}]") for j, f in enumerate(ref)]
        if not isinstance(ref, str) or ref.startswith(("data:", "http://", "https://")):
            return ref  # lazy images and URLs go on to mm.visual, which judges them
        ref = ref.removeprefix("file://")
        if os.path.isabs(ref):
            return ref
        root = os.path.normpath(self.root)
        full = os.path.normpath(os.path.join(root, ref))
        if os.path.commonpath([full, root]) != root:
            raise RecordError(
                "path_outside_root",
                f"'{key}' = {ref!r} points outside the data root {root}",
                "move the file under the data folder, or give an absolute path",
            )
        return full

    def column(self, name: str) -> str:
        return self.columns.get(name, name)


def media_list(row: dict, key: str, ctx: Context) -> list:
    """The row's ``images`` / ``videos`` column as loadable references (a missing column is [])."""
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [ctx.media(v, f"{key}[{i}]") for i, v in enumerate(value)]


def item(kind: str, ref: Any) -> dict:
    return {"type": kind, kind: ref}


class Placeholders:
    """Hands out the row's images and videos in order, one per ``<image>`` / ``<video>`` found."""

    def __init__(self, images: list, videos: list, image_key: str = "images", video_key: str = "videos"):
        self.media = {"image": list(images), "video": list(videos)}
        self.keys = {"image": image_key, "video": video_key}
        self.used = {"image": 0, "video": 0}

    def take(self, kind: str) -> dict:
        self.used[kind] += 1
        return (
            item(kind, self.media[kind][self.used[kind] - 1])
            if self.used[kind] <= len(self.media[kind])
            else {}
        )

    def split(self, text: str) -> str | list[dict]:
        """``text`` with each placeholder replaced by the next media item (plain text stays a string)."""
        parts = PLACEHOLDER.split(text)
        if len(parts) == 1:
            return text
        out = []
        for p in parts:
            if p == "<audio>":
                raise no_audio("an <audio> placeholder in the text")
            if p in ("<image>", "<video>"):
                out.append(self.take(p[1:-1]))
            elif p:
                out.append({"type": "text", "text": p})
        return out

    def content(self, value: Any, where: str) -> Any:
        """A turn's content: placeholders in a string, or value-less ``{"type": "image"}`` items (TRL)."""
        if isinstance(value, str):
            return self.split(value)
        if not isinstance(value, list):
            raise RecordError(
                "bad_content",
                f"{where} is {type(value).__name__}",
                "content must be a string or a list of items",
            )
        out = []
        for it in value:
            kind = it.get("type") if isinstance(it, dict) else None
            out.append(self.take(kind) if kind in ("image", "video") and not it.get(kind) else it)
        return out

    def check(self) -> None:
        """Every placeholder got an item and every item a placeholder."""
        for kind in ("image", "video"):
            n, used = len(self.media[kind]), self.used[kind]
            if n != used:
                raise RecordError(
                    "placeholder_mismatch",
                    f"{used} <{kind}> placeholder(s) in the text but {n} item(s) in '{self.keys[kind]}'",
                    f"put one <{kind}> in the text where each of '{self.keys[kind]}' goes, in order",
                )


def tools_text(tools: Any, key: str = "tools") -> str:
    """The tools block of the system prompt from a JSON list (or its string) of function schemas."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else []
        except json.JSONDecodeError as e:
            raise RecordError(
                "bad_tools", f"'{key}' is not valid JSON: {e.msg}", "write a JSON list of functions"
            ) from e
    if not tools:
        return ""
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RecordError(
            "bad_tools", f"'{key}' must be a list of function schemas", '[{"name": ..., "parameters": ...}]'
        )
    schemas = [t if t.get("type") == "function" else {"type": "function", "function": t} for t in tools]
    return TOOLS_BLOCK.format(schemas="\n".join(json.dumps(s, ensure_ascii=False) for s in schemas))


def tool_call_text(call: Any, key: str) -> str:
    """A function call as the Qwen templates write it: ``<tool_call>\\n{json}\\n</tool_call>``."""
    if isinstance(call, str):
        try:
            call = json.loads(call)
        except json.JSONDecodeError as e:
            raise RecordError(
                "bad_tool_call", f"'{key}' is not valid JSON: {e.msg}", '{"name": ..., "arguments": {...}}'
            ) from e
    if isinstance(call, dict) and "function" in call:  # OpenAI {"type": "function", "function": {...}}
        call = call["function"]
    if not isinstance(call, dict) or "name" not in call:
        raise RecordError(
            "bad_tool_call", f"'{key}' has no function 'name'", '{"name": ..., "arguments": {...}}'
        )
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise RecordError("bad_tool_call", f"'{key}' arguments are not valid JSON: {e.msg}") from e
    body = json.dumps({"name": call["name"], "arguments": args}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def tool_response(content: Any) -> Any:
    """A tool result as the Qwen2.5 template renders it: a user turn in ``<tool_response>``."""
    if isinstance(content, str):
        return f"<tool_response>\n{content}\n</tool_response>"
    return [
        {"type": "text", "text": "<tool_response>\n"},
        *content,
        {"type": "text", "text": "\n</tool_response>"},
    ]


def system_message(system: Any, tools: Any) -> dict | None:
    """The system turn from a ``system`` text and a ``tools`` list (either may be empty)."""
    text = tools_text(tools)
    if not system and not text:
        return None
    if system is not None and not isinstance(system, str):
        raise RecordError("bad_system", "'system' must be a string", "write the system prompt as text")
    return {"role": "system", "content": (system or DEFAULT_SYSTEM) + text}


def require(row: dict, key: str, fmt: str) -> Any:
    if row.get(key) is None:
        raise RecordError(
            "missing_column",
            f"{fmt} row has no '{key}' (columns: {', '.join(sorted(row)) or 'none'})",
            f"add '{key}', or set data.format to the format the file is in",
        )
    return row[key]


# ----------------------------------------------------------------------------- nothing silently lost


def no_audio(what: str) -> RecordError:
    return RecordError(
        "unsupported_audio",
        f"the row has {what}: mmpost trains vision-language models and cannot read audio",
        "drop the audio (its column and <audio> placeholders) or leave these rows out; "
        "training on the text alone would teach answers to sounds the model never heard",
    )


def check_row(row: dict, ctx: Context) -> None:
    """What no format can honour: audio columns, and unpaired (KTO) labels."""
    for key in dict.fromkeys((ctx.column("audios"), *AUDIO_COLUMNS)):
        if row.get(key) not in (None, "", [], ()):
            raise no_audio(f"an audio column '{key}'")
    tag = ctx.columns.get("kto_tag") or ("kto_tag" if "kto_tag" in row else None)
    if tag is None and isinstance(row.get("label"), bool) and any(k in row for k in CONVERSATION_COLUMNS):
        tag = "label"  # TRL's and LLaMA-Factory's KTO rows: a response and whether it is desirable
    if tag is not None and row.get(tag) is not None:
        raise RecordError(
            "unpaired_preference",
            f"the row is an unpaired (KTO) example: '{tag}' = {row[tag]!r} marks its answer desirable "
            "or not, and mmpost has no KTO trainer (as SFT it would learn the undesirable answers too)",
            "pair a desirable and an undesirable answer to the same prompt as chosen/rejected for DPO, "
            f"or train SFT on the rows whose '{tag}' is true with that column dropped",
        )


def _texts(content: Any):
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for it in content:
            if isinstance(it, dict) and it.get("type", "text") == "text" and isinstance(it.get("text"), str):
                yield it["text"]


def check_leftovers(rec: Any) -> None:
    """A converted record (a dict) whose text still holds ``<image>``, ``<video>`` or ``<audio>``:
    a placeholder no item of the row fills would be trained as literal text."""
    if not isinstance(rec, dict):
        return
    for key in ("messages", "prompt", "chosen", "rejected"):
        turns = rec.get(key)
        for i, m in enumerate(turns if isinstance(turns, list) else ()):
            for text in _texts(m.get("content") if isinstance(m, dict) else None):
                found = PLACEHOLDER.search(text)
                if found is None:
                    continue
                if found.group() == "<audio>":
                    raise no_audio(f"an <audio> placeholder in {key}[{i}]")
                raise RecordError(
                    "unknown_placeholder",
                    f"{key}[{i}] text holds {found.group()}, which no {found.group()[1:-1]} of the "
                    "record fills: it would be trained as literal text",
                    f"put the {found.group()[1:-1]} there as a content item "
                    f'({{"type": "{found.group()[1:-1]}", "{found.group()[1:-1]}": PATH}}), or, for '
                    f"ShareGPT / LLaMA-Factory rows with an '{found.group()[1:-1]}s' column, set "
                    "data.format=sharegpt; otherwise remove it",
                )
