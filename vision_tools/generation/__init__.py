"""Decoding backends behind one interface (``base.Generator``) and the one factory that builds
them from a config name (``EngineConfig.generator``, ``RolloutConfig.generator``, the server).

========  ====================================================================================
cached    ``CachedGenerator`` (the default everywhere): one prefill per distinct context, the KV
          cache kept across a conversation's turns, rounds of tokens for the server
hf        ``HFGenerator``: ``model.generate`` over every full context (the same greedy ids)
vllm      ``VLLMGenerator``: vLLM, in its own process (its own environment: ``mmpost vllm-setup``)
          or in this one; token ids and images in, ids and log-probs out, weights pushed
========  ====================================================================================

``ScriptedGenerator`` replays fixed turns (tests, data building) and is built directly. A new
backend is a module here with a ``Generator`` subclass plus one line in :data:`GENERATORS`
(docs/extending.md).
"""

from __future__ import annotations

import inspect

from mm.plugins import registered
from vision_tools.generation.base import (
    STOP_STRINGS,
    Context,
    Generator,
    Sampling,
    TurnIds,
    context_positions,
    sampled_logprobs,
    turn_over,
)
from vision_tools.generation.scripted import ScriptedGenerator

# name -> "module:class" (imported when asked for) or the class itself
GENERATORS = {
    "cached": "vision_tools.generation.cached:CachedGenerator",
    "hf": "vision_tools.generation.hf:HFGenerator",
    "vllm": "vision_tools.generation.vllm:VLLMGenerator",
}
DEFAULT = "cached"


def generator_class(kind: str) -> type[Generator]:
    """The backend registered as ``kind``."""
    return registered(GENERATORS, kind, "generator")


def make_generator(
    kind: str,
    model,
    processor,
    *,
    synced_gpus: bool = False,
    features=None,
    prefixes: int = 0,
    options=None,
) -> Generator:
    """The generator named by a config. ``synced_gpus``: every rank runs the same forwards (ZeRO-3
    over several ranks); ``features``: an image-feature cache (``mm.image_features``);
    ``prefixes``: text prefixes kept across prompts (``cached``; for fixed weights); ``options``:
    the backend's own options (``vllm``: a ``VLLMConfig``), handed to backends that take them."""
    cls = generator_class(kind)
    kw = {"synced_gpus": synced_gpus, "features": features, "prefixes": prefixes}
    if options is not None and "options" in inspect.signature(cls).parameters:
        kw["options"] = options
    return cls(model, processor, **kw)


__all__ = [
    "DEFAULT",
    "GENERATORS",
    "STOP_STRINGS",
    "Context",
    "Generator",
    "Sampling",
    "ScriptedGenerator",
    "TurnIds",
    "context_positions",
    "sampled_logprobs",
    "generator_class",
    "make_generator",
    "turn_over",
]
