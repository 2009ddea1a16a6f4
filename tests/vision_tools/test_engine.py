"""The tool engine: scripted policies (known ids, mask and images) and the tiny model. The tests
of ids, images and sizes run once per model family (``family_model``: Qwen2.5-VL, 28-px tokens;
Qwen3-VL, 32-px tokens), with images sized in the family's factor."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mm.encode import IGNORE, ConversationEncoder
from mm.rope import RopeSpec
from mm.visual import VisualConfig
from tests.conftest import solid
from vision_tools.api import build_prompt, reason, reason_batch
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import ScriptedGenerator
from vision_tools.generation.hf import HFGenerator
from vision_tools.protocol import error_text, parse_turn, question_text, result_text, system_prompt
from vision_tools.tools import ToolContext

IMG = solid(280, 224)  # already a multiple of 28: the model sees it unchanged


def image_of(f: int):
    """A 10 x 8-token image of a family with factor ``f`` (IMG for Qwen2.5-VL's 28)."""
    return solid(10 * f, 8 * f)


def call(name, **arguments) -> str:
    return f"<think>look</think><tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


ANSWER = "<think>there are 3</think><answer>3</answer>"


def run_scripted(tiny, turns, img=IMG, **cfg):
    model, processor = tiny
    engine = ToolEngine(
        model, processor, config=EngineConfig(**cfg), generator=ScriptedGenerator(processor, [turns])
    )
    return engine.run([build_prompt(img, "How many?")])[0]


def expected(tiny, messages):
    """ids, trained mask and pixels of a conversation written out by hand, via the processor."""
    model, processor = tiny
    enc = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config)).encode(messages)
    return enc.input_ids, enc.labels != IGNORE, enc.pixel_values


def user(img, text):
    return {
        "role": "user",
        "content": ([{"type": "image", "image": img}] if img else []) + [{"type": "text", "text": text}],
    }


def test_scripted_trajectory_matches_the_processor(family_model, family):
    f = family.factor  # 28: a 280 x 224 image, cropped to 140 x 112; 32: 320 x 256 and 160 x 128
    img = image_of(f)
    turns = [
        call("crop_image", bbox_2d=[0, 0, 5 * f, 4 * f], image_index=0),
        call("scale_image", scale_factor=2, image_index=1),
        call("display_image", image_index=0),
        ANSWER,
    ]
    traj = run_scripted(family_model, turns, img)
    crop = img.crop((0, 0, 5 * f, 4 * f))  # already multiples of the factor
    big = crop.resize((10 * f, 8 * f), Image.Resampling.BICUBIC)  # x2
    messages = [
        {"role": "system", "content": system_prompt()},
        user(img, question_text("How many?", (10 * f, 8 * f))),
        {"role": "assistant", "content": turns[0]},
        user(crop, result_text(1, (5 * f, 4 * f))),
        {"role": "assistant", "content": turns[1]},
        user(big, result_text(2, (10 * f, 8 * f), "How many?")),  # the question is repeated after scale_image
        {"role": "assistant", "content": turns[2]},
        user(img, result_text(3, (10 * f, 8 * f))),
        {"role": "assistant", "content": turns[3]},
    ]
    ids, trained, pixels = expected(family_model, messages)
    assert torch.equal(traj.input_ids, ids)
    assert torch.equal(traj.generated, trained)  # the scripted model also ended each turn with <|im_end|>
    assert torch.equal(traj.pixel_values, pixels)
    assert [im.size for im in traj.images] == [
        (10 * f, 8 * f),
        (5 * f, 4 * f),
        (10 * f, 8 * f),
        (10 * f, 8 * f),
    ]
    assert np.array_equal(np.asarray(traj.images[1]), np.asarray(crop))
    assert traj.finish_reason == "answer" and traj.answer == "3"
    assert [t.image_index for t in traj.turns] == [1, 2, 3, None]
    assert traj.turns[1].parsed.call.name == "scale_image" and traj.violations == []
    enc = traj.encoded()
    assert torch.equal(enc.labels != IGNORE, trained) and enc.position_ids.shape == (3, len(ids))


