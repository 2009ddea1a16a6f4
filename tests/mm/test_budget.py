"""Visual-token budget: shrink proportionally or reject; counts equal what the processor produces
(28 pixels per token for Qwen2.5-VL, 32 for Qwen3-VL)."""

import pytest
import torch

from mm.encode import ConversationEncoder
from mm.records import parse_message
from mm.visual import VisualConfig, VisualError, plan_visuals
from tests.conftest import solid, user_assistant
from tests.mm.conftest import hf_inputs

SIZES = [(640, 480), (800, 600), (448, 448), (1024, 256)]


def many_images():
    return [{"type": "image", "image": solid(w, h)} for w, h in SIZES] + [
        {"type": "text", "text": "Compare them."}
    ]


def unconstrained_tokens(factor: int = 28):
    # per-image tokens with smart_resize at ``factor`` and no budget: round(h/f) * round(w/f)
    return sum(round(h / factor) * round(w / factor) for w, h in SIZES)


def test_plan_without_budget_matches_hand_count():
    plans = plan_visuals(many_images()[:-1], VisualConfig(max_visual_tokens=10**9))
    assert (
        sum(p.tokens for p in plans) == unconstrained_tokens() == 391 + 609 + 256 + 333
    )  # 23x17, 29x21, 16x16, 37x9
    qwen3 = plan_visuals(many_images()[:-1], VisualConfig(max_visual_tokens=10**9), factor=32)
    assert (
        sum(p.tokens for p in qwen3) == unconstrained_tokens(32) == 300 + 475 + 196 + 256
    )  # 20x15, 25x19, 14x14, 32x8


def test_shrink_fits_budget_and_matches_processor(family_model, family):
    _, processor = family_model
    f = family.factor
    budget = 600
    cfg = VisualConfig(max_visual_tokens=budget, budget_policy="shrink")
    enc = ConversationEncoder(processor, cfg)
    s = enc.encode(user_assistant(many_images(), "ok"))
    assert s.visual_tokens <= budget
    assert s.visual_tokens > 0.8 * budget  # proportional shrink uses most of the budget
    # aspect ratios survive the shrink (within one token step: 28 or 32 px)
    for p, (w, h) in zip(s.plans, SIZES):
        assert abs(p.hw[1] / p.hw[0] - w / h) < f * (1 / p.hw[0] + w / h / p.hw[0]) + 0.35
    # every item shrinks by roughly the same factor
    ratios = [p.hw[0] * p.hw[1] / (h * w) for p, (w, h) in zip(s.plans, SIZES)]
    assert max(ratios) / min(ratios) < 2.5
    # the HF processor, given the same (shrunk) images, produces exactly our token counts
    from mm.visual import load_visuals

    images, _ = load_visuals(s.plans, cfg)
    ref = hf_inputs(processor, user_assistant(many_images(), "ok"), images)
    assert torch.equal(ref["image_grid_thw"], s.image_grid_thw)
    assert (
        int((ref["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        == s.visual_tokens
    )
    assert torch.equal(ref["input_ids"][0], s.input_ids)


def test_reject_names_the_reason(family_model, family):
    enc = ConversationEncoder(family_model[1], VisualConfig(max_visual_tokens=600, budget_policy="reject"))
    with pytest.raises(VisualError) as e:
        enc.encode(user_assistant(many_images(), "ok"))
    assert e.value.code == "over_budget"
    assert f"{unconstrained_tokens(family.factor)} visual tokens" in str(
        e.value
    ) and "max_visual_tokens=600" in str(e.value)


def test_budget_below_minimum_is_rejected_even_under_shrink():
    cfg = VisualConfig(max_visual_tokens=8, budget_policy="shrink")  # 4 images x 4 tokens minimum = 16
    with pytest.raises(VisualError, match="even at min_pixels"):
        plan_visuals(many_images()[:-1], cfg)


def test_video_frames_count_against_the_budget(family_model, family):
    frames = [solid(224, 224) for _ in range(8)]
    content = [{"type": "video", "video": frames}, {"type": "image", "image": solid(224, 224)}]
    full = sum(
        p.tokens for p in plan_visuals(content, VisualConfig(max_visual_tokens=10**9), factor=family.factor)
    )
    side = 224 // family.factor  # 8 (Qwen2.5-VL), 7 (Qwen3-VL)
    assert (
        full == 4 * side**2 + side**2
    )  # 8 frames -> 4 temporal patches of side x side tokens, plus one image
    assert family.factor != 28 or full == 4 * 64 + 64
    enc = ConversationEncoder(family_model[1], VisualConfig(max_visual_tokens=100))
    s = enc.encode(
        [
            parse_message({"role": "user", "content": content}, "m"),
            parse_message({"role": "assistant", "content": "x"}, "a"),
        ]
    )
    assert s.visual_tokens <= 100
    assert s.visual_tokens == int(s.video_grid_thw.prod() // 4 + s.image_grid_thw.prod() // 4)
