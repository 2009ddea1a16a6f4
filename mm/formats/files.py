"""JSON and JSONL files as rows, and LLaMA-Factory's ``dataset_info.json`` beside them.

JSONL rows are numbered by line (1-based, blank lines skipped); a JSON file holds one list of
rows, numbered from 0 (a ``.json`` file that is really JSON lines is read as such).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from mm.jsonl import Problem, json_lines


def json_rows(path: str) -> Iterator[tuple[int, dict | Problem]]:
    if path.endswith(".jsonl"):
        yield from json_lines(path)
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            yield (
                -1,
                Problem(path, -1, "bad_json", f"invalid JSON: {e.msg} at line {e.lineno}", "fix the file"),
            )
            return
        yield from ((n - 1, obj) for n, obj in json_lines(path))
        return
    if not isinstance(data, list):
        yield (
            -1,
            Problem(
                path, -1, "bad_record", "a JSON data file must hold a list of rows", "write [{...}, {...}]"
            ),
        )
        return
    yield from enumerate(data)


def llama_factory_entry(path: str) -> dict | None:
    """The ``dataset_info.json`` entry (in the file's folder) whose ``file_name`` is this file."""
    folder = os.path.dirname(os.path.abspath(path))
    info = os.path.join(folder, "dataset_info.json")
    if not os.path.isfile(info) or os.path.isfile(os.path.join(folder, "state.json")):  # not HF save_to_disk
        return None
    with open(info, encoding="utf-8") as f:
        entries = json.load(f)
    for entry in entries.values() if isinstance(entries, dict) else ():
        if isinstance(entry, dict) and os.path.normpath(
            os.path.join(folder, entry.get("file_name", ""))
        ) == os.path.abspath(path):
            return entry
    return None
