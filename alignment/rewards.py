"""Verifiable rewards: plain functions ``(completions, **sample) -> list[float]``.

``completions`` are the G completions sampled for one prompt; ``sample`` is that prompt's
record fields (``answer``, ``meta``, and for tool turns ``image_sizes`` / ``images``). Configs
name rewards by their registered name with a weight (``combine``), or name a user's function as
``path/to/file.py:function`` (``reward_weights`` loads, checks and registers it). Built in:

==================== =====================================================================
format_think_answer  1 if the completion is exactly ``<think>...</think> <answer>...</answer>``
                     with one block of each (repeated answer blocks fail), else 0
accuracy             1 if the single ``<answer>`` matches ``answer`` (math-verify when
                     installed, numbers with a tolerance, choice letters, normalised text);
                     an empty or repeated answer scores 0
cls_format           CLS-RL: the completion is ``<think>...</think>``, optional whitespace,
                     ``<answer>...</answer>`` and nothing else (the released full match; one
                     block of each)
cls_accuracy         CLS-RL: the ``<answer>`` text (the whole completion when there is none),
                     stripped and lower-cased, equals the label; several answer blocks score 0
cls_equality         No-Thinking-CLS-RL: the raw completion equals the label exactly
contains_answer      the answer occurs in the completion (lenient, case-insensitive)
virc_turn            ViRC Strategic RL, one next turn: -1 on any protocol violation; an
                     answer 0.8 if correct; a tool call 0.5 x reasoning + 0.4 x crop + 0.1 if
                     the tool is the reference's (the call is checked against the image sizes
                     and, when the images are given, executed: a string that merely looks like
                     a call earns nothing)
==================== =====================================================================

Scores that need a model go through a :class:`Judge`. ViRC scores a turn's reasoning with a 72B
model: :class:`HTTPJudge` asks any OpenAI-compatible server (timeouts, retries, a cache that can
live in a file across runs); a training config reaches it through its ``judge:`` section
(:class:`JudgeConfig`: ``kind: http``, ``url``, ``model``, ``timeout``, ``cache``). Without one,
:class:`RuleJudge` stands in: a rule-based fallback (1 for a non-trivial, loop-free thought), not
the paper's judge; the HTTP judge falls back to it too when its server fails every retry.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from alignment.evaluation.answers import answers_match
from mm.config import ConfigError, opt
from mm.plugins import is_ref, load_function

REWARDS: dict[str, Callable] = {}
_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.S)
_CLS_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.S)  # CLS-RL's, as released


def reward(fn: Callable) -> Callable:
    """Register a reward function under its name."""
    REWARDS[fn.__name__] = fn
    return fn


def _single_answer(text: str) -> str | None:
    blocks = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    return blocks[0].strip() if len(blocks) == 1 and text.count("<answer>") == 1 else None


def _one_block_each(text: str) -> bool:
    return text.count("<think>") == 1 and text.count("<answer>") == 1 and text.count("</answer>") == 1


@reward
def format_think_answer(completions: list[str], **sample) -> list[float]:
    return [float(bool(_one_block_each(c) and _FORMAT.fullmatch(c))) for c in completions]


@reward
def cls_format(completions: list[str], **sample) -> list[float]:
    """CLS-RL's format reward: the released full match (no text, not even whitespace, outside the
    tags); one block of each, so repeated answer blocks do not farm it."""
    return [float(bool(_one_block_each(c) and _CLS_FORMAT.fullmatch(c))) for c in completions]


@reward
def accuracy(completions: list[str], answer=None, **sample) -> list[float]:
    return [float(answers_match(_single_answer(c), answer)) for c in completions]


@reward
def cls_accuracy(completions: list[str], answer=None, **sample) -> list[float]:
    """CLS-RL's accuracy reward: the ``<answer>`` text, or the whole completion when it has no
    answer block (as released), equals the label after strip + lower-case."""
    label = str(answer).strip().lower()
    out = []
    for c in completions:
        pred = _single_answer(c) if "<answer>" in c else c.strip()
        out.append(float(bool(label) and (pred or "").lower() == label))
    return out


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
    """The fallback when no model judge is configured (or it is unreachable): a thought of at
    least ``min_words`` words without a repetition loop scores 1. A stand-in, not a judge of
    whether the reasoning is right."""

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
    ``failures`` counts the questions every retry failed on. ``cache_file``: a JSONL file of
    (key, score) lines, read at start and appended to, so a resumed or repeated run asks again
    only what it has not asked (fallback scores are not cached).
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
        cache_file: str | None = None,
    ):
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries = model, api_key, timeout, retries
        self.prompt = prompt or self.PROMPT
        self.cache: dict[str, float] = {}
        self.cache_file = cache_file
        if cache_file and os.path.isfile(cache_file):
            with open(cache_file) as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        self.cache[row["key"]] = float(row["score"])
        self.fallback = RuleJudge() if fallback else None
        self.requests, self.failures = 0, 0

    def score(self, question: str, response: str, reference: str = "") -> float:
        key = hashlib.sha256(json.dumps([self.model, question, response, reference]).encode()).hexdigest()
        if key not in self.cache:
            score = self._ask(question, response, reference)
            if score is None:  # every retry failed: the fallback's score, asked again next time
                return self.fallback.score(question, response, reference)
            self.cache[key] = score
            if self.cache_file:
                with open(self.cache_file, "a") as f:
                    f.write(json.dumps({"key": key, "score": score}) + "\n")
        return self.cache[key]

    def _ask(self, question: str, response: str, reference: str) -> float | None:
        """The endpoint's score, or None when every retry failed and a fallback exists."""
        content = self.prompt.format(question=question, response=response, reference=reference)
        try:
            return self.complete(content, self._score_of)
        except JudgeUnavailable as e:
            if self.fallback is None:
                raise
            warnings.warn(f"{e}; using the rule-based score", stacklevel=3)
            return None

    @staticmethod
    def _score_of(text: str) -> float:
        m = re.search(r"\d+(\.\d+)?", text)
        if m is None:
            raise ValueError(f"no score in the judge's reply {text[:80]!r}")
        return min(10.0, float(m.group(0))) / 10

    def complete(self, content: str, parse: Callable = str):
        """The endpoint's reply to one user message (temperature 0), passed through ``parse``;
        a failed request or a ``ValueError`` from ``parse`` is retried, and after ``retries``
        failures ``JudgeUnavailable`` is raised (and counted in ``failures``). Also used by the
        benchmarks that extract answers with a model (``alignment.evaluation.benchmarks``)."""
        body = {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.retries):
            self.requests += 1
            try:
                req = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return parse(json.load(r)["choices"][0]["message"]["content"])
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError) as e:
                last = e
                time.sleep(min(2.0, 0.1 * 2**attempt))
        self.failures += 1
        raise JudgeUnavailable(f"judge {self.url} failed {self.retries} times ({last})")


