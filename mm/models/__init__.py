"""Model families: what mmpost knows of each VLM family, behind one small spec.

A family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL dense + MoE, Qwen3.5) is one module here holding one
:class:`ModelFamily`; everything family-specific in mm/ reads it: loading (model classes),
M-RoPE (merge size, video-time rule: ``mm.rope.RopeSpec.for_family``), the visual-token arithmetic (``factor``
pixels per merged token), the encoder (timestamped videos), the image-feature cache (DeepStack),
freezing and LoRA (``vision`` / ``mergers`` / ``lora_targets``), the streaming cache's rotary
(``rotary``) and the tiny offline model (``tiny_config``, ``tiny_processor``).

    family = family_of(model.config)           # by config.model_type
    family = family_of_processor(processor)    # by processor class (the encoder has no model)
    family.factor                              # 28 (Qwen2.5-VL) or 32 (Qwen3-VL)

Adding a family is one module plus its tests (docs/models.md has the checklist).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

LM_LINEARS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class ModelFamily:
    """What one model family needs from mmpost (see the module docstring for who reads what)."""

    name: str  # the family's module under mm/models/
    model_classes: dict[str, str]  # config.model_type -> transformers ...ForConditionalGeneration
    processor_class: str  # transformers processor class (the encoder finds the family by it)
    patch_size: int  # vision patch side in pixels (14 or 16)
    merge_size: int = 2  # patches merged per side into one LM token
    temporal_patch_size: int = 2  # frames per temporal patch
    # How the three M-RoPE rows (t, h, w) share the rotary frequencies: "contiguous" sections
    # (Qwen2/2.5-VL: [t..., h..., w...]) or "interleaved" (Qwen3-VL: t, h, w, t, h, w, ...).
    mrope_layout: Literal["contiguous", "interleaved"] = "contiguous"
    # Where a video's time lives: nowhere ("none", Qwen2-VL: temporal index), in the temporal
    # position ("absolute", Qwen2.5-VL: tokens_per_second), or as text ("timestamps", Qwen3-VL:
    # "<t seconds>" before each frame group, every group its own t = 1 block).
    video_time: Literal["none", "absolute", "timestamps"] = "absolute"
    deepstack: bool = False  # vision features of early layers are added to early LM layers
    vision: str = "model.visual"  # attribute path of the vision tower (mergers included)
    mergers: tuple[str, ...] = ("merger",)  # under ``vision``: what projects into the LM width
    language_model: str = "model.language_model"
    rotary: str = "model.language_model.rotary_emb"  # the text rotary (``inv_freq``): streaming's cache
    lora_targets: str = LM_LINEARS  # PEFT target_modules: the language model's linear layers
    special_tokens: tuple[str, ...] = ()  # added tokens in the real vocabulary's order
    non_special: frozenset[str] = frozenset()  # added tokens not flagged special (survive decoding)
    chat_template: str = ""  # the checkpoints' template (the tiny processor carries it)
    tiny_config: Callable[..., Any] | None = None  # (tokenizer, size dict, model_type) -> config
    tiny_processor: Callable[..., Any] | None = (
        None  # (tokenizer) -> processor with the real image/video processors
    )
    tiny_model_type: str = ""  # what a tiny preset of this family builds by default
    packing: str | None = None  # None: packed rows are exact; else why packing is refused
    streaming: str | None = None  # None: the streaming cache holds; else why streaming is refused

    @property
    def factor(self) -> int:
        """Pixels per merged token side: an H x W image gives (H / factor) * (W / factor) tokens."""
        return self.patch_size * self.merge_size

    def model_class(self, model_type: str):
        """The transformers class that builds ``model_type`` of this family."""
        import transformers

        return getattr(transformers, self.model_classes[model_type])

    def submodule(self, model, path: str):
        """``path`` (dotted) of the ``...ForConditionalGeneration`` under ``model`` (PEFT unwrapped)."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        for part in path.split("."):
            base = getattr(base, part)
        return base

    def require(self, feature: Literal["packing", "streaming"], where: str) -> None:
        """Raise a clear error when ``feature`` cannot hold for this family (a ``ConfigError``: the
        command line shows it as one line, no traceback)."""
        reason = getattr(self, feature)
        if reason is not None:
            from mm.config import ConfigError

            raise ConfigError(f"{where}: {feature} is refused for {self.name} models: {reason}")


_MODULES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")  # registry order: first match wins


def families() -> list[ModelFamily]:
    """Every registered family, in registry order."""
    return [importlib.import_module(f"mm.models.{m}").FAMILY for m in _MODULES]


def supported_model_types() -> list[str]:
    return sorted(t for f in families() for t in f.model_classes)


def family_named(name: str) -> ModelFamily:
    for f in families():
        if f.name == name:
            return f
    raise ValueError(f"unknown model family {name!r}; supported: {', '.join(f.name for f in families())}")


def family_of(config_or_type) -> ModelFamily:
    """The family of a config (or model, or ``model_type`` string); a clear error for unknown types."""
    model_type = config_or_type if isinstance(config_or_type, str) else None
    if model_type is None:
        config = getattr(config_or_type, "config", config_or_type)
        model_type = getattr(config, "model_type", None)
    for f in families():
        if model_type in f.model_classes:
            return f
    raise ValueError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())} "
        "(a new family is one module under mm/models/, see docs/models.md)"
    )


def family_of_processor(processor) -> ModelFamily:
    """The family whose processor class ``processor`` is (families sharing one agree on encoding)."""
    name = type(processor).__name__
    for f in families():
        if f.processor_class == name:
            return f
    known = sorted({f.processor_class for f in families()})
    raise ValueError(f"processor {name} belongs to no supported model family; supported: {', '.join(known)}")
