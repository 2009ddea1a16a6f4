"""Configuration of DPO with an SFT term (``mmpost train`` with ``algorithm: dpo``; SPECS cold start)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignment.data import DataConfig
from alignment.loop_config import OptimConfig, TrainConfig
from mm.config import opt
from mm.loading import ModelConfig


@dataclass
class DPOLossConfig:
    kind: Literal["sigmoid", "ipo", "hinge"] = opt(
        "sigmoid", "sigmoid (DPO), ipo or hinge (SLiC) on the log-ratio margin"
    )
    beta: float = opt(0.1, "strength of the KL constraint to the reference (SPECS: not published; 0.1)")
    sft_weight: float = opt(
        1.0, "lambda: weight of the SFT term, the mean NLL per token of the chosen response (SPECS: 1)"
    )
    length_normalize: bool | None = opt(
        None,
        "compare mean log-probs per token instead of sums (policy and reference); "
        "default (null): on for ipo (as TRL, whose IPO divides by the completion tokens), off otherwise",
    )
    precompute_ref: bool = opt(
        True,
        "reference log-probs computed once before training (no reference model kept); "
        "false: a frozen copy (or the LoRA-disabled policy) scores every micro-batch",
    )

    def normalized(self) -> bool:
        """Whether log-probs are means per token (``length_normalize``, or its default for ``kind``)."""
        return self.kind == "ipo" if self.length_normalize is None else self.length_normalize


@dataclass
class DPOConfig:
    algorithm: str = opt("dpo", "which trainer runs this config")
    init_from: str | None = opt(
        None, "start from a previous run's output_dir (its final/ model); it is also the reference"
    )
    model: ModelConfig = opt(
        factory=ModelConfig, help="model loading: checkpoint, dtype, attention, freezing, LoRA"
    )
    data: DataConfig = opt(
        factory=DataConfig,
        help="preference pairs; max_tokens bounds one sequence (prompt + one response; a packed row "
        "holds up to 2 x max_tokens, whole pairs); micro_batch_size counts pairs in either layout",
    )
    loss: DPOLossConfig = opt(factory=DPOLossConfig, help="preference loss, beta, SFT weight, reference")
    optim: OptimConfig = opt(factory=OptimConfig, help="AdamW, schedule and per-part learning rates")
    train: TrainConfig = opt(factory=TrainConfig, help="steps, accumulation, DeepSpeed, checkpoints, logging")