@dataclass
class JudgeConfig:
    """The ``judge:`` section of a GRPO config: who scores the reasoning of a turn (``virc_turn``)."""

    kind: Literal["rule", "http"] = opt(
        "rule",
        "rule: the rule-based fallback (no model; not the paper's judge); http: an OpenAI-compatible "
        "endpoint (ViRC: a 72B model)",
    )
    url: str = opt("", "http: the endpoint's base URL, e.g. http://judge:8000/v1")
    model: str = opt("", "http: the model name sent to the endpoint")
    api_key_env: str = opt(
        "MMPOST_JUDGE_KEY", "http: environment variable holding the API key (may be unset)"
    )
    timeout: float = opt(30.0, "http: seconds per request")
    retries: int = opt(3, "http: attempts per question before the rule-based fallback is used")
    cache: str = opt("", "http: JSONL file keeping scores across runs (empty: in memory only)")

    def build(self) -> Judge:
        if self.kind == "rule":
            return RuleJudge()
        if not self.url or not self.model:
            raise ValueError(
                "judge.kind=http needs judge.url (the endpoint, e.g. http://host:8000/v1) and judge.model"
            )
        return HTTPJudge(
            self.url,
            self.model,
            os.environ.get(self.api_key_env, ""),
            timeout=self.timeout,
            retries=self.retries,
            cache_file=self.cache or None,
        )


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
def virc_turn(
    completions: list[str], answer=None, judge: Judge | None = None, coords: str | None = None, **sample
) -> list[float]:
    """ViRC Strategic-RL reward of one next turn (see the module docstring).

    ``sample``: ``image_sizes`` [(w, h), ...] (or ``images``: the PIL images, to execute the call),
    ``question``, and ``meta`` with the reference ``tool`` name and ``bbox`` of the next step.
    ``judge`` scores the reasoning (default: the rule-based fallback); ``coords`` is how the
    model's boxes are meant (the trainer passes ``rollout.coords``; else ``meta.coords``, else
    dynamic pixels). Scale factors are checked as RL checks them: 0.25-0.5 or 1.5-4 only.
    """
    from vision_tools.protocol import parse_turn
    from vision_tools.tools import ToolContext, ToolError, as_toolset

    judge = judge or RuleJudge()
    meta = sample.get("meta") or {}
    coords = coords or meta.get("coords", "dynamic")
    images = sample.get("images")
    sizes = [tuple(s) for s in sample.get("image_sizes") or [im.size for im in images or []]]
    tools = as_toolset(None)
    ref_box = meta.get("bbox")
    ref_box = ref_box[0] if ref_box and isinstance(ref_box[0], list | tuple) else ref_box
    out = []
    for c in completions:
        ctx = (
            ToolContext(images=list(images), coords=coords, snap_scale=False)
            if images
            else ToolContext(sizes=sizes, coords=coords, snap_scale=False)
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
        if turn.call.name == "crop_image":  # boxes compared in the model's coordinates
            crop = crop_score(args["bbox_2d"], ref_box, ctx.coordinate_size(index))
        else:
            crop = 0.8
        reasoning = judge.score(str(sample.get("question", "")), turn.think, str(meta.get("reasoning", "")))
        same_tool = float(turn.call.name == meta.get("tool", "crop_image"))
        out.append(0.5 * reasoning + 0.4 * crop + 0.1 * same_tool)
    return out


def plug_in_reward(ref: str, key: str) -> Callable:
    """The reward in a user's file (``file.py:function``), checked for the rewards' signature
    ``(completions, **sample)`` and registered under ``ref``."""
    fn = load_function(ref, key)
    params = list(inspect.signature(fn).parameters.values())
    positional = params[:1] and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)
    if not positional or not any(p.kind is p.VAR_KEYWORD for p in params):
        raise ConfigError(
            f"{key}: {ref} takes ({', '.join(str(p) for p in params)}); a reward must take the "
            f"completions first and the sample's fields as keywords: def {fn.__name__}(completions, "
            "answer=None, **sample) -> list[float]"
        )
    REWARDS[ref] = fn
    return fn


