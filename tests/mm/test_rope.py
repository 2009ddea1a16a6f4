"""M-RoPE positions: the "transformers" rule equals the installed get_rope_index (Qwen2.5-VL,
Qwen2-VL and Qwen3-VL, whose videos are one t = 1 block per frame group); both rules equal
hand-computed positions, also after a 60-s video where they differ (Qwen2.5-VL) or agree (Qwen3-VL)."""

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


def _transformers_encoder(tiny):
    return ConversationEncoder(
        tiny[1], VisualConfig(), RopeSpec.from_config(tiny[0].config, rule="transformers")
    )


def frame_blocks(s):
    """(start, end) of each run of video tokens of a sample."""
    v = (s.mm_token_type_ids == 2).int()
    edges = torch.nonzero(torch.diff(torch.cat([torch.tensor([0]), v, torch.tensor([0])]))).flatten()
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def rope_index(model, s):
    pos, delta = model.model.get_rope_index(
        s.input_ids[None], s.mm_token_type_ids[None], s.image_grid_thw, s.video_grid_thw, s.second_per_grid_ts
    )
    return pos[:, 0], delta


@pytest.mark.parametrize("case", sorted(CASES))
def test_positions_equal_model_rope_index(family_model, family_encoder, family, case):
    """The "transformers" rule is get_rope_index's; for prompts without video the default
    ("qwen") rule gives the same positions (Qwen3-VL: for every prompt)."""
    tiny, encoder = family_model, family_encoder
    model, processor = tiny
    msgs = [{"role": "user", "content": CASES[case]}, {"role": "assistant", "content": "ok"}]
    if not case.startswith("video") or family.video_time == "timestamps":
        assert torch.equal(
            encoder.encode(msgs).position_ids, _transformers_encoder(tiny).encode(msgs).position_ids
        )
    s = _transformers_encoder(tiny).encode(msgs)
    if case == "text":
        assert torch.equal(s.position_ids, torch.arange(len(s)).expand(3, -1))
        return
    want, delta = rope_index(model, s)
    assert torch.equal(s.position_ids, want)
    assert s.next_position == len(s) + int(delta)
    if case.startswith("video") and family.video_time == "absolute":
        t = s.position_ids[0, s.mm_token_type_ids == 2].unique()
        step = 2 * 2 / float(CASES[case][0]["sample_fps"])  # tokens_per_second * seconds per temporal patch
        assert (t[1:] - t[:-1] == step).all()
    if case.startswith("video") and family.video_time == "timestamps":
        # one block per frame group, each at t = its start (no absolute time), h / w from there
        blocks = frame_blocks(s)
        assert len(blocks) == int(s.video_grid_thw[0, 0])
        for a, b in blocks:
            block = s.position_ids[:, a:b]
            assert block[0].unique().tolist() == [int(s.position_ids[0, a - 1]) + 1]
            assert int(block[1].min()) == int(block[2].min()) == int(block[0, 0])


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


def test_hand_worked_positions_after_a_60s_video():
    """3 text tokens, a 60-s video at 2 fps (60 temporal patches of 1 s, merged 2 x 2: interval
    tokens_per_second 2 x 1 s = 2), then 2 text tokens. The video starts at p = 3: temporal
    3, 5, ..., 3 + 2 * 59 = 121; height and width 3..4."""
    types = torch.tensor([0] * 3 + [2] * 240 + [0] * 2)
    grid, sec = torch.tensor([[60, 4, 4]]), torch.tensor([1.0])
    qwen, nq = mrope_positions(types, video_grid_thw=grid, second_per_grid_ts=sec)
    hf, nh = mrope_positions(
        types, video_grid_thw=grid, second_per_grid_ts=sec, spec=RopeSpec(rule="transformers")
    )
    video = qwen[:, 3:243]
    assert torch.equal(video, hf[:, 3:243])  # the block itself is the same
    assert video[0].unique().tolist() == list(range(3, 122, 2))
    assert video[1].unique().tolist() == video[2].unique().tolist() == [3, 4]
    assert qwen[:, 243:].tolist() == [[122, 123]] * 3  # max(block) + 1 = 121 + 1
    assert hf[:, 243:].tolist() == [[5, 6]] * 3  # 3 + max(h, w) = 3 + 2: inside the video's time
    assert (nq, nh) == (124, 122)  # decoding continues after the largest position either way


def test_60s_video_through_the_encoder(tiny):
    """The same on an encoded record: 120 frames at 2 fps. "transformers" equals the model's
    get_rope_index; "qwen" continues the text at the video's largest position + 1."""
    model, processor = tiny
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": frames(120, (56, 56)), "sample_fps": 2.0},
                {"type": "text", "text": "Describe."},
            ],
        },
        {"role": "assistant", "content": "ok"},
    ]
    qwen = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config)).encode(msgs)
    hf = _transformers_encoder(tiny).encode(msgs)
    assert torch.equal(qwen.input_ids, hf.input_ids) and qwen.video_grid_thw.tolist() == [[60, 4, 4]]
    want, _ = rope_index(model, hf)
    assert torch.equal(hf.position_ids, want)
    video = (qwen.mm_token_type_ids == 2).nonzero().flatten()
    start, end = int(video[0]), int(video[-1]) + 1
    p = int(qwen.position_ids[0, start])
    assert p == start  # only text before the video
    after = qwen.position_ids[:, end:]
    assert int(qwen.position_ids[:, start:end].max()) == p + 2 * 59
    assert torch.equal(after, torch.arange(p + 2 * 59 + 1, p + 2 * 59 + 1 + after.shape[1]).expand(3, -1))
    assert torch.equal(hf.position_ids[:, end:], torch.arange(p + 2, p + 2 + after.shape[1]).expand(3, -1))


def test_unknown_rule_names_the_choices():
    with pytest.raises(ValueError, match="qwen, transformers"):
        RopeSpec(rule="vllm")


def test_qwen3vl_rules_agree_after_a_60s_video(qwen3vl):
    """Qwen3-VL: 120 frames at 2 fps are 60 frame groups of t = 1 with "<t seconds>" between them;
    both rules give get_rope_index's positions and the temporal row never jumps by time."""
    family_model = qwen3vl
    model, processor = family_model
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": frames(120, (64, 64)), "sample_fps": 2.0},
                {"type": "text", "text": "Describe."},
            ],
        },
        {"role": "assistant", "content": "ok"},
    ]
    qwen = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config)).encode(msgs)
    hf = _transformers_encoder(family_model).encode(msgs)
    assert qwen.video_grid_thw.tolist() == [[60, 4, 4]]
    assert torch.equal(qwen.position_ids, hf.position_ids)
    want, delta = rope_index(model, hf)
    assert torch.equal(hf.position_ids, want) and hf.next_position == len(hf) + int(delta)
    blocks = frame_blocks(qwen)
    assert len(blocks) == 60 and all(b - a == 4 for a, b in blocks)
    for (a, b), (c, _) in zip(blocks, blocks[1:]):  # text between groups continues at block start + 2
        assert int(qwen.position_ids[0, b]) == int(qwen.position_ids[0, a]) + 2
        assert int(qwen.position_ids[0, c]) == int(qwen.position_ids[0, c - 1]) + 1
