"""Judges: who scores the reasoning of a turn in [0, 1], and the HTTP client other model-graded
steps use. Three users share it: ViRC's turn reward (``alignment.rewards.virc``), the SPECS pair
builder's consistency check (``alignment.builders.specs_pairs``) and the benchmarks that extract
answers with a model (``evaluation.benchmarks``).

ViRC scores a turn's reasoning with a 72B model: :class:`HTTPJudge` asks any OpenAI-compatible
server (timeouts, retries, a cache that can live in a file across runs); a training config
reaches it through its ``judge:`` section (:class:`JudgeConfig`: ``kind: http``, ``url``,
``model``, ``timeout``, ``cache``). Without one, :class:`RuleJudge` stands in: a rule-based
fallback (1 for a non-trivial, loop-free thought), not the paper's judge; the HTTP judge falls
back to it too when its server fails every retry.
"""

from __future__ import annotations

import hashlib
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

from mm.config import opt


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
        benchmarks that extract answers with a model (``evaluation.benchmarks``)."""
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
