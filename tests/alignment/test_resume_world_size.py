"""A checkpoint written on some number of ranks resumes on another (ZeRO shards re-cut through
DeepSpeed's universal format) and continues the uninterrupted run of the same global batch."""

import json
import os
import subprocess

import pytest

from alignment.infra import checkpoint
from alignment.infra.metrics import read_metrics
from tests.alignment.conftest import run_sft
from tests.alignment.test_resume_distributed import cli
from tests.conftest import torchrun

COMMON = (
    "train.max_steps=4",
    "train.save_every=2",
    "optim.lr=2e-3",
    "optim.weight_decay=0.1",  # parameter groups that differ: a resume must keep each its own
    "optim.lr_vision_tower=1e-3",
    "train.export=false",
    "data.max_tokens=2000",
)
ONE, TWO = "train.gradient_accumulation_steps=2", "train.gradient_accumulation_steps=1"


def two_ranks(synth, out: str, *overrides: str) -> list[dict]:
    cmd, env = cli(synth, out, *COMMON, TWO, *overrides, launcher=tuple(torchrun(2)))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return read_metrics(out)


def assert_continues(ref: list[dict], resumed: list[dict]) -> None:
    assert [m["step"] for m in resumed] == [3, 4]
    for a, b in zip(ref[2:], resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
        assert a["visual_tokens"] == b["visual_tokens"]  # the same global samples


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero3", "zero2"])
def test_resume_on_another_number_of_ranks(synth, tmp_path, zero):
    """Steps 3-4 after a step-2 checkpoint of 2 ranks resumed on 1 (and, ZeRO-3, of 1 rank
    resumed on 2) == steps 3-4 of one uninterrupted rank with the same global batch."""
    ds = f"train.deepspeed={zero}"
    _, ref = run_sft(synth, str(tmp_path / "one"), *COMMON, ONE, ds)
    two = two_ranks(synth, str(tmp_path / "two"), ds)
    for a, b in zip(ref, two):  # the premise: 2 ranks x 1 micro-batch == 1 rank x 2
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]

    saved = os.path.join(tmp_path, "two", "checkpoint-000002")
    _, resumed = run_sft(synth, str(tmp_path / "two_on_one"), *COMMON, ONE, ds, f"train.resume={saved}")
    assert_continues(ref, resumed)
    assert os.path.isdir(os.path.join(saved, "universal"))  # converted beside the checkpoint, kept
    assert not os.path.exists(os.path.join(saved, ".tmp-universal"))

    if zero == "zero3":
        saved = os.path.join(tmp_path, "one", "checkpoint-000002")
        resumed = two_ranks(synth, str(tmp_path / "one_on_two"), ds, f"train.resume={saved}")
        assert_continues(ref, resumed)


def fake_checkpoint(path, world: int, files: list[str]) -> str:
    os.makedirs(os.path.join(path, "state"))
    for name in files:
        open(os.path.join(path, "state", name), "w").close()
    with open(os.path.join(path, checkpoint.STATE), "w") as f:
        json.dump({"step": 2, "world_size": world}, f)
    return str(path)


ZERO3 = ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
ZERO2 = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
ZERO0 = ["mp_rank_00_model_states.pt"]


def test_which_checkpoints_are_resharded(tmp_path):
    z3 = fake_checkpoint(tmp_path / "z3", 2, ZERO3)
    z2 = fake_checkpoint(tmp_path / "z2", 2, ZERO2)
    z0 = fake_checkpoint(tmp_path / "z0", 2, ZERO0)
    assert [checkpoint.saved_stage(p) for p in (z3, z2, z0)] == [3, 2, 0]
    assert not checkpoint.resharded(z3, 2, 3)  # same ranks: loaded as written
    assert checkpoint.resharded(z3, 1, 3)
    assert checkpoint.resharded(z2, 4, 2) and checkpoint.resharded(z2, 1, 1)  # ZeRO-1 and -2 share a format
    assert not checkpoint.resharded(z0, 1, 0)  # every rank holds the whole optimizer state


@pytest.mark.parametrize(("files", "stage"), [(ZERO3, 2), (ZERO2, 3), (ZERO0, 2), (ZERO2, 0)])
def test_another_stage_and_number_of_ranks_is_refused(tmp_path, files, stage):
    path = fake_checkpoint(tmp_path / "ck", 2, files)
    with pytest.raises(ValueError, match=r"written by 2 rank\(s\).*resumed on 1 rank\(s\).*or on 2 rank"):
        checkpoint.resharded(path, 1, stage)


def test_a_resume_with_another_global_batch_warns(capsys):
    from types import SimpleNamespace

    from alignment.loop import Trainer

    trainer = Trainer(SimpleNamespace(train=None, optim=None))
    trainer.state = SimpleNamespace(grad_accum=2)  # 1 rank x 2 micro-batches per step
    trainer._check_step_batch("ck", {"step_micro_batches": 2, "world_size": 2})  # 2 ranks x 1: the same
    assert "warning" not in capsys.readouterr().out
    trainer._check_step_batch("ck", {"step_micro_batches": 4, "world_size": 2})  # 2 ranks x 2
    out = capsys.readouterr().out
    assert "ck was written with 4 micro-batches per optimizer step (2 rank(s)); this run takes 2" in out
