"""What every benchmark module shares: the sample, the interface, reading released files, scores.

A benchmark reads its released files from local disk (``load``), words the question the way its
authors prompt (``prompt``), pulls the answer out of a completion with its own rules
(``extract``) and scores it with its own metric (``score``, 0-1 per sample). Each sample names the
categories it is reported under (``Sample.categories``: key -> value, or a list of values when it
counts in several, like MathVista's skills); ``summarize`` turns scored samples into overall and
per-category scores.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

from mm.dataset import DataError

ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S)


@dataclass
class Sample:
    id: str
    images: list  # PIL images, in the order the question refers to them
    answer: Any
    fields: dict  # the released row (image bytes left out): what prompt/extract/score read
    categories: dict = field(default_factory=dict)  # key -> value or list of values


class Benchmark:
    """One benchmark's protocol. ``source`` says where it comes from (printed in the docs);
    ``judge_prompt`` (fields {question}, {response}) is set where the benchmark extracts answers
    with a model: the runner then asks the HTTP judge and falls back to ``extract``."""

    name = ""
    source = ""
    judge_prompt: str | None = None

    def load(self, path: str) -> list[Sample]:
        raise NotImplementedError

    def prompt(self, sample: Sample) -> str:
        raise NotImplementedError

    def quick(self, sample: Sample, completion: str) -> Any:
        """An extraction the rules settle without the judge (where one is used), else None."""
        return None

    def extract(self, sample: Sample, completion: str) -> Any:
        raise NotImplementedError

    def score(self, sample: Sample, pred: Any) -> float:
        raise NotImplementedError


# ----------------------------------------------------------------------------- reading files


def find_files(path: str, patterns: tuple[str, ...], what: str) -> list[str]:
    """``path`` itself when it is a file, else the files under the folder matching the first
    pattern that matches anything (patterns are globs relative to ``path``)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder (expected {what})")
    for pattern in patterns:
        found = sorted(glob.glob(os.path.join(path, pattern), recursive=True))
        if found:
            return found
    raise DataError(f"{path}: found none of {', '.join(patterns)} (expected {what})")


def read_rows(path: str) -> list[dict]:
    """Rows of a .json (a list, or an object of id -> row: the id is kept as ``_key``), .jsonl or
    .parquet file."""
    if path.endswith(".parquet"):
        from mm.imports import require

        return require("pyarrow.parquet", "reading parquet benchmark files").read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        data = json.load(f)
    if isinstance(data, dict):
        return [{"_key": k, **v} for k, v in data.items()]
    if isinstance(data, list):
        return data
    raise DataError(f"{path}: expected a JSON list or object of rows, got {type(data).__name__}")


def open_image(value: Any, base_dir: str, where: str):
    """A PIL image from a released image field: a path (relative to ``base_dir``), a parquet image
    struct ({'bytes': ..., 'path': ...}), raw bytes or a PIL image."""
    from PIL import Image

    if hasattr(value, "convert"):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if isinstance(value, str) and value:
        full = value if os.path.isabs(value) else os.path.join(base_dir, value)
        if not os.path.exists(full):
            raise FileNotFoundError(
                f"{where}: image {full} not found (the images folder belongs beside the data file)"
            )
        return Image.open(full).convert("RGB")
    raise DataError(f"{where}: no image (got {type(value).__name__})")


# ----------------------------------------------------------------------------- shared text rules


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def final_text(completion: str) -> str:
    """The part of a completion that states the answer: the last ``<answer>`` block, else the last
    ``\\boxed{}``, else the whole completion (what the benchmarks' own rules then parse)."""
    from evaluation.answers import BOXED

    blocks = ANSWER_BLOCK.findall(completion)
    if blocks:
        return blocks[-1].strip()
    boxed = BOXED.findall(completion)
    return boxed[-1].strip() if boxed else completion.strip()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def seeded_choice(options: list, key: str):
    """The random pick some official scorers make when nothing parses, made reproducible: seeded
    by the sample id, so a rerun scores the same."""
    return random.Random(key).choice(options)


# ----------------------------------------------------------------------------- scores


def summarize(name: str, rows: list[dict]) -> dict:
    """Overall and per-category scores (percent) of rows with ``score`` (0-1) and ``categories``."""

    def entry(scores: list[float]) -> dict:
        return {
            "score": round(100 * sum(scores) / len(scores), 2),
            "correct": sum(scores),
            "total": len(scores),
        }

    groups: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for key, value in r["categories"].items():
            for v in value if isinstance(value, list) else [value]:
                groups.setdefault(key, {}).setdefault(str(v), []).append(r["score"])
    return {
        "benchmark": name,
        "overall": entry([r["score"] for r in rows]),
        "categories": {k: {v: entry(s) for v, s in sorted(g.items())} for k, g in groups.items()},
    }


def markdown_table(scores: dict) -> str:
    """The scores as a markdown table: the overall row, then one row per category value."""

    def fmt(e: dict) -> str:
        correct = f"{e['correct']:g}"
        return f"{e['score']:.2f} | {correct}/{e['total']}"

    lines = [
        f"| {scores['benchmark']} | category | score | correct/total |",
        "|---|---|---:|---:|",
        f"| overall | | {fmt(scores['overall'])} |",
    ]
    for key, values in scores["categories"].items():
        lines += [f"| {key} | {value} | {fmt(e)} |" for value, e in values.items()]
    return "\n".join(lines)
