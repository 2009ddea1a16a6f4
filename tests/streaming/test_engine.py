"""Streaming inference: equals offline, reads as a training chunk after eviction, rotation
arithmetic after eviction, bounded memory. The exactness tests run once per model family
(``family_model``: Qwen2.5-VL; Qwen3-VL, with its frames as ``<t seconds>`` groups at the
stream's time and interleaved M-RoPE); Qwen3.5 is refused."""

import pytest
import torch
from PIL import Image

from mm.encode import ConversationEncoder
from mm.rope import RopeSpec
from mm.visual import VisualConfig
from streaming.cache import CacheConfig, rotate_keys
from streaming.chunks import build_chunks, second_text
from streaming.engine import StreamConfig, StreamingEngine, previous_role
from streaming.sources import SyntheticSource, open_source


def replies(tok, texts):
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return [tok(t, add_special_tokens=False)["input_ids"] + [end] for t in texts]


def offline_messages(seconds, texts, query="Commentate on this match", previous="previous text"):
    """StreamingVLM's layout, written out by hand (the released training code's, query after the
    frames); ``previous``: the previous-text block's role (``user`` under Qwen3-VL's template)."""
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": previous, "content": ""},
    ]
    for k, (sec, text) in enumerate(zip(seconds, texts)):
        frames = [Image.fromarray(f) for f in sec.frames]  # at the stream's time (Qwen3-VL's <t seconds>)
        video = {"type": "video", "video": frames, "sample_fps": 2, "video_start": float(k)}
        content = [{"type": "text", "text": f"Time={k}.0-{k + 1}.0s"}, video]
        content += [{"type": "text", "text": query}] if k == 0 else []
        msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": "\n" + text}]
    return msgs


def video_inputs(enc) -> dict:
    """An encoded sample's videos as the model's forward takes them (Qwen3-VL: no seconds)."""
    out = {"pixel_values_videos": enc.pixel_values_videos, "video_grid_thw": enc.video_grid_thw}
    if enc.second_per_grid_ts is not None:
        out["second_per_grid_ts"] = enc.second_per_grid_ts
    return out


def test_streaming_equals_one_offline_forward(family_model, family):
    """Windows larger than the stream: per-second logits == one forward with the model's own
    positions; for Qwen3-VL each second's frames carry their time in the stream as text."""
    model, processor = family_model
    texts = [" the dot moves ...", " ...", " right ...", " it turns ...", " ..."]
    eng = StreamingEngine(model, processor, StreamConfig(do_sample=False))
    eng.trace = []
    seconds = list(SyntheticSource(len(texts)).seconds())
    for sec, r in zip(seconds, replies(processor.tokenizer, texts)):
        eng.step(sec, forced=r)
    streamed = torch.cat(eng.trace)  # [L, V]
    enc = ConversationEncoder(processor).encode(
        offline_messages(seconds, texts, previous=previous_role(processor))
    )
    n = streamed.shape[0]
    ours = torch.cat([torch.tensor(s.token_ids) for s in eng.cache.spans])
    assert torch.equal(ours, enc.input_ids[:n])  # the same tokens as the chat template renders
    if family.video_time == "timestamps":  # second k's two frames at k and k + 0.5: "<k.2 seconds>"
        stamps = [s for s in processor.tokenizer.decode(ours).split("<") if s.endswith(" seconds>")]
        assert stamps == [f"{k + 0.25:.1f} seconds>" for k in range(len(texts))]
    with torch.no_grad():  # no position_ids: the model computes its own (get_rope_index)
        ref = model(
            input_ids=enc.input_ids[None, :n],
            mm_token_type_ids=enc.mm_token_type_ids[None, :n],
            **video_inputs(enc),
        ).logits[0]
    assert (streamed - ref).abs().max() <= 1e-4


WORDS = [  # second 0: "kick off"; 2: "pass"; 5: "shot"; 6: "goal", "and", "cheers"
    {"word": "kick", "start": 0.2, "end": 0.4},
    {"word": "off", "start": 0.5, "end": 0.7},
    {"word": "pass", "start": 1.8, "end": 2.3},
    {"word": "shot", "start": 5.5, "end": 5.9},
    {"word": "goal", "start": 5.9, "end": 6.4},
    {"word": "and", "start": 6.5, "end": 6.6},
    {"word": "cheers", "start": 6.7, "end": 6.9},
]


