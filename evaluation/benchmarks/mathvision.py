"""MATH-Vision (Wang et al. 2024), following mathllm/MATH-V evaluation/.

Files: the release's ``data/test.jsonl`` or ``data/testmini.jsonl`` (one problem a line) with
``images/`` beside ``data/`` (the rows name ``images/<id>.jpg``), or the Hugging Face
``test-*.parquet`` / ``testmini-*.parquet`` (images in ``decoded_image``). A problem has ``id``,
``question`` (with ``<image1>`` markers), ``options`` (empty for free-form), ``answer`` (a letter
when there are options), ``level`` (1-5) and ``subject``.

Prompt: the question, the options as ``(A) text`` lines, and the request to put the final answer
in ``\\boxed{}`` (one letter for multiple choice), as the released evaluation reads the last
``\\boxed{}``. Extraction (``evaluate.py`` / ``find_math_answer``): a reply ending in `` B.`` or
``(B).`` is B; otherwise the text after 'the answer is' up to the sentence end; the content of the
last ``\\boxed{}``; the value after the last '='; spaces, ``\\left``/``\\right``, degree signs,
dollar signs and ``\\text`` stripped. Scoring (``is_equal``): equal to the answer letter or to that
option's text, ignoring case, or numerically equal at 2 decimals (latex2sympy there; here numbers,
``\\frac{a}{b}``, ``a/b``, and math-verify when installed). Categories: subject and level.
"""

from __future__ import annotations

import os
import re

from evaluation.answers import ANSWER, BOXED, _math_verify
from evaluation.benchmarks.base import Benchmark, Sample, find_files, letters, open_image, read_rows

FRAC = re.compile(r"^\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$|^(-?[\d.]+)/(-?[\d.]+)$")


def math_answer(text: str) -> str:
    """The cleaned answer of a reply (see the module docstring)."""
    text = text.strip()
    for c in "ABCDE":
        if text.endswith((f" {c}.", f" ({c}).")) or text.startswith((f"{c}\n", f"({c})\n")):
            return c
    boxed = BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    else:
        for flag in ("the final answer is", "the correct answer is", "the answer should be", "the answer is"):
            i = text.lower().rfind(flag)
            if i >= 0:
                text = re.split(r"\n|\. ", text[i + len(flag) :].strip())[0]
                break
    text = text.split("=")[-1].split("\\approx")[-1]
    for old in (" ", "\\left", "\\right", "^{\\circ}", "^\\circ", "\\$", "$", "\\text", "\\mbox", "\\!"):
        text = text.replace(old, "")
    text = text.replace("dfrac", "frac").replace("tfrac", "frac")
    return text.rstrip(".").lstrip(":").strip()


def value(text: str) -> float | None:
    text = text.strip().replace(",", "")
    while text[:1] + text[-1:] in ("{}", "()"):
        text = text[1:-1]
    m = FRAC.match(text)
    try:
        if m:
            num, den = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            return float(num) / float(den)
        return float(text.rstrip("%"))
    except (ValueError, ZeroDivisionError):
        return None


def is_equal(pred: str, gold: str) -> bool:
    pred, gold = pred.lower().strip(), gold.lower().strip()
    if not pred.replace(" ", "") or not gold.replace(" ", ""):
        return False
    if pred == gold:
        return True
    p, g = value(pred), value(gold)
    if p is not None and g is not None:
        return round(p, 2) == round(g, 2)
    return _math_verify(pred, gold)


class MathVision(Benchmark):
    name = "mathvision"
    source = "github.com/mathllm/MATH-V evaluation/ (evaluate.py, utils.py)"

    def load(self, path: str) -> list[Sample]:
        files = find_files(
            path,
            (
                "data/test.jsonl",
                "test.jsonl",
                "data/testmini.jsonl",
                "testmini.jsonl",
                "**/test-*.parquet",
                "**/testmini-*.parquet",
            ),
            "MATH-V data/test.jsonl (or testmini.jsonl) with images/",
        )
        out = []
        for file in files:
            here = os.path.dirname(os.path.abspath(file))
            base = os.path.dirname(here) if os.path.basename(here) == "data" else here
            for row in read_rows(file):
                rid = str(row["id"])
                image = open_image(row.get("decoded_image") or row.get("image"), base, f"{file} id {rid}")
                fields = {k: v for k, v in row.items() if k not in ("decoded_image", "image")}
                fields["options"] = list(row.get("options") or [])
                cats = {"subject": row["subject"], "level": f"level {row['level']}"}
                out.append(Sample(rid, [image], str(row["answer"]), fields, cats))
        return out

    def prompt(self, sample: Sample) -> str:
        f = sample.fields
        text = f["question"]
        if f["options"]:
            text += "\nChoices:\n" + "\n".join(
                f"({k}) {o}" for k, o in zip(letters(len(f["options"])), f["options"])
            )
            return (
                text
                + "\nPlease solve the problem step by step and put the letter of the correct option in \\boxed{}."
            )
        return text + "\nPlease solve the problem step by step and put your final answer in \\boxed{}."

    def extract(self, sample: Sample, completion: str) -> str:
        blocks = ANSWER.findall(completion)
        return math_answer(blocks[-1] if blocks else completion)

    def score(self, sample: Sample, pred: str) -> float:
        opts = sample.fields["options"]
        gold_text = opts[ord(sample.answer) - ord("A")] if opts and len(sample.answer) == 1 else ""
        return float(is_equal(pred, sample.answer) or (bool(gold_text) and is_equal(pred, gold_text)))
