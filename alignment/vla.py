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
from dataclasses import dataclass
from functools import partial

import torch

from alignment import units
from alignment.data import StepPlanner, loader
from alignment.evaluator import HeldOut, shard_plan
from alignment.infra import distributed as dist
from alignment.infra.export import export_hf
from alignment.loop import Trainer, TrainState
from alignment.vla_config import VLAConfig
from mm.attention import choose_backend
from mm.config import ConfigError
from mm.encode import ConversationEncoder
from mm.loading import load_for_training
from mm.rope import RopeSpec
from vla.data import VLADataset, collate
from vla.datasets import open_vla_dataset
from vla.model import HEADS, VLA_JSON, VLAHeads, VLAModel
from vla.spatial.align import AlignProjector
from vla.spatial.features import FeatureStore
from vla.spatial.teacher import GEOMETRY_HINT, build_teacher


def collate_vla(
    ds: VLADataset, pad_id: int, max_views: int, teacher_size: int, features, spec: list
) -> dict | None:
    """The micro-batch of the sample indices ``spec`` (None when every sample was skipped)."""
    samples = [s for s in (ds[i] for i in spec) if s is not None]
    return collate(samples, pad_id, max_views, teacher_size, features) if samples else None


@dataclass
class VLAState(TrainState):
    teacher: torch.nn.Module | None = None  # live frozen teacher (align.alpha > 0, no feature store)
    features: FeatureStore | None = None  # precomputed teacher features
    teacher_dim: int = 0


class VLATrainer(Trainer):
    name = "vla"
    loss_unit = staticmethod(units.samples)  # the loss is averaged over samples
    state: VLAState

    def setup(self, device: str) -> VLAState:
        cfg: VLAConfig = self.cfg
        if cfg.align.alpha > 0 and cfg.align.teacher == "geometry" and not cfg.align.features:
            raise ConfigError(f"align.teacher=geometry needs align.features: {GEOMETRY_HINT}")
        attn = choose_backend(cfg.model.attn, device)
        model, processor = load_for_training(cfg.model, cfg.init_from, attn, self.train_cfg.seed)
        model.train()
        if not cfg.data.train:
            raise ConfigError("data.train is empty: set it in the config or with data.train=FILE.jsonl")
        encoder = ConversationEncoder(processor, cfg.data.visual, RopeSpec.from_config(model.config))
        a = cfg.action
        dataset = open_vla_dataset(
            cfg.data.train,
            cfg.data.format,
            encoder,
            a.chunk,
            a.dims,
            cfg.data.max_views,
            a.use_proprio,
            cfg.data.on_error,
            cache=cfg.data.cache,
        )
        if dist.is_main():
            dataset.stats.save(self.train_cfg.output_dir)
        ga = self.train_cfg.gradient_accumulation_steps
        planner = StepPlanner(
            [1] * len(dataset),
            layout="pad",
            micro_batch_size=cfg.data.micro_batch_size,
            max_tokens=None,
            world=dist.world(),
            grad_accum=ga,
            seed=self.train_cfg.seed,
        )
        state = VLAState(model, processor, planner, ga, dataset, attn)
        al = cfg.align
        if al.alpha > 0:
            if al.features:
                if os.path.isdir(cfg.data.train):
                    raise ConfigError(
                        "align.features is read with JSONL data only: write the LeRobot frames as JSONL "
                        "(LeRobotVLADataset.write_jsonl) for teacher-features, or drop align.features"
                    )
                state.features = FeatureStore(al.features)
                state.features.check(al.teacher, al.teacher_image_size, cfg.data.train, al.teacher_weights)
                state.teacher_dim = state.features.meta["dim"]
            else:
                state.teacher = build_teacher(al.teacher, al.teacher_weights, al.teacher_image_size).to(
                    device
                )
                state.teacher_dim = state.teacher.dim
            if state.teacher_dim % 4:
                raise ConfigError(
                    f"teacher {al.teacher!r} gives {state.teacher_dim}-d features; Spatial Forcing's 2-D "
                    "position embedding needs a width divisible by 4"
                )
        return state

    def build_module(self):
        cfg: VLAConfig = self.cfg
        d = self.model.config.text_config.hidden_size
        a, al = cfg.action, cfg.align
        dtype = next(self.model.parameters()).dtype
        ds = self.dataset  # D comes from the data when action.dims is 0
        self.heads = VLAHeads(d, a.chunk, ds.dims, ds.proprio_dim, a.head_hidden, a.head, a.head_blocks).to(
            dtype
        )
        projector = (
            AlignProjector(d, self.state.teacher_dim, al.projector_layernorm).to(dtype)
            if al.alpha > 0
            else None
        )
        self.vla = VLAModel(
            self.model, self.heads, projector, al.layer, al.alpha, al.pos_scale, al.shift_student
        )
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

    def micro_batches(self, epoch: int, start_step: int):
        cfg, st = self.cfg, self.state
        plan = st.planner.rank_micro_batches(epoch, dist.rank(), start_step)
        size = st.teacher.image_size if st.teacher is not None else 0
        pad_id = self.processor.tokenizer.pad_token_id
        collate = partial(collate_vla, self.dataset, pad_id, cfg.data.max_views, size, st.features)
        return loader(plan, collate, cfg.data.num_workers)

    def held_out(self, path: str, limit: int, device: str) -> VLAHeldOut:
        return VLAHeldOut(self, path, limit)

    def score(self, batch: dict, device: str) -> dict:
        """The live teacher's features of the batch's views (no grad; the teacher is frozen)."""
        if "teacher_images" not in batch:
            return batch
        batch = dict(batch)
        images = batch.pop("teacher_images").to(device)
        batch["teacher_feats"] = self.state.teacher(images, batch["view_mask"].to(device))
        return batch

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


class VLAHeldOut(HeldOut):
    """Held-out VLA records (normalised with the training set's statistics): action L1."""

    def __init__(self, trainer, path: str, limit: int):
        cfg, a = trainer.cfg, trainer.cfg.action
        self.ds = open_vla_dataset(
            path,
            cfg.data.format,
            trainer.dataset.vla.encoder,
            a.chunk,
            a.dims,
            cfg.data.max_views,
            a.use_proprio,
            cfg.data.on_error,
            stats=trainer.dataset.stats,
        )
        self.n = min(len(self.ds), limit) if limit else len(self.ds)
        self.mb = cfg.data.micro_batch_size
        pad_id, views = trainer.processor.tokenizer.pad_token_id, cfg.data.max_views
        self.collate = lambda samples: collate(samples, pad_id, views)  # noqa: E731

    def batches(self):
        for indices, weight in shard_plan(self.n, self.mb):
            samples = [s for s in (self.ds[i] for i in indices) if s is not None]
            if samples:
                yield self.collate(samples), weight

    def sums(self, module, batch: dict) -> dict:
        _, n, stats = module(**batch)  # no teacher features: the action L1 alone
        return {"action_l1": (stats["action_l1"], n)}
