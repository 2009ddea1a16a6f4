"""Supervised fine-tuning: next-token loss on assistant tokens, padded or exactly packed.

mmpost train configs/quickstart/sft.yaml [--output-dir DIR] [key=value ...]
"""

from __future__ import annotations

import os

import torch

from alignment import distributed as dist
from alignment.data import StepPlanner, check_lengths, loader
from alignment.loop import Trainer
from alignment.losses import token_nll_sum
from alignment.sft_config import SFTConfig
from mm.attention import choose_backend
from mm.dataset import RecordDataset
from mm.encode import ConversationEncoder
from mm.loading import load_model, unwrap
from mm.records import drop_tool_result_images
from mm.rope import RopeSpec


class CausalLMLoss(torch.nn.Module):
    """Wraps the VLM: forward(**batch) -> (summed NLL of supervised tokens, their count, {})."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, labels, seq_ids=None, mm_token_type_ids=None, **inputs):
        base = unwrap(self.model)
        hidden = base.model(**inputs).last_hidden_state  # [B, L, D]
        total, n = token_nll_sum(hidden, base.lm_head, labels)
        return total, n, {}


def resolve_init(cfg: SFTConfig) -> str:
    """``init_from`` (a previous run's output dir or model dir) or the configured model."""
    if not cfg.init_from:
        return cfg.model.name_or_path
    final = os.path.join(cfg.init_from, "final")
    if os.path.isdir(final):
        return final
    if os.path.isfile(os.path.join(cfg.init_from, "config.json")):
        return cfg.init_from
    raise FileNotFoundError(
        f"init_from={cfg.init_from!r} holds no final/ model; run the previous stage first"
    )


def load_for_training(cfg, attn: str, seed: int):
    """The policy and processor of a training config (``init_from`` or ``model``), fp32 unless set."""
    m = cfg.model
    return load_model(
        resolve_init(cfg),
        dtype="float32" if m.dtype == "auto" else m.dtype,
        attn=attn,
        gradient_checkpointing=m.gradient_checkpointing,
        freeze=m.freeze,
        lora_r=m.lora_r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        seed=seed,
    )


class SFTTrainer(Trainer):
    name = "sft"

    def setup(self, device: str):
        cfg: SFTConfig = self.cfg
        m = cfg.model
        self.attn = choose_backend(m.attn, device)
        self.model, self.processor = load_for_training(cfg, self.attn, self.train_cfg.seed)
        self.model.train()
        if not cfg.data.train:
            raise ValueError("data.train is empty: set it in the config or with data.train=FILE.jsonl")
        encoder = ConversationEncoder(
            self.processor, cfg.data.visual, RopeSpec.from_config(self.model.config)
        )
        transform = drop_tool_result_images if cfg.data.drop_tool_images else None
        self.dataset = RecordDataset(
            cfg.data.train, encoder, on_error=cfg.data.on_error, transform=transform, format=cfg.data.format
        )
        lengths = self.dataset.lengths(progress=dist.is_main())
        check_lengths(self.dataset, lengths, cfg.data)
        self.planner = StepPlanner(
            lengths, cfg.data, dist.world(), self.train_cfg.gradient_accumulation_steps, self.train_cfg.seed
        )
        if self.dataset.skipped and dist.is_main():
            print(
                f"skipping {self.dataset.skipped} bad record(s); first: {self.dataset.problems[0]}",
                flush=True,
            )

    def build_module(self):
        return CausalLMLoss(self.model)

    def micro_batches(self, epoch: int, start_step: int):
        plan = self.planner.rank_micro_batches(epoch, dist.rank(), start_step)
        return loader(self.dataset, plan, self.cfg.data, self.processor.tokenizer.pad_token_id, self.attn)
