"""LLaMA-Factory v1 records -> mmpost SFT and preference records.

LLaMA-Factory's v1 data engine reads ``{"messages": [{"role": "user", "content": [{"type":
"text", "value": "hi"}], "loss_weight": 0.0}, {"role": "assistant", "content": [...],
"loss_weight": 1.0}], "tools": "[...]"}`` (its ``v1_sft_demo.jsonl``) and, for DPO,
``{"chosen_messages": [...], "rejected_messages": [...]}`` (``v1_dpo_demo.jsonl``): both sides
repeat the whole conversation and only its last turn, the assistant's answer, is scored
(``llamafactory/v1/core/rendering``). The mapping:

===============================  ===============================================================
v1                               mmpost
===============================  ===============================================================
``{"type": "text"}``             text
``{"type": "image_url"}``        an image item (a path relative to the file's folder, or a data URL)
``{"type": "video_url"}``        a video item
``{"type": "reasoning"}``        ``<think>\\n...\\n</think>\\n\\n`` before the turn's text (as the
                                 Qwen3 templates render ``reasoning_content``)
``{"type": "tool_call"}``        ``<tool_call>\\n{json}\\n</tool_call>`` after the text
``{"type": "audio_url"}``        ``unsupported_audio`` (mmpost has no audio encoder)
role ``tool``                    a ``<tool_response>`` user turn (consecutive results: one turn)
assistant ``loss_weight`` 0 / 1  ``train: false`` / trained (absent: 1, LLaMA-Factory's default);
                                 any other weight is ``unsupported_loss_weight``
``tools`` (a JSON list)          the Qwen2.5 ``# Tools`` block of the system prompt
===============================  ===============================================================

A preference row's two sides must agree up to their last turn (the prompt), which is an
assistant turn with a non-zero weight on each side.
"""

from __future__ import annotations

from typing import Any

from mm.formats.common import Context, item, system_message, tool_call_text
from mm.records import RecordError

CONTENT = ("text", "reasoning", "tool_call", "image_url", "video_url", "audio_url")
MEDIA = {"image_url": "image", "video_url": "video"}


def _items(content: Any, where: str, ctx: Context) -> tuple[list[dict], str, list[str]]:
    """(text and media items, reasoning text, tool-call blocks) of one message's content."""
    if isinstance(content, str):  # lenient: a plain string is one text item
        content = [{"type": "text", "value": content}]
    if not isinstance(content, list):
        raise RecordError(
            "bad_content", f"{where} is {type(content).__name__}", '[{"type": "text", "value": ...}, ...]'
        )
    items, reasoning, calls = [], "", []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get("value") if isinstance(part, dict) else None
        if kind not in CONTENT:
            raise RecordError(
                "unsupported_content",
                f"{here} has type {kind!r}",
                f"LLaMA-Factory v1 content types are {', '.join(CONTENT)}",
            )
        if kind == "audio_url":
            raise RecordError(
                "unsupported_audio",
                f"{here} is audio: mmpost trains vision-language models and cannot read audio",
                "drop the audio items, or leave these rows out",
            )
        if kind in MEDIA:
            items.append(item(MEDIA[kind], ctx.media(value, f"{here}.value")))
        elif not isinstance(value, str):
            raise RecordError("bad_content", f"{here} 'value' must be a string, got {type(value).__name__}")
        elif kind == "text":
            items.append({"type": "text", "text": value})
        elif kind == "reasoning":
            reasoning += value
        else:
            calls.append(tool_call_text(value, f"{here}.value"))
    return items, reasoning, calls


def _content(items: list[dict]) -> str | list[dict]:
    """Text-only content as one string (as mmpost writes it), else the item list."""
    if all(it["type"] == "text" for it in items):
        return "".join(it["text"] for it in items)
    return items


