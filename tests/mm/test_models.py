"""The model-family seam (mm.models): each spec says what its transformers model really does.

Every field is checked against the installed implementation, not against itself: the merge
factor against the processor's and the config's patch size, the M-RoPE layout against the
model's own rotary embedding, the streaming cache's 1-D key rotation against re-applying the
model's RoPE at shifted positions, and Qwen3.5's refusal of packing against a measured leak.
"""

import pytest
import torch

from mm.collate import pack_batch, pad_batch
from mm.models import families, family_named, family_of, family_of_processor, supported_model_types
from mm.rope import RopeSpec
from tests.conftest import qwen3_5_model, solid, user_assistant


def test_every_model_type_has_its_class_and_one_family():
    types = supported_model_types()
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"} <= set(types)
    assert len(types) == len(set(types))  # no model_type served by two families
    for f in families():
        for model_type in f.model_classes:
            assert family_of(model_type) is f
            assert f.model_class(model_type).__name__ == f.model_classes[model_type]
    with pytest.raises(ValueError, match="model_type 'llava' is not supported; supported: qwen2_5_vl"):
        family_of("llava")
    with pytest.raises(ValueError, match="unknown model family 'qwen4'"):
        family_named("qwen4")


def test_families_sharing_a_processor_agree_on_encoding():
    """The encoder finds the family by processor class: families sharing one must encode alike."""
    by_processor = {}
    for f in families():
        fields = (f.factor, f.temporal_patch_size, f.video_time)
        assert by_processor.setdefault(f.processor_class, fields) == fields, f.name


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_geometry_is_the_processors_and_the_configs(name):
    """factor = the real processor's patch_size x merge_size = the config's vision patch x merge."""
    from mm.tiny import PRESETS, tiny_processor

    f = family_named(name)
    processor = tiny_processor(f)
    assert family_of_processor(processor) is f
    for p in (processor.image_processor, processor.video_processor):
        assert p.patch_size * p.merge_size == f.factor and p.temporal_patch_size == f.temporal_patch_size
    config = f.tiny_config(processor.tokenizer, PRESETS["tiny"], f.tiny_model_type)
    assert config.vision_config.patch_size * config.vision_config.spatial_merge_size == f.factor
    assert RopeSpec.from_config(config) == RopeSpec.for_family(f, config)


def test_rope_specs_per_family():
    from mm.tiny import PRESETS, tiny_processor

    tok = tiny_processor("qwen3_vl").tokenizer
    specs = {
        f.name: RopeSpec.from_config(f.tiny_config(tok, PRESETS["tiny"], f.tiny_model_type))
        for f in families()
    }
    assert specs["qwen2_vl"] == RopeSpec(2, None, "qwen")
    assert specs["qwen2_5_vl"] == RopeSpec(2, 2, "qwen") == RopeSpec()
    assert specs["qwen3_vl"] == specs["qwen3_5"] == RopeSpec(2, None, "qwen", frame_blocks=True)


def layout_of(rotary, head_dim_half: int) -> str:
    """Which rotary frequencies each position row drives, read from the model's rotary itself:
    positions (1, 0, 0) turn only the temporal frequencies, (0, 1, 0) only the height ones."""
    x = torch.zeros(1, 1, 1)
    axis = []
    for row in range(3):
        pos = torch.zeros(3, 1, 1, dtype=torch.long)
        pos[row] = 1
        _, sin = rotary(x, pos)
        axis.append(sin[0, 0, :head_dim_half] != 0)
    owner = torch.stack(axis).int().argmax(0).tolist()  # [half]: 0 t, 1 h, 2 w
    assert all(sum(int(a[i]) for a in axis) == 1 for i in range(head_dim_half))  # each frequency one axis
    contiguous = owner == sorted(owner)
    return "contiguous" if contiguous else "interleaved"


def test_mrope_layout_is_the_models(family_model, family):
    model = family_model[0]
    rotary = family.submodule(model, family.rotary)
    half = rotary.inv_freq.numel()
    assert layout_of(rotary, half) == family.mrope_layout
    if family.mrope_layout == "interleaved":  # t, h, w, t, h, w, ... as Qwen3-VL's [24, 20, 20] of 64
        t, h, w = model.config.text_config.rope_parameters["mrope_section"]
        assert (t, h, w) == (6, 5, 5) and t + h + w == half


