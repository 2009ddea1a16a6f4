"""Multi-turn tool rollouts under ZeRO-3 on two ranks whose conversations take different turns."""

import json
import os
import subprocess

import pytest

from tests.conftest import subprocess_env, torchrun
from tests.testing_utils import require_deepspeed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@require_deepspeed
def test_ranks_with_different_turn_counts_do_not_hang(tmp_path):
    """ZeRO-3 gathers the sharded weights in every forward, so both ranks must run the same
    forwards: rank 0 runs three rounds (two crop calls, then the answer) while rank 1 answers in
    the first; rank 1 joins rounds 2 and 3 with a dummy row. Without the agreement rank 0 would
    wait forever in its second round (the test's timeout)."""
    cmd = [*torchrun(), os.path.join(ROOT, "tests", "vision_tools", "zero3_turns.py"), str(tmp_path)]
    env = subprocess_env(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rank0 = json.load(open(tmp_path / "rank0.json"))
    rank1 = json.load(open(tmp_path / "rank1.json"))
    assert rank0["turns"] == [3, 3] and rank0["answers"] == ["1", "1"]
    assert rank1["turns"] == [1, 1, 1] and rank1["answers"] == ["1", "1", "1"]
    assert rank0["sampled"] == 6 and rank1["sampled"] == 3  # real rows only: dummies are dropped
