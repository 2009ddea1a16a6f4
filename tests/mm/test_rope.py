"""M-RoPE positions equal the model's own get_rope_index (Qwen2.5-VL and Qwen2-VL rules)."""

import pytest
import torch

from mm.encode import ConversationEncoder
from mm.rope import RopeSpec, mrope_positions
from mm.visual import VisualConfig
from tests.conftest import solid, tiny_qwen2_vl_config


def frames(n, size=(84, 56)):
    return [solid(*size, color=(i * 30 % 255, 10, 10)) for i in range(n)]


CASES = {
    "image": [{"type": "image", "image": solid(140, 84)}, {"type": "text", "text": "What?"}],
    "two_images": [
        {"type": "image", "image": solid(56, 112)},
        {"type": "text", "text": "and"},
        {"type": "image", "image": solid(196, 56)},
    ],
    "video_2fps": [
        {"type": "video", "video": frames(6), "sample_fps": 2.0},
        {"type": "text", "text": "Describe."},
    ],
    "video_1fps": [
        {"type": "video", "video": frames(4), "sample_fps": 1.0},
        {"type": "image", "image": solid(56, 56)},
    ],
    "text": [{"type": "text", "text": "no pictures here"}],
}


def rope_index(model, s):
    pos, delta = model.model.get_rope_index(
        s.input_ids[None], s.mm_token_type_ids[None], s.image_grid_thw, s.video_grid_thw, s.second_per_grid_ts
    )
    return pos[:, 0], delta


@pytest.mark.parametrize("case", sorted(CASES))
def test_positions_equal_model_rope_index(tiny, encoder, case):
    model, _ = tiny
    s = encoder.encode([{"role": "user", "content": CASES[case]}, {"role": "assistant", "content": "ok"}])
    if case == "text":
        assert torch.equal(s.position_ids, torch.arange(len(s)).expand(3, -1))
        return
    want, delta = rope_index(model, s)
    assert torch.equal(s.position_ids, want)
    assert s.next_position == len(s) + int(delta)
    if case.startswith("video"):
        t = s.position_ids[0, s.mm_token_type_ids == 2].unique()
        step = 2 * 2 / float(CASES[case][0]["sample_fps"])  # tokens_per_second * seconds per temporal patch
        assert (t[1:] - t[:-1] == step).all()


def test_qwen2_vl_rule(tiny):
    """Qwen2-VL has no absolute-time scaling: checked against its own get_rope_index."""
    from transformers import Qwen2VLForConditionalGeneration

    cfg = tiny_qwen2_vl_config(tiny[0].config)
    model = Qwen2VLForConditionalGeneration(cfg)
    enc = ConversationEncoder(tiny[1], VisualConfig(), RopeSpec.from_config(cfg))
    assert enc.rope.tokens_per_second is None
    s = enc.encode([{"role": "user", "content": CASES["video_1fps"]}, {"role": "assistant", "content": "ok"}])
    want, _ = model.model.get_rope_index(
        s.input_ids[None], s.mm_token_type_ids[None], s.image_grid_thw, s.video_grid_thw
    )
    assert torch.equal(s.position_ids, want[:, 0])


def test_hand_worked_positions():
    # 2 text tokens, an image with merged grid 1 x 2 x 3, then 2 text tokens
    types = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    pos, nxt = mrope_positions(types, image_grid_thw=torch.tensor([[1, 4, 6]]))
    assert pos.tolist() == [
        [0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
        [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
        [0, 1, 2, 3, 4, 2, 3, 4, 5, 6],
    ]
    assert nxt == 7
