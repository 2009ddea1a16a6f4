"""The quickstart: the tiny model and one bundled record through the whole mm/ layer.

validate the sample file -> encode one record (chat template, visuals, labels, M-RoPE) ->
forward pass -> loss on the assistant tokens. Runs in seconds on a CPU, offline.
"""

from __future__ import annotations

import os
import time

import torch


def quickstart(model_name: str = "tiny", record: int = 0) -> int:
    from mm.collate import per_sample_nll
    from mm.dataset import RecordDataset
    from mm.encode import ConversationEncoder
    from mm.loading import load_model
    from mm.rope import RopeSpec
    from mm.synthetic import sample_data_path
    from mm.visual import VisualConfig
    from mmpost.data.checks import run_validate

    path = sample_data_path()
    print(f"[1/4] validate {os.path.relpath(path)}")
    if run_validate(path, VisualConfig()) != 0:
        return 1
    t0 = time.perf_counter()
    model, processor = load_model(model_name)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"[2/4] loaded {model_name!r}: {type(model).__name__}, {n_params / 1e6:.2f}M parameters "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    encoder = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))
    ds = RecordDataset(path, encoder)
    sample = ds[record]
    print(
        f"[3/4] encoded record {sample.id!r}: {len(sample)} tokens, {sample.visual_tokens} visual, "
        f"{sample.trained_tokens} supervised"
    )
    with torch.no_grad():
        logits = model(**sample.model_inputs()).logits
    loss = per_sample_nll(logits, sample.labels[None])[0].item()
    print(
        f"[4/4] forward pass: logits {tuple(logits.shape)}, loss {loss:.4f} "
        f"(uniform guess would be ln(vocab)={torch.log(torch.tensor(float(logits.shape[-1]))).item():.4f})"
    )
    return 0
