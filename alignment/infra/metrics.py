"""Training logs (rank 0): ``OUTPUT/metrics.jsonl`` always, the trackers of ``train.report_to``
(``alignment.infra.trackers``: TensorBoard when installed by default), a progress bar.

Held-out metrics (``eval_*``, see ``alignment.evaluator``) are lines of their
own with the step; they go to the trackers too (``eval/*`` scalars in TensorBoard).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from alignment.infra import distributed as dist
from alignment.infra.trackers import open_trackers


class MetricsLogger:
    """Appends one JSON object per logged step; only rank 0 writes or draws."""

    def __init__(
        self,
        output_dir: str,
        total_steps: int,
        start_step: int = 0,
        desc: str = "train",
        report_to: tuple[str, ...] = ("tensorboard",),
        config: dict | None = None,
    ):
        self.main = dist.is_main()
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.trackers = []
        self.bar = None
        if not self.main:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate_after(start_step)
        self.trackers = open_trackers(list(report_to), output_dir, config or {})
        from tqdm import tqdm

        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=desc,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not sys.stderr.isatty() and os.environ.get("MMPOST_PROGRESS") != "1",
        )
        self.t0 = time.time()

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def log(self, metrics: dict) -> None:
        if not self.main:
            return
        clean = {
            k: (round(v, 8) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        numbers = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numbers.pop("step", None)
        for t in self.trackers:
            t.log(numbers, clean["step"])
        if self.bar is not None and "loss" in clean:  # eval lines leave the training bar as it is
            self.bar.n = clean["step"]
            self.bar.set_postfix(
                loss=f"{clean.get('loss', float('nan')):.4f}", lr=f"{clean.get('lr', 0):.2e}"
            )
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for t in self.trackers:
            t.close()


def read_metrics(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]
