"""Configuration of supervised fine-tuning (``mmpost train`` with ``algorithm: sft``)."""

from __future__ import annotations

from dataclasses import dataclass

from alignment.data import DataConfig
from alignment.loop_config import OptimConfig, TrainConfig
from mm.config import opt
from mm.loading import ModelConfig


@dataclass
class SFTConfig:
    algorithm: str = opt("sft", "which trainer runs this config")
    init_from: str | None = opt(
        None, "start from a previous run's output_dir (its final/ model) instead of model.name_or_path"
    )
    model: ModelConfig = opt(
        factory=ModelConfig, help="model loading: checkpoint, dtype, attention, freezing, LoRA"
    )
    data: DataConfig = opt(factory=DataConfig, help="training data, batching (pack/pad) and visual limits")
    optim: OptimConfig = opt(factory=OptimConfig, help="AdamW, schedule and per-part learning rates")
    train: TrainConfig = opt(factory=TrainConfig, help="steps, accumulation, DeepSpeed, checkpoints, logging")
