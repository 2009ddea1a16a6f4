"""``load_model``: a model and its processor, from a preset ("tiny", "tiny-qwen3vl", ...: built
offline) or a local path; ``load_for_training``: the same from a training config's
``ModelConfig`` and ``init_from``.

Nothing is downloaded: a path must be a local checkpoint directory (``local_files_only``).
The checkpoint's family (``mm.models``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL dense and MoE, Qwen3.5)
is recognised from its ``model_type`` and gives the model class, the parts to freeze and the
LoRA targets. Options cover dtype, attention backend (``mm.attention`` decides), gradient
checkpointing, freezing by part and LoRA adapters on the language model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from mm.attention import choose_backend
from mm.config import opt
from mm.imports import require
from mm.models import family_of
from mm.tiny import preset_names

PARTS = ("vision_tower", "merger", "language_model")


@dataclass
class ModelConfig:
    """How to load the model (also the ``model:`` section of training configs)."""

    name_or_path: str = opt(
        "tiny",
        "'tiny', 'small', 'medium', 'tiny-qwen3vl', 'tiny-qwen3vl-moe' (offline presets) or a local checkpoint directory",
    )
    dtype: str = opt("auto", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    attn: str = opt(
        "auto",
        "auto (flash-attn on CUDA when importable, else sdpa), sdpa, eager, flash_attention_2, flex, segments",
    )
    device: str | None = opt(None, "device to load onto; None: leave on CPU (trainers place it)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    freeze: list[str] = opt(
        factory=list, help="parts left untrained: any of vision_tower, merger, language_model"
    )
    lora_r: int = opt(0, "> 0 adds LoRA adapters of this rank to the language model's linear layers")
    lora_alpha: int = opt(16, "LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA adapters' input")


def resolve_dtype(dtype: str | torch.dtype, device: str | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        on_cuda = device is not None and str(device).startswith("cuda")
        return torch.bfloat16 if on_cuda else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return table[dtype]


def load_model(
    name_or_path: str = "tiny",
    *,
    dtype: str | torch.dtype = "auto",
    attn: str = "auto",
    device: str | None = None,
    gradient_checkpointing: bool = False,
    freeze: list[str] | tuple = (),
    lora_r: int = 0,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    seed: int = 0,
):
    """Return ``(model, processor)``. See ``ModelConfig`` for the options."""
    torch_dtype = resolve_dtype(dtype, device)
    attn_impl = choose_backend(attn, device)
    if name_or_path in preset_names():
        from mm.tiny import load_preset

        model, processor = load_preset(name_or_path, attn_implementation=attn_impl, seed=seed)
        model = model.to(torch_dtype)
    else:
        model, processor = _load_local(name_or_path, torch_dtype, attn_impl)
    if device is not None:
        model = model.to(device)
    set_frozen(model, freeze)
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    if lora_r > 0:
        model = add_lora(model, lora_r, lora_alpha, lora_dropout)
    return model, processor


def resolve_init(model: ModelConfig, init_from: str | None = None) -> str:
    """What a training run starts from: ``init_from`` (a previous run's output dir, i.e. its
    ``final/`` model, or a model dir) or else ``model.name_or_path``."""
    if not init_from:
        return model.name_or_path
    final = os.path.join(init_from, "final")
    if os.path.isdir(final):
        return final
    if os.path.isfile(os.path.join(init_from, "config.json")):
        return init_from
    raise FileNotFoundError(f"init_from={init_from!r} holds no final/ model; run the previous stage first")


def load_for_training(model: ModelConfig, init_from: str | None, attn: str, seed: int):
    """``(model, processor)`` to train: from ``resolve_init``, fp32 unless ``model.dtype`` is set,
    with ``attn`` the backend already chosen for the run's device."""
    return load_model(
        resolve_init(model, init_from),
        dtype="float32" if model.dtype == "auto" else model.dtype,
        attn=attn,
        gradient_checkpointing=model.gradient_checkpointing,
        freeze=model.freeze,
        lora_r=model.lora_r,
        lora_alpha=model.lora_alpha,
        lora_dropout=model.lora_dropout,
        seed=seed,
    )


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing with the non-reentrant implementation."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _load_local(path: str, dtype: torch.dtype, attn_impl: str):
    from transformers import AutoConfig, AutoProcessor

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"model {path!r} is neither a built-in preset ({', '.join(preset_names())}) nor a local checkpoint "
            "directory; mmpost never downloads weights: download the checkpoint first and pass its folder"
        )
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        family = family_of(config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model = family.model_class(config.model_type).from_pretrained(
        path, dtype=dtype, attn_implementation=attn_impl, local_files_only=True
    )
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return model, processor


def unwrap(model):
    """The ``...ForConditionalGeneration`` under a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_parts(model) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters by part: the vision tower (without mergers), the mergers (the merger and, for
    DeepStack families, the DeepStack mergers: what projects vision into the LM), the language
    model (+ head)."""
    base = unwrap(model)
    family = family_of(base.config)
    visual = family.submodule(base, family.vision)
    merger = [p for name in family.mergers for p in getattr(visual, name).parameters()]
    merger_ids = {id(p) for p in merger}
    return {
        "vision_tower": [p for p in visual.parameters() if id(p) not in merger_ids],
        "merger": merger,
        "language_model": list(family.submodule(base, family.language_model).parameters())
        + list(base.lm_head.parameters()),
    }


def set_frozen(model, parts: list[str] | tuple) -> None:
    """Freeze the named parts (requires_grad=False); the others stay as they are."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) to freeze: {sorted(unknown)}; choose from {', '.join(PARTS)}")
    groups = model_parts(model)
    for part in parts:
        for p in groups[part]:
            p.requires_grad_(False)


def add_lora(model, r: int, alpha: int, dropout: float):
    """LoRA adapters on the language model's linear layers (the family's ``lora_targets``; the
    vision tower is untouched)."""
    peft = require("peft", "LoRA")
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=family_of(model.config).lora_targets
    )
    return peft.get_peft_model(model, config)
