"""ShareGPT / LLaMA-Factory rows -> mmpost SFT records.

ShareGPT: ``{"conversations": [{"from": "human", "value": "<image>What is it?"}, {"from": "gpt",
"value": "A cat."}], "images": ["cat.png"], "system": "...", "tools": "[...]"}``; the
``messages`` (``role`` / ``content``) spelling works too. Each ``<image>`` / ``<video>`` takes
the next entry of ``images`` / ``videos``; the counts must match. ``function_call`` turns become
``<tool_call>`` assistant turns and ``observation`` turns ``<tool_response>`` user turns, as the
Qwen templates render them. LLaMA-Factory's ``dataset_info.json`` (next to the file) renames
columns and role tags; its ``alpaca`` formatting (``instruction`` / ``input`` / ``output`` /
``history``) is read by ``alpaca_to_record``.
"""

from __future__ import annotations

from mm.formats.common import (
    Context,
    Placeholders,
    media_list,
    require,
    system_message,
    tool_call_text,
    tool_response,
)
from mm.records import RecordError

TAGS = {  # LLaMA-Factory's defaults
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
ROLE_NAMES = {  # both spellings are always understood; dataset_info.json tags add to them
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "observation",
    "tool": "observation",
    "function_call": "function",
}


def _roles(tags: dict) -> dict:
    roles = dict(ROLE_NAMES)
    for tag, role in (
        ("user_tag", "user"),
        ("assistant_tag", "assistant"),
        ("system_tag", "system"),
        ("observation_tag", "observation"),
        ("function_tag", "function"),
    ):
        if tag in tags:
            roles[tags[tag]] = role
    return roles


def _placeholders(row: dict, ctx: Context) -> Placeholders:
    images, videos = ctx.column("images"), ctx.column("videos")
    return Placeholders(media_list(row, images, ctx), media_list(row, videos, ctx), images, videos)


def to_record(row: dict, ctx: Context) -> dict:
    key = ctx.columns.get("messages") or ("conversations" if "conversations" in row else "messages")
    turns = require(row, key, "ShareGPT")
    if not isinstance(turns, list):
        raise RecordError(
            "bad_record", f"'{key}' must be a list of turns", '[{"from": "human", "value": ...}, ...]'
        )
    roles, ph = _roles(ctx.tags), _placeholders(row, ctx)
    system, out = row.get(ctx.column("system")), []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError("bad_message", f"{where} is {type(turn).__name__}, not an object")
        role_key = ctx.tags.get("role_tag") or ("from" if "from" in turn else "role")
        content_key = ctx.tags.get("content_tag") or ("value" if "value" in turn else "content")
        name = turn.get(role_key)
        role = roles.get(name)
        if role is None:
            raise RecordError(
                "unknown_role",
                f"{where} has {role_key} = {name!r}",
                f"use one of {', '.join(sorted(roles))}, or map yours with 'tags' in dataset_info.json",
            )
        if content_key not in turn:
            raise RecordError(
                "missing_field", f"{where} has no '{content_key}'", f"add the turn's text as '{content_key}'"
            )
        content = turn[content_key]
        if role == "system":
            if out:
                raise RecordError(
                    "bad_message", f"{where}: a system turn must come first", "move it to the start"
                )
            system = content
        elif role == "function":
            out.append({"role": "assistant", "content": tool_call_text(content, where)})
        elif role == "observation":
            out.append({"role": "user", "content": tool_response(ph.content(content, where))})
        else:
            out.append({"role": role, "content": ph.content(content, where)})
    ph.check()
    head = system_message(system, row.get(ctx.column("tools")))
    return _with_id(row, {"messages": ([head] if head else []) + out})


def alpaca_to_record(row: dict, ctx: Context) -> dict:
    """LLaMA-Factory's alpaca formatting: ``history`` pairs, then ``instruction`` + ``input`` -> ``output``."""
    col, ph, out = ctx.column, _placeholders(row, ctx), []
    history = row.get(col("history")) or []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("bad_record", f"'{col('history')}[{i}]' must be a [query, response] pair")
        out += [
            {"role": "user", "content": ph.content(pair[0], f"history[{i}][0]")},
            {"role": "assistant", "content": pair[1]},
        ]
    query = require(row, col("prompt") if "prompt" in ctx.columns else "instruction", "alpaca")
    extra = row.get(col("query") if "query" in ctx.columns else "input")
    query = "\n".join(q for q in (query, extra) if q)
    answer = require(row, col("response") if "response" in ctx.columns else "output", "alpaca")
    out += [
        {"role": "user", "content": ph.content(query, "instruction")},
        {"role": "assistant", "content": answer},
    ]
    ph.check()
    head = system_message(row.get(col("system")), row.get(col("tools")))
    return _with_id(row, {"messages": ([head] if head else []) + out})


def _with_id(row: dict, rec: dict) -> dict:
    for key in ("id", "answer"):
        if row.get(key) is not None:
            rec[key] = row[key]
    return rec


def llama_factory_mapping(entry: dict) -> tuple[str, dict, dict]:
    """(format, columns, tags) of one dataset_info.json entry."""
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("sharegpt", "alpaca"):
        raise ValueError(f"dataset_info.json formatting {formatting!r} is not supported (sharegpt or alpaca)")
    tags = {**TAGS, **(entry.get("tags") or {})} if formatting == "sharegpt" else {}
    return formatting, dict(entry.get("columns") or {}), tags
