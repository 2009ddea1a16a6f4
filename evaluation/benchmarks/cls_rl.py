"""The CLS-RL evaluation protocol (few-shot image classification; REFERENCE.md section 3).

Files: a JSON/JSONL/parquet test set with one question per row, either in the R1-V / CLS-RL
release form ``{"image", "problem", "solution"}`` (``solution`` may wrap the label in
``<answer> </answer>``), or mmpost RL records (``prompt`` messages with the image, ``answer``)
as ``mmpost data cls-fewshot`` writes them. The question already carries CLS-RL's candidate
list and the variant's instruction, so it is the prompt as it stands.

Extraction and scoring (the released evaluation): the ``<answer>`` block, or the whole output when
there is none; correct when the label, stripped and lower-cased, is a substring of it,
lower-cased. Categories: dataset (``meta.dataset`` / a ``dataset`` column, else the file's name).
"""

from __future__ import annotations

import os

from evaluation.benchmarks.base import (
    ANSWER_BLOCK,
    Benchmark,
    Sample,
    find_files,
    open_image,
    read_rows,
)
from mm.dataset import DataError


class ClsRL(Benchmark):
    name = "cls_rl"
    source = "CLS-RL released evaluation (REFERENCE.md section 3: answer block or whole output, substring)"

    def load(self, path: str) -> list[Sample]:
        out = []
        for file in find_files(path, ("*.jsonl", "*.json", "*.parquet"), "CLS-RL test rows"):
            base = os.path.dirname(os.path.abspath(file))
            stem = os.path.splitext(os.path.basename(file))[0]
            for i, row in enumerate(read_rows(file)):
                where = f"{file} row {i}"
                meta = row.get("meta") or {}
                dataset = meta.get("dataset") or row.get("dataset") or stem
                if "prompt" in row:  # an mmpost RL record
                    user = next(m for m in row["prompt"] if m["role"] == "user")
                    items = user["content"] if isinstance(user["content"], list) else []
                    images = [
                        open_image(c.get("image"), base, where)
                        for c in items
                        if c.get("type") == "image" or "image" in c
                    ]
                    text = "".join(c.get("text", "") for c in items) if items else user["content"]
                    label = row.get("answer")
                elif "problem" in row:
                    images = [open_image(row["image"], base, where)]
                    text = row["problem"]
                    m = ANSWER_BLOCK.search(str(row.get("solution", "")))
                    label = m.group(1) if m else row.get("solution")
                else:
                    raise DataError(f"{where}: expected 'problem'/'solution'/'image' or an mmpost RL record")
                rid = str(row.get("id") or f"{stem}-{i}")
                out.append(Sample(rid, images, str(label).strip(), {"problem": text}, {"dataset": dataset}))
        return out

    def prompt(self, sample: Sample) -> str:
        return sample.fields["problem"]

    def extract(self, sample: Sample, completion: str) -> str:
        blocks = ANSWER_BLOCK.findall(completion)
        return (blocks[-1] if blocks else completion).strip()

    def score(self, sample: Sample, pred: str) -> float:
        label = sample.answer.strip().lower()
        return float(bool(label) and label in pred.lower())
