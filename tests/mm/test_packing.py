"""Packing is exact: a packed row gives the logits and loss of its samples run one by one, for
every attention backend and both families (Qwen3-VL: interleaved M-RoPE, DeepStack features
injected at the packed row's visual tokens, timestamped video)."""

import pytest
import torch

from mm import packed_attention
from mm.attention import flash_attn_usable
from mm.collate import block_causal_mask, pack_batch, pad_batch, per_sample_nll, plan_packs
from mm.loading import load_model
from mm.synthetic import sample_data_path
from tests.conftest import solid, user_assistant


@pytest.fixture(scope="module")
def samples(family_encoder):
    encoder = family_encoder
    video = sample_data_path().replace("sample.jsonl", "dot.mp4")
    convs = [
        user_assistant(
            [{"type": "image", "image": solid(140, 84)}, {"type": "text", "text": "What colour?"}],
            "Red, mostly.",
        ),
        user_assistant("Text only: what is 6 x 7?", "<think>6 x 7 = 42</think><answer>42</answer>"),
        user_assistant(
            [{"type": "video", "video": video, "fps": 2.0}, {"type": "text", "text": "Where does it go?"}],
            "Left to right.",
        ),
        user_assistant(
            [
                {"type": "image", "image": solid(56, 224)},
                {"type": "image", "image": solid(252, 112)},
                {"type": "text", "text": "Compare."},
            ],
            "The second is wider.",
        ),
        user_assistant("Short one.", "Yes."),
    ]
    return [encoder.encode(c) for c in convs]


def one_by_one(model, samples):
    with torch.no_grad():
        logits = [model(**s.model_inputs()).logits[0] for s in samples]
    losses = torch.stack([per_sample_nll(lg[None], s.labels[None])[0] for lg, s in zip(logits, samples)])
    return logits, losses


def packed(model, rows, attn):
    batch = pack_batch(rows, pad_id=0, attn_implementation=attn)
    seq, labels = batch.pop("seq_ids"), batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    return logits, seq, per_sample_nll(logits, labels, seq), batch


@pytest.mark.parametrize("layout", ["sdpa", "flash_attention_2"])
def test_packed_equals_one_by_one(family_model, samples, layout):
    """sdpa: block-diagonal 4-D mask; flash_attention_2: the varlen layout (4-row positions), run here under SDPA."""
    model, _ = family_model
    ref_logits, ref_loss = one_by_one(model, samples)
    rows = [samples[:3], samples[3:]]  # two rows of different lengths -> the second is padded
    logits, seq, loss, batch = packed(model, rows, layout)
    kinds = {"video": False, "image": False, "text": False}
    for i, s in enumerate(samples):
        where = (seq == i).nonzero()
        b, cols = where[0, 0], where[:, 1]
        assert len(cols) == len(s)
        assert (logits[b, cols] - ref_logits[i]).abs().max() <= 1e-5, f"sample {i}"
        kinds["video"] |= s.video_grid_thw is not None
        kinds["image"] |= s.image_grid_thw is not None
        kinds["text"] |= s.visual_tokens == 0
    assert all(kinds.values())
    assert torch.allclose(loss, ref_loss, atol=1e-5, rtol=0)


needs_flash = [
    pytest.mark.flash_attn,
    pytest.mark.skipif(not flash_attn_usable(), reason="needs flash-attn and a CUDA device"),
]
# flex compiles its CPU kernel once per process: ~40 s on 2 cores with a cold inductor cache
BACKENDS = [
    "eager",
    "segments",
    pytest.param("flex", marks=pytest.mark.slow),
    pytest.param("flash_attention_2", marks=needs_flash),
]