def _weight(m: dict, where: str) -> float:
    w = m.get("loss_weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, int | float):
        raise RecordError("bad_message", f"{where} loss_weight must be a number, got {w!r}")
    return float(w)


def _messages(turns: Any, key: str, ctx: Context) -> tuple[str | None, list[dict]]:
    """(system text, the other turns as mmpost messages) of one v1 message list."""
    if not isinstance(turns, list) or not turns:
        raise RecordError("bad_record", f"'{key}' must be a non-empty list of messages")
    system, out = None, []
    for i, m in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise RecordError("bad_message", f"{where} is {type(m).__name__}, not an object")
        role = m.get("role")
        items, reasoning, calls = _items(m.get("content"), f"{where}.content", ctx)
        if role == "system":
            if out or system is not None or any(it["type"] != "text" for it in items):
                raise RecordError("bad_message", f"{where}: one system message of text, first")
            system = _content(items)
        elif role == "tool":
            body = _content(items)
            if isinstance(body, str) and out and out[-1].get("tool_results"):
                out[-1]["content"] += f"\n<tool_response>\n{body}\n</tool_response>"  # Qwen2.5 joins them
            elif isinstance(body, str):
                out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
                out[-1]["tool_results"] = True
            else:
                out.append({"role": "user", "content": _tool_items(items)})
        elif role in ("user", "assistant"):
            if role == "user" and (reasoning or calls):
                raise RecordError(
                    "bad_content", f"{where}: reasoning and tool_call items are the assistant's"
                )
            text = _content(items)
            if reasoning or calls:
                if not isinstance(text, str):
                    raise RecordError(
                        "bad_content", f"{where}: an assistant turn with tool calls is text only"
                    )
                if reasoning:
                    text = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{text.lstrip(chr(10))}"
                text = "\n".join([text, *calls] if text else calls)
            msg = {"role": role, "content": text}
            if role == "assistant":
                w = _weight(m, where)
                if w not in (0.0, 1.0):
                    raise RecordError(
                        "unsupported_loss_weight",
                        f"{where} has loss_weight {w:g}: mmpost trains an assistant turn fully or not at all",
                        "use 1.0 to train the turn and 0.0 to leave it out of the loss",
                    )
                if w == 0.0:
                    msg["train"] = False
            out.append(msg)
        else:
            raise RecordError(
                "unknown_role",
                f"{where} has role {role!r}",
                "LLaMA-Factory v1 roles: system, user, assistant, tool",
            )
    for m in out:
        m.pop("tool_results", None)
    return system, out


def _tool_items(items: list[dict]) -> list[dict]:
    return [
        {"type": "text", "text": "<tool_response>\n"},
        *items,
        {"type": "text", "text": "\n</tool_response>"},
    ]


def _with_system(system, tools, turns: list[dict]) -> list[dict]:
    head = system_message(system, tools)
    return ([head] if head else []) + turns


def to_record(row: dict, ctx: Context) -> dict:
    tools = row.get("tools")
    if "chosen_messages" not in row and "rejected_messages" not in row:
        if row.get("messages") is None:
            raise RecordError(
                "missing_column",
                f"LLaMA-Factory v1 row has no 'messages' (columns: {', '.join(sorted(row)) or 'none'})",
                "SFT rows hold 'messages'; DPO rows 'chosen_messages' and 'rejected_messages'",
            )
        system, turns = _messages(row["messages"], "messages", ctx)
        rec = {"messages": _with_system(system, tools, turns)}
    else:
        sides = {}
        for side in ("chosen", "rejected"):
            key = f"{side}_messages"
            system, turns = _messages(row.get(key), key, ctx)
            last = turns[-1]
            if last["role"] != "assistant" or last.get("train") is False:
                raise RecordError(
                    "bad_record",
                    f"'{key}' must end with the assistant's answer, with a non-zero loss_weight",
                    "the last message of each side is the scored answer",
                )
            prompt = [{k: v for k, v in m.items() if k != "train"} for m in turns[:-1]]
            sides[side] = (_with_system(system, tools, prompt), last)
        if sides["chosen"][0] != sides["rejected"][0]:
            raise RecordError(
                "bad_record",
                "'chosen_messages' and 'rejected_messages' differ before their last message",
                "both sides repeat the same prompt; only the last (assistant) message differs",
            )
        rec = {
            "prompt": sides["chosen"][0],
            "chosen": [sides["chosen"][1]],
            "rejected": [sides["rejected"][1]],
        }
    if row.get("id") is not None:
        rec["id"] = row["id"]
    return rec