def test_turns_stopped_by_a_stop_string_get_a_non_generated_end(tiny):
    model, processor = tiny
    turns = [call("crop_image", bbox_2d=[0, 0, 140, 112], image_index=0), ANSWER]
    engine = ToolEngine(model, processor, generator=ScriptedGenerator(processor, [turns], end_turn=False))
    traj = engine.run([build_prompt(IMG, "How many?")])[0]
    ids, trained, _ = expected(tiny, traj.messages)
    assert torch.equal(traj.input_ids, ids)
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    # the template's <|im_end|> after each assistant turn is there, but the model did not write it
    assert torch.equal(traj.generated, trained & (ids != end))
    assert (trained & (ids == end)).sum() == 2


def test_failing_call_becomes_an_error_turn(tiny):
    bad = call("crop_image", bbox_2d=[0, 0, 500, 100], image_index=0)
    traj = run_scripted(tiny, [bad, ANSWER], max_resamples=0)
    violation = parse_turn(bad, ctx=ToolContext(sizes=[(280, 224)]))
    assert violation.code == "bbox_out_of_bounds"
    assert traj.turns[0].error == error_text(violation) and traj.turns[0].image_index is None
    assert traj.messages[3] == user(None, error_text(violation))
    assert len(traj.images) == 1 and traj.answer == "3" and traj.violations == ["bbox_out_of_bounds"]
    ids, _, _ = expected(tiny, traj.messages)
    assert torch.equal(traj.input_ids, ids)


def test_a_broken_user_tool_or_a_squeezed_result_never_raises(tiny):
    from vision_tools.tools import VIRC_TOOLS, tool

    @tool
    def explode(ctx: ToolContext, image_index: int) -> Image.Image:
        """Crashes.

        Args:
            image_index: which image.
        """
        return ctx.image(image_index).resize((0, 0))  # PIL raises ValueError

    model, processor = tiny
    turns = [
        call("explode", image_index=0),
        call("crop_image", bbox_2d=[0, 0, 280, 2], image_index=0),
        ANSWER,
    ]
    cfg = EngineConfig(max_resamples=0, visual=VisualConfig(max_visual_tokens=85))  # 5 left after image 0
    engine = ToolEngine(model, processor, [*VIRC_TOOLS, explode], cfg, ScriptedGenerator(processor, [turns]))
    traj = engine.run([build_prompt(IMG, "How many?", [*VIRC_TOOLS, explode])])[0]
    assert traj.violations == ["tool_error", "over_budget"] and traj.answer == "3"
    assert "ValueError" in traj.turns[0].error


def test_violating_turns_are_resampled(tiny):
    turns = ["no tags at all", call("display_image", image_index=7), ANSWER]
    traj = run_scripted(tiny, turns, max_resamples=4)
    assert len(traj.turns) == 1 and traj.turns[0].attempts == 3
    assert traj.turns[0].rejected == ["bad_tags", "index_out_of_range"]
    assert traj.answer == "3" and traj.violations == []
    # discarded attempts leave no trace in the ids
    assert "no tags" not in tiny[1].tokenizer.decode(traj.input_ids)


def test_turn_and_token_limits(tiny):
    crop = call("crop_image", bbox_2d=[0, 0, 56, 56], image_index=0)
    traj = run_scripted(tiny, [crop] * 5, max_turns=2)
    assert traj.finish_reason == "max_turns" and len(traj.turns) == 2 and len(traj.images) == 2
    ids, _, _ = expected(tiny, traj.messages)  # ends after the last assistant turn
    assert torch.equal(traj.input_ids, ids)

    short = run_scripted(tiny, [crop] * 5, max_total_tokens=traj.prompt_length + 60)
    assert short.finish_reason == "max_tokens"
    assert len(short.input_ids) <= short.prompt_length + 60
    ids, _, _ = expected(tiny, short.messages)
    assert torch.equal(short.input_ids, ids)


