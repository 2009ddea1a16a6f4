"""Tiny benchmark folders in each benchmark's released layout and schema (tests, docs examples).

``write_fixture(name, folder)`` writes a handful of questions with small generated images and
returns the path to give ``--data``. The rows use the released field names and value forms
(MathVista's pid-keyed testmini.json, MMMU's per-subject parquet with image structs, ChartQA's
test_human/test_augmented JSON with png/, ScienceQA's problems.json + pid_splits.json + images/,
MathVerse's testmini.json list, MATH-V's data/testmini.jsonl, CLS-RL's problem/solution rows);
the contents are made up.
"""

from __future__ import annotations

import io
import json
import os


def _image(path: str | None = None, color=(200, 40, 40), size=(56, 56)):
    from PIL import Image

    im = Image.new("RGB", size, color)
    if path is None:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path)
    return path


def _dump(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if path.endswith(".jsonl"):
            f.writelines(json.dumps(r) + "\n" for r in obj)
        else:
            json.dump(obj, f, indent=1)


def mathvista(folder: str) -> str:
    def meta(task, context, grade, skills, category, source):
        return {
            "split": "testmini",
            "language": "english",
            "source": source,
            "category": category,
            "task": task,
            "context": context,
            "grade": grade,
            "img_width": 56,
            "img_height": 56,
            "skills": skills,
        }

    problems = {
        "1": {
            "question": "How many red objects are there?",
            "image": "images/1.jpg",
            "choices": None,
            "unit": None,
            "precision": None,
            "answer": "3",
            "question_type": "free_form",
            "answer_type": "integer",
            "pid": "1",
            "metadata": meta(
                "figure question answering",
                "synthetic scene",
                "elementary school",
                ["arithmetic reasoning", "numeric commonsense"],
                "math-targeted-vqa",
                "CLEVR-Math",
            ),
            "query": "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.\nQuestion: How many red objects are there?",
        },
        "2": {
            "question": "What is the length of side AB?",
            "image": "images/2.jpg",
            "choices": ["3 cm", "5 cm", "7 cm", "9 cm"],
            "unit": None,
            "precision": None,
            "answer": "5 cm",
            "question_type": "multi_choice",
            "answer_type": "text",
            "pid": "2",
            "metadata": meta(
                "geometry problem solving",
                "geometry diagram",
                "high school",
                ["geometry reasoning", "algebraic reasoning"],
                "math-targeted-vqa",
                "Geometry3K",
            ),
            "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\nQuestion: What is the length of side AB?\nChoices:\n(A) 3 cm\n(B) 5 cm\n(C) 7 cm\n(D) 9 cm",
        },
        "3": {
            "question": "What is the width of the bar?",
            "image": "images/3.jpg",
            "choices": None,
            "unit": "cm",
            "precision": 2,
            "answer": "1.45",
            "question_type": "free_form",
            "answer_type": "float",
            "pid": "3",
            "metadata": meta(
                "textbook question answering",
                "scientific figure",
                "college",
                ["scientific reasoning"],
                "general-vqa",
                "TQA",
            ),
            "query": "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: What is the width of the bar? (Unit: cm)",
        },
    }
    for pid, color in zip(problems, [(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        _image(os.path.join(folder, problems[pid]["image"]), color)
    path = os.path.join(folder, "testmini.json")
    _dump(path, problems)
    return path


def mmmu(folder: str) -> str:
    from mm.imports import require

    pa = require("pyarrow", "writing the MMMU fixture")
    import pyarrow.parquet as pq

    none = [None] * 6

    def row(rid, question, options, answer, qtype, subfield):
        images = [{"bytes": _image(), "path": f"{rid}_1.png"}, *none]
        return {
            "id": rid,
            "question": question,
            "options": str(options),
            "explanation": "",
            **{f"image_{k + 1}": im for k, im in enumerate(images)},
            "img_type": "['Diagrams']",
            "answer": answer,
            "topic_difficulty": "Easy",
            "question_type": qtype,
            "subfield": subfield,
        }

    subjects = {
        "Accounting": [
            row(
                "validation_Accounting_1",
                "<image 1> Which account is debited?",
                ["Cash", "Revenue", "Equity"],
                "B",
                "multiple-choice",
                "Financial Accounting",
            ),
            row(
                "validation_Accounting_2",
                "<image 1> What is the net income in dollars?",
                [],
                "1200",
                "open",
                "Financial Accounting",
            ),
        ],
        "Math": [
            row(
                "validation_Math_1",
                "<image 1> Which graph is linear?",
                ["I", "II", "III", "IV"],
                "D",
                "multiple-choice",
                "Calculus",
            )
        ],
    }
    for subject, rows in subjects.items():
        out = os.path.join(folder, subject, "validation-00000-of-00001.parquet")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out)
    return folder


def chartqa(folder: str) -> str:
    test = os.path.join(folder, "test")
    human = [
        {"imgname": "41699051005347.png", "query": "What is the value of the tallest bar?", "label": "40"},
        {"imgname": "41699051005347.png", "query": "Which country has the lowest share?", "label": "Peru"},
    ]
    augmented = [{"imgname": "two_col_1.png", "query": "What was the revenue in 2019?", "label": "12.5"}]
    for name in ("41699051005347.png", "two_col_1.png"):
        _image(os.path.join(test, "png", name))
    _dump(os.path.join(test, "test_human.json"), human)
    _dump(os.path.join(test, "test_augmented.json"), augmented)
    return test


def scienceqa(folder: str) -> str:
    def problem(question, choices, answer, hint, image, subject, grade, split):
        return {
            "question": question,
            "choices": choices,
            "answer": answer,
            "hint": hint,
            "image": image,
            "task": "closed choice",
            "grade": grade,
            "subject": subject,
            "topic": "geography",
            "category": "Geography",
            "skill": "Read a map",
            "lecture": "",
            "solution": "",
            "split": split,
        }

    problems = {
        "5": problem(
            "Which state is highlighted?",
            ["Ohio", "Utah", "Iowa"],
            1,
            "",
            "image.png",
            "social science",
            "grade4",
            "test",
        ),
        "9": problem(
            "Which animal's mouth is adapted to tear meat?",
            ["lion", "cow"],
            0,
            "Lions eat other animals.",
            "image.png",
            "natural science",
            "grade8",
            "test",
        ),
        "12": problem(
            "Which word is a noun?", ["run", "cat"], 1, "", None, "language science", "grade2", "test"
        ),
        "20": problem(
            "Which ocean is highlighted?",
            ["Pacific", "Indian"],
            0,
            "",
            "image.png",
            "social science",
            "grade5",
            "train",
        ),
    }
    for pid, p in problems.items():
        if p["image"]:
            _image(os.path.join(folder, "images", p["split"], pid, "image.png"))
    _dump(os.path.join(folder, "problems.json"), problems)
    _dump(os.path.join(folder, "pid_splits.json"), {"train": ["20"], "val": [], "test": ["5", "9", "12"]})
    return folder


def mathverse(folder: str) -> str:
    def sample(index, version, question, image, answer, qtype, subject, subfield):
        how = (
            "provide the correct option letter, e.g., A, B, C, D"
            if qtype == "multi-choice"
            else "provide the final value, e.g., 1, 2.5, 300"
        )
        return {
            "sample_index": index,
            "problem_index": "1",
            "problem_version": version,
            "question": question,
            "image": image,
            "answer": answer,
            "question_type": qtype,
            "metadata": {"split": "testmini", "source": "GeoQA", "subject": subject, "subfield": subfield},
            "query_wo": f"Please directly answer the question and {how}.\nQuestion: {question}",
            "query_cot": f"Please first conduct reasoning, and then answer the question and {how} at the end.\nQuestion: {question}",
        }

    rows = [
        sample(
            "1",
            "Text Dominant",
            "In the circle, angle AOB is 80 degrees. Find angle ACB.\nChoices:\nA:40°\nB:50°\nC:80°\nD:100°",
            "images_version_1-4/image_1.png",
            "A",
            "multi-choice",
            "Plane Geometry",
            "Angle",
        ),
        sample(
            "2",
            "Vision Only",
            "",
            "images_version_6/image_1.png",
            "A",
            "multi-choice",
            "Plane Geometry",
            "Angle",
        ),
        sample(
            "3",
            "Text Lite",
            "Find the length L in cm.",
            "images_version_1-4/image_2.png",
            "14",
            "free-form",
            "Solid Geometry",
            "Length",
        ),
    ]
    for r in rows:
        _image(os.path.join(folder, r["image"]))
    path = os.path.join(folder, "testmini.json")
    _dump(path, rows)
    return path


def mathvision(folder: str) -> str:
    rows = [
        {
            "id": "4",
            "question": "How many different digits can you find in this picture?\n<image1>",
            "options": [],
            "answer": "6",
            "solution": None,
            "level": 1,
            "subject": "counting",
            "image": "images/4.jpg",
        },
        {
            "id": "39",
            "question": "Which colour is the cube with the question mark?\n<image1>",
            "options": ["red", "blue", "green", "yellow", "This cannot be worked out for certain."],
            "answer": "A",
            "solution": None,
            "level": 3,
            "subject": "logic",
            "image": "images/39.jpg",
        },
        {
            "id": "91",
            "question": "How long is the room? <image1>",
            "options": ["$6 \\mathrm{~m}$", "$8 \\mathrm{~m}$", "$12 \\mathrm{~m}$"],
            "answer": "C",
            "solution": None,
            "level": 1,
            "subject": "combinatorial geometry",
            "image": "images/91.jpg",
        },
    ]
    for r in rows:
        _image(os.path.join(folder, r["image"]))
    path = os.path.join(folder, "data", "testmini.jsonl")
    _dump(path, rows)
    return path


def cls_rl(folder: str) -> str:
    suffix = (
        "Please output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    )
    rows = [
        {
            "image": "images/0.png",
            "problem": f"What is the flower in the image?\nPlease choose one from list [ rose, tulip, daisy]. {suffix}",
            "solution": "<answer> tulip </answer>",
        },
        {
            "image": "images/1.png",
            "problem": f"What is the flower in the image?\nPlease choose one from list [ daisy, rose, tulip]. {suffix}",
            "solution": "<answer> rose </answer>",
        },
    ]
    for r in rows:
        _image(os.path.join(folder, r["image"]))
    path = os.path.join(folder, "flowers102_test.jsonl")
    _dump(path, rows)
    return path


WRITERS = {
    "mathvista": mathvista,
    "mmmu": mmmu,
    "chartqa": chartqa,
    "scienceqa": scienceqa,
    "mathverse": mathverse,
    "mathvision": mathvision,
    "cls_rl": cls_rl,
}


def write_fixture(name: str, folder: str) -> str:
    """Write the ``name`` fixture under ``folder``; returns the path to evaluate."""
    return WRITERS[name](folder)
