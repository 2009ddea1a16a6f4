"""Evaluation during training: held-out metrics every ``train.eval_every`` steps, and the best model.

    evaluator = Evaluator(trainer, device)            # after the engine is built, before a resume
    if evaluator.due(step, total):
        log.log(evaluator.run(step, engine, stage))   # {"step": s, "eval_loss": ..., ...}

Each trainer's ``held_out`` hook gives its algorithm's held-out set (a :class:`HeldOut`, defined
beside the trainer): it yields this rank's share of ``data.eval`` as batches (:func:`shard_plan`)
and scores a batch as sums ``{name: (numerator, denominator)}``. The
sums of all batches of all ranks are added in one ``all_sum`` and every metric is numerator /
denominator, so the result does not depend on how the records are split over ranks or batches
(the SFT loss is a mean per supervised token, as in training). Metrics are logged with an
``eval_`` prefix in metrics.jsonl and the ``train.report_to`` trackers (TensorBoard: ``eval/...``).

``train.save_best: METRIC`` (e.g. ``eval_loss``) exports the model (Hugging Face format, as
OUTPUT/final) to ``OUTPUT/best`` whenever METRIC improves; ``best/best.json`` records the metric,
its value, the mode and the step. The export is written into a temporary folder and renamed into
place (``alignment.infra.export``), so a crash leaves the previous best or the new one. Mode
``auto``: ``max`` for metrics named like accuracy/reward/margin, ``min`` otherwise.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch

from alignment.infra import distributed as dist
from mm.config import ConfigError

MAXIMISED = ("accuracy", "reward", "margin", "score")
BEST = "best"
BEST_JSON = "best.json"


def shard_plan(n: int, micro_batch_size: int) -> list[tuple[list[int], float]]:
    """This rank's batches of records ``0..n-1`` (records ``rank, rank + world, ...``) as
    (indices, weight), padded with weight-0 repeats to the same count on every rank: every rank
    runs the same number of batches (ZeRO-3 gathers parameters collectively in each forward)."""
    if n == 0:
        raise ConfigError("data.eval holds no usable records")
    world, mb = dist.world(), max(1, micro_batch_size)
    mine = list(range(n))[dist.rank() :: world]
    plan = [(mine[k : k + mb], 1.0) for k in range(0, len(mine), mb)]
    count = math.ceil(math.ceil(n / world) / mb)
    filler = plan[0][0] if plan else [0]
    return plan + [(filler, 0.0)] * (count - len(plan))


class HeldOut:
    """A held-out set: ``n`` records scored ``mb`` at a time; ``len()`` is the number of batches of
    every rank. Subclasses set ``n`` and ``mb`` and implement ``batches`` and ``sums``."""

    n = mb = 0

    def __len__(self) -> int:
        return len(shard_plan(self.n, self.mb))

    def batches(self):
        """This rank's batches as (batch, weight): weight 0 for the repeats of ``shard_plan``."""
        raise NotImplementedError

    def sums(self, module, batch: dict) -> dict[str, tuple]:
        """``{metric: (numerator, denominator)}`` of one batch, ``module`` the trainer's module."""
        raise NotImplementedError


