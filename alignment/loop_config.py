"""The loop's own configuration: the ``optim:`` (AdamW and schedule) and ``train:`` (steps,
DeepSpeed, checkpoints, evaluation, logging) sections every algorithm's config holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignment.infra.trackers import missing
from mm.config import ConfigError, opt


@dataclass
class OptimConfig:
    lr: float = opt(1e-5, "peak learning rate (AdamW)")
    lr_vision_tower: float | None = opt(None, "learning rate of the vision tower (default: lr)")
    lr_merger: float | None = opt(None, "learning rate of the vision-language merger (default: lr)")
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and norms)")
    betas: list[float] = opt(factory=lambda: [0.9, 0.999], help="AdamW betas")
    eps: float = opt(1e-8, "AdamW epsilon")
    max_grad_norm: float = opt(1.0, "gradient clipping by global norm (0 disables)")
    schedule: Literal["cosine", "linear", "constant", "step"] = opt(
        "cosine", "learning-rate schedule after warmup"
    )
    warmup_ratio: float = opt(0.03, "fraction of optimizer steps with linear warmup")
    min_lr_ratio: float = opt(0.0, "cosine/linear decay ends at lr x min_lr_ratio")
    decay_step: int = opt(0, "step schedule: the optimizer step from which the lr is lr x decay_gamma")
    decay_gamma: float = opt(0.1, "step schedule: the factor of the drop")


@dataclass
class TrainConfig:
    output_dir: str = opt("runs/train", "where checkpoints, metrics.jsonl and the final model go")
    epochs: int = opt(1, "passes over the data")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: epochs decide)")
    gradient_accumulation_steps: int = opt(
        1,
        "micro-batches per optimizer step on each rank (GRPO derives it: a rank's share of "
        "data.prompts_per_step x rollout.num_generations / data.micro_batch_size, and refuses another "
        "value than 1 or that)",
    )
    seed: int = opt(0, "seed for data order and initialisation")
    log_every: int = opt(1, "log metrics every N optimizer steps")
    save_every: int = opt(0, "checkpoint every N optimizer steps (0: only at the end)")
    keep_last: int = opt(2, "complete checkpoints to keep")
    deepspeed: str = opt(
        "zero2", "zero0, zero2, zero3 (built in, as configs/deepspeed/) or a DeepSpeed JSON path"
    )
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "auto: bf16 on CUDA, fp32 on CPU")
    device: str = opt("auto", "auto (CUDA when available), cpu, cuda")
    resume: str = opt(
        "auto", "auto: continue from the newest checkpoint in output_dir; never; or a checkpoint path"
    )
    export: bool = opt(True, "write the final model in Hugging Face format to OUTPUT/final")
    eval_every: int = opt(0, "score data.eval every N optimizer steps and at the end (0: never)")
    eval_max_samples: int = opt(0, "evaluate on the first N records of data.eval (0: all)")
    eval_generate: bool = opt(
        False,
        "sft: also answer the eval records' prompts greedily and log eval_accuracy (records with answer)",
    )
    eval_max_new_tokens: int = opt(256, "eval_generate: new tokens per answer (per turn with tools)")
    save_best: str | None = opt(
        None, "keep OUTPUT/best: the model of the best value of this eval metric (e.g. eval_loss)"
    )
    save_best_mode: Literal["auto", "min", "max"] = opt(
        "auto", "whether save_best keeps the lowest or highest value (auto: max for accuracy/reward/margin)"
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = opt(
        factory=lambda: ["tensorboard"],
        help="experiment trackers besides OUTPUT/metrics.jsonl (rank 0; the run config logged too): "
        "tensorboard (skipped when not installed), wandb, mlflow, trackio (pip install 'mmpost[NAME]'); "
        "[] for none",
    )

    def __post_init__(self):
        gone = missing(self.report_to)
        if gone:
            extras = ",".join(gone)
            raise ConfigError(
                f"train.report_to: {', '.join(gone)} not installed: pip install 'mmpost[{extras}]' "
                "(or remove them from train.report_to)"
            )
