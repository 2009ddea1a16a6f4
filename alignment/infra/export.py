"""The final model in Hugging Face format, written atomically (ZeRO-3 weights consolidated)."""

from __future__ import annotations

import os
import shutil

import torch

from alignment.infra import distributed as dist


def model_prefix(module) -> str:
    """The state-dict prefix of the model inside a trainer's wrapping module, which names the
    attribute holding it in ``model_attr`` (``"model"`` for the SFT/DPO/GRPO modules,
    ``"backbone"`` for the VLA)."""
    attr = getattr(module, "model_attr", None)
    if attr is None or not isinstance(getattr(module, attr, None), torch.nn.Module):
        raise TypeError(
            f"{type(module).__name__} does not say where its model is: give the class a "
            "`model_attr` naming the attribute that holds the trained model"
        )
    return attr + "."


def export_hf(engine, model, processor, out_dir: str, stage: int, extras=None) -> None:
    """Write the trained model (LoRA merged) and processor to ``out_dir`` atomically (rank 0);
    ``extras(folder)`` adds files (e.g. a VLA's heads) before the folder is renamed into place.

    Under ZeRO-3 the weights come from the engine's consolidated state of the wrapping module:
    only the keys under ``model_prefix(engine.module)`` are the model's, with the prefix
    stripped; the rest (a VLA's heads and projector) is left out.
    """
    state = prefix = None
    if stage == 3:
        prefix = model_prefix(engine.module)
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
    if not dist.is_main():
        dist.barrier()
        return
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    target = model
    if hasattr(model, "merge_and_unload"):  # peft
        if stage == 3:
            raise RuntimeError("exporting LoRA under ZeRO-3 is not supported; train LoRA with zero2")
        target = model.merge_and_unload()
    if state is not None:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    target.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    processor.save_pretrained(tmp)
    if extras is not None:
        extras(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    dist.barrier()
