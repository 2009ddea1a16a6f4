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


def lf_ranking_rows(jsonl: str, alpaca: bool = False) -> list[dict]:
    """mmpost preference records as LLaMA-Factory ranking rows (its ``dpo_en_demo.json`` layout):
    ``conversations`` (the prompt, ``<image>`` placeholders, a leading ``system`` turn) and one
    ``{"from": "gpt", "value"}`` turn each in ``chosen`` / ``rejected``; with ``alpaca``, an
    ``instruction`` and answer strings (its ``ultrafeedback`` layout). Paths relative to the file."""
    base, rows = os.path.dirname(os.path.abspath(jsonl)), []
    for rec in read_jsonl(jsonl):
        images, conv = [], []
        for m in rec["prompt"]:
            text = _flatten(m["content"], base, False, images)
            conv.append({"from": "system" if m["role"] == "system" else ROLE[m["role"]], "value": text})
        images = [os.path.relpath(p, base) for p in images]
        (chosen,), (rejected,) = rec["chosen"], rec["rejected"]
        if alpaca:  # system column, [query, response] history pairs, the last query as instruction
            system = [t["value"] for t in conv if t["from"] == "system"]
            turns = [t["value"] for t in conv if t["from"] != "system"]
            row = {"instruction": turns[-1], "chosen": chosen["content"], "rejected": rejected["content"]}
            row.update({"system": system[0]} if system else {})
            row.update(
                {"history": [turns[k : k + 2] for k in range(0, len(turns) - 1, 2)]} if len(turns) > 1 else {}
            )
        else:
            row = {
                "conversations": conv,
                "chosen": {"from": "gpt", "value": chosen["content"]},
                "rejected": {"from": "gpt", "value": rejected["content"]},
            }
        rows.append({**row, "images": images} if images else row)
    return rows


def _v1_content(content, base: str) -> list[dict]:
    """A content list in LLaMA-Factory v1 items: ``{"type": "text" | "image_url", "value": ...}``."""
    if isinstance(content, str):
        return [{"type": "text", "value": content}]
    return [
        {"type": "image_url", "value": it["image"]}
        if it.get("type") == "image"
        else {"type": "text", "value": it["text"]}
        for it in content
    ]


def lf_v1_messages(messages: list[dict], base: str) -> list[dict]:
    """mmpost messages as LLaMA-Factory v1 messages: a ``loss_weight`` on every one (1.0 for trained
    assistant turns, 0.0 otherwise, as its converters write them)."""
    return [
        {
            "role": m["role"],
            "content": _v1_content(m["content"], base),
            "loss_weight": 1.0 if m["role"] == "assistant" and m.get("train", True) else 0.0,
        }
        for m in messages
    ]


def lf_v1_rows(jsonl: str) -> list[dict]:
    """mmpost records as LLaMA-Factory v1 rows (its ``v1_sft_demo.jsonl`` / ``v1_dpo_demo.jsonl``):
    SFT ``messages``; preference ``chosen_messages`` / ``rejected_messages``, each the whole
    conversation."""
    base, rows = os.path.dirname(os.path.abspath(jsonl)), []
    for rec in read_jsonl(jsonl):
        if "messages" in rec:
            rows.append({"messages": lf_v1_messages(rec["messages"], base)})
        else:
            rows.append(
                {
                    f"{side}_messages": lf_v1_messages(rec["prompt"] + rec[side], base)
                    for side in ("chosen", "rejected")
                }
            )
    return rows


def write_jsonl(rows: list[dict], path: str) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


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
