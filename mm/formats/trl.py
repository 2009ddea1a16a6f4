"""TRL dataset columns -> mmpost SFT and preference records.

SFT: ``prompt`` / ``completion`` (strings, or lists of messages) or ``messages``; preference
(DPO): ``prompt`` / ``chosen`` / ``rejected``. Images come from the ``images`` column: each
value-less ``{"type": "image"}`` item of a conversational row takes the next one; a row with
no such item gets all its images at the start of the first user turn, as TRL's
``prepare_multimodal_messages`` puts them.
"""

from __future__ import annotations

from typing import Any

from mm.formats.common import Context, Placeholders, item, media_list, require
from mm.records import RecordError


def _turns(value: Any, key: str, role: str, ph: Placeholders) -> list[dict]:
    """A column as messages: a string is one ``role`` turn, a list is conversational."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise RecordError("bad_record", f"'{key}' must be a string or a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RecordError("bad_message", f"{key}[{i}] is {type(m).__name__}, not an object")
        out.append({**m, "content": ph.content(m.get("content"), f"{key}[{i}].content")})
    return out


def _prepend_images(messages: list[dict], ph: Placeholders) -> None:
    """No placeholder used: every image goes first in the first user turn (TRL's rule)."""
    if ph.used["image"] or not ph.media["image"]:
        return
    user = next((m for m in messages if m["role"] == "user"), None)
    if user is None:
        raise RecordError("placeholder_mismatch", "the row has images but no user turn to show them in")
    text = user["content"]
    text = [{"type": "text", "text": text}] if isinstance(text, str) else text
    user["content"] = [item("image", ref) for ref in ph.media["image"]] + text
    ph.used["image"] = len(ph.media["image"])


def to_record(row: dict, ctx: Context) -> dict:
    ph = Placeholders(media_list(row, "images", ctx), [])
    if "chosen" in row or "rejected" in row:
        prompt = _turns(require(row, "prompt", "TRL preference"), "prompt", "user", ph)
        rec = {
            "prompt": prompt,
            "chosen": _turns(require(row, "chosen", "TRL preference"), "chosen", "assistant", ph),
            "rejected": _turns(require(row, "rejected", "TRL preference"), "rejected", "assistant", ph),
        }
    elif "messages" in row:
        rec = {"messages": _turns(row["messages"], "messages", "user", ph)}
        prompt = rec["messages"]
    else:
        prompt = _turns(require(row, "prompt", "TRL"), "prompt", "user", ph)
        rec = {"messages": prompt + _turns(require(row, "completion", "TRL"), "completion", "assistant", ph)}
    _prepend_images(prompt, ph)
    ph.check()
    if row.get("id") is not None:
        rec["id"] = row["id"]
    return rec
