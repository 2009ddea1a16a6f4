"""SFT on the shared DeepSpeed loop (single process, CPU): learning, exact accumulation, export;
packed == padded for both model families (tiny: Qwen2.5-VL, tiny-qwen3vl: Qwen3-VL), and Qwen3.5
trains padded while packing is refused with the family's reason."""

import os

import pytest
import torch

from mm.loading import load_model, model_parts
from mm.records import drop_tool_result_images, parse_message
from tests.alignment.conftest import run_sft
from tests.testing_utils import require_deepspeed


@require_deepspeed
def test_loss_falls(synth, tmp_path):
    """30 steps on templated CRU trajectories: the loss must fall from ~ln(vocab)=6.56 to under half.

    The trajectories share long fixed phrases (system prompt, tool-call JSON, the step text),
    which even the 0.25M-parameter model learns within a few dozen steps; a broken loss mask,
    optimizer or schedule leaves it near 6.5.
    """
    _, m = run_sft(synth, str(tmp_path), "train.max_steps=30", "optim.lr=3e-3", "train.export=false")
    assert len(m) == 30
    first, last = m[0]["loss"], sum(x["loss"] for x in m[-3:]) / 3
    assert 6.0 < first < 7.2
    assert last < 0.5 * first, (first, last)
    for key in (
        "step",
        "epoch",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "text_tokens",
        "visual_tokens",
    ):
        assert key in m[-1]


@pytest.mark.parametrize("model_name", ["tiny", "tiny-qwen3vl"])
@pytest.mark.parametrize("attn", ["sdpa", "segments"])
@require_deepspeed
def test_packed_and_padded_runs_give_the_same_updates(synth, tmp_path, attn, model_name):
    """Same samples per step, split differently: per-token averaging makes the updates equal.

    pack: all 24 samples of an epoch as one micro-batch, packed into rows of 3200 tokens, isolated
    by the block-diagonal mask (sdpa) or by SDPA per sample (segments, ``attn: flex`` on CPU);
    pad: the same 24 samples as 6 micro-batches of 4. Both steps cover the whole epoch, so losses,
    gradient norms and the next step's loss (after an AdamW update) must agree.
    """
    common = ("train.max_steps=2", "optim.lr=1e-3", "optim.schedule=constant", "train.export=false")
    common += (f"model.name_or_path={model_name}",)
    _, packed = run_sft(
        synth,
        str(tmp_path / "pack"),
        *common,
        "data.layout=pack",
        "data.max_tokens=3200",
        "data.micro_batch_size=24",
        "train.gradient_accumulation_steps=1",
        f"model.attn={attn}",
    )
    _, padded = run_sft(
        synth,
        str(tmp_path / "pad"),
        *common,
        "data.layout=pad",
        "data.max_tokens=3200",
        "data.micro_batch_size=4",
        "train.gradient_accumulation_steps=6",
    )
    for a, b in zip(packed, padded):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert packed[0]["visual_tokens"] == padded[0]["visual_tokens"]


@require_deepspeed
def test_qwen3_5_trains_padded_and_refuses_packing(synth, tmp_path):
    """A local Qwen3.5 checkpoint: data.layout=pack stops before training with the family's reason
    (its Gated DeltaNet layers mix a packed row); the pad layout trains, finite losses from
    about ln(vocab)."""
    import math

    from tests.conftest import qwen3_5_model

    model, processor = qwen3_5_model()
    path = str(tmp_path / "qwen3_5")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    common = ("train.max_steps=2", "optim.lr=1e-3", "train.export=false", f"model.name_or_path={path}")
    with pytest.raises(
        ValueError, match="data.layout=pack: packing is refused for qwen3_5 models: its Gated"
    ):
        run_sft(synth, str(tmp_path / "pack"), *common, "data.layout=pack")
    _, m = run_sft(synth, str(tmp_path / "pad"), *common, "data.layout=pad", "data.micro_batch_size=2")
    assert len(m) == 2 and all(math.isfinite(x["loss"]) for x in m)
    vocab = model.config.text_config.vocab_size
    assert abs(m[0]["loss"] - math.log(vocab)) < 1.0, (m[0]["loss"], math.log(vocab))


@require_deepspeed
def test_freezing_keeps_frozen_parts_bit_identical(synth, tmp_path):
    run_sft(synth, str(tmp_path), "train.max_steps=3", "optim.lr=1e-3", "model.freeze=[vision_tower,merger]")
    before, _ = load_model("tiny")
    after, _ = load_model(os.path.join(tmp_path, "final"))
    for part, params in model_parts(before).items():
        same = [torch.equal(p, q) for p, q in zip(params, model_parts(after)[part])]
        if part in ("vision_tower", "merger"):
            assert all(same), part
        else:
            assert not all(same), part


@require_deepspeed
def test_per_part_learning_rates(synth, tmp_path):
    _, m = run_sft(
        synth,
        str(tmp_path),
        "train.max_steps=1",
        "optim.lr=1e-3",
        "optim.lr_vision_tower=1e-5",
        "optim.schedule=constant",
        "train.export=false",
    )
    assert m[0]["lr"] == pytest.approx(1e-3)
    from alignment.infra.deepspeed_setup import param_groups

    model, _ = load_model("tiny")
    groups = {
        g["name"]: g["lr"] for g in param_groups(model, 1e-3, 0.1, {"vision_tower": 1e-5, "merger": None})
    }
    assert groups["vision_tower"] == 1e-5 and groups["merger"] == 1e-3 and groups["language_model"] == 1e-3
    assert {g["name"]: g["weight_decay"] for g in param_groups(model, 1e-3, 0.1, {})}[
        "language_model_no_decay"
    ] == 0.0


@require_deepspeed
def test_export_reloads_and_generates(synth, tmp_path, encoder):
    from transformers import Qwen2_5_VLForConditionalGeneration

    summary, _ = run_sft(synth, str(tmp_path), "train.max_steps=2")
    final = summary["model"]
    ours, processor = load_model(final)
    theirs = Qwen2_5_VLForConditionalGeneration.from_pretrained(final)
    s = encoder.encode([{"role": "user", "content": "Count the shapes."}], add_generation_prompt=True)
    kw = {"input_ids": s.input_ids[None], "max_new_tokens": 6, "do_sample": False}
    a, b = ours.generate(**kw), theirs.generate(**kw)
    assert torch.equal(a, b)  # transformers and load_model see the same weights
    assert a.shape[1] > len(s)  # and it generates


@require_deepspeed
def test_zero3_single_process(synth, tmp_path):
    summary, m = run_sft(synth, str(tmp_path), "train.max_steps=2", "train.deepspeed=zero3", "optim.lr=1e-3")
    assert len(m) == 2 and all(x["loss"] == x["loss"] for x in m)
    model, _ = load_model(summary["model"])  # consolidated ZeRO-3 weights load
    base, _ = load_model("tiny")
    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters())]
    assert any(changed)


def test_drop_tool_result_images():
    msgs = [
        parse_message(m, "m")
        for m in [
            {"role": "user", "content": [{"type": "image", "image": "q.png"}, {"type": "text", "text": "Q"}]},
            {"role": "assistant", "content": "<think>crop</think><tool_call>{}</tool_call>"},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": "crop.png"},
                    {"type": "text", "text": "Image 1: 28 x 28."},
                ],
            },
            {"role": "assistant", "content": "<answer>1</answer>"},
        ]
    ]
    out = drop_tool_result_images(msgs)
    assert out[0].visual_items() and not out[2].visual_items()
    assert out[2].text() == "Image 1: 28 x 28."