def test_cache_reads_as_the_training_chunk_of_its_first_kept_second(family_model, tmp_path):
    """After 8 s with 3-s windows the cache (ids and, re-laid, positions) equals the chunk
    builder's record for seconds 5-7, as mm's encoder encodes it for training: previous text of
    seconds 0-4, then the first kept second with the query after its frames."""
    from mm.synthetic import moving_dot_frames, write_video

    model, processor = family_model
    tok = processor.tokenizer
    video = write_video(str(tmp_path / "clip.webm"), moving_dot_frames(32, size=56), fps=4)  # 8 s
    cc = CacheConfig(recent_rounds=3, vision_seconds=3, relayout_slack=0)
    eng = StreamingEngine(model, processor, StreamConfig(do_sample=False, cache=cc))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for sec in open_source(video).seconds():  # the trained replies, as the model would say them
        eng.step(
            sec, forced=tok(second_text(WORDS, sec.index)[1:], add_special_tokens=False)["input_ids"] + [end]
        )
    role = previous_role(processor)  # "previous text"; "user" under Qwen3-VL's template
    chunks = build_chunks(video, WORDS, 8.0, tok, chunk=3, overlap=2, previous=role)
    (rec,) = [r for r in chunks if r["meta"]["start"] == 5]
    assert rec["messages"][1] == {"role": role, "content": " kick off pass"}
    enc = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config)).encode(
        rec["messages"]
    )
    ids = [t for s in eng.cache.spans for t in s.token_ids]
    pos = torch.cat([s.positions for s in eng.cache.spans], dim=1)
    assert (
        ids == enc.input_ids[:-1].tolist() and tok.decode(enc.input_ids[-1:]) == "\n"
    )  # the template's last
    assert torch.equal(pos, enc.position_ids[:, :-1])
    assert [s.kind for s in eng.cache.spans][:8] == ["sink"] + ["previous"] * 2 + [
        "close",
        "user",
        "frames",
        "query",
        "turn",
    ]


def test_rotation_composes():
    torch.manual_seed(0)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    k = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    a, b = torch.full((5,), 7), torch.full((5,), -3)
    once = rotate_keys(k, a + b, inv_freq.double())
    twice = rotate_keys(rotate_keys(k, a, inv_freq.double()), b, inv_freq.double())
    assert torch.allclose(once, twice, atol=1e-12)
    assert torch.allclose(rotate_keys(once, -(a + b), inv_freq.double()), k, atol=1e-12)


def test_evicted_cache_equals_pre_rope_keys_at_the_new_positions(family_model):
    """After eviction and re-laying, cached keys == pre-RoPE keys rotated at the new positions
    (a second, slow computation through the model's own rotary embedding: contiguous sections
    for Qwen2.5-VL, interleaved for Qwen3-VL, whose pre-RoPE keys are k_norm's output)."""
    import importlib

    model, processor = family_model
    modeling = importlib.import_module(type(model).__module__)
    apply_rotary_pos_emb = modeling.apply_rotary_pos_emb
    lm = model.model.language_model
    pre = {i: [] for i in range(len(lm.layers))}
    hooks = [  # the keys just before RoPE: k_proj's output, or k_norm's (Qwen3-VL normalises them)
        getattr(layer.self_attn, "k_norm", layer.self_attn.k_proj).register_forward_hook(
            lambda m, a, out, i=i: pre[i].append(out.detach().flatten(2))
        )
        for i, layer in enumerate(lm.layers)
    ]
    cfg = StreamConfig(
        do_sample=False,
        max_new_tokens=6,
        cache=CacheConfig(sink_text=5, window_text=7, recent_rounds=3, vision_seconds=2, relayout_slack=0),
    )
    eng = StreamingEngine(model, processor, cfg)
    try:
        list(eng.run(SyntheticSource(9)))
    finally:
        for h in hooks:
            h.remove()
    cache = eng.cache
    assert cache.rotations > 0 and cache.tokens("previous") == 12  # the middle was cut
    kinds = [s.kind for s in cache.spans]
    assert kinds[:2] == ["sink", "previous"] and kinds.count("user") == 3 and kinds.count("frames") == 2
    positions = torch.cat([s.positions for s in cache.spans], dim=1)  # [3, S]
    assert cache.spans[0].start == 0
    for a, b in zip(cache.spans, cache.spans[1:]):  # contiguous: each span starts where the last ends
        assert b.start == a.end
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prev = [t for s in cache.spans if s.kind == "previous" for t in s.token_ids]
    assert end not in prev  # previous text is words only
    origin = torch.cat([s.origin for s in cache.spans])
    attn = lm.layers[0].self_attn
    heads, dim = attn.config.num_key_value_heads, attn.head_dim
    cos, sin = lm.rotary_emb(positions.float()[None], positions[:, None])  # sections composed inside
    for i in pre:
        k_pre = torch.cat(pre[i], dim=1)[0][origin]  # [S, heads*dim] in cache order
        k_pre = k_pre.view(1, -1, heads, dim).transpose(1, 2)
        _, want = apply_rotary_pos_emb(k_pre, k_pre, cos, sin)
        # fp32 rounding: 1e-5 of the keys' scale where k_norm sets it (Qwen3-VL: |k| up to ~4)
        scale = float(want.abs().max()) if hasattr(attn, "k_norm") else 1.0
        assert (cache.cache.layers[i].keys - want).abs().max() < 1e-5 * scale


