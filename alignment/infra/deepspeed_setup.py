"""The DeepSpeed side of the loop: the engine config and the optimizer's parameter groups.

Batch size, gradient accumulation, clipping and precision are always set here from the
trainer config (so a DeepSpeed JSON cannot disagree with it); the JSON (or the built-in
``zero0`` / ``zero2`` / ``zero3``, identical to ``configs/deepspeed/*.json``) carries the
ZeRO settings. The optimizer is PyTorch's AdamW handed to DeepSpeed (it runs on CPU and GPU
alike; DeepSpeed's fused Adam needs CUDA kernels).
"""

from __future__ import annotations

import copy
import json

from alignment.infra import distributed as dist

_COMMON = {"zero_allow_untested_optimizer": True, "steps_per_print": 10**9, "wall_clock_breakdown": False}
BUILTIN = {
    "zero0": {"zero_optimization": {"stage": 0}, **_COMMON},
    "zero2": {
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": 50_000_000,
            "allgather_bucket_size": 50_000_000,
        },
        **_COMMON,
    },
    "zero3": {
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": 50_000_000,
            "stage3_prefetch_bucket_size": 50_000_000,
            "stage3_param_persistence_threshold": 100_000,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        **_COMMON,
    },
}


def deepspeed_config(name_or_path: str, micro_batch: int, grad_accum: int, clip: float, bf16: bool) -> dict:
    if name_or_path in BUILTIN:
        cfg = copy.deepcopy(BUILTIN[name_or_path])
    else:
        try:
            with open(name_or_path) as f:
                cfg = json.load(f)
        except FileNotFoundError:
            raise ValueError(
                f"DeepSpeed config {name_or_path!r} not found; use zero0, zero2, zero3 or a JSON path"
            ) from None
    cfg.update(
        {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": micro_batch * grad_accum * dist.world(),
            "gradient_clipping": clip,
            "bf16": {"enabled": bf16},
            "fp16": {"enabled": False},
        }
    )
    cfg.pop("optimizer", None)  # the trainer owns the optimizer and scheduler
    cfg.pop("scheduler", None)
    return cfg


def zero_stage(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def param_groups(model, lr: float, weight_decay: float, part_lrs: dict[str, float | None]) -> list[dict]:
    """AdamW groups: one per (part, decay) with the part's lr; frozen parameters are left out
    (a fully frozen model gives no groups: a trainer may still train modules of its own).

    Biases and norm weights (1-D) get no weight decay.
    """
    from mm.loading import model_parts

    parts = model_parts(model)
    owner = {id(p): name for name, ps in parts.items() for p in ps}
    groups: dict[tuple[str, bool], list] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        part = owner.get(id(p), "language_model")  # LoRA adapters live in the language model
        groups.setdefault((part, p.ndim >= 2), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": part_lrs.get(part) or lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            }
        )
    return out


def reports_grad_norm(engine) -> bool:
    """Whether ``engine.get_global_grad_norm()`` gives the step's norm: not without ZeRO in fp32
    (zero0), where DeepSpeed clips the gradients itself and discards the norm (the loop then
    computes it, ``grad_norm``, before the step)."""
    return bool(engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled())


def grad_norm(module) -> float:
    """Global 2-norm of the gradients of ``module`` as they are (averaged over ranks, not yet clipped)."""
    import torch

    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
