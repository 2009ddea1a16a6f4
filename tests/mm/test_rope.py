"""M-RoPE positions equal the model's own get_rope_index (Qwen2.5-VL and Qwen2-VL rules)."""

import pytest
import torch

from mm.encode import ConversationEncoder
from mm.rope import RopeSpec, mrope_positions
from mm.visual import VisualConfig
from tests.conftest import solid


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
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tiny_cfg = tiny[0].config
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=tiny_cfg.text_config.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, spatial_merge_size=2
        ),
        image_token_id=tiny_cfg.image_token_id,
        video_token_id=tiny_cfg.video_token_id,
        vision_start_token_id=tiny_cfg.vision_start_token_id,
    )
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
