"""Learning-rate schedules: a multiplier of the base rate per optimizer step.

``warmup`` steps rise linearly from 0 to 1, then ``cosine`` decays to ``min_ratio``,
``linear`` decays linearly to ``min_ratio``, ``constant`` stays at 1, ``step`` stays at 1 and
drops to ``decay_gamma`` from optimizer step ``decay_step`` on (torch's MultiStepLR with one
milestone, as OpenVLA-OFT / Spatial Forcing train: lr 5e-4, x0.1 at step 100k of 150k).
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant", "step")


def lr_multiplier(
    step: int,
    total: int,
    warmup: int,
    kind: str = "cosine",
    min_ratio: float = 0.0,
    decay_step: int = 0,
    decay_gamma: float = 0.1,
) -> float:
    """Multiplier for optimizer step ``step`` (0-based) of ``total``."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
    if kind == "step" and decay_step < 1:
        raise ValueError(
            f"the step schedule needs optim.decay_step >= 1 (the optimizer step the lr drops at), got {decay_step}"
        )
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "step":
        return decay_gamma if step >= decay_step else 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_steps(total: int, ratio: float) -> int:
    return math.ceil(total * ratio) if ratio > 0 else 0
