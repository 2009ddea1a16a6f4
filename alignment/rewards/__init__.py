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

Scores that need a model (``virc_turn``'s reasoning) go through an ``evaluation.judge.Judge``.

The registry :data:`REWARDS` maps a name to ``"module:function"`` (imported when first used); a
user's ``path/to/file.py:function`` is registered under that reference by ``reward_weights``.
A new built-in reward is a function in a module here plus one line in :data:`REWARDS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from mm.config import ConfigError
from mm.plugins import is_ref, load_function, registered

# name -> "module:function" (built in), or the function itself (a user's plug-in)
REWARDS: dict[str, str | Callable] = {
    "format_think_answer": "alignment.rewards.builtin:format_think_answer",
    "accuracy": "alignment.rewards.builtin:accuracy",
    "cls_format": "alignment.rewards.builtin:cls_format",
    "cls_accuracy": "alignment.rewards.builtin:cls_accuracy",
    "cls_equality": "alignment.rewards.builtin:cls_equality",
    "contains_answer": "alignment.rewards.builtin:contains_answer",
    "virc_turn": "alignment.rewards.virc:virc_turn",
}


def get_reward(name: str) -> Callable:
    """The reward function registered as ``name``."""
    return registered(REWARDS, name, "reward")


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
        raise ConfigError(f"unknown reward(s) {unknown}; registered: {sorted(REWARDS)}")
    parts = {name: list(get_reward(name)(completions, **sample)) for name in weights}
    for name, scores in parts.items():
        if len(scores) != len(completions):
            raise ValueError(
                f"reward {name} returned {len(scores)} scores for {len(completions)} completions"
            )
    total = [sum(weights[n] * parts[n][i] for n in weights) for i in range(len(completions))]
    return total, parts


def reward_inputs(record, trajectory, judge, coords: str) -> dict:
    """The sample fields every reward is called with for one rollout of ``record`` (an RL record):
    its ``answer`` and ``meta``, the prompt's images as the model saw them, the question, the
    judge and how tool coordinates are meant. Training rollouts and held-out evaluation both
    build them here."""
    n_images = sum(len(m.visual_items()) for m in record.prompt)
    return {
        "answer": record.answer,
        "meta": record.meta or {},
        "images": trajectory.images[:n_images],
        "question": trajectory.question or "",
        "judge": judge,
        "coords": coords,
    }


def last_turns(trajectories) -> list[str]:
    """The completions the rewards score: each rollout's last assistant turn ('' if it had none)."""
    return [t.turns[-1].text if t.turns else "" for t in trajectories]
