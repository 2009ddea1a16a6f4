"""Spatial Forcing's pure pieces against hand-computed numbers: position embedding, bilinear
resampling, targets, projector shapes and initialisation, the cosine loss and its masks, and the
choice of the student layer."""

import math

import pytest
import torch

from vla.model import VLAHeads, VLAModel, resolve_layer
from vla.spatial.align import (
    AlignProjector,
    alignment_targets,
    cosine_align_loss,
    resample_grid,
    vggt_position_embedding,
    vggt_uv_grid,
)


def test_vggt_uv_grid_hand_computed():
    """VGGT's create_uv_grid on a 2 x 3 grid: aspect 1.5, r = sqrt(1.5^2 + 1); x spans
    +-(1.5 / r) * 2/3 = +-1 / r in 3 points, y spans +-(1 / r) * 1/2 in 2 points."""
    r = math.sqrt(3.25)
    uv = vggt_uv_grid(2, 3)
    assert uv.shape == (2, 3, 2)
    xs, ys = [-1 / r, 0.0, 1 / r], [-0.5 / r, 0.5 / r]
    for i in range(2):
        for j in range(3):
            assert uv[i, j].tolist() == pytest.approx([xs[j], ys[i]], abs=1e-12)
    big = vggt_uv_grid(37, 37)  # square: about +-0.71 at the corners (1 / sqrt(2) x 36 / 37)
    assert big[0, 0].tolist() == pytest.approx([-(36 / 37) / math.sqrt(2)] * 2)
    assert big[-1, -1].tolist() == pytest.approx([(36 / 37) / math.sqrt(2)] * 2)
    # an explicit aspect ratio (the image's, as released) sets the spans, not the grid's shape
    assert vggt_uv_grid(2, 2, aspect_ratio=2.0)[1, 1].tolist() == pytest.approx(
        [2 / math.sqrt(5) / 2, 1 / math.sqrt(5) / 2]
    )


def test_vggt_position_embedding_against_the_formula():
    """[emb(x) | emb(y)], each [sin(p w_k) | cos(p w_k)], w_k = 100^(-k / (dim/4)), element by element."""
    uv = vggt_uv_grid(3, 2)
    dim = 12
    pe = vggt_position_embedding(uv, dim)
    assert pe.shape == (3, 2, dim) and pe.dtype == torch.float32
    q = dim // 4
    for i in range(3):
        for j in range(2):
            x, y = uv[i, j].tolist()
            want = []
            for p in (x, y):
                want += [math.sin(p * 100 ** (-k / q)) for k in range(q)]
                want += [math.cos(p * 100 ** (-k / q)) for k in range(q)]
            assert pe[i, j].tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        vggt_position_embedding(uv, 6)


def _bilinear_corners(x: list[list[float]], H: int, W: int) -> list[list[float]]:
    """align_corners=True by hand: output (i, j) reads the input at ((h-1) i/(H-1), (w-1) j/(W-1))."""
    h, w = len(x), len(x[0])
    out = []
    for i in range(H):
        u = (h - 1) * i / (H - 1) if H > 1 else 0.0
        i0 = min(int(u), h - 1)
        i1, a = min(i0 + 1, h - 1), u - i0
        row = []
        for j in range(W):
            v = (w - 1) * j / (W - 1) if W > 1 else 0.0
            j0 = min(int(v), w - 1)
            j1, b = min(j0 + 1, w - 1), v - j0
            top = (1 - b) * x[i0][j0] + b * x[i0][j1]
            bottom = (1 - b) * x[i1][j0] + b * x[i1][j1]
            row.append((1 - a) * top + a * bottom)
        out.append(row)
    return out


def test_resample_grid_bilinear_align_corners():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])[None, :, :, None]  # [1, 2, 2, 1]
    y = resample_grid(x, (3, 3))[0, :, :, 0]
    assert torch.allclose(y, torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]))
    assert resample_grid(x, (2, 2)) is x
    # a non-square grid shrunk and stretched, against the hand-written bilinear rule
    torch.manual_seed(0)
    g = torch.randn(3, 5, dtype=torch.float64)
    for size in ((2, 3), (4, 7), (1, 4)):
        got = resample_grid(g[None, :, :, None], size)[0, :, :, 0]
        want = _bilinear_corners(g.tolist(), *size)
        assert got.tolist() == [pytest.approx(r, abs=1e-12) for r in want]


def test_targets_add_scaled_position_embedding_then_resample():
    feats = torch.zeros(2, 2, 4)
    p = -0.5 / math.sqrt(2)  # top-left uv of a 2 x 2 grid: x = y = -(1/sqrt 2) / 2
    t = alignment_targets(feats, (2, 2), pos_scale=0.1)
    assert t.shape == (4, 4)  # row-major: token 0 is the top-left cell, token 3 the bottom-right
    assert t[0].tolist() == pytest.approx([0.1 * math.sin(p), 0.1 * math.cos(p)] * 2)
    assert t[3].tolist() == pytest.approx([0.1 * math.sin(-p), 0.1 * math.cos(-p)] * 2)
    t = alignment_targets(feats, (3, 3), pos_scale=0.1)  # align_corners: the centre is the mean
    assert t[4].tolist() == pytest.approx([0.0, 0.1 * math.cos(p)] * 2, abs=1e-7)
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
