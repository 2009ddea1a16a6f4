"""Training logs: ``OUTPUT/metrics.jsonl``, TensorBoard when installed, a progress bar (rank 0).

Held-out metrics (``eval_*``, see ``alignment.evaluation.during_training``) are lines of their
own with the step, and ``eval/*`` scalars in TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from alignment.infra import distributed as dist


class MetricsLogger:
    """Appends one JSON object per logged step; only rank 0 writes or draws."""

    def __init__(self, output_dir: str, total_steps: int, start_step: int = 0, desc: str = "train"):
        self.main = dist.is_main()
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = None
        self.bar = None
        if not self.main:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate_after(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None
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
        if self.tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and k != "step":
                    tag = f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"
                    self.tb.add_scalar(tag, v, clean["step"])
        if self.bar is not None and "loss" in clean:  # eval lines leave the training bar as it is
            self.bar.n = clean["step"]
            self.bar.set_postfix(
                loss=f"{clean.get('loss', float('nan')):.4f}", lr=f"{clean.get('lr', 0):.2e}"
            )
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]