def test_tool_results_count_against_the_visual_budget(family_model, family):
    # image 0 has 80 tokens; a budget of 100 leaves 20 for results: a display of image 0 shrinks to fit
    f = family.factor
    turns = [call("display_image", image_index=0), call("display_image", image_index=0), ANSWER]
    traj = run_scripted(
        family_model, turns, image_of(f), visual=VisualConfig(max_visual_tokens=100), max_resamples=0
    )
    shown = traj.images[1]
    assert shown.width % f == 0 and shown.height % f == 0  # sized in the family's tokens
    assert (shown.width // f) * (shown.height // f) <= 20
    assert traj.violations == ["over_budget"]  # the second display finds the budget spent
    assert int(traj.image_grid_thw.prod(-1).sum()) // 4 <= 100


def test_fixed_coordinates(tiny):
    model, processor = tiny
    turns = [call("crop_image", bbox_2d=[0, 0, 499, 999], image_index=0), ANSWER]
    cfg = EngineConfig(coords="fixed")
    engine = ToolEngine(model, processor, config=cfg, generator=ScriptedGenerator(processor, [turns]))
    traj = engine.run([build_prompt(IMG, "How many?", coords="fixed")])[0]
    assert "Image 0: 1000 x 1000." in traj.messages[1]["content"][1]["text"]
    assert traj.images[1].size == (140, 224)  # the left half (ceil(499 * 280 / 999) = 140)
    assert traj.messages[3]["content"][1]["text"].startswith("Image 1: 1000 x 1000.")


def test_trim_stops_right_after_the_stop_string(tiny):
    _, processor = tiny
    gen = HFGenerator(tiny[0], processor)
    tok = processor.tokenizer
    ids = tok("<think>a</think><tool_call>{}</tool_call> trailing words", add_special_tokens=False)[
        "input_ids"
    ]
    kept = gen._trim(ids, 100)
    assert tok.decode(kept).startswith("<think>a</think><tool_call>{}</tool_call>")
    assert "</tool_call>" not in tok.decode(kept[:-1])
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert gen._trim([5, 6, end, 7, 7], 100) == [5, 6, end]
    assert gen._trim([5, 6, 7, 8], 3) == [5, 6, 7]


# -- the tiny model ------------------------------------------------------------------------


def test_tiny_model_runs_to_the_limits_with_consistent_ids_and_mask(family_model):
    model, processor = family_model
    images = [IMG, solid(196, 308, (20, 120, 200)), solid(420, 140, (10, 200, 10))]
    out = reason_batch(
        model,
        processor,
        images,
        ["How many?", "What colour?", "Which is wider?"],
        max_turns=3,
        max_turn_tokens=24,
        max_resamples=1,
    )
    tok = processor.tokenizer
    for r in out:
        t = r.trajectory
        assert t.finish_reason in ("answer", "max_turns", "max_tokens")
        assert 1 <= len(t.turns) <= 3
        mask = torch.zeros_like(t.generated)
        for turn in t.turns:
            a, b = turn.span
            mask[a:b] = True
            assert 1 <= b - a <= 24
            assert tok.decode(t.input_ids[a:b]).startswith(turn.text)  # the text is these ids
        assert torch.equal(mask, t.generated)
        assert not t.generated[: t.prompt_length].any()
        n_images = int((t.input_ids == tok.convert_tokens_to_ids("<|vision_start|>")).sum())
        assert n_images == len(t.images) == len(t.image_grid_thw)
        assert int((t.mm_token_type_ids == 1).sum()) == int(t.image_grid_thw.prod(-1).sum()) // 4


def test_batched_greedy_equals_one_at_a_time_and_the_trainer_scores_the_same_ids(family_model):
    model, processor = family_model
    images = [IMG, solid(196, 308, (20, 120, 200)), solid(420, 140, (10, 200, 10))]
    questions = ["How many?", "What colour is the biggest shape?", "Which?"]
    gen = {"max_turns": 2, "max_turn_tokens": 16, "max_resamples": 0}
    batched = [r.trajectory for r in reason_batch(model, processor, images, questions, **gen)]
    for img, q, b in zip(images, questions, batched):
        single = reason(model, processor, img, q, **gen).trajectory
        assert torch.equal(single.input_ids, b.input_ids)
        assert torch.equal(single.generated, b.generated)

    # token-in/token-out: one forward over the trajectory (our M-RoPE positions) reproduces every
    # greedy choice the engine made (control tokens are suppressed during generation)
    gen_ = HFGenerator(model, processor)
    for t in batched:
        enc = t.encoded(RopeSpec.from_config(model.config))
        with torch.no_grad():
            logits = model(**enc.model_inputs()).logits[0]
        logits[:, gen_.suppress] = -float("inf")
        where = torch.nonzero(t.generated).flatten()
        assert torch.equal(logits[where - 1].argmax(-1), t.input_ids[where])


def test_reason_rejects_unknown_options(tiny):
    with pytest.raises(TypeError, match="unknown generation option"):
        reason(*tiny, IMG, "How many?", max_new_tokens=3)


def test_prompts_must_end_with_a_user_turn(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="user turn"):
        ToolEngine(model, processor).run([[{"role": "system", "content": "hi"}]])