def rope(rotary, keys, pos):
    """The model's RoPE of ``keys`` [1, H, n, D] at M-RoPE positions ``pos`` [3, n]."""
    cos, sin = rotary(keys, pos[:, None])  # [1, n, D]
    half = keys.shape[-1] // 2
    rotated = torch.cat([-keys[..., half:], keys[..., :half]], dim=-1)
    return keys * cos[:, None] + rotated * sin[:, None]


def test_streaming_rotation_holds_for_interleaved_mrope(family_model, family):
    """The streaming cache moves a span left by d on all three axes and rotates its cached keys
    by -d * inv_freq (streaming.cache.rotate_keys). Each frequency turns with one axis, and all
    axes move by d, so the rotation is exact for contiguous and interleaved sections alike;
    moving one axis alone is not a 1-D rotation (negative control)."""
    from streaming.cache import rotate_keys

    rotary = family.submodule(family_model[0], family.rotary)
    torch.manual_seed(0)
    n, D = 12, 2 * rotary.inv_freq.numel()
    keys = torch.randn(1, 2, n, D)
    pos = torch.stack([torch.arange(n) * 3 + 40, torch.arange(n) % 4 + 40, torch.arange(n) % 5 + 41])
    delta = torch.full((n,), 17)
    got = rotate_keys(rope(rotary, keys, pos), delta, rotary.inv_freq)
    torch.testing.assert_close(got, rope(rotary, keys, pos - delta), atol=1e-5, rtol=0)
    moved_t = pos.clone()
    moved_t[0] -= delta
    assert (got - rope(rotary, keys, moved_t)).abs().max() > 1e-2


# ----------------------------------------------------------------------------- Qwen3.5


@pytest.fixture(scope="module")
def qwen3_5_samples():
    from mm.encode import ConversationEncoder

    model, processor = qwen3_5_model()
    enc = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
    convs = [
        user_assistant(
            [{"type": "image", "image": solid(96, 64)}, {"type": "text", "text": "Colour?"}], "Red."
        ),
        user_assistant("Text only: 6 x 7?", "42"),
        user_assistant("Short one.", "Yes."),
    ]
    return [enc.encode(c) for c in convs]


def packed_error(model, samples, layout: str) -> list[float]:
    with torch.no_grad():
        ref = [model(**s.model_inputs()).logits[0] for s in samples]
        batch = pack_batch([samples], pad_id=0, attn_implementation=layout)
        seq = batch.pop("seq_ids")
        batch.pop("labels")
        logits = model(**batch).logits
    return [float((logits[0, seq[0] == i] - ref[i]).abs().max()) for i in range(len(samples))]


def test_qwen3_5_loads_and_trains_padded_but_refuses_packing(qwen3_5_samples, tmp_path):
    """A local Qwen3.5 checkpoint loads through load_model and its padded batches equal the
    samples alone; packed rows do not (its Gated DeltaNet layers mix the row: the first sample
    is exact, the later ones are off by ~1), while the same model with only full-attention
    layers packs exactly. So the family refuses packing (and streaming) with the reason."""
    from mm.loading import load_model

    model, processor = qwen3_5_model()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), attn="sdpa")
    assert type(loaded).__name__ == "Qwen3_5ForConditionalGeneration"
    samples = qwen3_5_samples
    with torch.no_grad():
        ref = [loaded(**s.model_inputs()).logits[0] for s in samples]
        batch = pad_batch(samples, pad_id=0)
        batch.pop("labels")
        padded = loaded(**batch).logits
    assert max(float((padded[i, : len(s)] - ref[i]).abs().max()) for i, s in enumerate(samples)) <= 1e-5

    for layout in ("sdpa", "flash_attention_2"):  # block mask, and the varlen layout (4-row positions)
        errors = packed_error(loaded, samples, layout)
        assert errors[0] <= 1e-5 and min(errors[1:]) > 0.1, (layout, errors)
    assert max(packed_error(qwen3_5_model(full_attention_only=True)[0], samples, "sdpa")) <= 1e-5

    family = family_of(loaded.config)
    with pytest.raises(ValueError, match="packing is refused for qwen3_5 models: its Gated DeltaNet"):
        family.require("packing", "data.packing")
    with pytest.raises(ValueError, match="streaming is refused for qwen3_5 models"):
        family.require("streaming", "mmpost stream")
    family_named("qwen3_vl").require("packing", "data.packing")  # holds: no error
