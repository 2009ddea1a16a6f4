"""What the vLLM tests share: the skip when the vLLM environment is missing (with the command that
makes it), a model fitted to a 3-turn tool loop, and the first difference of two id rows with the
logit gap there (the fp32 near-tie report)."""

from __future__ import annotations

import json
import os

import pytest
import torch

CALL1 = (
    '<think>look</think><tool_call>{"name": "crop_image", "arguments": '
    '{"bbox_2d": [0, 0, 56, 56], "image_index": 0}}</tool_call>'
)
CALL2 = (
    '<think>closer</think><tool_call>{"name": "scale_image", "arguments": '
    '{"scale_factor": 2.0, "image_index": 1}}</tool_call>'
)
ANSWER = "<think>two</think><answer>7</answer>"
LOOP = [CALL1, CALL2, ANSWER]  # two tool results, both images (a crop, then the crop scaled)
QUESTION = "How many shapes?"
NEAR_TIE = 1e-4  # an fp32 top-2 logit gap below this may flip between two correct implementations


def vllm_python_or_skip() -> str:
    """The vLLM environment's python, or skip the test with the command that installs it."""
    from vision_tools.generation.vllm import INSTALL, vllm_python

    python = vllm_python()
    if not os.path.exists(python):
        pytest.skip(f"no vLLM environment ({python}): {INSTALL}")
    return python


def loop_prompt():
    """One image and the question, without the ViRC system prompt (short: fitting small is quick)."""
    from tests.conftest import solid

    content = [{"type": "image", "image": solid(112, 84)}, {"type": "text", "text": QUESTION}]
    return [{"role": "user", "content": content}]


def fit_tool_loop(model, processor, steps: int = 300, lr: float = 1e-2):
    """Fit ``model`` (in place) until greedy decoding replays :data:`LOOP` on :func:`loop_prompt`."""
    from vision_tools import EngineConfig, ToolEngine
    from vision_tools.generation import ScriptedGenerator

    cfg = EngineConfig(max_turns=4, max_turn_tokens=96, max_resamples=0)
    script = ScriptedGenerator(processor, [LOOP])
    sample = ToolEngine(model, processor, None, cfg, script).run([loop_prompt()])[0].encoded()
    inputs = {**sample.model_inputs(), "mm_token_type_ids": sample.mm_token_type_ids[None]}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**inputs, labels=sample.labels[None]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    texts = [t.text for t in ToolEngine(model, processor, None, cfg).run([loop_prompt()])[0].turns]
    assert texts == LOOP, f"the fit did not take (loss {loss.item():.3f}): {json.dumps(texts)[:300]}"
    return model


def first_difference(model, a, b) -> tuple[int, float] | None:
    """Where trajectories (or id rows) ``a`` and ``b`` first differ, and the top-2 logit gap of
    ``model`` at that token given the common prefix (``a``'s context); None when equal."""
    ids_a = a.input_ids.tolist() if hasattr(a, "input_ids") else list(a)
    ids_b = b.input_ids.tolist() if hasattr(b, "input_ids") else list(b)
    if ids_a == ids_b:
        return None
    k = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
    if not hasattr(a, "encoded"):
        return k, float("nan")
    sample = a.encoded()
    with torch.no_grad():
        inputs = sample.model_inputs()
        inputs["mm_token_type_ids"] = sample.mm_token_type_ids[None]
        logits = model(**inputs).logits[0, k - 1].float()
    top = logits.topk(2).values
    return k, float(top[0] - top[1])


def assert_same_rows(model, got, want, what: str) -> list[str]:
    """``got`` equals ``want`` row by row, except (at most one row) where an fp32 near tie
    (gap < NEAR_TIE) decided the first differing token; returns the notes of such rows."""
    notes, wrong = [], []
    for i, (x, y) in enumerate(zip(got, want)):
        diff = first_difference(model, x, y)
        if diff is None:
            continue
        k, gap = diff
        note = f"{what}: row {i} differs at token {k} (top-2 logit gap {gap:.2e})"
        (notes if gap < NEAR_TIE else wrong).append(note)
    assert not wrong and len(notes) <= 1, "\n".join(wrong + notes)
    for n in notes:
        print("near tie:", n)
    return notes
