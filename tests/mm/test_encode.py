"""Conversation -> ids/labels: exactly the assistant tokens (plus <|im_end|>) are supervised."""

import numpy as np
import pytest
import torch

from mm.encode import IGNORE
from mm.records import RecordError
from tests.conftest import solid

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


def test_labels_are_exactly_the_assistant_turns(encoder):
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


def test_train_false_excludes_a_turn(encoder):
    s = encoder.encode(tool_conversation(train_first=False))
    assert [encoder.tok.decode(s.input_ids[a:b]) for a, b in spans(s.labels)] == [FINAL + "<|im_end|>"]


def test_generation_prompt_is_not_supervised(encoder):
    conv = tool_conversation()[:4]
    s = encoder.encode(conv, add_generation_prompt=True)
    assert encoder.tok.decode(s.input_ids[-len(encoder.header) :]) == "<|im_start|>assistant\n"
    assert len(spans(s.labels)) == 1


def test_ids_match_the_processor(tiny, encoder):
    """Our ids (rendered once, pads expanded in id space) equal the HF processor's on the same images."""
    _, processor = tiny
    conv = tool_conversation()
    s = encoder.encode(conv)
    text = processor.apply_chat_template(conv, tokenize=False)
    images = [solid(112, 84), solid(56, 56)]
    ref = processor(text=[text], images=images, return_tensors="pt")
    assert torch.equal(ref["input_ids"][0], s.input_ids)
    assert torch.equal(ref["image_grid_thw"], s.image_grid_thw)
    assert torch.allclose(ref["pixel_values"], s.pixel_values)
    assert torch.equal(ref["mm_token_type_ids"][0].long(), s.mm_token_type_ids)


def test_text_only_and_reserved_tokens(encoder):
    s = encoder.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert s.pixel_values is None and s.visual_tokens == 0
    assert torch.equal(s.position_ids, torch.arange(len(s)).expand(3, -1))
    with pytest.raises(RecordError, match="control token"):
        encoder.encode([{"role": "user", "content": "<|image_pad|>"}, {"role": "assistant", "content": "x"}])


def test_too_long_is_rejected(tiny):
    from mm.encode import ConversationEncoder

    enc = ConversationEncoder(tiny[1], max_length=10)
    with pytest.raises(RecordError, match="max_length=10"):
        enc.encode([{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}])