def best_mode(metric: str, mode: str = "auto") -> str:
    """``min`` or ``max``: as given, or inferred from the metric's name."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ConfigError(f"train.save_best_mode must be auto, min or max, got {mode!r}")
    return "max" if any(word in metric for word in MAXIMISED) else "min"


class BestCheckpoint:
    """Keeps ``OUTPUT/best``: the model of the step whose ``metric`` was best so far."""

    def __init__(self, output_dir: str, metric: str, mode: str = "auto"):
        self.folder = os.path.join(output_dir, BEST)
        self.metric, self.mode = metric, best_mode(metric, mode)
        self.value, self.step = None, None
        record = os.path.join(self.folder, BEST_JSON)
        if os.path.isfile(record):  # a resumed run keeps competing with its earlier best
            with open(record) as f:
                saved = json.load(f)
            if saved.get("metric") == metric and saved.get("mode") == self.mode:
                self.value, self.step = saved["value"], saved["step"]

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value < self.value if self.mode == "min" else value > self.value

    def update(self, metrics: dict, save) -> bool:
        """If ``metrics[self.metric]`` beats the best so far, call ``save(folder)`` (every rank: the
        export may be collective) and record it; returns whether it did."""
        if self.metric not in metrics:
            raise ConfigError(
                f"train.save_best={self.metric!r} is not an evaluation metric; this run logs "
                f"{', '.join(sorted(k for k in metrics if k != 'step'))}"
            )
        value = float(metrics[self.metric])
        if not self.better(value):
            return False
        save(self.folder)
        self.value, self.step = value, int(metrics["step"])
        if dist.is_main():
            record = {"metric": self.metric, "value": value, "mode": self.mode, "step": self.step}
            tmp = os.path.join(self.folder, BEST_JSON + ".tmp")
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1)
            os.replace(tmp, os.path.join(self.folder, BEST_JSON))
        dist.barrier()
        return True


class Evaluator:
    """Runs the trainer's held-out set every ``train.eval_every`` steps (see the module docstring)."""

    def __init__(self, trainer, device: str):
        tc = trainer.train_cfg
        self.trainer, self.device, self.every = trainer, device, tc.eval_every
        path = getattr(trainer.cfg.data, "eval", None)
        self.best, self.held_out = None, None
        if not path:  # no held-out set: no evaluation, whatever eval_every / save_best say
            if self.every or tc.save_best:
                off = [f"train.eval_every={self.every}"] * bool(self.every)
                off += [f"train.save_best={tc.save_best}"] * bool(tc.save_best)
                if dist.is_main():
                    print(f"data.eval is not set: no evaluation during training ({' and '.join(off)} "
                          "ignored)", flush=True)  # fmt: skip
            self.every = 0
            return
        if tc.save_best and not self.every:
            raise ConfigError("train.save_best needs train.eval_every > 0 (and data.eval)")
        if not self.every:
            return
        if tc.save_best:
            if hasattr(trainer.model, "merge_and_unload"):
                raise ConfigError(
                    "train.save_best with LoRA is not supported (the export merges the adapters); "
                    "drop save_best or train without LoRA"
                )
            self.best = BestCheckpoint(tc.output_dir, tc.save_best, tc.save_best_mode)
        self.held_out = trainer.held_out(path, tc.eval_max_samples, device)

    def due(self, step: int, total: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == total)

    @torch.no_grad()
    def scores(self, module) -> dict:
        """Metrics of ``module`` (the trainer's wrapped module) on the held-out set, all ranks."""
        from tqdm import tqdm

        show = dist.is_main() and (sys.stderr.isatty() or os.environ.get("MMPOST_PROGRESS") == "1")
        sums: dict[str, list[float]] = {}
        was = module.training
        module.eval()
        for batch, weight in tqdm(
            self.held_out.batches(),
            desc="eval",
            total=len(self.held_out),
            leave=False,
            file=sys.stderr,
            disable=not show,
        ):
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            for name, (num, den) in self.held_out.sums(module, batch).items():
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += float(num) * weight
                acc[1] += float(den) * weight
        module.train(was)
        names = sorted(sums)  # the same on every rank: every rank scores at least one batch
        red = dist.all_sum([v for k in names for v in sums[k]], self.device)
        return {
            f"eval_{k}": float(red[2 * i]) / float(red[2 * i + 1]) if red[2 * i + 1] > 0 else float("nan")
            for i, k in enumerate(names)
        }

    def run(self, step: int, engine, stage: int) -> dict:
        """Score the model at ``step``; keep it as the best when it is; returns the metrics to log."""
        metrics = {"step": step, **self.scores(engine.module)}
        if self.best is not None:
            self.best.update(metrics, lambda folder: self.trainer.export(engine, folder, stage))
        return metrics
