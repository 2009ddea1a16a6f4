"""MathVerse testmini (Zhang et al. 2024), following ZrrSkywalker/MathVerse evaluation/.

Files: the release's ``testmini.json`` (a list) with the image folders it names
(``images_version_1-4/``, ``images_version_5/``, ``images_version_6/``) beside it, or the Hugging
Face ``testmini-*.parquet``. A problem has ``sample_index``, ``problem_version`` (Text Dominant,
Text Lite, Vision Intensive, Vision Dominant, Vision Only), ``question``, ``image``, ``answer`` (a
letter for multi-choice, a value otherwise), ``question_type`` (multi-choice / free-form),
``metadata`` (subject, subfield) and the official prompts ``query_cot`` (used here: the CoT
setting the paper reports) and ``query_wo``.

Extraction: the answer-extraction model (the HTTP judge) when one is given, as the official step 1
does; otherwise (or when it fails) rules: a choice letter for multi-choice, the text after
'answer is' (else the whole answer text) for free-form. Scoring: the official step 2 asks a model
whether the extraction matches the answer (its ``--quick_match`` is exact equality); here the
rule match stands in: choice letters must be equal, free-form answers match by
``evaluation.answers.answers_match`` (exact text, numbers within 1e-4 relative,
math-verify when installed). Categories: problem_version and subject.
"""

from __future__ import annotations

import os
import re

from evaluation.answers import answers_match
from evaluation.benchmarks.base import (
    Benchmark,
    Sample,
    final_text,
    find_files,
    open_image,
    read_rows,
)
from evaluation.benchmarks.mathvista import choice_letter


class MathVerse(Benchmark):
    name = "mathverse"
    source = "github.com/ZrrSkywalker/MathVerse evaluation/ (extract_answer_s1.py, score_answer_s2.py)"
    judge_prompt = (
        "Below are a math question and a model's response to it. Extract the model's final answer: "
        "the option letter for a multiple-choice question, otherwise the final value or expression. "
        "Reply with the answer only.\n\n{question}\n\nModel response: {response}\n\nExtracted answer:"
    )

    def load(self, path: str) -> list[Sample]:
        files = find_files(
            path, ("testmini.json", "**/testmini-*.parquet"), "MathVerse testmini.json with its image folders"
        )
        out = []
        for file in files:
            base = os.path.dirname(os.path.abspath(file))
            for row in read_rows(file):
                sid = str(row["sample_index"])
                image = open_image(row.get("image"), base, f"{file} sample {sid}")
                meta = row.get("metadata") or {}
                fields = {k: v for k, v in row.items() if k != "image"}
                cats = {"problem_version": row["problem_version"], "subject": meta.get("subject", "unknown")}
                out.append(Sample(sid, [image], str(row["answer"]), fields, cats))
        return out

    def prompt(self, sample: Sample) -> str:
        f = sample.fields
        return f.get("query_cot") or f.get("query_wo") or f["question"]

    def extract(self, sample: Sample, completion: str) -> str:
        text = final_text(completion)
        if sample.fields["question_type"] == "multi-choice":
            return choice_letter(text, 6) or text
        m = re.search(r"answer is:?\s*(.+)", text, re.I | re.S)
        return (m.group(1) if m else text).strip().rstrip(".")

    def score(self, sample: Sample, pred: str) -> float:
        if sample.fields["question_type"] == "multi-choice":
            return float(str(pred).strip().upper() == sample.answer.strip().upper())
        return float(answers_match(pred, sample.answer))
