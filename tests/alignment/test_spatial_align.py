"""Spatial Forcing's pure pieces against hand-computed numbers: position embedding, bilinear
resampling, targets, projector shapes and initialisation, the cosine loss and its masks, and the
choice of the student layer."""

import math

import pytest
import torch

from alignment.spatial.align import (
    AlignProjector,
    alignment_targets,
    cosine_align_loss,
    resample_grid,
    sincos_2d,
)
from alignment.vla.model import VLAHeads, VLAModel, resolve_layer


def test_sincos_2d_hand_computed():
    pe = sincos_2d(2, 3, 4)  # dim/4 = 1 frequency, omega = 1
    assert pe.shape == (2, 3, 4)
    for r in range(2):
        for c in range(3):
            want = [math.sin(r), math.cos(r), math.sin(c), math.cos(c)]
            assert pe[r, c].tolist() == pytest.approx(want, abs=1e-7)
    pe = sincos_2d(1, 2, 8)  # omegas 1 and 1e-2
    assert pe[0, 1].tolist() == pytest.approx(
        [0, 0, 1, 1, math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    )
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_resample_grid_bilinear_half_pixel():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])[None, :, :, None]  # [1, 2, 2, 1]
    y = resample_grid(x, (4, 4))[0, :, :, 0]
    want = [
        [0.0, 0.25, 0.75, 1.0],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2.0, 2.25, 2.75, 3.0],
    ]
    assert torch.allclose(y, torch.tensor(want))
    assert resample_grid(x, (2, 2)) is x
    assert resample_grid(x, (1, 1)).flatten().tolist() == [1.5]  # the centre: mean of the four


def test_targets_add_scaled_position_embedding_then_resample():
    feats = torch.zeros(2, 2, 4)
    t = alignment_targets(feats, (1, 1), pos_scale=0.1)
    s, c = math.sin(1) / 2, (1 + math.cos(1)) / 2  # mean over rows/cols 0 and 1
    assert t.shape == (1, 4)
    assert t[0].tolist() == pytest.approx([0.1 * s, 0.1 * c, 0.1 * s, 0.1 * c])
    feats = torch.randn(3, 3, 8)
    t = alignment_targets(feats, (3, 3), pos_scale=0.0)
    assert torch.equal(t, feats.reshape(9, 8))  # same grid, no embedding: the features as they are


def test_projector_shapes_and_init():
    torch.manual_seed(0)
    p = AlignProjector(64, 32)
    ln, l1, act, l2 = p.net
    assert isinstance(ln, torch.nn.LayerNorm) and isinstance(act, torch.nn.GELU)
    assert (l1.in_features, l1.out_features, l2.in_features, l2.out_features) == (64, 32, 32, 32)
    for lin, (fi, fo) in ((l1, (64, 32)), (l2, (32, 32))):
        bound = math.sqrt(6 / (fi + fo))
        assert torch.count_nonzero(lin.bias) == 0
        assert lin.weight.abs().max() <= bound
        assert lin.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # uniform(-b, b)
    assert p(torch.randn(2, 5, 64)).shape == (2, 5, 32)
    assert isinstance(AlignProjector(64, 32, layernorm=False).net[0], torch.nn.Identity)


def test_cosine_loss_values_and_masks():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [-3.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[5.0, 0.0], [1.0, 0.0]]])
    loss, n = cosine_align_loss(pred, target, torch.ones(2, 2, dtype=torch.bool))
    # sample 0: cos 1 and 0 -> 1 - 0.5; sample 1: cos 1 and -1 (scale-invariant) -> 1 - 0
    assert loss.tolist() == pytest.approx([0.5, 1.0]) and n.tolist() == [2, 2]
    mask = torch.tensor([[True, False], [False, False]])  # a padded token; an absent sample
    loss, n = cosine_align_loss(pred, target, mask)
    assert loss.tolist() == pytest.approx([0.0, 0.0]) and n.tolist() == [1, 0]
    # masked tokens carry no gradient
    pred.requires_grad_(True)
    cosine_align_loss(pred, target, mask)[0].sum().backward()
    assert torch.count_nonzero(pred.grad[0, 1]) == 0 and torch.count_nonzero(pred.grad[1]) == 0


def test_resolve_layer():
    assert resolve_layer(0, 32) == 23  # auto: layer 24 of 32, as in the paper
    assert resolve_layer(24, 32) == 23 and resolve_layer(-1, 32) == 31 and resolve_layer(1, 2) == 0
    assert resolve_layer(0, 2) == 0
    for bad in (3, -3):
        with pytest.raises(ValueError, match="outside"):
            resolve_layer(bad, 2)


@pytest.mark.parametrize("layer", [1, -1])
def test_layer_selection_picks_the_decoder_layer_output(tiny, encoder, layer):
    """The captured student equals hidden_states[l] (hidden_states[0] = embeddings) for l = 1, and
    for the last layer the decoder output whose final norm is last_hidden_state."""
    from tests.conftest import solid

    model, _ = tiny
    d = model.config.text_config.hidden_size
    vla = VLAModel(model, VLAHeads(d, 2, 3, 0), layer=layer)
    s = encoder.encode(
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": solid(56, 56)}, {"type": "text", "text": "go"}],
            }
        ],
        add_generation_prompt=True,
    )
    ids = torch.cat([s.input_ids, torch.zeros(2, dtype=torch.long)])[None]
    slots = torch.tensor([[-1] * len(s) + [1, 2]])
    pos = torch.cat([s.position_ids, torch.arange(s.next_position, s.next_position + 2).expand(3, 2)], 1)[
        :, None
    ]
    inputs = {"position_ids": pos, "pixel_values": s.pixel_values, "image_grid_thw": s.image_grid_thw}
    with torch.no_grad():
        last, h_l = vla.encode(ids, slots, torch.zeros(1, 0), capture=True, **inputs)
        emb = model.model.get_input_embeddings()(ids)
        emb = emb.masked_scatter((slots >= 0)[..., None], vla.heads.slot_embeddings(torch.zeros(1, 0)))
        out = model.model(input_ids=ids, inputs_embeds=emb, output_hidden_states=True, **inputs)
    n = len(model.model.language_model.layers)
    assert torch.equal(last, out.last_hidden_state)
    if layer == 1:
        assert torch.equal(h_l, out.hidden_states[1]) and not torch.equal(h_l, out.hidden_states[0])
    else:
        assert vla.layer_idx == n - 1
        assert torch.allclose(model.model.language_model.norm(h_l), out.last_hidden_state, atol=1e-6)
