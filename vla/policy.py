"""Inference from an exported VLA folder: ``VLAPolicy.from_pretrained(OUT/final).predict_actions(...)``.

The folder holds the backbone (Hugging Face format, loads with ``mm.load_model``), the heads
(``vla_heads.safetensors``), ``vla.json`` (chunk, dims, proprio size, the training's max_views, visual limits) and
``norm_stats.json``. No teacher and no projector: inference costs what the plain VLA costs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.rope import RopeSpec
from mm.visual import VisualConfig
from vla.data import NormStats, VLAEncoder, VLASample, collate, view_messages
from vla.model import HEADS, VLA_JSON, VLAHeads, VLAModel

# the collated batch's entries VLAModel.predict reads
PREDICT_INPUTS = (
    "input_ids",
    "slot_ids",
    "proprio",
    "attention_mask",
    "position_ids",
    "pixel_values",
    "image_grid_thw",
)


class VLAPolicy:
    def __init__(self, model: VLAModel, processor, stats: NormStats, meta: dict, device: str = "cpu"):
        self.model, self.processor, self.stats, self.meta, self.device = (
            model.eval(),
            processor,
            stats,
            meta,
            device,
        )
        encoder = ConversationEncoder(
            processor, VisualConfig(**meta["visual"]), RopeSpec.from_config(model.base.config)
        )
        self.encoder = VLAEncoder(encoder, meta["chunk"], meta["proprio_dim"])

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: str = "auto") -> VLAPolicy:
        from safetensors.torch import load_file

        meta_path = os.path.join(path, VLA_JSON)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"{path} is not an exported VLA (no {VLA_JSON}); use OUTPUT/final of a vla run"
            )
        with open(meta_path) as f:
            meta = json.load(f)
        backbone, processor = load_model(path, dtype=dtype, device=device)
        d = backbone.config.text_config.hidden_size
        heads = VLAHeads(
            d,
            meta["chunk"],
            meta["dims"],
            meta["proprio_dim"],
            meta["hidden"],
            meta.get("head", "mlp"),  # exports before the head option carry none: the MLP
            meta.get("head_blocks", 2),
        )
        heads.load_state_dict(load_file(os.path.join(path, HEADS)))
        heads.to(device=device, dtype=next(backbone.parameters()).dtype)
        return cls(VLAModel(backbone, heads), processor, NormStats.load(path), meta, device)

    @torch.no_grad()
    def predict_actions(self, images: list, instruction: str, proprio=None) -> np.ndarray:
        """One action chunk [K, D], de-normalised, for the views (PIL images or paths, in the
        training order) and the instruction; ``proprio`` as in the records' ``proprio``."""
        images = list(images)
        if not 1 <= len(images) <= self.meta["max_views"]:
            raise ValueError(
                f"{len(images)} view(s) given; the model was trained with 1..{self.meta['max_views']} views"
            )
        p = np.zeros(0, np.float32) if proprio is None else np.asarray(proprio, np.float32)
        if len(p) != self.meta["proprio_dim"]:
            raise ValueError(
                f"proprio has {len(p)} values, the model was trained with {self.meta['proprio_dim']}"
            )
        enc, slots, prop, views = self.encoder.encode(
            view_messages(images, instruction), os.getcwd(), self.stats.normalize_proprio(p)
        )
        batch = collate(
            [VLASample(enc, slots, prop, views)], self.processor.tokenizer.pad_token_id, len(views)
        )
        inputs = {k: batch[k].to(self.device) for k in PREDICT_INPUTS}
        y = self.model.predict(**inputs)[0].cpu().numpy()  # [K, D] normalised
        return self.stats.denormalize_actions(y)
