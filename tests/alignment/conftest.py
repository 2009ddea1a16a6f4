"""Fixtures for training tests: a small generated CRU data set and a run helper."""

from __future__ import annotations

import os

import pytest

from alignment.infra.metrics import read_metrics
from alignment.train import train
from vision_tools.crux import write_synth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "sft.yaml")


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    return write_synth(str(tmp_path_factory.mktemp("synth")), n_train=24, n_test=6, seed=1)


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
