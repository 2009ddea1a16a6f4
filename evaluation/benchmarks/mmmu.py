"""MMMU validation (Yue et al. 2024), parsed and scored like MMMU-Benchmark/MMMU eval/.

Files: the Hugging Face release, one folder per subject with ``validation-*.parquet``
(``MMMU/Accounting/validation-00000-of-00001.parquet``, ...), or one such parquet file. A row has
``id`` (``validation_<Subject>_<n>``), ``question`` (with ``<image k>`` markers), ``options`` (a
Python-list string), ``answer`` (a letter, or text for open questions), ``question_type``
(multiple-choice / open), ``image_1`` ... ``image_7`` (parquet image structs) and ``subfield``.

Prompt (the eval's): the question, then ``(A) option`` lines and "Answer with the option's letter
from the given choices directly." for multiple choice, "Answer the question using a single word or
phrase." for open questions.
Multiple choice (``parse_multi_choice_response``): strip punctuation at the ends; ``(A)`` forms
first, else `` A `` standing alone; else, in a reply of more than 5 words, the options' text; of
several candidates the last one in the reply; nothing found -> a random letter (seeded here by the
sample id, so reruns agree). Open (``parse_open_response``): the tails after 'so', 'is',
'therefore', 'answer', ... of each sentence, plus every number in them, normalised (numbers
rounded to 2 decimals, text lower-cased); correct when a number equals the answer or the answer
text occurs in a text candidate. Categories: subject and discipline (MMMU's six).
"""

from __future__ import annotations

import ast
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

DISCIPLINES = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}
DISCIPLINE_OF = {s: d for d, subjects in DISCIPLINES.items() for s in subjects}
KEY_WORDS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def parse_multi_choice(response: str, options: list[str], key: str) -> str:
    """The letter a reply chooses (see the module docstring)."""
    choices = letters(len(options))
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(ch)
    response = f" {response} "
    bracketed = [c for c in choices if f"({c})" in response]
    plain = [] if bracketed else [c for c in choices if f" {c} " in response]
    by_text = []
    if not (bracketed or plain) and len(response.split()) > 5:
        by_text = [c for c, o in zip(choices, options) if o.lower() in response.lower()]
    if bracketed:
        return max(bracketed, key=lambda c: response.rfind(f"({c})"))
    if plain:
        return max(plain, key=lambda c: response.rfind(f" {c} "))
    if by_text:
        return max(by_text, key=lambda c: response.lower().rfind(options[choices.index(c)].lower()))
    return seeded_choice(choices, key)


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize(s: str) -> list:
    """A number -> [it rounded to 2 decimals]; a single character -> padded both ways (so it
    matches only as a word); other text -> [lower-cased]."""
    s = s.strip()
    if _is_number(s):
        return [round(float(s.replace(",", "")), 2)]
    s = s.lower()
    return [" " + s, s + " "] if len(s) == 1 else [s]


def numbers_in(s: str) -> list[str]:
    with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", s)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", s)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", s)
    return with_commas + scientific + simple


def parse_open(response: str) -> list:
    """Normalised answer candidates of an open reply (see the module docstring)."""
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response.strip().strip(".").lower())
    tails = []
    for i, sentence in enumerate(sentences):
        words = KEY_WORDS + (("=",) if i == len(sentences) - 1 else ())
        found = [sentence.split(w)[-1].strip() for w in words if w in sentence]
        shortest = min(found, key=len) if found else None
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            tails.append(shortest)
    tails = tails or [response.strip().strip(".").lower()]
    candidates = tails + [n for t in tails for n in numbers_in(t)]
    out = []
    for c in candidates:
        for v in normalize(c):
            if v not in out:
                out.append(v)
    return out


def open_correct(answer, candidates: list) -> bool:
    golds = [g for a in (answer if isinstance(answer, list) else [answer]) for g in normalize(str(a))]
    for c in candidates:
        if isinstance(c, str):
            if any(isinstance(g, str) and g in c for g in golds):
                return True
        elif c in golds:
            return True
    return False


class MMMU(Benchmark):
    name = "mmmu"
    source = "github.com/MMMU-Benchmark/MMMU eval/ (eval_utils.py, data_utils.py)"

    def load(self, path: str) -> list[Sample]:
        files = find_files(path, ("**/validation-*.parquet",), "MMMU <Subject>/validation-*.parquet files")
        out = []
        for file in files:
            base = os.path.dirname(os.path.abspath(file))
            for row in read_rows(file):
                rid = row["id"]
                images = [
                    open_image(row[f"image_{k}"], base, f"{file} {rid}")
                    for k in range(1, 8)
                    if row.get(f"image_{k}")
                ]
                subject = re.sub(r"^[a-z]+_|_\d+$", "", rid)
                fields = {k: v for k, v in row.items() if not k.startswith("image_")}
                fields["options"] = ast.literal_eval(row["options"]) if row.get("options") else []
                answer = row["answer"]
                if row["question_type"] != "multiple-choice" and str(answer).startswith("["):
                    answer = ast.literal_eval(answer)
                cats = {"subject": subject, "discipline": DISCIPLINE_OF.get(subject, "other")}
                out.append(Sample(rid, images, answer, fields, cats))
        return out

    def prompt(self, sample: Sample) -> str:
        f = sample.fields
        if f["question_type"] == "multiple-choice":
            opts = "\n".join(f"({k}) {o}" for k, o in zip(letters(len(f["options"])), f["options"]))
            return f"{f['question']}\n\n{opts}\n\nAnswer with the option's letter from the given choices directly."
        return f"{f['question']}\n\nAnswer the question using a single word or phrase."

    def extract(self, sample: Sample, completion: str):
        text = final_text(completion)
        if sample.fields["question_type"] == "multiple-choice":
            return parse_multi_choice(text, list(sample.fields["options"]), sample.id)
        return parse_open(text)

    def score(self, sample: Sample, pred) -> float:
        if sample.fields["question_type"] == "multiple-choice":
            golds = sample.answer if isinstance(sample.answer, list) else [sample.answer]
            return float(pred in golds)
        return float(open_correct(sample.answer, pred))