def test_memory_stays_bounded_and_the_query_stays(tiny):
    model, processor = tiny
    cc = CacheConfig(sink_text=16, window_text=16, recent_rounds=4, vision_seconds=4)
    cfg = StreamConfig(max_new_tokens=3, query="Describe the red dot", seed=0, cache=cc)
    eng = StreamingEngine(model, processor, cfg)
    sizes = [seg.cache_tokens for seg in eng.run(SyntheticSource(300))]
    assert (
        max(sizes[150:]) <= max(sizes[:150]) + cfg.max_new_tokens + 1
    )  # no growth once the windows are full
    spans = eng.cache.spans
    pinned = sum(s.n for s in spans if s.kind in ("sink", "close", "query"))
    turn = max(
        sum(s.n for s in spans if s.kind in ("user", "turn") and s.round == r) for r in range(296, 300)
    )
    frames = max(s.n for s in spans if s.kind == "frames")
    # V seconds of frames, R seconds of turns and replies (the current one included), 32 previous tokens
    bound = pinned + 32 + cc.vision_seconds * frames + cc.recent_rounds * (turn + cfg.max_new_tokens + 1)
    assert max(sizes) <= bound and eng.summary.seconds == 300
    query = [s for s in spans if s.kind == "query"]
    assert len(query) == 1 and processor.tokenizer.decode(query[0].token_ids) == "Describe the red dot"
    kinds = [(s.kind, s.round) for s in spans]
    q = kinds.index(("query", 0))  # moved behind the frames of the first kept second (296)
    assert kinds[q - 3 : q + 3] == [
        ("close", 0),
        ("user", 296),
        ("frames", 296),
        ("query", 0),
        ("turn", 296),
        ("reply", 296),
    ]
    assert eng.cache.next_position < bound + cc.relayout_slack + 64  # positions stay in range (contiguous)


class FakeLive:
    """A live source that delivers seconds 0, 1, 3, 4, 7 (the consumer fell behind twice)."""

    live, skipped = True, 0

    def seconds(self):
        every = list(SyntheticSource(8).seconds())
        for k in (0, 1, 3, 4, 7):
            yield every[k]


def test_gaps_of_a_live_source_are_reported_as_skipped(tiny):
    model, processor = tiny
    eng = StreamingEngine(model, processor, StreamConfig(max_new_tokens=2, seed=0))
    segs = list(eng.run(FakeLive()))
    assert [s.start for s in segs] == [0, 1, 3, 4, 7] and [s.skipped for s in segs] == [0, 0, 1, 0, 2]
    assert eng.summary.skipped == 3 and eng.summary.decode_errors == 0
    user = [s for s in eng.cache.spans if s.kind == "user"]
    assert "Time=7.0-8.0s" in processor.tokenizer.decode(user[-1].token_ids)  # the video's own second


def test_bf16_keys_do_not_drift_over_a_long_stream(tiny):
    """Re-laying rounds bf16 keys; with the default slack it happens rarely, so after 200 s the
    cached keys stay within 1% of keys computed afresh at their positions."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    from mm.loading import load_model

    model, processor = load_model("tiny", dtype="bfloat16")
    lm = model.model.language_model
    pre = []
    hook = lm.layers[0].self_attn.k_proj.register_forward_hook(lambda m, a, out: pre.append(out.detach()))
    cc = CacheConfig(sink_text=8, window_text=24, recent_rounds=4, vision_seconds=4, relayout_slack=256)
    eng = StreamingEngine(model, processor, StreamConfig(max_new_tokens=4, seed=0, cache=cc))
    try:
        list(eng.run(SyntheticSource(200)))
    finally:
        hook.remove()
    cache = eng.cache
    assert cache.rotations > 0
    positions = torch.cat([s.positions for s in cache.spans], dim=1)
    origin = torch.cat([s.origin for s in cache.spans])
    attn = lm.layers[0].self_attn
    k_pre = (
        torch.cat(pre, dim=1)[0][origin].float().view(1, -1, attn.config.num_key_value_heads, attn.head_dim)
    )
    cos, sin = lm.rotary_emb(positions.float()[None], positions[:, None])
    _, want = apply_rotary_pos_emb(k_pre.transpose(1, 2), k_pre.transpose(1, 2), cos.float(), sin.float())
    got = cache.cache.layers[0].keys.float()
    assert ((got - want).norm() / want.norm()) < 0.01


def test_frames_cannot_outlive_their_turn():
    with pytest.raises(ValueError, match="vision_seconds <= recent_rounds"):
        CacheConfig(recent_rounds=4, vision_seconds=8)


def test_qwen3_5_is_refused_with_the_family_reason():
    """Qwen3.5's Gated DeltaNet state summarises every token seen: a bounded cache that evicts
    tokens cannot hold, and ``mmpost stream`` says so before any frame is read."""
    from tests.conftest import qwen3_5_model

    model, processor = qwen3_5_model()
    with pytest.raises(ValueError, match="streaming is refused for qwen3_5 models: a Gated DeltaNet state"):
        StreamingEngine(model, processor, StreamConfig(do_sample=False))
