"""ScienceQA-IMG (Lu et al. 2022): the test questions that have an image, as lupantech/ScienceQA
scores them.

Files: the GitHub release's ``data/scienceqa/problems.json`` (pid -> problem) and
``pid_splits.json`` with the images beside them at ``images/test/<pid>/image.png`` (give the folder
holding problems.json, or the file), or the Hugging Face
``test-*.parquet`` (images inline). A problem has ``question``, ``choices``, ``answer`` (the index
of the right choice), ``hint`` (the text context), ``image``, ``subject``, ``grade`` (grade1 ..
grade12) and ``split``.

Prompt (the LLaVA ScienceQA-IMG wording most VLM papers report): ``Context: <hint>`` when there is
one, the question, the options as ``A. text`` lines, "Answer with the option's letter from the
given choices directly." Extraction: the official ``The answer is X.``, else a lone letter or a
leading ``X.``/``(X)``, else the option whose text the reply is; when nothing parses, the official
scorer picks a random option: here seeded by the pid. Categories: subject (NAT / SOC / LAN),
grade band (G1-6 / G7-12) and context (image only, or image + text hint: IMG / TXT in the paper).
"""

from __future__ import annotations

import json
import os
import re

from evaluation.benchmarks.base import (
    Benchmark,
    Sample,
    final_text,
    find_files,
    letters,
    open_image,
    read_rows,
    seeded_choice,
)

SUBJECT = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def grade_band(grade: str) -> str:
    n = int(re.sub(r"\D", "", grade) or 0)
    return "G1-6" if n <= 6 else "G7-12"


class ScienceQA(Benchmark):
    name = "scienceqa"
    source = "github.com/lupantech/ScienceQA (data, models/run_gpt3.py answer rule, evaluations)"

    def load(self, path: str) -> list[Sample]:
        files = find_files(
            path,
            ("problems.json", "data/scienceqa/problems.json", "**/test-*.parquet"),
            "ScienceQA problems.json + pid_splits.json + images/, or test-*.parquet",
        )
        if files[0].endswith(".parquet"):
            rows = [r for f in files for r in read_rows(f)]
            return [
                self._sample(str(i), r, r.get("image"), files[0])
                for i, r in enumerate(rows)
                if r.get("image")
            ]
        problems = {r["_key"]: r for r in read_rows(files[0])}
        base = os.path.dirname(os.path.abspath(files[0]))
        split_file = os.path.join(base, "pid_splits.json")
        if os.path.exists(split_file):
            with open(split_file) as f:
                test = json.load(f)["test"]
        else:
            test = [pid for pid, p in problems.items() if p.get("split") == "test"]
        images = os.path.join(base, "images")
        out = []
        for pid in test:
            p = problems[pid]
            if not p.get("image"):
                continue  # the IMG subset: questions with an image context
            out.append(self._sample(pid, p, os.path.join(images, "test", pid, p["image"]), files[0]))
        return out

    def _sample(self, pid: str, p: dict, image, where: str) -> Sample:
        fields = {k: v for k, v in p.items() if k not in ("image", "_key")}
        cats = {
            "subject": SUBJECT.get(p["subject"], p["subject"]),
            "grade": grade_band(p["grade"]),
            "context": "image+text" if (p.get("hint") or "").strip() else "image",
        }
        return Sample(pid, [open_image(image, "", f"{where} {pid}")], int(p["answer"]), fields, cats)

    def prompt(self, sample: Sample) -> str:
        f = sample.fields
        opts = "\n".join(f"{k}. {c}" for k, c in zip(letters(len(f["choices"])), f["choices"]))
        context = f"Context: {f['hint']}\n" if (f.get("hint") or "").strip() else ""
        return f"{context}{f['question']}\n{opts}\nAnswer with the option's letter from the given choices directly."

    def extract(self, sample: Sample, completion: str) -> int:
        choices = list(sample.fields["choices"])
        opts = letters(len(choices))
        text = final_text(completion)
        for pattern in (r"The answer is ([A-Z])\.", r"^\(?([A-Z])\)?\.?$", r"^\(?([A-Z])[.)]\s"):
            m = re.search(pattern, text.strip())
            if m and m.group(1) in opts:
                return opts.index(m.group(1))
        lowered = [c.lower() for c in choices]
        if text.strip().rstrip(".").lower() in lowered:
            return lowered.index(text.strip().rstrip(".").lower())
        return seeded_choice(list(range(len(choices))), sample.id)

    def score(self, sample: Sample, pred: int) -> float:
        return float(pred == sample.answer)
