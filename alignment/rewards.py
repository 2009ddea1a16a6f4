"""Verifiable rewards: plain functions ``(completions, **sample) -> list[float]``.

``completions`` are the G completions sampled for one prompt; ``sample`` is that prompt's
record fields (``answer``, ``meta``, and for tool turns ``image_sizes`` / ``images``). Configs
name rewards by their registered name with a weight (``combine``). Built in:

==================== =====================================================================
format_think_answer  1 if the completion is exactly ``<think>...</think> <answer>...</answer>``
                     with one block of each (repeated answer blocks fail), else 0
accuracy             1 if the single ``<answer>`` matches ``answer`` (math-verify when
                     installed, numbers with a tolerance, choice letters, normalised text);
                     an empty or repeated answer scores 0
cls_accuracy         CLS-RL: the ``<answer>`` text, stripped and lower-cased, equals the label
cls_equality         No-Thinking-CLS-RL: the raw completion equals the label exactly
contains_answer      the answer occurs in the completion (lenient, case-insensitive)
virc_turn            ViRC Strategic RL, one next turn: -1 on any protocol violation; an
                     answer 0.8 if correct; a tool call 0.5 x reasoning + 0.4 x crop + 0.1 if
                     the tool is the reference's (the call is checked against the image sizes
                     and, when the images are given, executed: a string that merely looks like
                     a call earns nothing)
==================== =====================================================================

Scores that need a model go through a :class:`Judge`; :class:`RuleJudge` (the default) needs
nothing, :class:`HTTPJudge` asks an OpenAI-compatible server (timeouts, retries, a cache).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable

from alignment.evaluation.answers import answers_match

REWARDS: dict[str, Callable] = {}
_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.S)


def reward(fn: Callable) -> Callable:
    """Register a reward function under its name."""
    REWARDS[fn.__name__] = fn
    return fn


def _single_answer(text: str) -> str | None:
    blocks = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    return blocks[0].strip() if len(blocks) == 1 and text.count("<answer>") == 1 else None


@reward
def format_think_answer(completions: list[str], **sample) -> list[float]:
    out = []
    for c in completions:
        once = c.count("<think>") == 1 and c.count("<answer>") == 1 and c.count("</answer>") == 1
        out.append(float(bool(once and _FORMAT.fullmatch(c))))
    return out


@reward
def accuracy(completions: list[str], answer=None, **sample) -> list[float]:
    return [float(answers_match(_single_answer(c), answer)) for c in completions]


@reward
def cls_accuracy(completions: list[str], answer=None, **sample) -> list[float]:
    label = str(answer).strip().lower()
    return [float(bool(label) and (_single_answer(c) or "").lower() == label) for c in completions]


@reward
def contains_answer(completions: list[str], answer=None, **sample) -> list[float]:
    """1 if the answer text occurs anywhere in the completion (case-insensitive): the lenient
    substring rule CLS-RL evaluates with; the GRPO quickstart's letter-spotting task uses it."""
    want = str(answer).strip().lower()
    return [float(bool(want) and want in c.lower()) for c in completions]


@reward
def cls_equality(completions: list[str], answer=None, **sample) -> list[float]:
    return [float(c == str(answer)) for c in completions]


# ----------------------------------------------------------------------------- judges


class Judge:
    """Scores the reasoning of a turn in [0, 1]."""

    def score(self, question: str, response: str, reference: str = "") -> float:
        raise NotImplementedError


class RuleJudge(Judge):
    """No model: a thought of at least ``min_words`` words without a repetition loop scores 1."""

    def __init__(self, min_words: int = 3):
        self.min_words = min_words

    def score(self, question: str, response: str, reference: str = "") -> float:
        from vision_tools.protocol import find_repetition

        words = response.split()
        return float(len(words) >= self.min_words and find_repetition(response) is None)


class JudgeUnavailable(RuntimeError):
    """The judge's endpoint failed every retry (raised only where no fallback is wanted)."""


