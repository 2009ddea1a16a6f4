"""A model's weights as a plain Hugging Face checkpoint holds them, one group at a time: what an
inference engine loads (the vllm backend pushes them after every optimizer step).

``hf_weights(model)`` yields lists of ``(name, tensor)`` under the names of the family's
``...ForConditionalGeneration.state_dict()`` (``model.language_model.layers.0.mlp.up_proj.weight``,
``model.visual.blocks.0...``, ``lm_head.weight``), each tensor a detached CPU copy:

* a PEFT (LoRA) model gives its merged weights, ``W + scale * B @ A`` per adapted layer, and no
  adapter tensors (the model itself is not changed);
* under DeepSpeed ZeRO-3 every group's parameters are gathered together, used and released
  before the next group (a group: one decoder layer, one vision block, or one other module), so
  the full model is never gathered at once on the device; every rank must iterate (the gathers
  are collective);
* tied weights come once (``named_parameters``); the engine ties them again from the config.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator

import torch


def _group(name: str) -> str:
    """The group a parameter goes with: its name up to the first layer index (a decoder layer,
    a vision block), else its module."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def _gathered(params: list[torch.nn.Parameter]):
    """DeepSpeed ZeRO-3's gather of ``params`` for reading (collective), or nothing to do."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _lora_layers(model) -> dict:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _delta(layer) -> torch.Tensor | None:
    """The active adapters' update of a LoRA layer's weight (None when already merged in)."""
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return None
    deltas = [layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A]
    return sum(deltas) if deltas else None


def hf_weights(model, dtype: torch.dtype | None = None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``model``'s weights group by group (see the module docstring), cast to ``dtype`` if given."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the HF model
    lora = _lora_layers(base)
    groups: OrderedDict[str, list] = OrderedDict()
    for name, p in base.named_parameters():
        groups.setdefault(_group(name), []).append((name, p))
    for items in groups.values():
        with _gathered([p for _, p in items]), torch.no_grad():
            out = []
            for name, p in items:
                if ".lora_" in name:  # adapter tensors: merged into their layer's weight
                    continue
                t = p.detach()
                if ".base_layer." in name:  # an adapted layer: its merged weight, under the plain name
                    owner, leaf = name.split(".base_layer.")
                    delta = _delta(lora[owner]) if leaf == "weight" else None
                    t = t + delta.to(t.dtype) if delta is not None else t
                    name = f"{owner}.{leaf}"
                out.append((name, t.to("cpu", dtype or t.dtype, copy=True)))
            yield out


def hf_state_dict(model, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All of :func:`hf_weights` in one dict (CPU copies)."""
    return {k: v for group in hf_weights(model, dtype) for k, v in group}
