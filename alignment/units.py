"""Loss units: what each algorithm's loss is a mean over, defined once.

A training module's forward returns ``(loss_sum, units, stats)``: its loss summed over the
units of the micro-batch and how many units that is. Before the first backward of an optimizer
step the loop counts the units of the step's micro-batches on all ranks with the trainer's
``loss_unit`` (one of the functions below) and scales each backward by ``world / N``, so the
update is the gradient of the mean over the step's units however they were split into rows,
micro-batches and ranks. The module's own count must equal ``loss_unit`` of its batch: the loop
stops with an error naming both when they differ.

    SFT                           supervised_tokens   (labelled next tokens)
    GRPO / DAPO, token_mean       supervised_tokens   (generated tokens)
    GRPO, sequence_mean / fixed   sequences           (completions)
    DPO                           pairs
    VLA                           samples             (action chunks)
"""

from __future__ import annotations

from collections.abc import Callable

from mm.encode import IGNORE

LossUnit = Callable[[dict], int]


def supervised_tokens(batch: dict) -> int:
    """Labelled next-token positions (``labels[:, 1:]`` not IGNORE)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def sequences(batch: dict) -> int:
    """Sequences: the rows of the padded ``labels`` (one completion each)."""
    return int(batch["labels"].shape[0])


def pairs(batch: dict) -> int:
    """Preference pairs (``pair_index`` lists one entry per pair)."""
    return int(batch["pair_index"].numel())


def samples(batch: dict) -> int:
    """Samples with an action chunk (``actions`` [B, K, D])."""
    return int(batch["actions"].shape[0])


def describe(unit: LossUnit) -> str:
    """The unit's name in words: ``supervised tokens``."""
    return unit.__name__.replace("_", " ")
