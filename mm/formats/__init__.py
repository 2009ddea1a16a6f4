"""Format adapters: the data files researchers already have, read as mmpost records.

``open_records(path, format="auto")`` yields ``(location, Record | Problem)`` for every row of
a data file, whatever its format, so every trainer, ``mmpost data validate / stats / convert``
sees the same records. Containers are told by the path: ``.jsonl``, ``.json``, ``.parquet``,
``.arrow``, or a folder (``save_to_disk``, or parquet shards). The columns of each row then
say the format (``data.format`` overrides; a LLaMA-Factory ``dataset_info.json`` entry for the
file sets it and its column / tag mapping):

=========  ==================================================================  ===============
format     columns                                                             module
=========  ==================================================================  ===============
mmpost     ``messages`` | ``prompt`` + ``answer`` | ``prompt``/``chosen``/...   mm.records
sharegpt   ``conversations`` (from/value) or ``messages`` + ``images``/...      sharegpt
alpaca     ``instruction`` / ``input`` / ``output`` (LLaMA-Factory)             sharegpt
openai     ``messages`` with ``image_url`` parts, ``tool_calls``, ``weight``    openai
trl        ``prompt``/``completion``, ``prompt``/``chosen``/``rejected`` (str)   trl
rl         ``problem`` or ``prompt`` + ``answer``/``ground_truth`` + ``images``  rl
llamafactory_v1  ``messages`` of ``{"type", "value"}`` items + ``loss_weight``;   llamafactory_v1
           ``chosen_messages`` / ``rejected_messages`` (LLaMA-Factory v1)
=========  ==================================================================  ===============

ShareGPT and alpaca rows with ``chosen`` / ``rejected`` (LLaMA-Factory's ``"ranking": true``) are
preference records. Audio (a column or an ``<audio>`` placeholder), KTO labels (``kto_tag``, or
a boolean ``label`` beside a conversation) and a media placeholder left in the text that no item
fills are problems with their own codes, never silently dropped (``common.check_row``).

Locations are JSONL line numbers (from 1) or row indices (from 0) for every other file.
Relative media paths of foreign formats resolve against the data root (the file's folder, or
the dataset folder) and must stay inside it; mmpost records keep theirs relative to the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from mm.formats import llamafactory_v1, openai, rl, sharegpt, trl
from mm.formats.common import Context, check_leftovers, check_row
from mm.jsonl import Problem
from mm.records import Record, RecordError, parse_record

ADAPTERS: dict[str, Callable[[dict, Context], dict]] = {
    "sharegpt": sharegpt.to_record,
    "alpaca": sharegpt.alpaca_to_record,
    "openai": openai.to_record,
    "trl": trl.to_record,
    "rl": rl.to_record,
    "llamafactory_v1": llamafactory_v1.to_record,
}
FORMATS = ("auto", "mmpost", *ADAPTERS)
TABLE_SUFFIXES = (".parquet", ".arrow")


def data_root(path: str) -> str:
    """The folder relative paths of ``path``'s records resolve against."""
    path = os.path.abspath(path)
    return path if os.path.isdir(path) else os.path.dirname(path)


def _has(messages, test) -> bool:
    return isinstance(messages, list) and any(isinstance(m, dict) and test(m) for m in messages)


def _openai_turn(m: dict) -> bool:
    parts = m.get("content") if isinstance(m.get("content"), list) else []
    return (
        "tool_calls" in m
        or "weight" in m
        or m.get("role") == "developer"
        or any(isinstance(p, dict) and p.get("type") == "image_url" for p in parts)
    )


def _v1_turn(m: dict) -> bool:
    parts = m.get("content") if isinstance(m.get("content"), list) else []
    return "loss_weight" in m or any(
        isinstance(p, dict) and "value" in p and p.get("type") in llamafactory_v1.CONTENT for p in parts
    )


def detect(row: dict) -> str:
    """The format of one row, from its columns."""
    media = "images" in row or "videos" in row
    if "chosen_messages" in row or "rejected_messages" in row:
        return "llamafactory_v1"
    if "chosen" in row or "rejected" in row:
        if "conversations" in row or _has(row.get("messages"), lambda m: "from" in m):
            return "sharegpt"  # LLaMA-Factory's ranking rows: the prompt, then one turn each
        if "instruction" in row:
            return "alpaca"
        strings = any(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected"))
        return "trl" if media or strings else "mmpost"
    if "completion" in row:
        return "trl"
    if "problem" in row or "ground_truth" in row or "reward_model" in row:
        return "rl"
    if "prompt" in row:
        return "rl" if media or isinstance(row["prompt"], str) else "mmpost"
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        msgs = row["messages"]
        if _has(msgs, _v1_turn):
            return "llamafactory_v1"
        if _has(msgs, lambda m: "from" in m) or media:
            return "sharegpt"
        return "openai" if _has(msgs, _openai_turn) or "tools" in row else "mmpost"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return "mmpost"  # whose parser names what is missing


def read_rows(path: str) -> tuple[Iterator[tuple[int, dict | Problem]], Context, str]:
    """(rows, context, format the file declares or "auto") of a data file of any container."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    ctx, declared = Context(data_root(path)), "auto"
    if os.path.isdir(path) or path.endswith(TABLE_SUFFIXES):
        from mm.formats.tables import TableRows

        return iter(TableRows(path)), ctx, declared
    from mm.formats.files import json_rows, llama_factory_entry

    entry = llama_factory_entry(path)
    if entry is not None:
        declared, ctx.columns, ctx.tags, ctx.ranking = sharegpt.llama_factory_mapping(entry)
    return json_rows(path), ctx, declared


def convert_row(row: dict, ctx: Context, format: str = "auto") -> dict:
    """One row as an mmpost record object (before validation); what it holds that no record can
    (audio, KTO labels, placeholders no image fills) raises ``RecordError``."""
    check_row(row, ctx)
    kind = detect(row) if format == "auto" else format
    rec = row if kind == "mmpost" else ADAPTERS[kind](row, ctx)
    check_leftovers(rec)
    return rec


def open_records(path: str, format: str = "auto") -> Iterator[tuple[int, Record | Problem]]:
    """Every row of ``path`` as ``(location, record)``, or ``(location, Problem)`` naming what is wrong."""
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}: use one of {', '.join(FORMATS)}")
    rows, ctx, declared = read_rows(path)
    fmt = declared if format == "auto" else format
    for loc, row in rows:
        if isinstance(row, Problem):
            yield loc, row
            continue
        try:
            yield loc, parse_record(convert_row(row, ctx, fmt) if isinstance(row, dict) else row)
        except RecordError as e:
            yield loc, Problem(path, loc, e.code, e.message, e.hint)