@pytest.mark.parametrize("attn", BACKENDS)
def test_backend_packed_equals_one_by_one(family_model, preset, samples, attn, monkeypatch):
    """Each backend on the model that uses it (same weights).

    eager: the block-diagonal mask as an additive float mask; segments: SDPA per sample; flex:
    the FlexAttention kernel itself (forward; CPU has no backward); flash_attention_2:
    flash-attn varlen on CUDA. The reference is the sdpa model run on each sample alone.
    """
    tiny = family_model
    monkeypatch.setattr(packed_attention, "FLEX_ON_CPU", True)
    calls = []
    kernel = packed_attention.compiled_flex()
    monkeypatch.setattr(packed_attention, "compiled_flex", lambda: calls.append(1) or kernel)
    device = "cuda" if attn == "flash_attention_2" else "cpu"
    model, _ = load_model(preset, attn=attn, device=device)
    ref_logits, ref_loss = one_by_one(tiny[0], samples)
    batch = pack_batch(
        [samples[:3], samples[3:]], pad_id=0, attn_implementation=model.config._attn_implementation
    )
    if attn == "eager":
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        seq, labels = batch.pop("seq_ids"), batch.pop("labels")
        assert batch["attention_mask"].dtype == torch.float32 and batch["input_ids"].shape[0] == 2
        with torch.no_grad():
            logits = model(**batch).logits
        for i in range(len(samples)):
            where = (seq == i).nonzero()
            assert (logits[where[0, 0], where[:, 1]] - ref_logits[i]).abs().max() <= 1e-5, f"sample {i}"
        assert torch.allclose(per_sample_nll(logits, labels, seq), ref_loss, atol=1e-5, rtol=0)
        return
    assert batch["input_ids"].shape == (1, sum(len(s) for s in samples))  # one flat row, no padding
    assert "attention_mask" not in batch
    seq, labels = batch.pop("seq_ids"), batch.pop("labels")
    with torch.no_grad():
        logits = model(
            **{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        ).logits.cpu()
    for i in range(len(samples)):
        assert (logits[0, seq[0] == i] - ref_logits[i]).abs().max() <= 1e-5, f"sample {i}"
    assert torch.allclose(per_sample_nll(logits, labels, seq), ref_loss, atol=1e-5, rtol=0)
    assert len(calls) == (model.config.text_config.num_hidden_layers if attn == "flex" else 0)


@pytest.mark.parametrize("attn", ["segments", "flex"])
def test_unpacked_calls_equal_sdpa(family_model, preset, samples, attn):
    """Padded batches (2-D mask) and cached greedy decoding run exactly as under sdpa."""
    ref_model = family_model[0]
    model, _ = load_model(preset, attn=attn)
    batch = pad_batch(samples, pad_id=0)
    batch.pop("labels")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, ref_model(**batch).logits)
    gen = pad_batch(samples[:2], pad_id=0, side="left")
    for k in ("labels", "position_ids"):
        gen.pop(k)
    kw = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(**gen, **kw), ref_model.generate(**gen, **kw))


def test_positions_survive_packing(samples):
    batch = pack_batch([samples], pad_id=0)
    off = 0
    for s in samples:
        assert torch.equal(batch["position_ids"][:, 0, off : off + len(s)], s.position_ids)
        off += len(s)
    flat = pack_batch([samples], pad_id=0, attn_implementation="flash_attention_2")["position_ids"]
    assert flat.shape[0] == 4 and torch.equal(flat[1:, 0, : len(samples[0])], samples[0].position_ids)
    assert flat[0, 0, len(samples[0])] == 0  # the text row restarts at every sample (cu_seqlens)


def test_without_isolation_samples_leak(family_model, samples):
    """Negative control: the same packed row with positions reset but no mask is NOT exact."""
    model, _ = family_model
    ref_logits, _ = one_by_one(model, samples[:2])
    batch = pack_batch([samples[:2]], pad_id=0)
    batch.pop("attention_mask"), batch.pop("seq_ids"), batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    second = logits[0, len(samples[0]) : len(samples[0]) + len(samples[1])]
    assert (second - ref_logits[1]).abs().max() > 1e-2


