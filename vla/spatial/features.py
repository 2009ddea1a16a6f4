"""Precomputed teacher features: ``mmpost data teacher-features DATA OUT --teacher SPEC``.

Layout of OUT::

    meta.json            {"teacher", "teacher_weights", "image_size", "grid", "dim", "data",
                          "data_sha256", "ids", "dtype"}
    000000.pt ...        one float32 tensor [V, h, w, d] per record (record index in DATA)

``teacher_weights`` is the weights file's path, size and sha256 (null for the random teacher).
The folder is written as OUT.tmp and renamed into place, so OUT is never a mix of two runs.
Training with ``align.features=OUT`` reads these instead of running the teacher (the same loss,
without the teacher's compute); ``FeatureStore.check`` refuses a folder written by another
teacher, weights file, image size or data file (compared by sha256). The geometry teacher
(``vla.spatial.geometry``) has no live form: ``mmpost data metaworld-demos OUT --teacher-features
geometry`` writes its features beside the demonstrations (``save_features``: image size 0, a
``geometry`` block in meta.json with how they were made, normalisation statistics included).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import torch

from mm.config import ConfigError
from mm.dataset import DataError, Problem, iter_jsonl
from mm.visual import open_image, resolve
from vla.spatial.teacher import Teacher, teacher_images

META = "meta.json"


def record_views(rec, base_dir: str) -> list:
    """The view images of a VLA record (every image item of its non-assistant turns, in order)."""
    items = [it for m in rec.messages if m.role != "assistant" for it in m.visual_items()]
    return [open_image(resolve(it.get("image", it.get("image_url")), base_dir), decode=True) for it in items]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_identity(path: str | None) -> dict | None:
    """Path, size and sha256 of a teacher's weights file (None without one)."""
    if not path:
        return None
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": file_sha256(path)}


def write_features(
    data: str, out: str, teacher: Teacher, batch_size: int = 16, progress: bool = True
) -> dict:
    """Run ``teacher`` over every record of ``data`` and write OUT (see the module docstring)."""
    from tqdm import tqdm

    base_dir = os.path.dirname(os.path.abspath(data))
    rows = list(iter_jsonl(data))
    bad = [r for _, r in rows if isinstance(r, Problem)]
    if bad:
        raise DataError(f"{bad[0]} (run `mmpost data validate {data}`)")
    final, out = out, start_folder(out)
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
        "teacher_weights": weights_identity(teacher.weights),
        "image_size": S,
        "grid": grid,
        "dim": teacher.dim,
        "data": os.path.abspath(data),
        "data_sha256": file_sha256(data),
        "ids": ids,
        "dtype": "float32",
    }
    finish_folder(out, final, meta)
    return meta


def start_folder(out: str) -> str:
    """The temporary folder OUT.tmp (emptied) a features folder is written to; refuses an OUT
    that holds something other than teacher features."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, META)):
        raise ConfigError(f"{out} exists and is not a teacher-features folder (no {META}); pick another")
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def finish_folder(tmp: str, final: str, meta: dict) -> None:
    """Write meta.json last, then rename OUT.tmp into OUT (the previous OUT stays whole until then)."""
    with open(os.path.join(tmp, META), "w") as f:
        json.dump(meta, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def save_features(
    out: str, data: str, ids: list[str], feats: list[torch.Tensor], teacher: str, **extra
) -> dict:
    """Write features computed elsewhere (e.g. the geometry teacher, with the demonstrations) in
    the same layout: ``feats[i]`` [V, h, w, d] is record ``i`` of ``data``; ``extra`` goes into
    meta.json (how they were made). Atomic like ``write_features``."""
    if len(ids) != len(feats) or not feats:
        raise ValueError(f"{len(ids)} record ids for {len(feats)} feature grids")
    tmp = start_folder(out)
    for i, x in enumerate(feats):
        torch.save(x.float().contiguous(), os.path.join(tmp, f"{i:06d}.pt"))
    meta = {
        "teacher": teacher,
        "teacher_weights": None,
        "image_size": 0,  # the teacher read no images
        "grid": list(feats[0].shape[1:3]),
        "dim": int(feats[0].shape[-1]),
        "data": os.path.abspath(data),
        "data_sha256": file_sha256(data),
        "ids": list(ids),
        "dtype": "float32",
        **extra,
    }
    finish_folder(tmp, out, meta)
    return meta


def rewrite_hint(teacher: str, data: str, folder: str, weights: str | None = None) -> str:
    """The command that rewrites a features folder (the geometry teacher's comes with the demos)."""
    if teacher == "geometry":
        return (
            "rewrite the demonstrations with their features: mmpost data metaworld-demos OUT "
            "--teacher-features geometry (the same arguments as for the data), align.features=OUT/teacher-geometry"
        )
    fix = f"recompute: mmpost data teacher-features {data} {folder} --teacher {teacher}"
    return fix + (f" --teacher-weights {weights}" if weights else "")


class FeatureStore:
    """Reads a folder written by ``write_features``; ``check`` refuses a mismatching one."""

    def __init__(self, folder: str):
        path = os.path.join(folder, META)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{folder} holds no {META}: write it with `mmpost data teacher-features DATA {folder} "
                "--teacher ...` (the geometry teacher's with `mmpost data metaworld-demos OUT "
                "--teacher-features geometry`: OUT/teacher-geometry)"
            )
        self.folder = folder
        with open(path) as f:
            self.meta = json.load(f)

    def check(self, teacher: str, image_size: int, data: str, weights: str | None = None) -> None:
        """Same teacher, image size and data file (sha256); the same weights file when ``weights``
        is given (a run reading features may leave align.teacher_weights unset)."""
        m = self.meta
        fix = rewrite_hint(teacher, data, self.folder, weights)
        if m["teacher"] != teacher:
            raise ConfigError(
                f"{self.folder}: features of teacher {m['teacher']!r}, the config asks for {teacher!r}; {fix}"
            )
        if image_size and m["image_size"] != image_size:
            raise ConfigError(
                f"{self.folder}: features at image size {m['image_size']}, the config asks for {image_size}; {fix}"
            )
        if m.get("data_sha256") != file_sha256(data):
            raise ConfigError(
                f"{self.folder}: features of data file {m['data']}, whose contents differ from the "
                f"training data {data} (sha256); {fix}"
            )
        if weights:
            had = m.get("teacher_weights") or {}
            if had.get("size") != os.path.getsize(weights) or had.get("sha256") != file_sha256(weights):
                raise ConfigError(
                    f"{self.folder}: features of teacher weights {had.get('path')}, which differ from "
                    f"align.teacher_weights={weights} (size or sha256); {fix}"
                )

    def get(self, index: int, rec_id=None) -> torch.Tensor:
        path = os.path.join(self.folder, f"{index:06d}.pt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} missing (record {rec_id!r}); recompute the teacher features")
        return torch.load(path, weights_only=True)
