"""Answer extraction and matching, shared by evaluation and the accuracy rewards.

``extract_answer`` takes the text of the last ``<answer>...</answer>`` block (else the last
``\\boxed{...}``, else ``None``). ``answers_match`` compares a predicted answer with the reference:
math-verify when installed and both parse as math, then numbers with a tolerance, choice
letters (``B``, ``(B)``, ``B.`` or ``Answer: B``), then normalised strings. An empty answer never
matches (the empty-``<answer></answer>`` reward hack).

Classification (CLS-RL's released evaluation): ``class_answer`` is the first ``<answer>`` block or,
failing that, the whole completion (No-Thinking-CLS-RL answers untagged); ``class_matches`` is
true when the label, stripped and lower-cased (``_`` read as a space too), is a substring of it.
This is more lenient than the training reward (a candidate listing several classes matches), as
in the paper's numbers.
"""

from __future__ import annotations

import re

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
CHOICE = re.compile(r"^\(?([A-Ha-h])\)?[.:)]?$")
NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def extract_answer(text: str) -> str | None:
    found = ANSWER.findall(text)
    if found:
        return found[-1].strip()
    boxed = BOXED.findall(text)
    return boxed[-1].strip() if boxed else None


def class_answer(text: str) -> str:
    """The ``<answer>`` block (the first), else the whole completion; stripped."""
    found = ANSWER.search(text)
    return (found.group(1) if found else text).strip()


def class_matches(pred: str | None, label) -> bool:
    """CLS-RL's evaluation rule: the normalised label is a substring of the normalised answer."""
    if pred is None or label is None:
        return False
    p, g = pred.strip().lower(), str(label).strip().lower()
    return bool(g) and (g in p or g.replace("_", " ") in p)


def normalize(s: str) -> str:
    s = s.strip().lower()
    s = re.sub(r"^(the answer is|answer:|answer)\s*", "", s)
    s = s.replace("$", "").replace("\\%", "%").rstrip(".").strip()
    return re.sub(r"\s+", " ", s)


def _number(s: str) -> float | None:
    s = s.replace(",", "").rstrip("%").strip()
    return float(s) if NUMBER.match(s) else None


def _choice(s: str) -> str | None:
    m = CHOICE.match(s.strip())
    return m.group(1).upper() if m else None


def answers_match(pred: str | None, gold, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    if pred is None or gold is None:
        return False
    p, g = normalize(str(pred)), normalize(str(gold))
    if not p:
        return False
    pn, gn = _number(p), _number(g)
    if pn is not None and gn is not None:
        return abs(pn - gn) <= max(abs_tol, rel_tol * abs(gn))
    pc, gc = _choice(p), _choice(g)
    if gc is not None and pc is not None:
        return pc == gc
    if p == g:
        return True
    return _math_verify(str(pred), str(gold))


def _math_verify(pred: str, gold: str) -> bool:
    from mm.imports import is_available

    if not is_available("math_verify"):
        return False
    from math_verify import parse, verify

    try:
        gp, pp = parse(gold), parse(pred)
        return bool(gp and pp and verify(gp, pp))
    except Exception:
        return False
