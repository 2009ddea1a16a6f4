"""Atomic, resumable checkpoints.

Layout of an output directory::

    OUTPUT/checkpoint-000120/      one complete checkpoint (DeepSpeed engine state under state/,
                                   trainer_state.json, rng_state_<rank>.pt; universal/ once it
                                   was resumed on another number of ranks, see ``resharded``)
    OUTPUT/.tmp-checkpoint-000120/ a checkpoint being written (never picked as latest)
    OUTPUT/final/                  the exported Hugging Face model + processor

A checkpoint is written into ``.tmp-*`` and renamed when every rank has finished, so a crash
at any moment leaves either the previous complete checkpoint or the new one. The newest
``checkpoint-*`` holding ``trainer_state.json`` is the latest; older ones beyond ``keep_last``
are removed after the rename.
"""

from __future__ import annotations

import glob
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


def read_state(path: str) -> dict:
    with open(os.path.join(path, STATE)) as f:
        return json.load(f)


def saved_stage(path: str) -> int:
    """The ZeRO stage of the engine state in ``path``, told by its file names: 3 (partitioned
    model states), 2 (ZeRO-1 and -2: one model state, partitioned optimizer states) or 0."""
    state = os.path.join(path, "state")
    if glob.glob(os.path.join(state, "zero_pp_rank_*_model_states.pt")):
        return 3
    return 2 if glob.glob(os.path.join(state, "*optim_states.pt")) else 0


def resharded(path: str, world: int, stage: int) -> bool:
    """Whether the checkpoint at ``path`` loads through DeepSpeed's universal format on ``world``
    ranks under ZeRO ``stage``: ZeRO partitions the optimizer state per rank, so a checkpoint of
    ZeRO-1/2/3 written by another number of ranks is converted once (``universal``); without
    ZeRO every rank holds the whole state and it loads as is."""
    saved = read_state(path).get("world_size", world)
    if saved == world:
        return False
    was, now = saved_stage(path), 3 if stage == 3 else 2 if stage else 0
    if was == now == 0:
        return False
    if was != now:
        name = {0: "zero0", 2: "zero1/zero2", 3: "zero3"}
        raise ValueError(
            f"checkpoint {path} was written by {saved} rank(s) under {name[was]} and is resumed on "
            f"{world} rank(s) under {name[now]}: a checkpoint moves to another number of ranks only "
            f"within its ZeRO stage; resume under {name[was]} (train.deepspeed) or on {saved} rank(s)"
        )
    return True


def universal(path: str) -> str:
    """``path/universal``: the checkpoint in DeepSpeed's universal format (ZeRO shards merged per
    parameter, loadable on any number of ranks), converted by rank 0 into ``.tmp-universal`` and
    renamed when complete (reused once there). A collective: every rank calls it."""
    final = os.path.join(path, "universal")
    error = None
    if dist.is_main() and not os.path.isdir(final):
        tmp = os.path.join(path, ".tmp-universal")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _to_universal(os.path.join(path, "state"), os.path.join(tmp, "state"))
            os.replace(tmp, final)
        except Exception as e:  # every rank raises, none waits forever
            error = f"converting checkpoint {path} to DeepSpeed's universal format failed: {e!r}"
    error = dist.broadcast_object(error)
    if error:
        raise RuntimeError(error)
    return final


def _to_universal(src: str, dst: str) -> None:
    from types import SimpleNamespace

    from deepspeed.checkpoint import ds_to_universal

    print(f"converting {src} to DeepSpeed's universal format (another number of ranks)", flush=True)
    args = SimpleNamespace(
        input_folder=src,
        output_folder=dst,
        num_extract_workers=1,  # in-process: no worker pool forked from a training process
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2 states of a plain (not tensor-parallel) model lack it
    )
    ds_to_universal.main(args)


def load(engine, path: str) -> dict:
    """Restore engine (model, optimizer, scheduler) and RNG from ``path``; return the trainer state.
    An engine built with ``checkpoint.load_universal`` (``resharded``) reads ``path/universal``."""
    state = read_state(path)
    load_dir = universal(path) if engine.load_universal_checkpoint() else path
    load_path, _ = engine.load_checkpoint(
        load_dir, tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the engine state from {load_dir}/state")
    if engine.load_universal_checkpoint() and engine.zero_optimization_partition_weights():
        _repair_zero3_universal(engine.optimizer.optimizer, os.path.join(load_dir, "state"))
    rng_file = os.path.join(path, f"rng_state_{dist.rank()}.pt")
    if os.path.exists(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def _repair_zero3_universal(optimizer, state_dir: str) -> None:
    """Undo two slips of DeepSpeed 0.19's ZeRO-3 universal load: it gives every parameter group the
    hyperparameters of the first (lr, weight decay, betas), and every group's state one shared
    ``step`` tensor, which AdamW then counts up once per group and step (a wrong bias correction)."""
    saved = torch.load(os.path.join(state_dir, "zero", "optimizer_state.pt"), weights_only=False)
    for group, was in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        group.update({k: v for k, v in was.items() if k != "params"})
    for st in optimizer.state.values():
        if torch.is_tensor(st.get("step")):
            st["step"] = st["step"].clone()


def clean_partial(output_dir: str) -> None:
    """Remove leftovers of interrupted writes (rank 0 only)."""
    if dist.is_main() and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
