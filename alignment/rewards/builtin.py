"""The built-in verifiable rewards (``(completions, **sample) -> list[float]``; see
``alignment.rewards`` for the table), and DAPO's soft overlong punishment."""

from __future__ import annotations

import re

from evaluation.answers import answers_match

_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.S)
_CLS_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.S)  # CLS-RL's, as released


def _single_answer(text: str) -> str | None:
    blocks = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    return blocks[0].strip() if len(blocks) == 1 and text.count("<answer>") == 1 else None


def _one_block_each(text: str) -> bool:
    return text.count("<think>") == 1 and text.count("<answer>") == 1 and text.count("</answer>") == 1


def format_think_answer(completions: list[str], **sample) -> list[float]:
    return [float(bool(_one_block_each(c) and _FORMAT.fullmatch(c))) for c in completions]


def cls_format(completions: list[str], **sample) -> list[float]:
    """CLS-RL's format reward: the released full match (no text, not even whitespace, outside the
    tags); one block of each, so repeated answer blocks do not farm it."""
    return [float(bool(_one_block_each(c) and _CLS_FORMAT.fullmatch(c))) for c in completions]


def accuracy(completions: list[str], answer=None, **sample) -> list[float]:
    return [float(answers_match(_single_answer(c), answer)) for c in completions]


def cls_accuracy(completions: list[str], answer=None, **sample) -> list[float]:
    """CLS-RL's accuracy reward: the ``<answer>`` text, or the whole completion when it has no
    answer block (as released), equals the label after strip + lower-case."""
    label = str(answer).strip().lower()
    out = []
    for c in completions:
        pred = _single_answer(c) if "<answer>" in c else c.strip()
        out.append(float(bool(label) and (pred or "").lower() == label))
    return out


def contains_answer(completions: list[str], answer=None, **sample) -> list[float]:
    """1 if the answer text occurs anywhere in the completion (case-insensitive): the lenient
    substring rule CLS-RL evaluates with; the GRPO quickstart's letter-spotting task uses it."""
    want = str(answer).strip().lower()
    return [float(bool(want) and want in c.lower()) for c in completions]


def cls_equality(completions: list[str], answer=None, **sample) -> list[float]:
    return [float(c == str(answer)) for c in completions]


def soft_overlong_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO's soft overlong punishment R_length (Yu et al. 2025, eq. 13), added to the reward:

        0                                     if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
        -1                                    if |y| > L_max

    ``length`` |y| the completion's generated tokens, ``max_length`` L_max, ``cache`` L_cache
    (DAPO: L_max 20,480 with a 4,096-token cache: no penalty up to 16,384 tokens, then linear
    down to -1 at the limit).
    """
    if not 0 < cache <= max_length:
        raise ValueError(f"overlong cache {cache} must be in 1..{max_length} (the length limit)")
    if length <= max_length - cache:
        return 0.0
    if length <= max_length:
        return ((max_length - cache) - length) / cache
    return -1.0
