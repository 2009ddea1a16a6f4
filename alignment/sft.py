"""Supervised fine-tuning: next-token loss on assistant tokens, padded or exactly packed.

mmpost train configs/quickstart/sft.yaml [--output-dir DIR] [key=value ...]
"""

from __future__ import annotations

import os
from functools import partial

import torch

from alignment.data import StepPlanner, check_lengths, collate_samples, loader
from alignment.infra import distributed as dist
from alignment.loop import Trainer, TrainState
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

    def setup(self, device: str) -> TrainState:
        cfg: SFTConfig = self.cfg
        m = cfg.model
        attn = choose_backend(m.attn, device)
        model, processor = load_for_training(cfg, attn, self.train_cfg.seed)
        model.train()
        if not cfg.data.train:
            raise ValueError("data.train is empty: set it in the config or with data.train=FILE.jsonl")
        encoder = ConversationEncoder(processor, cfg.data.visual, RopeSpec.from_config(model.config))
        transform = drop_tool_result_images if cfg.data.drop_tool_images else None
        dataset = RecordDataset(cfg.data.train, encoder, on_error=cfg.data.on_error, transform=transform)
        lengths = dataset.lengths(progress=dist.is_main())
        check_lengths(dataset, lengths, cfg.data)
        ga = self.train_cfg.gradient_accumulation_steps
        planner = StepPlanner.of(lengths, cfg.data, dist.world(), ga, self.train_cfg.seed)
        if dataset.skipped and dist.is_main():
            print(f"skipping {dataset.skipped} bad record(s); first: {dataset.problems[0]}", flush=True)
        return TrainState(model, processor, planner, ga, dataset, attn)

    def build_module(self):
        return CausalLMLoss(self.model)

    def micro_batches(self, epoch: int, start_step: int):
        plan = self.state.planner.rank_micro_batches(epoch, dist.rank(), start_step)
        pad_id = self.processor.tokenizer.pad_token_id
        collate = partial(collate_samples, self.dataset, self.cfg.data.layout, pad_id, self.state.attn)
        return loader(plan, collate, self.cfg.data.num_workers)
