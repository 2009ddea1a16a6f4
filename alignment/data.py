"""Training data: the data config, per-epoch step plans sharded over ranks, and the loader.

An epoch is planned up front from token counts (file headers only): samples are shuffled with
``seed + epoch``, then grouped into micro-batches of ``micro_batch_size`` samples. The layout is
how a micro-batch is laid out, not how big it is: ``pad`` pads its samples to the longest,
``pack`` concatenates them into as few rows of at most ``max_tokens`` tokens as first-fit
decreasing makes (no padding inside a row). One optimizer step takes ``world x grad_accum``
micro-batches; rank r gets micro-batches ``a * world + r``.

So a step holds ``world x grad_accum x micro_batch_size`` samples whatever the layout and the
sample lengths: the global batch as the papers (and their padded trainers) count it, and the
same number of optimizer steps per epoch (ViRC: 8 GPUs x 8 accumulation x 1 = 64 samples).
Packing saves the padding's compute, never changes what a step averages over.

The position in the data is just (epoch, step), so resuming skips whole steps without touching
their samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from mm.collate import pack_batch, pad_batch, plan_packs
from mm.config import opt
from mm.dataset import DataError, Problem, RecordDataset
from mm.visual import VisualConfig


@dataclass
class DataConfig:
    train: str = opt("", "training JSONL file (mmpost data format)")
    eval: str | None = opt(
        None, "held-out JSONL: scored every train.eval_every steps (and suggested for `mmpost eval`)"
    )
    format: Literal["auto", "mmpost", "sharegpt", "alpaca", "openai", "trl", "rl", "llamafactory_v1"] = opt(
        "auto", "format of data.train / data.eval (auto: told by the columns; docs/data.md lists them)"
    )
    layout: Literal["pack", "pad"] = opt(
        "pack", "pack samples into rows (exact, no padding waste) or pad batches"
    )
    max_tokens: int = opt(
        4096, "pack: tokens per row; both: longer samples are an error (or skipped with on_error=skip)"
    )
    micro_batch_size: int = opt(
        1,
        "samples per micro-batch on each rank, in either layout (pack lays them out in rows of at most "
        "max_tokens): a step holds world x gradient_accumulation_steps x micro_batch_size samples",
    )
    on_error: Literal["raise", "skip"] = opt(
        "raise", "bad records: stop with file:line, or skip and count them"
    )
    drop_tool_images: bool = opt(
        False, "drop images of tool-result user turns (ViRC stage 1: learn the CRU text structure)"
    )
    num_workers: int = opt(0, "DataLoader worker processes encoding micro-batches ahead of the model")
    visual: VisualConfig = opt(
        factory=VisualConfig, help="per-image pixel limits and the per-sample visual-token budget"
    )


class StepPlanner:
    """Deterministic per-epoch plans of optimizer steps, each a list of world x grad_accum micro-batches.

    ``lengths``: tokens per item (0: unusable); ``micro_batch_size`` items per micro-batch, laid
    out as a list of items (pad) or a list of rows of items of at most ``max_tokens`` tokens
    together (pack); items longer than ``max_tokens`` (None: no limit) are left out.
    """

    def __init__(
        self,
        lengths: list[int],
        *,
        layout: str,
        micro_batch_size: int,
        max_tokens: int | None,
        world: int,
        grad_accum: int,
        seed: int,
    ):
        if layout == "pack" and not max_tokens:
            raise ValueError("StepPlanner: layout 'pack' needs max_tokens (the tokens of a row)")
        self.layout, self.micro_batch_size, self.max_tokens = layout, micro_batch_size, max_tokens
        self.world, self.grad_accum, self.seed = world, grad_accum, seed
        self.lengths = lengths
        self.usable = [i for i, n in enumerate(lengths) if 0 < n and (max_tokens is None or n <= max_tokens)]
        self.per_step = world * grad_accum
        self._planned: tuple[int, list[list]] | None = None  # (epoch, micro-batches): planned once per epoch
        if self.steps_per_epoch() == 0:
            raise ValueError(
                f"{len(self.usable)} usable sample(s) make fewer micro-batches than one optimizer step needs "
                f"({self.per_step} = world {world} x grad_accum {grad_accum}); add data or lower "
                "micro_batch_size / gradient_accumulation_steps"
            )

    @classmethod
    def of(cls, lengths: list[int], cfg: DataConfig, world: int, grad_accum: int, seed: int) -> StepPlanner:
        """The planner of a ``DataConfig`` (its layout, micro_batch_size and max_tokens)."""
        return cls(
            lengths,
            layout=cfg.layout,
            micro_batch_size=cfg.micro_batch_size,
            max_tokens=cfg.max_tokens,
            world=world,
            grad_accum=grad_accum,
            seed=seed,
        )

    def micro_batches(self, epoch: int) -> list[list]:
        if self._planned is None or self._planned[0] != epoch:
            self._planned = (epoch, self._plan(epoch))
        return self._planned[1]

    def _plan(self, epoch: int) -> list[list]:
        order = list(self.usable)
        random.Random(self.seed * 1000003 + epoch).shuffle(order)
        mb = self.micro_batch_size
        groups = [order[k : k + mb] for k in range(0, len(order) - mb + 1, mb)]
        if self.layout == "pad":
            return groups
        return [  # the micro-batch's samples in rows of at most max_tokens
            [[g[j] for j in row] for row in plan_packs([self.lengths[i] for i in g], self.max_tokens)]
            for g in groups
        ]

    def steps_per_epoch(self) -> int:
        return len(self.usable) // self.micro_batch_size // self.per_step

    def rank_micro_batches(self, epoch: int, rank: int, start_step: int = 0) -> list[list]:
        """This rank's micro-batches of ``epoch`` from ``start_step`` on, grad_accum per step."""
        mbs = self.micro_batches(epoch)
        out = []
        for step in range(start_step, len(mbs) // self.per_step):
            base = step * self.per_step
            out += [mbs[base + a * self.world + rank] for a in range(self.grad_accum)]
        return out


class MicroBatches(torch.utils.data.Dataset):
    """Item k: micro-batch k of a plan, built by ``collate(plan[k])`` (None when every record of
    it was skipped), so DataLoader workers can encode micro-batches ahead of the model. The one
    loader of SFT, DPO and VLA; each passes its own (picklable) ``collate``."""

    def __init__(self, plan: list[list], collate: Callable[[list], dict | None]):
        self.plan, self.collate = plan, collate

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> dict | None:
        return self.collate(self.plan[k])


def loader(plan: list[list], collate: Callable[[list], dict | None], num_workers: int = 0):
    """This rank's micro-batches of ``plan``, in order (``num_workers`` processes ahead)."""
    return torch.utils.data.DataLoader(
        MicroBatches(plan, collate),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
    )


def collate_samples(ds: RecordDataset, layout: str, pad_id: int, attn: str, spec: list) -> dict | None:
    """An SFT micro-batch: ``spec`` lists sample indices (pad) or rows of them (pack)."""
    if layout == "pad":
        samples = [s for s in (ds[i] for i in spec) if s is not None]
        return pad_batch(samples, pad_id) if samples else None
    rows = [[s for s in (ds[i] for i in row) if s is not None] for row in spec]
    rows = [r for r in rows if r]
    return pack_batch(rows, pad_id, attn) if rows else None


def check_layout(cfg: DataConfig, model) -> None:
    """``data.layout=pack`` needs a model family whose packed rows equal its samples run alone
    (``ModelFamily.packing``); Qwen3.5's linear-attention layers mix a row, so it trains padded."""
    if cfg.layout == "pack":
        from mm.models import family_of

        family_of(model.config).require("packing", "data.layout=pack")


def check_lengths(ds: RecordDataset, lengths: list[int], cfg: DataConfig, what: str = "sample") -> None:
    """Items over max_tokens: an error naming the line, or counted as skipped. ``what`` names an
    item in the message (DPO: a pair's longer sequence)."""
    for i, n in enumerate(lengths):
        if n > cfg.max_tokens:
            p = Problem(
                ds.path,
                ds.lines[i],
                "too_long",
                f"{what} has {n} tokens, more than data.max_tokens={cfg.max_tokens}",
                "raise data.max_tokens or lower the visual limits",
            )
            if cfg.on_error == "raise":
                raise DataError(p)
            ds.problems.append(p)
