"""OpenAI chat messages -> mmpost SFT records.

``{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url":
"data:image/png;base64,..."}}, {"type": "text", "text": "..."}]}, {"role": "assistant",
"content": "...", "weight": 0}], "tools": [...]}``: ``image_url`` items become image items (a
data URL or a path; remote URLs are refused when loaded), ``developer`` turns system turns,
``weight: 0`` an untrained assistant turn, ``tool_calls`` ``<tool_call>`` blocks and ``tool``
turns ``<tool_response>`` user turns (as the Qwen2.5 template renders them).
"""

from __future__ import annotations

from typing import Any

from mm.formats.common import Context, require, system_message, tool_call_text, tool_response
from mm.records import RecordError


def _content(value: Any, where: str, ctx: Context) -> Any:
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise RecordError("bad_content", f"{where} is {type(value).__name__}", "a string or a list of parts")
    out = []
    for j, part in enumerate(value):
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            out.append({"type": "image", "image": ctx.media(url, f"{where}[{j}].image_url")})
        else:
            out.append(part)
    return out


def _text(content: Any) -> str:
    return (
        content
        if isinstance(content, str)
        else "".join(p.get("text", "") for p in content if isinstance(p, dict))
    )


def to_record(row: dict, ctx: Context) -> dict:
    turns = require(row, "messages", "OpenAI")
    if not isinstance(turns, list):
        raise RecordError("bad_record", "'messages' must be a list of turns")
    system, out = None, []
    for i, m in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RecordError("bad_message", f"{where} is {type(m).__name__}, not an object")
        role, content = m.get("role"), _content(m.get("content"), f"{where}.content", ctx)
        if role in ("system", "developer") and not out and system is None:
            system = _text(content)
            continue
        if role == "tool":
            out.append({"role": "user", "content": tool_response(content)})
            continue
        msg = {"role": role, "content": content}
        if role == "assistant":
            calls = [
                tool_call_text(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(m.get("tool_calls") or [])
            ]
            if calls:
                text = _text(content)
                msg["content"] = "\n".join(([text] if text else []) + calls)
            if m.get("weight", 1) == 0:
                msg["train"] = False
        out.append(msg)
    head = system_message(system, row.get("tools"))
    rec = {"messages": ([head] if head else []) + out}
    if row.get("id") is not None:
        rec["id"] = row["id"]
    return rec
