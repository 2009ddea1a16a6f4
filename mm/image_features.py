"""Visual features of distinct images, each computed once while the vision weights stay fixed.

GRPO samples G completions of one prompt: without a cache the vision tower encodes the same
image G times in generation, again in every later turn, and again in each log-prob pass. An
:class:`ImageFeatures` keys images by their pixels and grid, encodes only the ones it has not
seen (one batched ``encode_visuals`` call: the model's own ``get_image_features``) and hands
back the merged visual tokens, which Qwen2.5-VL's forward and ``generate`` take as
``mm_encoder_outputs`` (``encoder_outputs``). DPO encodes each pair's images once with
``encode_visuals`` (with gradients) and feeds them to both sides the same way.

The features are valid only while the vision tower and merger do not change: a trainer clears
the cache when it updates them, and keeps it across updates only when both are frozen.
"""

from __future__ import annotations

import torch

from mm.loading import unwrap


def fingerprint(pixels: torch.Tensor, grid: torch.Tensor, samples: int = 4096) -> tuple:
    """A cheap key for one image: its grid, size and a strided sample of its patches. Images with
    equal fingerprints are compared in full before features are shared."""
    flat = pixels.detach().reshape(-1)
    step = max(1, flat.numel() // samples)
    return (tuple(int(x) for x in grid), flat.numel(), hash(flat[::step].float().cpu().numpy().tobytes()))


def encode_visuals(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor, kind: str = "image") -> tuple:
    """Merged visual tokens ``[tokens_i, D]`` of each image (or video, ``kind="video"``) of a batch,
    from one call of the model's own ``get_image_features`` / ``get_video_features``. Gradients
    flow unless the caller runs under ``no_grad``."""
    inner = unwrap(model).model
    encode = inner.get_video_features if kind == "video" else inner.get_image_features
    return tuple(encode(pixel_values, grid_thw, return_dict=True).pooler_output)


def encoder_outputs(image=None, video=None) -> dict:
    """The ``mm_encoder_outputs`` argument of Qwen2.5-VL's forward and ``generate``: per kind, the
    features of its placeholders in order, as one concatenated tensor or one tensor per item."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    out = {}
    for kind, feats in (("image", image), ("video", video)):
        if feats is not None:
            pooled = (feats,) if torch.is_tensor(feats) else tuple(feats)
            out[kind] = BaseModelOutputWithPooling(pooler_output=pooled)
    return out


def vision_frozen(model) -> bool:
    """True when no parameter of the vision tower or merger trains (so features stay valid)."""
    return not any(p.requires_grad for p in unwrap(model).model.visual.parameters())


class ImageFeatures:
    """A cache of merged visual tokens by image content; ``hits`` / ``encoded`` count its use."""

    def __init__(self, model):
        self.model = model
        self.store: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # key -> (pixels, features)
        self.hits = self.encoded = 0

    def clear(self) -> None:
        """Forget every feature (the vision weights changed, or a new rollout starts)."""
        self.store.clear()
        self.hits = self.encoded = 0

    def _find(self, key: tuple, pixels: torch.Tensor) -> torch.Tensor | None:
        for seen, feats in self.store.get(key, ()):
            if torch.equal(seen, pixels):
                return feats
        return None

    @torch.no_grad()
    def __call__(self, pixels: list[torch.Tensor], grids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Features ``[tokens_i, D]`` of each image (``pixels[i]``: its ``[patches, dim]`` rows)."""
        keys = [fingerprint(p, g) for p, g in zip(pixels, grids)]
        found = [self._find(k, p) for k, p in zip(keys, pixels)]
        todo: list[int] = []  # first occurrences of the images not stored yet
        for i, f in enumerate(found):
            if f is None and not any(keys[j] == keys[i] and torch.equal(pixels[j], pixels[i]) for j in todo):
                todo.append(i)
        if todo:
            dev = next(unwrap(self.model).model.visual.parameters()).device
            out = encode_visuals(
                self.model,
                torch.cat([pixels[i] for i in todo]).to(dev),
                torch.stack([torch.as_tensor(grids[i]) for i in todo]).to(dev),
            )
            for i, feats in zip(todo, out):
                self.store.setdefault(keys[i], []).append((pixels[i], feats))
        self.encoded += len(todo)
        self.hits += len(pixels) - len(todo)
        return [f if f is not None else self._find(k, p) for f, k, p in zip(found, keys, pixels)]

    def embeds(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Features of a batch's concatenated ``pixel_values``, concatenated in the same order."""
        sizes = image_grid_thw.prod(-1).tolist()
        return torch.cat(self(list(torch.split(pixel_values, sizes)), list(image_grid_thw)))
