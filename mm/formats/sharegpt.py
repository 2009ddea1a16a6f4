"""ShareGPT / LLaMA-Factory rows -> mmpost SFT records.

ShareGPT: ``{"conversations": [{"from": "human", "value": "<image>What is it?"}, {"from": "gpt",
"value": "A cat."}], "images": ["cat.png"], "system": "...", "tools": "[...]"}``; the
``messages`` (``role`` / ``content``) spelling works too. Each ``<image>`` / ``<video>`` takes
the next entry of ``images`` / ``videos``; the counts must match. ``function_call`` turns become
``<tool_call>`` assistant turns and ``observation`` turns ``<tool_response>`` user turns, as the
Qwen templates render them. LLaMA-Factory's ``dataset_info.json`` (next to the file) renames
columns and role tags; its ``alpaca`` formatting (``instruction`` / ``input`` / ``output`` /
``history``) is read by ``alpaca_to_record``.

Preference rows (LLaMA-Factory's ``"ranking": true``, or any row with ``chosen`` / ``rejected``
beside its conversation): the conversation is the prompt (it ends with the user's turn) and
``chosen`` / ``rejected`` are one assistant turn each (``{"from": "gpt", "value": ...}`` in
ShareGPT, strings in alpaca), as LLaMA-Factory's converters read them; they become mmpost
preference records.
"""

from __future__ import annotations

from mm.config import ConfigError
from mm.formats.common import (
    PLACEHOLDER,
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


def _turn(turn, where: str, ctx: Context, roles: dict, ph: Placeholders) -> tuple[str, object]:
    """(role, content) of one ShareGPT turn; role ``system`` keeps its text as given."""
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
    if role == "function":
        return "assistant", tool_call_text(content, where)
    if role == "observation":
        return "user", tool_response(ph.content(content, where))
    if role == "system":
        return role, content
    return role, ph.content(content, where)


def _response(value, key: str, ctx: Context, roles: dict) -> list[dict]:
    """``chosen`` / ``rejected`` of a ranking row: one assistant (or function-call) turn, or a list."""
    turns = value if isinstance(value, list) else [value]
    if not turns:
        raise RecordError("bad_record", f"'{key}' is empty", '{"from": "gpt", "value": ...}')
    no_media = Placeholders([], [])
    out = []
    for j, t in enumerate(turns):
        where = key if len(turns) == 1 and not isinstance(value, list) else f"{key}[{j}]"
        text = (
            t.get(ctx.tags.get("content_tag") or ("value" if "value" in t else "content"))
            if isinstance(t, dict)
            else None
        )
        if isinstance(text, str) and PLACEHOLDER.search(text):
            raise RecordError(
                "visual_in_response",
                f"'{key}' holds a media placeholder: images and videos go in the prompt",
                "move the <image> into the conversation (the prompt)",
            )
        role, content = _turn(t, where, ctx, roles, no_media)
        if role != "assistant":
            raise RecordError(
                "bad_message",
                f"{where} is a {role} turn; '{key}' holds the assistant's answer",
                f'write "{key}": {{"from": "gpt", "value": ...}}',
            )
        out.append({"role": "assistant", "content": content})
    return out


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
        role, content = _turn(turn, where, ctx, roles, ph)
        if role == "system":
            if out:
                raise RecordError(
                    "bad_message", f"{where}: a system turn must come first", "move it to the start"
                )
            system = content
        else:
            out.append({"role": role, "content": content})
    chosen, rejected = ctx.column("chosen"), ctx.column("rejected")
    pair = ctx.ranking or row.get(chosen) is not None or row.get(rejected) is not None
    if pair:
        if not out or out[-1]["role"] != "user":
            raise RecordError(
                "bad_record",
                f"a preference row's '{key}' is the prompt: it must end with the user's turn",
                f"put the answers in '{chosen}' and '{rejected}', not in '{key}'",
            )
        answers = {
            side: _response(require(row, col, "ShareGPT preference"), col, ctx, roles)
            for side, col in (("chosen", chosen), ("rejected", rejected))
        }
    ph.check()
    head = system_message(system, row.get(ctx.column("tools")))
    messages = ([head] if head else []) + out
    return _with_id(row, {"prompt": messages, **answers} if pair else {"messages": messages})


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
    out.append({"role": "user", "content": ph.content(query, "instruction")})
    ph.check()
    head = system_message(row.get(col("system")), row.get(col("tools")))
    prompt = ([head] if head else []) + out
    if ctx.ranking or row.get(col("chosen")) is not None or row.get(col("rejected")) is not None:
        pair = {}
        for side in ("chosen", "rejected"):
            answer = require(row, col(side), "alpaca preference")
            if not isinstance(answer, str):
                raise RecordError("bad_record", f"'{col(side)}' must be the answer's text (alpaca)")
            if PLACEHOLDER.search(answer):
                raise RecordError(
                    "visual_in_response",
                    f"'{col(side)}' holds a media placeholder: images and videos go in the prompt",
                    "move the <image> into the instruction",
                )
            pair[side] = [{"role": "assistant", "content": answer}]
        return _with_id(row, {"prompt": prompt, **pair})
    answer = require(row, col("response") if "response" in ctx.columns else "output", "alpaca")
    return _with_id(row, {"messages": [*prompt, {"role": "assistant", "content": answer}]})


def _with_id(row: dict, rec: dict) -> dict:
    for key in ("id", "answer"):
        if row.get(key) is not None:
            rec[key] = row[key]
    return rec


def llama_factory_mapping(entry: dict) -> tuple[str, dict, dict, bool]:
    """(format, columns, tags, ranking) of one dataset_info.json entry."""
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("sharegpt", "alpaca"):
        raise ConfigError(
            f"dataset_info.json formatting {formatting!r} is not supported (sharegpt or alpaca): "
            "convert the file, or set data.format to the format its rows are in"
        )
    tags = {**TAGS, **(entry.get("tags") or {})} if formatting == "sharegpt" else {}
    return formatting, dict(entry.get("columns") or {}), tags, bool(entry.get("ranking", False))
