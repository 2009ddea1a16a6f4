"""JSONL files of the one data format, line by line: ``json_lines`` decodes each non-blank line,
``iter_jsonl`` parses it into a record; what is wrong with a line is a :class:`Problem` (file,
line, stable code, message, fix), and ``DataError`` raises one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from mm.records import Record, RecordError, parse_record


@dataclass
class Problem:
    """One thing wrong with one line of a JSONL file."""

    path: str
    line: int
    code: str
    message: str
    hint: str = ""

    @property
    def where(self) -> str:
        """``file:line`` (1-based) for JSONL; ``file row N`` (0-based, as ``dataset[N]``) for other files."""
        return f"{self.path}:{self.line}" if self.path.endswith(".jsonl") else f"{self.path} row {self.line}"

    def __str__(self) -> str:
        return f"{self.where}: [{self.code}] {self.message}" + (
            f"\n    fix: {self.hint}" if self.hint else ""
        )


class DataError(ValueError):
    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def json_lines(path: str) -> Iterator[tuple[int, dict | Problem]]:
    """Decode each non-blank line (numbered from 1), or a ``Problem`` saying why it is not JSON."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line.strip())
                except json.JSONDecodeError as e:
                    yield (
                        n,
                        Problem(
                            path,
                            n,
                            "bad_json",
                            f"invalid JSON: {e.msg} at column {e.colno}",
                            "each line must be one complete JSON object",
                        ),
                    )
        except UnicodeDecodeError as e:
            yield (
                -1,
                Problem(path, -1, "bad_encoding", f"file is not UTF-8: {e}", "re-save the file as UTF-8"),
            )


def iter_jsonl(path: str) -> Iterator[tuple[int, Record | Problem]]:
    """Parse each non-blank line into a typed record, or a ``Problem`` saying what is wrong."""
    for n, obj in json_lines(path):
        if isinstance(obj, Problem):
            yield n, obj
            continue
        try:
            yield n, parse_record(obj)
        except RecordError as e:
            yield n, Problem(path, n, e.code, e.message, e.hint)