def test_padded_batch_equals_one_by_one(family_model, samples):
    model, _ = family_model
    ref_logits, ref_loss = one_by_one(model, samples)
    batch = pad_batch(samples, pad_id=0)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    for i, s in enumerate(samples):
        assert (logits[i, : len(s)] - ref_logits[i]).abs().max() <= 1e-5
    assert torch.allclose(per_sample_nll(logits, labels), ref_loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "segments", "flex"])
def test_packed_gradients_match(family_model, preset, samples, attn):
    """Summed per-sample losses give the same gradients packed and one by one (flex: segments on CPU)."""
    model = family_model[0] if attn == "sdpa" else load_model(preset, attn=attn)[0]
    model.zero_grad()
    sum(per_sample_nll(model(**s.model_inputs()).logits, s.labels[None])[0] for s in samples[:3]).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    batch = pack_batch([samples[:3]], pad_id=0, attn_implementation=model.config._attn_implementation)
    seq, labels = batch.pop("seq_ids"), batch.pop("labels")
    per_sample_nll(model(**batch).logits, labels, seq).sum().backward()
    for n, p in model.named_parameters():
        if n in ref:
            assert torch.allclose(p.grad, ref[n], atol=1e-5, rtol=1e-4), n
    model.zero_grad()


def test_plan_packs():
    rows = plan_packs([5, 3, 8, 2, 7, 1], max_tokens=10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum([5, 3, 8, 2, 7, 1][i] for i in r) <= 10 for r in rows)
    assert len(rows) == 3  # 26 tokens need at least 3 rows of 10
    with pytest.raises(ValueError, match="exceed max_tokens=4"):
        plan_packs([3, 5], max_tokens=4)


def test_block_mask_hand_worked():
    m = block_causal_mask(torch.tensor([[0, 0, 1, -1]]))[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_plan_packs_is_first_fit_decreasing():
    """The tree-based planner makes exactly the choices of a plain first-fit-decreasing scan."""
    import random

    def scan(lengths, max_tokens):
        rows, free = [], []
        for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
            for r, room in enumerate(free):
                if lengths[i] <= room:
                    rows[r].append(i)
                    free[r] -= lengths[i]
                    break
            else:
                rows.append([i])
                free.append(max_tokens - lengths[i])
        return [sorted(r) for r in rows]

    rng = random.Random(0)
    for _ in range(200):
        m = rng.randint(5, 50)
        lengths = [rng.randint(1, m) for _ in range(rng.randint(0, 60))]
        assert plan_packs(lengths, m) == scan(lengths, m)


def test_qwen3vl_moe_packed_equals_one_by_one():
    """Qwen3-VL-MoE (4 experts, top 2; routing per token): packed rows under the block mask and
    the varlen layout give each sample's logits alone."""
    from mm.encode import ConversationEncoder
    from mm.rope import RopeSpec

    model, processor = load_model("tiny-qwen3vl-moe")
    enc = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
    samples = [
        enc.encode(
            user_assistant(
                [{"type": "image", "image": solid(140, 84)}, {"type": "text", "text": "Q?"}], "Red."
            )
        ),
        enc.encode(user_assistant("Text only: what is 6 x 7?", "42")),
        enc.encode(
            user_assistant(
                [{"type": "image", "image": solid(64, 200)}, {"type": "text", "text": "And?"}], "Tall."
            )
        ),
    ]
    ref_logits, ref_loss = one_by_one(model, samples)
    for layout in ("sdpa", "flash_attention_2"):
        logits, seq, loss, _ = packed(model, [samples[:2], samples[2:]], layout)
        for i in range(len(samples)):
            where = (seq == i).nonzero()
            assert (logits[where[0, 0], where[:, 1]] - ref_logits[i]).abs().max() <= 1e-5, (layout, i)
        assert torch.allclose(loss, ref_loss, atol=1e-5, rtol=0)
