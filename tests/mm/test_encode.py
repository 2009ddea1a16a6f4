"""Conversation -> ids/labels: exactly the assistant tokens (plus <|im_end|>) are supervised; ids
equal the HF processor's (Qwen2.5-VL and Qwen3-VL, whose videos carry <t seconds> timestamps)."""

import numpy as np
import pytest
import torch

from mm.encode import IGNORE
from mm.records import RecordError
from mm.visual import load_visuals
from tests.conftest import solid
from tests.mm.conftest import hf_inputs

CALL = '<think>Zoom in.</think><tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 28, 28], "image_index": 0}}</tool_call>'
FINAL = "<think>It is red.</think><answer>red</answer>"


def tool_conversation(train_first: bool = True):
    return [
        {"role": "system", "content": "You can call tools."},
        {
            "role": "user",
            "content": [{"type": "image", "image": solid(112, 84)}, {"type": "text", "text": "Colour?"}],
        },
        {"role": "assistant", "content": CALL, "train": train_first},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": solid(56, 56)},
                {"type": "text", "text": "Image 1: 56 x 56."},
            ],
        },
        {"role": "assistant", "content": FINAL},
    ]


def spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    on = np.concatenate([[False], (labels != IGNORE).numpy(), [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return list(zip(edges[::2], edges[1::2]))


def test_labels_are_exactly_the_assistant_turns(family_encoder):
    encoder = family_encoder
    tok = encoder.tok
    s = encoder.encode(tool_conversation())
    got = [tok.decode(s.input_ids[a:b]) for a, b in spans(s.labels)]
    assert got == [CALL + "<|im_end|>", FINAL + "<|im_end|>"]
    # the supervised ids are those of the turn text tokenised on its own: hand-computed span sizes
    want = [len(tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"]) for t in (CALL, FINAL)]
    assert [b - a for a, b in spans(s.labels)] == want
    assert torch.equal(s.labels[s.labels != IGNORE], s.input_ids[s.labels != IGNORE])
    # nothing from system, user, tool-result or image tokens
    assert not (s.labels[s.mm_token_type_ids != 0] != IGNORE).any()


def test_train_false_excludes_a_turn(family_encoder):
    encoder = family_encoder
    s = encoder.encode(tool_conversation(train_first=False))
    assert [encoder.tok.decode(s.input_ids[a:b]) for a, b in spans(s.labels)] == [FINAL + "<|im_end|>"]


def test_generation_prompt_is_not_supervised(family_encoder):
    encoder = family_encoder
    conv = tool_conversation()[:4]
    s = encoder.encode(conv, add_generation_prompt=True)
    assert encoder.tok.decode(s.input_ids[-len(encoder.header) :]) == "<|im_start|>assistant\n"
    assert len(spans(s.labels)) == 1


def test_ids_match_the_processor(family_model, family_encoder):
    """Our ids (rendered once, pads expanded in id space) equal the HF processor's on the same
    images, which it resizes itself (to multiples of 28 or 32) under the same pixel limits."""
    _, processor = family_model
    encoder = family_encoder
    conv = tool_conversation()
    s = encoder.encode(conv)
    images = [solid(112, 84), solid(56, 56)]
    ref = hf_inputs(processor, conv, images)
    assert torch.equal(ref["input_ids"][0], s.input_ids)
    assert torch.equal(ref["image_grid_thw"], s.image_grid_thw)
    # pixels: the processor on mmpost's resized images (PIL resizes, as qwen-vl-utils; 112 x 84 is
    # already a multiple of 28, so for Qwen2.5-VL these are the images above)
    resized, _ = load_visuals(s.plans, encoder.visual)
    ref_pixels = processor.image_processor(images=resized, do_resize=False, return_tensors="pt")[
        "pixel_values"
    ]
    assert torch.allclose(ref_pixels, s.pixel_values)
    assert torch.equal(ref["mm_token_type_ids"][0].long(), s.mm_token_type_ids)


def test_text_only_and_reserved_tokens(family_encoder):
    encoder = family_encoder
    s = encoder.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert s.pixel_values is None and s.visual_tokens == 0
    assert torch.equal(s.position_ids, torch.arange(len(s)).expand(3, -1))
    with pytest.raises(RecordError, match="control token"):
        encoder.encode([{"role": "user", "content": "<|image_pad|>"}, {"role": "assistant", "content": "x"}])


def test_too_long_is_rejected(family_model):
    from mm.encode import ConversationEncoder

    enc = ConversationEncoder(family_model[1], max_length=10)
    with pytest.raises(RecordError, match="max_length=10"):
        enc.encode([{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}])


# ----------------------------------------------------------------------------- Qwen3-VL videos


def qwen3_video_reference(processor, conv, s, encoder):
    """The Qwen3-VL processor's inputs for ``conv`` given the frames mmpost sampled, with the
    metadata (frame indices, fps) its timestamps come from."""
    from transformers.video_utils import VideoMetadata

    from mm.visual import _frame_indices, probe_video

    images, videos = load_visuals(s.plans, encoder.visual)
    meta = []
    for p in (p for p in s.plans if p.kind == "video"):
        if isinstance(p.source, (list, tuple)):
            idx, fps = list(range(len(p.source))), float(p.item.get("sample_fps", encoder.visual.fps))
        else:
            info = probe_video(p.source)
            idx, fps = _frame_indices(info, p.item, encoder.visual)[0], info.fps
        meta.append(VideoMetadata(total_num_frames=max(idx) + 1, fps=fps, frames_indices=idx))
    text = processor.apply_chat_template(conv, tokenize=False)
    extra = {"images": images} if images else {}
    return processor(
        text=[text],
        videos=videos,
        video_metadata=meta,
        do_sample_frames=False,
        do_resize=False,
        return_tensors="pt",
        **extra,
    )


def test_qwen3vl_video_timestamps_match_the_processor(qwen3vl, tmp_path):
    """A frame list at 2 fps (odd count: the last frame fills the temporal patch), a video file
    at 4 fps sampled to 2 fps, and a second-turn image: ids, types and tensors equal the Qwen3-VL
    processor's, with one "<t seconds>" per frame group."""
    from mm.encode import ConversationEncoder
    from mm.rope import RopeSpec
    from mm.synthetic import moving_dot_frames, write_video
    from mm.visual import VisualConfig

    model, processor = qwen3vl
    encoder = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))
    path = str(write_video(str(tmp_path / "dot.mp4"), moving_dot_frames(12, size=64), fps=4.0))
    frames = [solid(96, 64, (i * 40 % 255, 20, 20)) for i in range(5)]
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": frames, "sample_fps": 2.0},
                {"type": "text", "text": "What moves?"},
                {"type": "video", "video": path, "fps": 2.0},
            ],
        },
        {"role": "assistant", "content": "A dot."},
        {
            "role": "user",
            "content": [{"type": "image", "image": solid(64, 96)}, {"type": "text", "text": "And?"}],
        },
        {"role": "assistant", "content": "A square."},
    ]
    s = encoder.encode(conv)
    ref = qwen3_video_reference(processor, conv, s, encoder)
    assert torch.equal(ref["input_ids"][0], s.input_ids)
    assert torch.equal(ref["mm_token_type_ids"][0].long(), s.mm_token_type_ids)
    assert torch.equal(ref["video_grid_thw"], s.video_grid_thw)
    assert torch.allclose(ref["pixel_values_videos"], s.pixel_values_videos)
    assert torch.allclose(ref["pixel_values"], s.pixel_values)
    assert s.second_per_grid_ts is None  # time is in the text
    pos, delta = model.model.get_rope_index(
        s.input_ids[None], s.mm_token_type_ids[None], s.image_grid_thw, s.video_grid_thw
    )
    assert torch.equal(pos[:, 0], s.position_ids) and s.next_position == len(s) + int(delta)
    text = processor.tokenizer.decode(s.input_ids)
    # 5 frames at 2 fps: groups (0, 0.5), (1, 1.5), (2, 2): 0.25 -> "0.2", 1.25 -> "1.2", 2.0
    # 12 frames at 4 fps sampled to 6 frames (0, 2, 4, 7, 9, 11): groups at 0.25, 1.375, 2.5 s
    stamps = [t for t in text.split("<") if t.endswith(" seconds>")]
    assert stamps == [f"{t} seconds>" for t in ("0.2", "1.2", "2.0", "0.2", "1.4", "2.5")]
    assert int(s.video_grid_thw[:, 0].sum()) == text.count("<|vision_start|><|video_pad|>") == 6
    assert [encoder.tok.decode(s.input_ids[a:b]) for a, b in spans(s.labels)] == [
        "A dot.<|im_end|>",
        "A square.<|im_end|>",
    ]
    tokens, visual = encoder.count_tokens([*map(_message, conv)])
    assert (tokens, visual) == (len(s), s.visual_tokens)


def _message(d):
    from mm.records import parse_message

    return parse_message(d, "m")


def test_qwen3vl_template_tool_turns_and_no_default_system(family_model, family):
    """Qwen3-VL renders no default system turn and a tool result as <tool_response> in a user
    turn; Qwen2.5-VL adds "You are a helpful assistant." (each checked against hand-written text)."""
    processor = family_model[1]
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
        {"role": "tool", "content": "42"},
    ]
    text = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    turns = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<tool_call>{}</tool_call><|im_end|>\n"
    if family.name == "qwen3_vl":
        want = (
            turns
            + "<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        )
    else:
        want = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            + turns
            + "<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
        )
    assert text == want
