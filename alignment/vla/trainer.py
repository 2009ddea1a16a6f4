"""VLA training (L1 action chunks) with optional Spatial Forcing alignment.

mmpost train configs/spatial_forcing/vla.yaml       # action loss only
mmpost train configs/spatial_forcing/vla_sf.yaml    # + alpha x L_align to a frozen teacher

Setup reads the VLA records, computes the q01/q99 normalisation statistics (written to
OUTPUT/norm_stats.json), builds the heads and, when ``align.alpha > 0``, the projector and either
a live frozen teacher or a store of precomputed features. The live teacher runs on the batch
before the model, under no_grad, outside the module DeepSpeed wraps (it is never optimised or
checkpointed). The export writes the backbone (Hugging Face format), ``vla_heads.safetensors``,
``vla.json`` and ``norm_stats.json`` to OUTPUT/final; the projector is dropped.
"""

from __future__ import annotations

import json
import os

import torch

from alignment.data import DataConfig, StepPlanner
from alignment.infra import distributed as dist
from alignment.infra.export import export_hf
from alignment.loop import Trainer
from alignment.spatial.align import AlignProjector
from alignment.spatial.features import FeatureStore
from alignment.spatial.teacher import build_teacher
from alignment.vla.config import VLAConfig
from alignment.vla.data import VLADataset, collate
from alignment.vla.model import VLAHeads, VLAModel
from mm.attention import choose_backend
from mm.encode import ConversationEncoder
from mm.loading import load_for_training
from mm.rope import RopeSpec

HEADS = "vla_heads.safetensors"
VLA_JSON = "vla.json"


class _Batches(torch.utils.data.Dataset):
    def __init__(self, ds: VLADataset, plan: list[list], fn):
        self.ds, self.plan, self.fn = ds, plan, fn

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> dict | None:
        samples = [s for s in (self.ds[i] for i in self.plan[k]) if s is not None]
        return self.fn(samples) if samples else None


