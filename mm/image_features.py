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

DeepStack families (Qwen3-VL) also inject features of early vision blocks into early LM layers,
so their visual tokens are ``[tokens, 1 + k, D]``: the merger's output, then the k DeepStack
mergers' outputs of the same tokens. They split, concatenate and cache like the ``[tokens, D]``
of other families, and ``encoder_outputs`` hands both parts to the model.
"""

from __future__ import annotations

import torch

from mm.loading import unwrap
from mm.models import family_of


def fingerprint(pixels: torch.Tensor, grid: torch.Tensor, samples: int = 4096) -> tuple:
    """A cheap key for one image: its grid, size and a strided sample of its patches. Images with
    equal fingerprints are compared in full before features are shared."""
    flat = pixels.detach().reshape(-1)
    step = max(1, flat.numel() // samples)
    return (tuple(int(x) for x in grid), flat.numel(), hash(flat[::step].float().cpu().numpy().tobytes()))


def encode_visuals(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor, kind: str = "image") -> tuple:
    """Merged visual tokens of each image (or video, ``kind="video"``) of a batch, from one call
    of the model's own ``get_image_features`` / ``get_video_features``: ``[tokens_i, D]`` each, or
    ``[tokens_i, 1 + k, D]`` with the k DeepStack levels. Gradients flow unless the caller runs
    under ``no_grad``."""
    inner = unwrap(model).model
    encode = inner.get_video_features if kind == "video" else inner.get_image_features
    out = encode(pixel_values, grid_thw, return_dict=True)
    deepstack = getattr(out, "deepstack_features", None)
    if not deepstack:
        return tuple(out.pooler_output)
    levels = zip(out.pooler_output, *deepstack)  # per item: (merged, level 1, ..., level k)
    return tuple(torch.stack(item, dim=1) for item in levels)  # [tokens, 1 + k, D] each


def encoder_outputs(image=None, video=None) -> dict:
    """The ``mm_encoder_outputs`` argument of the model's forward and ``generate``: per kind, the
    features of its placeholders in order, as one concatenated tensor or one tensor per item
    (``[tokens, 1 + k, D]`` ones carry DeepStack levels 1..k after the merged tokens)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    out = {}
    for kind, feats in (("image", image), ("video", video)):
        if feats is None:
            continue
        items = (feats,) if torch.is_tensor(feats) else tuple(feats)
        if items and items[0].dim() == 3:
            from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

            out[kind] = BaseModelOutputWithDeepstackFeatures(
                pooler_output=tuple(f[:, 0] for f in items),
                deepstack_features=[tuple(f[:, j] for f in items) for j in range(1, items[0].shape[1])],
            )
        else:
            out[kind] = BaseModelOutputWithPooling(pooler_output=items)
    return out


def vision_frozen(model) -> bool:
    """True when no parameter of the vision tower or its mergers trains (so features stay valid)."""
    base = unwrap(model)
    family = family_of(base.config)
    return not any(p.requires_grad for p in family.submodule(base, family.vision).parameters())


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
        """Features ``[tokens_i, D]`` (DeepStack: ``[tokens_i, 1 + k, D]``) of each image
        (``pixels[i]``: its ``[patches, dim]`` rows)."""
        keys = [fingerprint(p, g) for p, g in zip(pixels, grids)]
        found = [self._find(k, p) for k, p in zip(keys, pixels)]
        todo: list[int] = []  # first occurrences of the images not stored yet
        for i, f in enumerate(found):
            if f is None and not any(keys[j] == keys[i] and torch.equal(pixels[j], pixels[i]) for j in todo):
                todo.append(i)
        if todo:
            base = unwrap(self.model)
            family = family_of(base.config)
            dev = next(family.submodule(base, family.vision).parameters()).device
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
