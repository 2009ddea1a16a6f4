"""Resume after SIGKILL, atomic checkpoints, and two processes (gloo) matching one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alignment.infra import checkpoint
from alignment.infra.metrics import read_metrics
from tests.alignment.conftest import QUICKSTART, ROOT, base_overrides, run_sft
from tests.conftest import subprocess_env, torchrun
from tests.testing_utils import require_deepspeed

STEPS = 40  # long enough that the kill lands mid-run (~0.15 s per step)


def cli(synth, out, *overrides, launcher=()):
    cmd = [
        *launcher,
        "-m",
        "mmpost",
        "train",
        QUICKSTART,
        *base_overrides(synth),
        *overrides,
        "--output-dir",
        out,
    ]
    if not launcher:
        cmd = [sys.executable, *cmd]
    env = subprocess_env(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")  # no leftovers of in-process runs
    return cmd, env


@require_deepspeed
def test_resume_after_sigkill_matches_uninterrupted(synth, tmp_path):
    common = (f"train.max_steps={STEPS}", "train.save_every=5", "optim.lr=2e-3", "train.export=false")
    _, ref = run_sft(synth, str(tmp_path / "ref"), *common)

    out = str(tmp_path / "killed")
    cmd, env = cli(synth, out, *common)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.isdir(os.path.join(out, "checkpoint-000005")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(out) is not None, (tmp_path / "killed.log").read_text()[-2000:]
    killed_at = len(read_metrics(out))
    assert killed_at < STEPS, "the run finished before it could be killed; the test proves nothing"

    cmd, env = cli(synth, out, *common)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    resumed = read_metrics(out)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(ref, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    state = json.load(open(os.path.join(checkpoint.latest(out), "trainer_state.json")))
    assert state["step"] == STEPS


def test_partial_checkpoint_is_never_latest(tmp_path):
    good = tmp_path / "checkpoint-000004"
    good.mkdir()
    (good / checkpoint.STATE).write_text('{"step": 4}')
    (tmp_path / ".tmp-checkpoint-000006").mkdir()  # interrupted mid-write
    (tmp_path / "checkpoint-000008").mkdir()  # no trainer_state.json: incomplete
    assert checkpoint.latest(str(tmp_path)) == str(good)
    checkpoint.clean_partial(str(tmp_path))
    assert not (tmp_path / ".tmp-checkpoint-000006").exists()


@pytest.mark.slow
@require_deepspeed
def test_two_process_zero2_matches_single_process(synth, tmp_path):
    """2 ranks x 1 micro-batch per step == 1 rank x 2 accumulated micro-batches (same samples per step)."""
    common = (
        "train.max_steps=4",
        "optim.lr=2e-3",
        "train.deepspeed=zero2",
        "train.export=false",
        "data.max_tokens=2000",
    )
    _, single = run_sft(synth, str(tmp_path / "single"), *common, "train.gradient_accumulation_steps=2")
    out = str(tmp_path / "two")
    launcher = tuple(torchrun())  # a free port: torchrun hands --master_port=0 to the workers as is
    cmd, env = cli(synth, out, *common, "train.gradient_accumulation_steps=1", launcher=launcher)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    two = read_metrics(out)
    assert len(two) == len(single) == 4
    for a, b in zip(single, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]
        assert a["tokens_per_s"] > 0 and b["samples_per_s"] > 0
    assert sum(m["visual_tokens"] for m in single) == sum(m["visual_tokens"] for m in two)
