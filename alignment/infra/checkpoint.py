"""Atomic, resumable checkpoints.

Layout of an output directory::

    OUTPUT/checkpoint-000120/      one complete checkpoint (DeepSpeed engine state under state/,
                                   trainer_state.json, rng_state_<rank>.pt)
    OUTPUT/.tmp-checkpoint-000120/ a checkpoint being written (never picked as latest)
    OUTPUT/final/                  the exported Hugging Face model + processor

A checkpoint is written into ``.tmp-*`` and renamed when every rank has finished, so a crash
at any moment leaves either the previous complete checkpoint or the new one. The newest
``checkpoint-*`` holding ``trainer_state.json`` is the latest; older ones beyond ``keep_last``
are removed after the rename.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from alignment.infra import distributed as dist

STATE = "trainer_state.json"
PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``output_dir`` as (step, path), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest(output_dir: str) -> str | None:
    found = checkpoints(output_dir)
    return found[-1][1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, output_dir: str, step: int, trainer_state: dict, keep_last: int) -> str:
    """Write checkpoint ``step`` atomically on all ranks; returns its final path."""
    name = f"checkpoint-{step:06d}"
    tmp = os.path.join(output_dir, f".tmp-{name}")
    final = os.path.join(output_dir, name)
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    engine.save_checkpoint(tmp, tag="state", save_latest=False)
    torch.save(rng_state(), os.path.join(tmp, f"rng_state_{dist.rank()}.pt"))
    dist.barrier()
    if dist.is_main():
        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump(trainer_state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):  # re-saving the same step (e.g. at the end): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(engine, path: str) -> dict:
    """Restore engine (model, optimizer, scheduler) and RNG from ``path``; return the trainer state."""
    with open(os.path.join(path, STATE)) as f:
        state = json.load(f)
    load_path, _ = engine.load_checkpoint(
        path, tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the engine state from {path}/state")
    rng_file = os.path.join(path, f"rng_state_{dist.rank()}.pt")
    if os.path.exists(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def clean_partial(output_dir: str) -> None:
    """Remove leftovers of interrupted writes (rank 0 only)."""
    if dist.is_main() and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
