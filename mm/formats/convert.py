"""Any readable data file -> mmpost JSONL: exactly the records the trainers see.

Images embedded in a table are written as files into ``<OUT stem>_images/`` next to OUT (their
bytes unchanged, named ``<row>_<column>_<index>.<format>``); media paths under OUT's folder become
relative to it, others stay absolute, so the JSONL can be moved together with its images.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

from PIL import Image

from mm.formats import data_root, open_records
from mm.formats.tables import EmbeddedImage
from mm.jsonl import Problem
from mm.records import Message, Record


class MediaWriter:
    """Turns the media references of records read from ``src`` into ones valid next to ``out``."""

    def __init__(self, src: str, out: str):
        self.src_root = data_root(src)
        self.out_dir = os.path.dirname(os.path.abspath(out))
        self.image_dir = os.path.splitext(os.path.abspath(out))[0] + "_images"

    def ref(self, ref: Any) -> Any:
        if isinstance(ref, EmbeddedImage):
            data = ref.data()
            fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
            name = f"{ref.row}_{ref.key.replace('[', '_').rstrip(']')}.{fmt.replace('jpeg', 'jpg')}"
            os.makedirs(self.image_dir, exist_ok=True)
            path = os.path.join(self.image_dir, name)
            with open(path, "wb") as f:
                f.write(data)
            return os.path.relpath(path, self.out_dir)
        if isinstance(ref, list):  # video frames
            return [self.ref(r) for r in ref]
        if not isinstance(ref, str) or ref.startswith(("data:", "http://", "https://")):
            return ref
        path = os.path.normpath(os.path.join(self.src_root, ref))
        inside = os.path.commonpath([path, self.out_dir]) == self.out_dir
        return os.path.relpath(path, self.out_dir) if inside else path

    def messages(self, msgs: list[Message]) -> list[dict]:
        out = []
        for m in msgs:
            d = m.to_dict()
            if isinstance(d["content"], list):
                d["content"] = [
                    {**it, **{k: self.ref(it[k]) for k in ("image", "video") if k in it}}
                    for it in d["content"]
                ]
            out.append(d)
        return out


def record_dict(rec: Record, media: MediaWriter) -> dict:
    """A typed record as the JSON object of its mmpost JSONL line."""
    d: dict[str, Any] = {} if rec.id is None else {"id": rec.id}
    if rec.kind == "sft":
        d["messages"] = media.messages(rec.messages)
        extra = {"answer": rec.answer, "actions": rec.actions, "proprio": rec.proprio}
        d.update({k: v for k, v in extra.items() if v is not None})
    elif rec.kind == "preference":
        d.update({k: media.messages(getattr(rec, k)) for k in ("prompt", "chosen", "rejected")})
    else:
        d.update(prompt=media.messages(rec.prompt), answer=rec.answer)
    if rec.meta:
        d["meta"] = rec.meta
    return d


def convert(src: str, out: str, format: str = "auto") -> Iterator[Problem]:
    """Write every readable record of ``src`` to the JSONL ``out``; yield the problems of the others."""
    media = MediaWriter(src, out)
    os.makedirs(media.out_dir, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for _, rec in open_records(src, format):
            if isinstance(rec, Problem):
                yield rec
            else:
                f.write(json.dumps(record_dict(rec, media), ensure_ascii=False) + "\n")
