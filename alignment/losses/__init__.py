"""Pure loss functions: tensors in, loss and detached metrics out (``grpo``: GRPO/DAPO/Dr.GRPO
and its advantages; ``dpo``: DPO/IPO/hinge with an SFT term).

:data:`RL_LOSSES` names the policy losses GRPO's ``loss.kind`` picks from. Each is called with
keywords only: the tensors ``logp``, ``old_logp`` (``[B, T]``), ``advantages`` (``[B]``),
``mask`` (``[B, T]``) and ``ref_logp`` (``[B, T]`` or None; with ``loss.tis_cap`` also
``tis_weights`` ``[B, T]``, which a loss must then take), plus those of the hyperparameters
(``clip_low``, ``clip_high``, ``aggregation``, ``max_tokens``, ``beta`` and ``loss.options``)
that its signature names; it returns ``(loss, metrics)`` with the metrics ``clip_fraction``,
``ratio_mean`` and ``kl``. A new loss is a module here plus one line in :data:`RL_LOSSES`
(docs/extending.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from alignment.losses.dpo import DPO_KINDS, dpo_loss
from alignment.losses.grpo import group_advantages, grpo_loss, kl_k3
from mm.config import ConfigError
from mm.plugins import registered

# loss.kind -> "module:function" (imported when asked for) or the function itself
RL_LOSSES = {
    "grpo": "alignment.losses.grpo:grpo_loss",
}
TENSORS = ("logp", "old_logp", "advantages", "mask", "ref_logp", "tis_weights")


def rl_loss(kind: str) -> Callable:
    """The policy loss registered as ``kind``."""
    return registered(RL_LOSSES, kind, "loss.kind")


def loss_arguments(fn: Callable, hyper: dict) -> dict:
    """The hyperparameters of ``hyper`` that ``fn``'s signature names; a parameter without a
    default that neither the tensors nor ``hyper`` provide is a config error."""
    params = inspect.signature(fn).parameters
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind is p.KEYWORD_ONLY and n not in TENSORS and n not in hyper
    ]
    if missing:
        raise ConfigError(f"{fn.__name__} needs {', '.join(missing)}: set loss.options.{missing[0]}=...")
    return {k: v for k, v in hyper.items() if k in params}


__all__ = [
    "DPO_KINDS",
    "RL_LOSSES",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_k3",
    "loss_arguments",
    "rl_loss",
]