class HTTPJudge(Judge):
    """An OpenAI-compatible chat endpoint asked for a 0-10 score; timeouts, retries and a cache.

    ``prompt`` (default: ViRC's question, does the reasoning support a correct next step) has the
    fields {question}, {reference} and {response}. When every retry fails: with
    ``fallback=True`` the rule-based score is used (with a warning), so training goes on; with
    ``fallback=False`` ``JudgeUnavailable`` is raised, for callers that count the failures.
    ``failures`` counts the questions every retry failed on.
    """

    PROMPT = (
        "Rate how well the reasoning below supports a correct next step for the question, from 0 "
        "(wrong or empty) to 10 (sound and specific). Reply with the number only.\n\n"
        "Question: {question}\n\nReference (may be empty): {reference}\n\nReasoning: {response}"
    )

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str = "",
        timeout: float = 30.0,
        retries: int = 3,
        prompt: str | None = None,
        fallback: bool = True,
    ):
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries = model, api_key, timeout, retries
        self.prompt = prompt or self.PROMPT
        self.cache: dict[str, float] = {}
        self.fallback = RuleJudge() if fallback else None
        self.requests, self.failures = 0, 0

    def score(self, question: str, response: str, reference: str = "") -> float:
        key = hashlib.sha256(json.dumps([question, response, reference]).encode()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self._ask(question, response, reference)
        return self.cache[key]

    def _ask(self, question: str, response: str, reference: str) -> float:
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": self.prompt.format(question=question, response=response, reference=reference),
                }
            ],
        }
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.retries):
            self.requests += 1
            try:
                req = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    text = json.load(r)["choices"][0]["message"]["content"]
                m = re.search(r"\d+(\.\d+)?", text)
                if m is None:
                    raise ValueError(f"no score in the judge's reply {text[:80]!r}")
                return min(10.0, float(m.group(0))) / 10
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError) as e:
                last = e
                time.sleep(min(2.0, 0.1 * 2**attempt))
        self.failures += 1
        if self.fallback is None:
            raise JudgeUnavailable(f"judge {self.url} failed {self.retries} times ({last})")
        warnings.warn(
            f"judge {self.url} failed {self.retries} times ({last}); using the rule-based score", stacklevel=2
        )
        return self.fallback.score(question, response, reference)


# ----------------------------------------------------------------------------- ViRC turns


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def crop_score(box: list[float], reference: list[float] | None, size: tuple[int, int]) -> float:
    """1.0 for a precise crop (IoU >= 0.5 with the reference), 0.8 for (nearly) the whole image,
    otherwise 0.8 x IoU / 0.5 (partial credit); 0.8 without a reference box."""
    whole = [0, 0, size[0], size[1]]
    if reference is None:
        return 0.8
    if iou(box, whole) >= 0.9 and iou(reference, whole) < 0.9:
        return 0.8  # looking at everything is not a precise crop, however much it overlaps
    overlap = iou(box, reference)
    return 1.0 if overlap >= 0.5 else 0.8 * overlap / 0.5


@reward
def virc_turn(completions: list[str], answer=None, judge: Judge | None = None, **sample) -> list[float]:
    """ViRC Strategic-RL reward of one next turn (see the module docstring).

    ``sample``: ``image_sizes`` [(w, h), ...] (or ``images``: the PIL images, to execute the call),
    ``question``, and ``meta`` with the reference ``tool`` name and ``bbox`` of the next step.
    """
    from vision_tools.protocol import parse_turn
    from vision_tools.tools import ToolContext, ToolError, as_toolset

    judge = judge or RuleJudge()
    meta = sample.get("meta") or {}
    images = sample.get("images")
    sizes = [tuple(s) for s in sample.get("image_sizes") or [im.size for im in images or []]]
    tools = as_toolset(None)
    ref_box = meta.get("bbox")
    ref_box = ref_box[0] if ref_box and isinstance(ref_box[0], list | tuple) else ref_box
    out = []
    for c in completions:
        ctx = (
            ToolContext(images=list(images), coords=meta.get("coords", "dynamic"))
            if images
            else ToolContext(sizes=sizes)
        )
        turn = parse_turn(c, tools, ctx if sizes else None)
        if not turn.ok:
            out.append(-1.0)
            continue
        if turn.kind == "answer":
            out.append(0.8 if answers_match(turn.answer, answer) else 0.0)
            continue
        if not sizes:  # without the images' sizes a call cannot be verified: no credit
            out.append(0.0)
            continue
        if images:
            try:
                tools[turn.call.name](ctx, turn.call.arguments)  # executed, not just well-formed
            except ToolError:
                out.append(-1.0)
                continue
        args = turn.call.arguments
        index = int(args.get("image_index", 0))
        crop = crop_score(args["bbox_2d"], ref_box, sizes[index]) if turn.call.name == "crop_image" else 0.8
        reasoning = judge.score(str(sample.get("question", "")), turn.think, str(meta.get("reasoning", "")))
        same_tool = float(turn.call.name == meta.get("tool", "crop_image"))
        out.append(0.5 * reasoning + 0.4 * crop + 0.1 * same_tool)
    return out


def combine(
    weights: dict[str, float], completions: list[str], **sample
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the named rewards, and each reward's own scores (for the metrics)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; registered: {sorted(REWARDS)}")
    parts = {name: REWARDS[name](completions, **sample) for name in weights}
    total = [sum(weights[n] * parts[n][i] for n in weights) for i in range(len(completions))]
    return total, parts


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
