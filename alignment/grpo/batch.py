"""What GRPO carries from a rollout to the loss: one :class:`Sequence` per rollout, and the
:class:`GRPOBatch` micro-batch they are collated into.

A ``Sequence`` is a trajectory's ids as the trainer scores them (token-in/token-out: the
engine's ids, labels on the model's own tokens only), the length of its prompt, its group (the
prompt it was sampled for) and its advantage. ``collate`` lays a micro-batch of them out as
padded rows or, when a FLOP estimate says it is cheaper, as shared-prompt rows
(``alignment.grpo.shared_prompt``). A ``GRPOBatch`` is a read-only mapping of its set fields,
so the loop moves it to the device and hands it to the module as keywords like any micro-batch;
its fields are the one place the batch's keys are defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch

from alignment.grpo.shared_prompt import shared_prompt_batch, worth_sharing
from mm.collate import pad_batch
from mm.encode import IGNORE, EncodedSample


@dataclass
class Sequence:
    """One rollout, from the engine to the loss."""

    sample: EncodedSample  # the trajectory's ids, labels on generated tokens only, positions, images
    prompt_length: int  # its first tokens are the prompt's (shared by its group)
    group: int  # the rollout batch's group (prompt) it was sampled for
    advantage: float  # group-relative
    # each generated token's log-prob as the rollout engine computed it (Trajectory.logprobs; the
    # engine asked for them: rollout.generator vllm or loss.tis_cap), else None
    rollout_logp: list[float] | None = None


def _model(**kw):
    return field(default=None, metadata={"model": True}, **kw)


@dataclass(eq=False)
class GRPOBatch(Mapping):
    """A micro-batch of sequences; fields marked ``model`` are the VLM's forward inputs."""

    labels: torch.Tensor  # [B, L] padded rows' labels, IGNORE off the generated tokens
    advantages: torch.Tensor  # [B]
    input_ids: torch.Tensor = _model()  # [rows, L']: B padded rows, or one row per group
    attention_mask: torch.Tensor = _model()  # [rows, L'] 2-D, or [rows, 1, L', L'] shared-prompt rows
    position_ids: torch.Tensor = _model()  # [3, rows, L']
    use_cache: bool | None = _model()
    pixel_values: torch.Tensor | None = _model()
    image_grid_thw: torch.Tensor | None = _model()
    pixel_values_videos: torch.Tensor | None = _model()
    video_grid_thw: torch.Tensor | None = _model()
    second_per_grid_ts: torch.Tensor | None = _model()
    mm_token_type_ids: torch.Tensor | None = None  # [rows, L'] (the loop counts visual tokens)
    # shared-prompt rows: each token's sample, and per labelled token its predictor's flat index
    # in the rows, where its log-prob goes in [B, L - 1], and its id (see shared_prompt)
    seq_ids: torch.Tensor | None = None
    tree_src: torch.Tensor | None = None
    tree_dst: torch.Tensor | None = None
    tree_tgt: torch.Tensor | None = None
    # added by GRPOTrainer.score before the first update: the sampling policy's log-probs
    # (loss.mu > 1), the reference's (loss.beta > 0), the rollout's cached image features
    old_logp: torch.Tensor | None = None  # [B, L - 1]
    ref_logp: torch.Tensor | None = None  # [B, L - 1]
    # the rollout engine's log-probs of the generated tokens (0 elsewhere; see Sequence)
    rollout_logp: torch.Tensor | None = None  # [B, L - 1]
    image_embeds: torch.Tensor | None = None  # [image tokens, D]
    stand_in: bool | None = None  # the loop's STAND_IN: run with weight 0

    def __getitem__(self, key: str):
        value = getattr(self, key, None) if key in _NAMES else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self):
        return (k for k in _NAMES if getattr(self, k) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def model_inputs(self, device=None, images: bool = True) -> dict:
        """The VLM's forward kwargs (on ``device``), ``images`` False: without the pixels (their
        features come cached)."""
        out = {}
        for k in _MODEL:
            v = getattr(self, k)
            if v is None or (not images and k == "pixel_values"):
                continue
            out[k] = v.to(device) if device is not None and torch.is_tensor(v) else v
        return out

    @property
    def tree(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        return None if self.tree_src is None else (self.tree_src, self.tree_dst, self.tree_tgt)


_NAMES = tuple(f.name for f in fields(GRPOBatch))
_MODEL = tuple(f.name for f in fields(GRPOBatch) if f.metadata.get("model"))


def collate(seqs: list[Sequence], pad_id: int, share_prompt: bool, pair_cost: float, merge: int) -> GRPOBatch:
    """A micro-batch of ``seqs``: shared-prompt rows when ``share_prompt`` and a FLOP estimate
    (``worth_sharing``, ``pair_cost``) says they are cheaper, padded rows otherwise; ``merge``:
    patches per visual token."""
    samples = [s.sample for s in seqs]
    plens, groups = [s.prompt_length for s in seqs], [s.group for s in seqs]
    if share_prompt and worth_sharing([len(x) for x in samples], plens, groups, pair_cost):
        batch = shared_prompt_batch(samples, plens, groups, pad_id, merge)
    else:
        batch = pad_batch(samples, pad_id)
    advantages = torch.tensor([s.advantage for s in seqs], dtype=torch.float32)
    return GRPOBatch(**batch, advantages=advantages, rollout_logp=rollout_logprobs(seqs, batch["labels"]))


def rollout_logprobs(seqs: list[Sequence], labels: torch.Tensor) -> torch.Tensor | None:
    """[B, L - 1]: each sequence's rollout log-probs where its labelled (generated) tokens are
    predicted, in the padded rows' layout of the trainer's log-probs; None unless every sequence
    has them."""
    if not seqs or any(s.rollout_logp is None for s in seqs):
        return None
    out = torch.zeros(labels.shape[0], labels.shape[1] - 1, dtype=torch.float32)
    for row, s in enumerate(seqs):
        where = torch.nonzero(labels[row, 1:] != IGNORE).flatten()
        if len(where) != len(s.rollout_logp):
            raise ValueError(
                f"a rollout of {len(where)} generated tokens came with {len(s.rollout_logp)} log-probs"
            )
        out[row, where] = torch.tensor(s.rollout_logp, dtype=torch.float32)
    return out
