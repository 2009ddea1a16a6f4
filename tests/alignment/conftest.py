"""Fixtures for training tests: a small generated CRU data set and a run helper."""

from __future__ import annotations

import os

from alignment.infra.metrics import read_metrics
from alignment.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "sft.yaml")


def base_overrides(synth: dict) -> list[str]:
    return [
        f"data.train={synth['train']}",
        f"data.eval={synth['test']}",
        "train.save_every=0",
        "optim.warmup_ratio=0",
        "train.log_every=1",
        "train.eval_every=0",  # tests that evaluate during training turn it on themselves
        "train.save_best=null",
    ]


def run_sft(synth: dict, out: str, *overrides: str, config: str = QUICKSTART) -> tuple[dict, list[dict]]:
    summary = train(config, base_overrides(synth) + list(overrides), output_dir=out)
    return summary, read_metrics(out)
