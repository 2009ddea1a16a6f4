"""Configuration of VLA training with optional Spatial Forcing (``mmpost train`` with ``algorithm: vla``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignment.loop_config import OptimConfig, TrainConfig
from mm.config import opt
from mm.loading import ModelConfig
from mm.visual import VisualConfig


@dataclass
class VLADataConfig:
    train: str = opt(
        "",
        "VLA records (JSONL: messages with one image per view + the instruction, actions, proprio) "
        "or a LeRobot v3.0 dataset folder",
    )
    format: Literal["auto", "jsonl", "lerobot"] = opt(
        "auto", "data.train's format: auto (a folder with meta/info.json is LeRobot), jsonl or lerobot"
    )
    eval: str | None = opt(None, "held-out VLA records: action L1 every train.eval_every steps")
    micro_batch_size: int = opt(8, "samples per micro-batch on each rank")
    max_views: int = opt(2, "camera views per sample at most; samples with fewer have the rest masked")
    on_error: Literal["raise", "skip"] = opt(
        "raise", "bad records: stop with file:line, or skip and count them"
    )
    cache: bool = opt(
        True, "keep encoded samples in memory after their first use (small VLA sets; off for large ones)"
    )
    num_workers: int = opt(0, "DataLoader worker processes encoding micro-batches ahead of the model")
    visual: VisualConfig = opt(
        factory=lambda: VisualConfig(max_pixels=224 * 224),
        help="per-view pixel limits and the visual-token budget",
    )


@dataclass
class ActionConfig:
    chunk: int = opt(8, "K: actions per chunk, decoded in parallel (OpenVLA-OFT: 8)")
    dims: int = opt(
        0,
        "D: dimensions per action, 0: from the data (OpenVLA-OFT / LIBERO: 7 = xyz, rpy, gripper; MetaWorld: 4)",
    )
    use_proprio: bool = opt(True, "project the records' proprio vector into one token (off: ignore it)")
    head_hidden: int = opt(0, "hidden width of the action head MLP and proprio projector (0: the LLM width)")
    head: Literal["mlp", "mlp_resnet"] = opt(
        "mlp",
        "action head: LayerNorm-Linear-GELU-Linear, or OpenVLA-OFT's MLP-ResNet (LayerNorm/ReLU blocks)",
    )
    head_blocks: int = opt(2, "residual blocks of the mlp_resnet head (OpenVLA-OFT: 2)")
    lr_heads: float | None = opt(
        None, "learning rate of the action head, proprio projector and projector (default: optim.lr)"
    )


@dataclass
class AlignConfig:
    alpha: float = opt(0.0, "weight of L_align in L_action + alpha x L_align (0: off; paper: 0.5)")
    layer: int = opt(
        0,
        "student layer: 1-based decoder layer whose output is aligned, negative counts from the end "
        "(-1: last), 0: auto = int(0.75 x layers) (24 of 32 as in the paper)",
    )
    teacher: str = opt(
        "random",
        "frozen teacher: random (tests), timm:NAME (local weights), vggt, or geometry (the simulator's "
        "depth and cameras; precomputed features only: mmpost data metaworld-demos --teacher-features geometry)",
    )
    teacher_weights: str | None = opt(None, "local weights file of a timm or VGGT teacher (never downloaded)")
    teacher_image_size: int = opt(
        0,
        "side the views are resized to for the teacher (0: the teacher's default; with align.features: any)",
    )
    features: str | None = opt(
        None,
        "folder of precomputed teacher features (mmpost data teacher-features) read instead of a live teacher",
    )
    pos_scale: float = opt(0.1, "scale of VGGT's 2-D position embedding added to the targets (paper: 0.1)")
    shift_student: bool = opt(
        False,
        "align the hidden state one position after each visual token (the released gain_feat_1move)",
    )
    projector_layernorm: bool = opt(True, "LayerNorm(d_llm) at the projector's input")


@dataclass
class VLAConfig:
    algorithm: str = opt("vla", "which trainer runs this config")
    init_from: str | None = opt(
        None, "start the backbone from a previous run's output_dir (its final/ model)"
    )
    model: ModelConfig = opt(
        factory=ModelConfig, help="backbone loading: checkpoint, dtype, attention, freezing, LoRA"
    )
    data: VLADataConfig = opt(factory=VLADataConfig, help="VLA records, views and batching")
    action: ActionConfig = opt(factory=ActionConfig, help="the action chunk and the heads")
    align: AlignConfig = opt(factory=AlignConfig, help="Spatial Forcing: teacher, layer, weight")
    optim: OptimConfig = opt(factory=OptimConfig, help="AdamW, schedule and per-part learning rates")
    train: TrainConfig = opt(factory=TrainConfig, help="steps, accumulation, DeepSpeed, checkpoints, logging")