def reward_weights(rewards, key: str = "rewards") -> dict[str, float]:
    """``{name: weight}`` from a config's ``rewards`` (a mapping, or a list of items with
    ``name`` and ``weight``); users' rewards are loaded and registered, unknown names are errors."""
    if isinstance(rewards, dict):
        items = [(f"{key}.{n}", n, w) for n, w in rewards.items()]
    else:
        items = [(f"{key}[{i}].name", r.name, r.weight) for i, r in enumerate(rewards)]
    out: dict[str, float] = {}
    for where, name, weight in items:
        if name in out:
            raise ConfigError(f"{where}: {name!r} is listed twice; list it once with the summed weight")
        if is_ref(name):
            plug_in_reward(name, where)
        elif name not in REWARDS:
            raise ConfigError(
                f"{where}: unknown reward {name!r}; built in: {', '.join(sorted(n for n in REWARDS if not is_ref(n)))}"
                ", or a function of yours as path/to/file.py:function"
            )
        out[name] = float(weight)
    return out


def combine(
    weights: dict[str, float], completions: list[str], **sample
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the named rewards, and each reward's own scores (for the metrics)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; registered: {sorted(REWARDS)}")
    parts = {name: list(REWARDS[name](completions, **sample)) for name in weights}
    for name, scores in parts.items():
        if len(scores) != len(completions):
            raise ValueError(
                f"reward {name} returned {len(scores)} scores for {len(completions)} completions"
            )
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