class VLATrainer(Trainer):
    name = "vla"

    def setup(self, device: str):
        cfg: VLAConfig = self.cfg
        self.dev = device
        self.attn = choose_backend(cfg.model.attn, device)
        self.model, self.processor = load_for_training(
            cfg.model, cfg.init_from, self.attn, self.train_cfg.seed
        )
        self.model.train()
        if not cfg.data.train:
            raise ValueError("data.train is empty: set it in the config or with data.train=FILE.jsonl")
        encoder = ConversationEncoder(
            self.processor, cfg.data.visual, RopeSpec.from_config(self.model.config)
        )
        a = cfg.action
        self.dataset = VLADataset(
            cfg.data.train,
            encoder,
            a.chunk,
            a.dims,
            cfg.data.max_views,
            a.use_proprio,
            cfg.data.on_error,
            cache=cfg.data.cache,
        )
        if dist.is_main():
            self.dataset.stats.save(self.train_cfg.output_dir)
        self.teacher, self.features = None, None
        al = cfg.align
        if al.alpha > 0:
            if al.features:
                self.features = FeatureStore(al.features)
                self.features.check(al.teacher, al.teacher_image_size, cfg.data.train, al.teacher_weights)
                self.teacher_dim = self.features.meta["dim"]
            else:
                self.teacher = build_teacher(al.teacher, al.teacher_weights, al.teacher_image_size).to(device)
                self.teacher_dim = self.teacher.dim
            if self.teacher_dim % 4:
                raise ValueError(
                    f"teacher {al.teacher!r} gives {self.teacher_dim}-d features; Spatial Forcing's 2-D "
                    "position embedding needs a width divisible by 4"
                )
        n = len(self.dataset)
        shim = DataConfig(layout="pad", micro_batch_size=cfg.data.micro_batch_size, max_tokens=1)
        self.planner = StepPlanner(
            [1] * n, shim, dist.world(), self.train_cfg.gradient_accumulation_steps, self.train_cfg.seed
        )

    def build_module(self):
        cfg: VLAConfig = self.cfg
        d = self.model.config.text_config.hidden_size
        a, al = cfg.action, cfg.align
        dtype = next(self.model.parameters()).dtype
        ds = self.dataset  # D comes from the data when action.dims is 0
        self.heads = VLAHeads(d, a.chunk, ds.dims, ds.proprio_dim, a.head_hidden).to(dtype)
        projector = (
            AlignProjector(d, self.teacher_dim, al.projector_layernorm).to(dtype) if al.alpha > 0 else None
        )
        self.vla = VLAModel(self.model, self.heads, projector, al.layer, al.alpha, al.pos_scale)
        return self.vla

    def extra_param_groups(self) -> list[dict]:
        lr = self.cfg.action.lr_heads
        lr = self.optim_cfg.lr if lr is None else lr  # lr_heads=0 freezes the heads
        params = list(self.heads.parameters()) + (
            list(self.vla.projector.parameters()) if self.vla.projector else []
        )
        # biases, norms and the action-query embeddings get no weight decay
        no_decay = {id(self.heads.action_queries)}
        decay = [p for p in params if p.ndim >= 2 and id(p) not in no_decay]
        rest = [p for p in params if p.ndim < 2 or id(p) in no_decay]
        return [
            {"params": decay, "lr": lr, "weight_decay": self.optim_cfg.weight_decay, "name": "vla_heads"},
            {"params": rest, "lr": lr, "weight_decay": 0.0, "name": "vla_heads_no_decay"},
        ]

    @staticmethod
    def count_tokens(batch: dict) -> int:
        return int(batch["actions"].shape[0])  # the loss is averaged over samples

    def micro_batches(self, epoch: int, start_step: int):
        cfg = self.cfg
        plan = self.planner.rank_micro_batches(epoch, dist.rank(), start_step)
        size = self.teacher.image_size if self.teacher is not None else 0

        def fn(samples):
            return collate(
                samples, self.processor.tokenizer.pad_token_id, cfg.data.max_views, size, self.features
            )

        batches = torch.utils.data.DataLoader(
            _Batches(self.dataset, plan, fn),
            batch_size=None,
            num_workers=cfg.data.num_workers,
            prefetch_factor=2 if cfg.data.num_workers else None,
        )
        for b in batches:
            if b is not None and "teacher_images" in b:
                b["teacher_feats"] = self.teacher(
                    b.pop("teacher_images").to(self.dev), b["view_mask"].to(self.dev)
                )
            yield b

    def export(self, engine, out_dir: str, stage: int) -> None:
        """The backbone as a Hugging Face model, plus the heads, vla.json and norm_stats.json."""
        from safetensors.torch import save_file

        params = list(self.heads.parameters())
        if stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params):
                state = {k: v.detach().cpu().clone() for k, v in self.heads.state_dict().items()}
        else:
            state = {k: v.detach().cpu().clone() for k, v in self.heads.state_dict().items()}
        cfg: VLAConfig = self.cfg

        def extras(folder: str) -> None:
            save_file(state, os.path.join(folder, HEADS))
            self.dataset.stats.save(folder)
            with open(os.path.join(folder, VLA_JSON), "w") as f:
                meta = {
                    **self.heads.config(),
                    "max_views": cfg.data.max_views,
                    "visual": cfg.data.visual.__dict__,
                }
                json.dump(meta, f, indent=1)

        export_hf(engine, self.model, self.processor, out_dir, stage, extras)

    def print_summary(self, s: dict) -> None:
        print(f"\nvla done: {s['steps']} steps in {s['seconds']:.1f}s, final loss {s['final_loss']:.4f}")
        print(f"  checkpoint: {s['checkpoint']}")
        if s["model"]:
            print(
                f"  model:      {s['model']}  (VLAPolicy.from_pretrained(...).predict_actions(images, instruction, proprio))"
            )
