"""Test fixtures in the formats researchers hold, written from mmpost JSONL by a second, independent
route (the real writers: ``datasets.Dataset.to_parquet`` / ``save_to_disk``, ``json.dump``)."""

from __future__ import annotations

import json
import os

import pytest

ROLE = {"user": "human", "assistant": "gpt"}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Arrow caches of the test's parquet files go to its tmp folder, not ~/.cache (import this)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _image(ref: str, base: str, embed: bool):
    path = os.path.normpath(os.path.join(base, ref))
    if not embed:
        return path
    with open(path, "rb") as f:
        return {"bytes": f.read(), "path": os.path.basename(path)}


def _flatten(content, base: str, embed: bool, images: list) -> str:
    """A content list as text with ``<image>`` placeholders; its images appended to ``images``."""
    if isinstance(content, str):
        return content
    text = ""
    for it in content:
        if it.get("type") == "image":
            text += "<image>"
            images.append(_image(it["image"], base, embed))
        else:
            text += it["text"]
    return text


def sharegpt_rows(jsonl: str, embed: bool = False) -> list[dict]:
    """mmpost SFT records as LLaMA-Factory ShareGPT rows (``system`` column, ``<image>`` + ``images``)."""
    base, rows = os.path.dirname(os.path.abspath(jsonl)), []
    for rec in read_jsonl(jsonl):
        images, system, conv = [], "", []
        for m in rec["messages"]:
            if m["role"] == "system":
                system = m["content"]
            else:
                conv.append({"from": ROLE[m["role"]], "value": _flatten(m["content"], base, embed, images)})
        row = {"id": rec["id"], "system": system, "conversations": conv, "images": images}
        rows.append({**row, "answer": rec["answer"]} if "answer" in rec else row)
    return rows


def easyr1_rows(jsonl: str, embed: bool = False) -> list[dict]:
    """mmpost RL records (one user turn) as EasyR1 rows: ``problem`` with ``<image>``, ``answer``, ``images``."""
    base, rows = os.path.dirname(os.path.abspath(jsonl)), []
    for rec in read_jsonl(jsonl):
        (user,) = rec["prompt"]
        images: list = []
        problem = _flatten(user["content"], base, embed, images)
        rows.append({"problem": problem, "answer": rec["answer"], "images": images, "data_source": "cls"})
    return rows


def trl_pair_rows(jsonl: str, embed: bool = False) -> list[dict]:
    """mmpost preference records (a user turn, images first) as TRL's standard columns + ``images``."""
    base, rows = os.path.dirname(os.path.abspath(jsonl)), []
    for rec in read_jsonl(jsonl):
        (user,) = rec["prompt"]
        content = (
            user["content"]
            if isinstance(user["content"], list)
            else [{"type": "text", "text": user["content"]}]
        )
        images = [_image(it["image"], base, embed) for it in content if it.get("type") == "image"]
        prompt = "".join(it["text"] for it in content if it.get("type") == "text")
        rows.append(
            {
                "prompt": prompt,
                "chosen": rec["chosen"][0]["content"],
                "rejected": rec["rejected"][0]["content"],
                "images": images,
            }
        )
    return rows


def write_json(rows: list[dict], path: str) -> str:
    with open(path, "w") as f:
        json.dump(rows, f)
    return path


def write_parquet(rows: list[dict], path: str) -> str:
    """``rows`` through ``datasets``: ``images`` as a list of ``Image`` features, then ``to_parquet``."""
    from datasets import Dataset, Image, List

    Dataset.from_list(rows).cast_column("images", List(Image())).to_parquet(path)
    return path


def write_disk(rows: list[dict], path: str) -> str:
    from datasets import Dataset, Image, List

    Dataset.from_list(rows).cast_column("images", List(Image())).save_to_disk(path)
    return path
