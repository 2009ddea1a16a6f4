"""Training data: the data config, per-epoch step plans sharded over ranks, and the loader.

An epoch is planned up front from token counts (file headers only): samples are shuffled with
``seed + epoch``, then grouped into micro-batches (``pad``: ``micro_batch_size`` samples;
``pack``: rows of at most ``max_tokens`` tokens, ``micro_batch_size`` rows per micro-batch).
One optimizer step takes ``world x grad_accum`` micro-batches; rank r gets micro-batches
``a * world + r``. The position in the data is just (epoch, step), so resuming skips whole steps
without touching their samples.
"""

from __future__ import annotations

import random
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
    layout: Literal["pack", "pad"] = opt(
        "pack", "pack samples into rows (exact, no padding waste) or pad batches"
    )
    max_tokens: int = opt(
        4096, "pack: tokens per row; both: longer samples are an error (or skipped with on_error=skip)"
    )
    micro_batch_size: int = opt(1, "rows (pack) or samples (pad) per micro-batch on each rank")
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
    """Deterministic per-epoch plans of optimizer steps, each a list of world x grad_accum micro-batches."""

    def __init__(self, lengths: list[int], cfg: DataConfig, world: int, grad_accum: int, seed: int):
        self.cfg, self.world, self.grad_accum, self.seed = cfg, world, grad_accum, seed
        self.lengths = lengths
        self.usable = [i for i, n in enumerate(lengths) if 0 < n <= cfg.max_tokens]
        self.per_step = world * grad_accum
        self._planned: tuple[int, list[list]] | None = None  # (epoch, micro-batches): planned once per epoch
        if self.steps_per_epoch() == 0:
            raise ValueError(
                f"{len(self.usable)} usable sample(s) make fewer micro-batches than one optimizer step needs "
                f"({self.per_step} = world {world} x grad_accum {grad_accum}); add data or lower "
                "micro_batch_size / gradient_accumulation_steps"
            )

    def micro_batches(self, epoch: int) -> list[list]:
        if self._planned is None or self._planned[0] != epoch:
            self._planned = (epoch, self._plan(epoch))
        return self._planned[1]

    def _plan(self, epoch: int) -> list[list]:
        order = list(self.usable)
        random.Random(self.seed * 1000003 + epoch).shuffle(order)
        mb = self.cfg.micro_batch_size
        if self.cfg.layout == "pad":
            return [order[k : k + mb] for k in range(0, len(order) - mb + 1, mb)]
        rows = [
            [order[j] for j in row]
            for row in plan_packs([self.lengths[i] for i in order], self.cfg.max_tokens)
        ]
        random.Random(self.seed * 1000003 + epoch + 1).shuffle(rows)
        return [rows[k : k + mb] for k in range(0, len(rows) - mb + 1, mb)]

    def steps_per_epoch(self) -> int:
        # the same every epoch: reshuffling changes which samples share a row, not how many rows
        # first-fit decreasing makes (it only sees the sorted lengths)
        return len(self.micro_batches(0)) // self.per_step

    def rank_micro_batches(self, epoch: int, rank: int, start_step: int = 0) -> list[list]:
        """This rank's micro-batches of ``epoch`` from ``start_step`` on, grad_accum per step."""
        mbs = self.micro_batches(epoch)
        out = []
        for step in range(start_step, len(mbs) // self.per_step):
            base = step * self.per_step
            out += [mbs[base + a * self.world + rank] for a in range(self.grad_accum)]
        return out


class MicroBatches(torch.utils.data.Dataset):
    """Encodes and collates one micro-batch per item (so DataLoader workers can prefetch)."""

    def __init__(self, ds: RecordDataset, plan: list[list], layout: str, pad_id: int, attn: str):
        self.ds, self.plan, self.layout, self.pad_id, self.attn = ds, plan, layout, pad_id, attn

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> dict | None:
        spec = self.plan[k]
        if self.layout == "pad":
            samples = [s for s in (self.ds[i] for i in spec) if s is not None]
            return pad_batch(samples, self.pad_id) if samples else None
        rows = [[s for s in (self.ds[i] for i in row) if s is not None] for row in spec]
        rows = [r for r in rows if r]
        return pack_batch(rows, self.pad_id, self.attn) if rows else None


def loader(ds: RecordDataset, plan: list[list], cfg: DataConfig, pad_id: int, attn: str):
    return torch.utils.data.DataLoader(
        MicroBatches(ds, plan, cfg.layout, pad_id, attn),
        batch_size=None,
        shuffle=False,
        num_workers=cfg.num_workers,
        prefetch_factor=2 if cfg.num_workers else None,
    )


def check_lengths(ds: RecordDataset, lengths: list[int], cfg: DataConfig, what: str = "sample") -> None:
    """Items over max_tokens: an error naming the line, or counted as skipped. ``what`` names an
    item in the message (DPO: a pair, prompt twice + both responses)."""
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
