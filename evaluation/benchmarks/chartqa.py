"""ChartQA test (Masry et al. 2022), with its relaxed accuracy.

Files: the release's ``ChartQA Dataset/test/`` folder: ``test_human.json`` and
``test_augmented.json`` (lists of ``{"imgname", "query", "label"}``) with the charts in ``png/``;
the folder, its parent or one of the two JSON files. Categories: split (human / augmented; the
paper reports both and their average, which is the overall score when both are present in equal
numbers).

Relaxed accuracy (the ChartQA paper; the metric as written in google-research/pix2struct
``relaxed_correctness``): when both the prediction and the label read as numbers (a trailing % is
divided by 100) and the label is not 0, correct if |prediction - label| / |label| <= 5%;
otherwise the lower-cased strings must be equal. Prompt: the question, then "Answer the question
using a single word or phrase." (the short-answer instruction Qwen-VL and LLaVA evaluate with).
"""

from __future__ import annotations

import os

from evaluation.benchmarks.base import (
    Benchmark,
    Sample,
    final_text,
    find_files,
    open_image,
    read_rows,
)


def to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(label: str, pred: str, tolerance: float = 0.05) -> bool:
    p, g = to_float(pred), to_float(label)
    if p is not None and g:  # a label of 0 falls through to the string comparison
        return abs(p - g) / abs(g) <= tolerance
    return pred.lower() == label.lower()


class ChartQA(Benchmark):
    name = "chartqa"
    source = "github.com/vis-nlp/ChartQA (data); relaxed accuracy as in google-research/pix2struct"

    def load(self, path: str) -> list[Sample]:
        if os.path.isdir(os.path.join(path, "test")):
            path = os.path.join(path, "test")
        files = find_files(path, ("test_*.json",), "ChartQA test_human.json / test_augmented.json with png/")
        out = []
        for file in files:
            base = os.path.dirname(os.path.abspath(file))
            split = os.path.basename(file).removeprefix("test_").removesuffix(".json")
            for i, row in enumerate(read_rows(file)):
                image = open_image(os.path.join("png", row["imgname"]), base, f"{file} row {i}")
                sample_id = f"{split}-{i}"
                out.append(Sample(sample_id, [image], str(row["label"]), dict(row), {"split": split}))
        return out

    def prompt(self, sample: Sample) -> str:
        return f"{sample.fields['query']}\nAnswer the question using a single word or phrase."

    def extract(self, sample: Sample, completion: str) -> str:
        return final_text(completion).rstrip(".").strip()

    def score(self, sample: Sample, pred: str) -> float:
        return float(relaxed_correct(sample.answer, pred))
