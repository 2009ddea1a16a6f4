"""HFGenerator decodes at the M-RoPE positions the trainer scores with (mm's rule), also after a
60-s video, where transformers' own rule would put the text inside the video's time (Qwen2.5-VL;
Qwen3-VL's time is ``<t seconds>`` text and every frame group a t = 1 block, so the two rules
agree there). Each test runs once per model family."""

import torch

from mm.encode import ConversationEncoder
from mm.rope import RopeSpec, mrope_positions
from mm.visual import VisualConfig
from tests.conftest import solid
from vision_tools.generation import Context, Sampling
from vision_tools.generation.hf import HFGenerator


def video_prompt():
    frames = [solid(56, 56, color=(i * 2, 10, 10)) for i in range(120)]  # 60 s at 2 fps
    content = [{"type": "video", "video": frames, "sample_fps": 2.0}, {"type": "text", "text": "What moves?"}]
    return [{"role": "user", "content": content}]


def context(s, key=0) -> Context:
    videos = []
    if s.video_grid_thw is not None:  # Qwen3-VL: no seconds (the time is in the ids)
        seconds = float(s.second_per_grid_ts[0]) if s.second_per_grid_ts is not None else None
        videos = [(s.pixel_values_videos, s.video_grid_thw[0], seconds)]
    grids = list(s.image_grid_thw) if s.image_grid_thw is not None else []
    pixels = [s.pixel_values] if s.pixel_values is not None else []
    return Context(s.input_ids.tolist(), s.mm_token_type_ids.tolist(), pixels, grids, key, videos)


def video_inputs(s) -> dict:
    """The video of sample ``s`` as the model's forward takes it (Qwen3-VL: no seconds)."""
    out = {"pixel_values_videos": s.pixel_values_videos, "video_grid_thw": s.video_grid_thw}
    if s.second_per_grid_ts is not None:
        out["second_per_grid_ts"] = s.second_per_grid_ts
    return out


def test_greedy_generation_uses_the_training_positions_after_a_long_video(family_model):
    model, processor = family_model
    enc = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))
    long = enc.encode(video_prompt(), add_generation_prompt=True)
    short = enc.encode(
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": solid(56, 84)}, {"type": "text", "text": "Hi"}],
            }
        ],
        add_generation_prompt=True,
    )
    assert long.video_grid_thw.tolist() == [[60, 4, 4]]
    # transformers' own rule would continue the text 2 positions after the video's start, not after
    # its end (Qwen2.5-VL); Qwen3-VL's 60 frame groups are t = 1 blocks: the rules agree, and the
    # 60 timestamps are text between them
    hf = RopeSpec.from_config(model.config, rule="transformers")
    hf_pos, _ = mrope_positions(
        long.mm_token_type_ids, None, long.video_grid_thw, long.second_per_grid_ts, hf
    )
    if enc.family.video_time == "timestamps":
        assert torch.equal(hf_pos, long.position_ids)
        assert processor.tokenizer.decode(long.input_ids).count(" seconds>") == 60
    else:
        assert not torch.equal(hf_pos, long.position_ids)

    seen = []  # position_ids of every language-model forward: [3, B, n]
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True
    )
    n_new = 5
    try:
        gen = HFGenerator(model, processor)
        out = gen.generate([context(long), context(short, 1)], [n_new, n_new], Sampling())
    finally:
        hook.remove()
    L = len(long)
    assert torch.equal(seen[0][:, 0], long.position_ids)  # the prompt, as the encoder laid it out
    assert torch.equal(seen[0][:, 1, L - len(short) :], short.position_ids)  # left-padded row
    steps = torch.cat([p[:, 0] for p in seen[1:]], dim=1)  # one new token per step
    assert torch.equal(
        steps, torch.arange(long.next_position, long.next_position + steps.shape[1]).expand(3, -1)
    )

    # the trainer's view: one forward over prompt + generated ids with the encoder's positions
    # predicts every generated token (greedy), so the rollout is what the trainer scores
    new = out[0]
    assert 0 < len(new) <= n_new
    ids = torch.cat([long.input_ids, torch.tensor(new)])
    pos = torch.cat(
        [long.position_ids, torch.arange(long.next_position, long.next_position + len(new)).expand(3, -1)], 1
    )
    with torch.no_grad():
        logits = model(input_ids=ids[None], position_ids=pos[:, None], **video_inputs(long)).logits[0]
    assert logits[L - 1 : L - 1 + len(new)].argmax(-1).tolist() == new


def test_eval_generation_uses_the_training_positions_after_a_long_video(family_model):
    """``mmpost eval``'s one-turn generation (evaluation.evaluate.generate) prefills at the
    encoder's positions too, then decodes from the last + 1 (it used to drop them, so generate
    fell back to transformers' rule after a long video)."""
    from evaluation.evaluate import generate

    model, processor = family_model
    enc = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))
    long = enc.encode(video_prompt(), add_generation_prompt=True)
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True
    )
    try:
        generate(model, processor, enc, [video_prompt()], ".", max_new_tokens=3)
    finally:
        hook.remove()
    assert torch.equal(seen[0][:, 0], long.position_ids)
    steps = torch.cat([p[:, 0] for p in seen[1:]], dim=1)
    assert torch.equal(
        steps, torch.arange(long.next_position, long.next_position + steps.shape[1]).expand(3, -1)
    )
