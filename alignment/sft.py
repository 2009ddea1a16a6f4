"""Supervised fine-tuning: next-token loss on assistant tokens, padded or exactly packed.

mmpost train configs/quickstart/sft.yaml [--output-dir DIR] [key=value ...]
"""

from __future__ import annotations

from functools import partial

import torch

from alignment.data import StepPlanner, check_layout, check_lengths, collate_samples, loader
from alignment.evaluator import HeldOut, shard_plan
from alignment.infra import distributed as dist
from alignment.loop import Trainer, TrainState
from alignment.sft_config import SFTConfig
from mm.attention import choose_backend
from mm.collate import pad_batch
from mm.config import ConfigError
from mm.dataset import RecordDataset
from mm.encode import ConversationEncoder
from mm.loading import load_for_training, unwrap
from mm.logprobs import labelled_logprobs
from mm.records import drop_tool_result_images
from mm.rope import RopeSpec


class CausalLMLoss(torch.nn.Module):
    """Wraps the VLM: forward(**batch) -> (summed NLL of supervised tokens, their count, {})."""

    model_attr = "model"  # where the trained VLM lives (see alignment.infra.export)

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, labels, seq_ids=None, mm_token_type_ids=None, **inputs):
        base = unwrap(self.model)
        hidden = base.model(**inputs).last_hidden_state  # [B, L, D]
        lp = labelled_logprobs(hidden, base.lm_head, labels)
        return -lp.values.sum(), lp.count, {}


class SFTTrainer(Trainer):
    name = "sft"

    def setup(self, device: str) -> TrainState:
        cfg: SFTConfig = self.cfg
        m = cfg.model
        attn = choose_backend(m.attn, device)
        model, processor = load_for_training(cfg.model, cfg.init_from, attn, self.train_cfg.seed)
        model.train()
        check_layout(cfg.data, model)  # packing only where it is exact (Qwen3.5: pad)
        if not cfg.data.train:
            raise ConfigError("data.train is empty: set it in the config or with data.train=FILE.jsonl")
        encoder = ConversationEncoder(processor, cfg.data.visual, RopeSpec.from_config(model.config))
        transform = drop_tool_result_images if cfg.data.drop_tool_images else None
        dataset = RecordDataset(
            cfg.data.train, encoder, on_error=cfg.data.on_error, transform=transform, format=cfg.data.format
        )
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

    def held_out(self, path: str, limit: int, device: str) -> SFTHeldOut:
        return SFTHeldOut(self, path, limit)


class SFTHeldOut(HeldOut):
    """Held-out conversations: the next-token loss on their supervised tokens."""

    def __init__(self, trainer, path: str, limit: int):
        train = trainer.dataset
        self.ds = RecordDataset(
            path,
            train.encoder,
            on_error=train.on_error,
            transform=train.transform,
            format=trainer.cfg.data.format,
        )
        self.n = min(len(self.ds), limit) if limit else len(self.ds)
        self.mb = trainer.cfg.data.micro_batch_size
        self.pad_id = trainer.processor.tokenizer.pad_token_id
        self.processor, tc = trainer.processor, trainer.train_cfg
        self.max_new_tokens = tc.eval_max_new_tokens if tc.eval_generate else 0
        if self.max_new_tokens and tc.deepspeed == "zero3" and dist.world() > 1:
            raise ConfigError("train.eval_generate is not supported under ZeRO-3 on several ranks; use zero2")

    def batches(self):
        for indices, weight in shard_plan(self.n, self.mb):
            samples = [s for s in (self.ds[i] for i in indices) if s is not None]
            if samples:
                yield {**pad_batch(samples, self.pad_id), "indices": indices}, weight

    def sums(self, module, batch: dict) -> dict:
        indices = batch.pop("indices")
        nll, count, _ = module(**batch)
        out = {"loss": (nll, count)}
        if self.max_new_tokens:
            correct, n = self.answers(module.model, [self.ds.records[i] for i in indices])
            out["accuracy"] = (correct, n)
        return out

    def answers(self, model, records: list) -> tuple[int, int]:
        """Greedy answers to the prompts of ``records`` that carry an ``answer`` (the turns before
        the first assistant turn; through the tool engine when the system prompt declares tools),
        matched as ``mmpost eval`` matches them: (correct, records with an answer)."""
        from evaluation.answers import answers_match
        from evaluation.evaluate import answer_prompts

        recs = [r for r in records if r.answer is not None]
        prompts = [
            r.messages[: next(i for i, m in enumerate(r.messages) if m.role == "assistant")] for r in recs
        ]
        model, correct = unwrap(model), 0
        for rec, p in zip(recs, prompts):
            ((_, pred, _),) = answer_prompts(
                model, self.processor, self.ds.encoder, [p], self.ds.base_dir, self.max_new_tokens, 8
            )
            correct += answers_match(pred, rec.answer)
        return correct, len(recs)
