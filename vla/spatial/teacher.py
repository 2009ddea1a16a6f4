"""Frozen teachers for Spatial Forcing: images of each view -> a patch-feature grid per view.

``build_teacher(spec, weights, image_size)`` with ``spec``:

* ``random``     a tiny seeded random conv net (tests, the quickstart, benchmarks; no weights);
* ``timm:NAME``  a timm backbone (DINOv2-style ViTs: ``vit_small_patch14_dinov2``, ...) built with
                 ``pretrained=False`` and loaded from a local ``.safetensors`` / ``.pth`` file;
* ``vggt``       VGGT's aggregator (the paper's teacher), when the ``vggt`` package is installed
                 and its weights are a local file; last layer, patch tokens only (2048-d);
* ``geometry``   the simulator's own 3-D geometry (``vla.spatial.geometry``): it reads depth and
                 camera poses, not images, so it exists only as precomputed features written with
                 the demonstrations (``mmpost data metaworld-demos --teacher-features geometry``).

Every teacher takes ``images [B, V, 3, S, S]`` in [0, 1] (the views resized to ``S x S``) and a
view mask ``[B, V]``, and returns features ``[B, V, h, w, d]``. Teachers are frozen (eval mode,
``requires_grad=False``) and run under ``no_grad``; nothing downloads weights.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from mm.config import ConfigError
from mm.imports import MissingDependency, is_available, require


class Teacher(torch.nn.Module):
    """Base class: ``spec`` names the teacher, ``dim`` its feature width, ``image_size`` its input side."""

    spec: str = ""
    dim: int = 0
    image_size: int = 0
    weights: str | None = None  # the local weights file (precomputed features record it)

    def freeze(self) -> Teacher:
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Teacher:  # a teacher never leaves eval mode
        return super().train(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, h, w, d] (views independently)."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        B, V = images.shape[:2]
        out = self.features(images.flatten(0, 1))  # [B*V, h, w, d]
        return out.unflatten(0, (B, V)).float()


class RandomTeacher(Teacher):
    """Patch embedding (8 x 8) + two residual 3x3 conv blocks, seeded: a stand-in with real spatial
    structure (its features depend on local colour and edges) and no weights to download."""

    def __init__(self, dim: int = 32, image_size: int = 56, patch: int = 8, seed: int = 0):
        super().__init__()
        self.spec, self.dim, self.image_size = "random", dim, image_size
        self.embed = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(dim, dim, 3, padding=1) for _ in range(2))
        g = torch.Generator().manual_seed(seed)
        for conv in [self.embed, *self.blocks]:
            bound = (6.0 / (conv.weight[0].numel() + conv.weight.shape[0])) ** 0.5
            conv.weight.data = (torch.rand(conv.weight.shape, generator=g) * 2 - 1) * bound
            conv.bias.data.zero_()
        self.freeze()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images * 2 - 1)  # [N, d, h, w]
        for conv in self.blocks:
            x = x + torch.nn.functional.gelu(conv(x))
        return x.permute(0, 2, 3, 1)  # [N, h, w, d]


def load_state_dict(path: str) -> dict:
    """A state dict from a local ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"teacher weights {path!r} not found; mmpost never downloads weights: "
            "pass a local file with align.teacher_weights=PATH"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


class TimmTeacher(Teacher):
    """A timm backbone by name, weights from a local file; prefix (class/register) tokens dropped."""

    def __init__(self, name: str, weights: str | None, image_size: int = 0):
        super().__init__()
        timm = require("timm", "the timm Spatial Forcing teacher")
        if not weights:
            raise ValueError(
                f"teacher timm:{name} needs its weights as a local file (align.teacher_weights=PATH); "
                "a randomly initialised timm model is not a teacher"
            )
        kwargs = {"img_size": image_size} if image_size else {}
        self.model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        state = load_state_dict(weights)
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        if isinstance(self.model, VisionTransformer):  # resamples position embeddings to img_size
            state = checkpoint_filter_fn(state, self.model)
        missing, _unexpected = self.model.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{weights} does not fit timm model {name}: missing {missing[:5]} ...")
        cfg = self.model.pretrained_cfg
        self.spec, self.weights = f"timm:{name}", weights
        self.dim = self.model.num_features
        self.image_size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)))[:, None, None])
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)))[:, None, None])
        self.freeze()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.model.forward_features((images - self.mean) / self.std)
        if x.dim() == 4:  # convolutional backbones: [N, d, h, w]
            return x.permute(0, 2, 3, 1)
        x = x[:, getattr(self.model, "num_prefix_tokens", 0) :]  # [N, h*w, d]
        h = w = int(round(x.shape[1] ** 0.5))
        if h * w != x.shape[1]:
            raise ValueError(f"timm teacher returned {x.shape[1]} patch tokens, not a square grid")
        return x.unflatten(1, (h, w))


class VGGTTeacher(Teacher):
    """VGGT-1B's aggregator: all views of a sample together, last layer, patch tokens (2048-d)."""

    def __init__(self, weights: str | None, image_size: int = 518):
        super().__init__()
        if not is_available("vggt"):
            raise MissingDependency(
                "the vggt teacher needs the vggt package: "
                "pip install git+https://github.com/facebookresearch/vggt (or use align.teacher=timm:NAME)"
            )
        from vggt.models.vggt import VGGT

        self.model = VGGT()
        missing, _unexpected = self.model.load_state_dict(load_state_dict(weights), strict=False)
        missing = [k for k in missing if k.startswith("aggregator.")]  # the heads are never run
        if missing:
            raise ValueError(
                f"{weights} does not fit VGGT: {len(missing)} aggregator weights missing "
                f"({', '.join(missing[:5])}, ...); pass VGGT-1B's weights file"
            )
        self.spec, self.dim, self.image_size, self.weights = "vggt", 2048, image_size or 518, weights
        if self.image_size % 14:
            raise ValueError(f"VGGT needs image sizes divisible by 14, got {self.image_size}")
        self.freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        B, V, _, S, _ = images.shape
        g = S // 14
        out = images.new_zeros(B, V, g, g, self.dim)
        for b in range(B):  # the present views of one sample form one multi-view set
            present = view_mask[b].nonzero().flatten()
            tokens, start = self.model.aggregator(images[b, present][None])
            out[b, present] = tokens[-1][0, :, start:].unflatten(1, (g, g)).float()
        return out


def build_teacher(spec: str, weights: str | None = None, image_size: int = 0, seed: int = 0) -> Teacher:
    """``random``, ``timm:NAME`` or ``vggt`` (see the module docstring); ``geometry`` has no live form."""
    if spec == "random":
        return RandomTeacher(image_size=image_size or 56, seed=seed)
    if spec.startswith("timm:"):
        return TimmTeacher(spec[5:], weights, image_size)
    if spec == "vggt":
        return VGGTTeacher(weights, image_size)
    if spec == "geometry":
        raise ConfigError(GEOMETRY_HINT)
    raise ValueError(f"unknown teacher {spec!r}; use random, timm:NAME, vggt or geometry (precomputed)")


GEOMETRY_HINT = (
    "the geometry teacher reads the simulator's depth and cameras, which a training run does not have: "
    "write its features with the demonstrations (mmpost data metaworld-demos OUT --teacher-features "
    "geometry) and train with align.teacher=geometry align.features=OUT/teacher-geometry"
)


def teacher_images(images: list[Image.Image], size: int) -> torch.Tensor:
    """Views as the teacher sees them: RGB resized to ``size x size`` (the whole field of view, so
    the teacher's grid covers the same area as the student's), [V, 3, size, size] in [0, 1]."""
    arr = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for im in images]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 255.0
