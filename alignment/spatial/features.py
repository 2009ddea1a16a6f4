"""Precomputed teacher features: ``mmpost data teacher-features DATA OUT --teacher SPEC``.

Layout of OUT::

    meta.json            {"teacher", "image_size", "grid", "dim", "data", "ids", "dtype"}
    000000.pt ...        one float32 tensor [V, h, w, d] per record (record index in DATA)

Training with ``align.features=OUT`` reads these instead of running the teacher (the same loss,
without the teacher's compute); ``FeatureStore`` refuses a folder written by another teacher,
image size or data file.
"""

from __future__ import annotations

import json
import os

import torch

from alignment.spatial.teacher import Teacher, teacher_images
from mm.dataset import Problem, iter_jsonl
from mm.visual import open_image, resolve

META = "meta.json"


def record_views(rec, base_dir: str) -> list:
    """The view images of a VLA record (every image item of its non-assistant turns, in order)."""
    items = [it for m in rec.messages if m.role != "assistant" for it in m.visual_items()]
    return [open_image(resolve(it.get("image", it.get("image_url")), base_dir), decode=True) for it in items]


def write_features(
    data: str, out: str, teacher: Teacher, batch_size: int = 16, progress: bool = True
) -> dict:
    """Run ``teacher`` over every record of ``data`` and write OUT (see the module docstring)."""
    from tqdm import tqdm

    base_dir = os.path.dirname(os.path.abspath(data))
    rows = list(iter_jsonl(data))
    bad = [r for _, r in rows if isinstance(r, Problem)]
    if bad:
        raise ValueError(f"{bad[0]}\n(run `mmpost data validate {data}`)")
    os.makedirs(out, exist_ok=True)
    ids, grid = [], None
    S = teacher.image_size
    pending: list[tuple[int, torch.Tensor]] = []

    def flush():
        nonlocal grid
        if not pending:
            return
        V = max(len(x) for _, x in pending)
        imgs = torch.zeros(len(pending), V, 3, S, S)
        mask = torch.zeros(len(pending), V, dtype=torch.bool)
        for b, (_, x) in enumerate(pending):
            imgs[b, : len(x)], mask[b, : len(x)] = x, True
        device = next(teacher.parameters()).device
        feats = teacher(imgs.to(device), mask.to(device)).cpu()  # [b, V, h, w, d]
        grid = list(feats.shape[2:4])
        for b, (i, x) in enumerate(pending):
            torch.save(feats[b, : len(x)].clone().contiguous(), os.path.join(out, f"{i:06d}.pt"))
        pending.clear()

    for i, (_, rec) in enumerate(tqdm(rows, desc="teacher features", disable=not progress)):
        ids.append(rec.id)
        pending.append((i, teacher_images(record_views(rec, base_dir), S)))
        if len(pending) == batch_size:
            flush()
    flush()
    meta = {
        "teacher": teacher.spec,
        "image_size": S,
        "grid": grid,
        "dim": teacher.dim,
        "data": os.path.abspath(data),
        "ids": ids,
        "dtype": "float32",
    }
    with open(os.path.join(out, META), "w") as f:
        json.dump(meta, f)
    return meta


class FeatureStore:
    """Reads a folder written by ``write_features``; ``check`` refuses a mismatching one."""

    def __init__(self, folder: str):
        path = os.path.join(folder, META)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{folder} holds no {META}: write it with `mmpost data teacher-features DATA {folder} --teacher ...`"
            )
        self.folder = folder
        with open(path) as f:
            self.meta = json.load(f)

    def check(self, teacher: str, image_size: int, rows: list[int], ids: list) -> None:
        """Same teacher, image size and records (``rows``: positions of the records in the data file)."""
        m, fix = self.meta, f"recompute: mmpost data teacher-features DATA {self.folder} --teacher {teacher}"
        if m["teacher"] != teacher:
            raise ValueError(
                f"{self.folder}: features of teacher {m['teacher']!r}, the config asks for {teacher!r}; {fix}"
            )
        if image_size and m["image_size"] != image_size:
            raise ValueError(
                f"{self.folder}: features at image size {m['image_size']}, the config asks for {image_size}; {fix}"
            )
        for r, i in zip(rows, ids):
            if r >= len(m["ids"]) or m["ids"][r] != i:
                raise ValueError(
                    f"{self.folder}: features of {len(m['ids'])} records ({m['data']}) do not match the "
                    f"training records (record {r} is {i!r} in the data); {fix}"
                )

    def get(self, index: int, rec_id=None) -> torch.Tensor:
        path = os.path.join(self.folder, f"{index:06d}.pt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} missing (record {rec_id!r}); recompute the teacher features")
        return torch.load(path, weights_only=True)
