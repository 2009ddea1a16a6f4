"""MathVista testmini (Lu et al. 2024), scored the way lupantech/MathVista evaluation/ scores it.

Files: the GitHub release's ``testmini.json`` (pid -> problem) with ``images/`` beside it, or the
Hugging Face ``data/testmini-*.parquet`` (images in ``decoded_image``). A problem carries
``question_type`` (multi_choice / free_form), ``answer_type`` (text / integer / float / list),
``choices``, ``unit``, ``precision`` (decimal places of float answers) and ``query`` (the official
prompt: hint, question, choices), which is used as the prompt when present.

Extraction: the official quick rules (a reply that is one of the choices; a reply that parses as
the integer/float the problem wants), then the answer-extraction model (the HTTP judge) when one is
given; without one (or when it fails) these rules: ``The answer is "X".``, a choice letter, for
numeric answers the last number with the unit and thousands separators stripped.
Scoring (official): multiple choice -> ``(B)`` or ``B`` becomes that choice's text, any other
text the most similar choice (edit distance); integer -> ``str(int(float(x)))``; float ->
``str(round(float(x), precision))``; then the prediction must equal the answer string.
Categories: question_type, answer_type and the metadata's language, source, category, task,
context, grade and skills (a problem counts once per skill).
"""

from __future__ import annotations

import os
import re

from evaluation.benchmarks.base import (
    Benchmark,
    Sample,
    edit_distance,
    final_text,
    find_files,
    letters,
    open_image,
    read_rows,
)

META_KEYS = ("language", "source", "category", "task", "context", "grade", "skills")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")


def choice_letter(text: str, n: int) -> str | None:
    """A choice letter stated in ``text``: ``(B)``, ``B``, ``B.``/``B)`` at the start, or after
    'answer is' / 'option'."""
    opts = "".join(letters(n))
    for pattern in (
        rf"^\(?([{opts}])\)?[.:)]?$",
        rf"\(([{opts}])\)",
        rf"^([{opts}])[.:)]\s",
        rf"(?:answer is|option)\s*:?\s*\(?([{opts}])\b",
    ):
        m = re.search(pattern, text.strip())
        if m:
            return m.group(1)
    return None


def last_number(text: str, unit: str | None = None) -> str | None:
    if unit:
        text = text.replace(unit, " ")
    found = NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


class MathVista(Benchmark):
    name = "mathvista"
    source = "github.com/lupantech/MathVista evaluation/ (extract_answer.py, calculate_score.py)"
    judge_prompt = (
        "Below are a question and a model's response to it. Extract the model's final answer: for a "
        "multiple-choice question the text of the option it chose, otherwise the value alone, "
        "without units. Reply with the answer only.\n\n{question}\n\nModel response: {response}\n\n"
        "Extracted answer:"
    )

    def load(self, path: str) -> list[Sample]:
        files = find_files(
            path,
            ("testmini.json", "data/testmini-*.parquet", "testmini-*.parquet"),
            "MathVista testmini.json with images/, or data/testmini-*.parquet",
        )
        out = []
        for file in files:
            base = os.path.dirname(os.path.abspath(file))
            for row in read_rows(file):
                pid = str(row.get("pid") or row.get("_key"))
                image = open_image(row.get("decoded_image") or row.get("image"), base, f"{file} pid {pid}")
                meta = row.get("metadata") or {}
                fields = {k: v for k, v in row.items() if k not in ("decoded_image", "_key")}
                cats = {"question_type": row["question_type"], "answer_type": row["answer_type"]}
                cats.update({k: meta[k] for k in META_KEYS if meta.get(k) is not None})
                out.append(Sample(pid, [image], str(row["answer"]), fields, cats))
        return out

    def prompt(self, sample: Sample) -> str:
        f = sample.fields
        if f.get("query"):
            return f["query"]
        # the official build_query's zero-shot wording, for rows without a query field
        if f["question_type"] == "multi_choice":
            hint = "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
        elif f["answer_type"] == "integer":
            hint = "Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end."
        elif f["answer_type"] == "float" and int(f.get("precision") or 1) == 1:
            hint = "Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end."
        elif f["answer_type"] == "float":
            hint = "Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end."
        elif f["answer_type"] == "list":
            hint = "Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end."
        else:
            hint = "Please answer the question and provide the final answer at the end."
        question = f["question"] + (f" (Unit: {f['unit']})" if f.get("unit") else "")
        text = f"Hint: {hint}\nQuestion: {question}"
        if f.get("choices"):
            text += "\nChoices:\n" + "\n".join(
                f"({k}) {c}" for k, c in zip(letters(len(f["choices"])), f["choices"])
            )
        return text

    def quick(self, sample: Sample, completion: str) -> str | None:
        """The official rules that settle an answer without the extraction model (else None)."""
        f, text = sample.fields, final_text(completion)
        if text == "":
            return ""
        if f["question_type"] == "multi_choice" and text in (f.get("choices") or []):
            return text
        try:
            if f["answer_type"] == "integer":
                return str(int(text))
            if f["answer_type"] == "float":
                return str(float(text))
        except ValueError:
            pass
        return None

    def extract(self, sample: Sample, completion: str) -> str:
        quick = self.quick(sample, completion)
        if quick is not None:
            return quick
        f, text = sample.fields, final_text(completion)
        m = re.search(r'The answer is "(.*)"\.', text)
        if m:
            return m.group(1)
        if f["question_type"] == "multi_choice":
            return choice_letter(text, len(f["choices"])) or text
        if f["answer_type"] in ("integer", "float"):
            return last_number(text, f.get("unit")) or text
        return text

    def normalize(self, sample: Sample, extraction) -> str | None:
        f = sample.fields
        if f["question_type"] == "multi_choice":
            choices = list(f["choices"])
            text = str(extraction).strip() if extraction is not None else ""
            bracketed = re.findall(r"\(([a-zA-Z])\)", text)
            if bracketed:
                text = bracketed[0].upper()
            if text in letters(len(choices)):
                return choices[letters(len(choices)).index(text)]
            return min(choices, key=lambda c: edit_distance(text, c))  # the first of equals, as official
        try:
            if f["answer_type"] == "integer":
                return str(int(float(extraction)))
            if f["answer_type"] == "float":
                return str(round(float(extraction), int(f["precision"])))
        except (TypeError, ValueError):
            return None
        return None if extraction is None else str(extraction)

    def score(self, sample: Sample, pred) -> float:
        return float(self.normalize(sample, pred) == sample.answer)
