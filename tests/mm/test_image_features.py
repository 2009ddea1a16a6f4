"""The image-feature cache: each distinct image is encoded once, with the model's own features
(Qwen3-VL: the merged tokens and their DeepStack levels, ``[tokens, 1 + k, D]``)."""

import torch

from mm.image_features import ImageFeatures, encode_visuals, encoder_outputs
from tests.conftest import solid
from vision_tools.generation import Context, Sampling
from vision_tools.generation.hf import HFGenerator


def encode(encoder, image):
    s = encoder.encode(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}],
        add_generation_prompt=True,
    )
    return s


def count_images(model):
    calls = {"n": 0}

    def hook(module, args, kwargs):
        calls["n"] += int(kwargs["grid_thw"].shape[0])

    handle = model.model.visual.register_forward_pre_hook(hook, with_kwargs=True)
    return calls, handle


def own_features(model, pixels, grid):
    """The model's get_image_features for one image, as mm lays them out ([tokens, D] or
    [tokens, 1 + k, D] with the DeepStack levels)."""
    out = model.model.get_image_features(pixels, grid)
    deepstack = getattr(out, "deepstack_features", None)
    if not deepstack:
        return out.pooler_output[0]
    return torch.stack([out.pooler_output[0], *(level[0] for level in deepstack)], dim=1)


def test_each_distinct_image_is_encoded_once_with_the_models_features(family_model, family_encoder, family):
    tiny, encoder = family_model, family_encoder
    model, _ = tiny
    a, b = encode(encoder, solid(200, 140)), encode(encoder, solid(112, 84, (10, 200, 40)))
    pixels = [a.pixel_values, b.pixel_values, a.pixel_values.clone(), a.pixel_values]
    grids = [a.image_grid_thw[0], b.image_grid_thw[0], a.image_grid_thw[0], a.image_grid_thw[0]]
    cache = ImageFeatures(model)
    calls, handle = count_images(model)
    try:
        feats = cache(pixels, grids)
        again = cache(pixels[:2], grids[:2])
    finally:
        handle.remove()
    assert calls["n"] == 2 and cache.encoded == 2 and cache.hits == 4
    with torch.no_grad():  # the model's own encoder, one image at a time
        want_a = own_features(model, a.pixel_values, a.image_grid_thw)
        want_b = own_features(model, b.pixel_values, b.image_grid_thw)
    levels = (1 + len(model.config.vision_config.deepstack_visual_indexes),) if family.deepstack else ()
    assert want_a.shape == (a.image_grid_thw.prod() // 4, *levels, model.config.text_config.hidden_size)
    for got, want in zip(feats + again, [want_a, want_b, want_a, want_a, want_a, want_b]):
        assert torch.allclose(got, want, atol=1e-6)
    # a changed pixel is another image
    other = a.pixel_values.clone()
    other[0, 0] += 1
    cache([other], grids[:1])
    assert cache.encoded == 3


def test_forward_with_cached_features_equals_forward_with_pixels(family_model, family_encoder):
    tiny, encoder = family_model, family_encoder
    model, _ = tiny
    s = encode(encoder, solid(200, 140))
    ids = s.input_ids[None]
    with torch.no_grad():
        want = model(
            input_ids=ids,
            pixel_values=s.pixel_values,
            image_grid_thw=s.image_grid_thw,
            mm_token_type_ids=s.mm_token_type_ids[None],
        ).logits
        emb = ImageFeatures(model).embeds(s.pixel_values, s.image_grid_thw)
        got = model(
            input_ids=ids,
            mm_encoder_outputs=encoder_outputs(emb),
            image_grid_thw=s.image_grid_thw,
            mm_token_type_ids=s.mm_token_type_ids[None],
        ).logits
    assert torch.allclose(got, want, atol=1e-6)


def test_features_per_image_give_the_pixel_forward_and_its_vision_gradients(family_model, family_encoder):
    """encode_visuals (with grad) + encoder_outputs of one tensor per placeholder, as DPO feeds a
    pair's image to both sides: the same logits and vision-tower gradients as pixel_values
    (Qwen3-VL: the DeepStack mergers' gradients included)."""
    tiny, encoder = family_model, family_encoder
    model, _ = tiny
    s = [encode(encoder, solid(200, 140)), encode(encoder, solid(112, 84, (10, 200, 40)))]
    pixels = torch.cat([x.pixel_values for x in s])
    grids = torch.cat([x.image_grid_thw for x in s])
    ids = torch.cat([x.input_ids for x in s])[None]  # both images in one row
    types = torch.cat([x.mm_token_type_ids for x in s])[None]
    vision = list(model.model.visual.parameters())

    def run(**visual):
        model.zero_grad()
        logits = model(input_ids=ids, image_grid_thw=grids, mm_token_type_ids=types, **visual).logits
        logits.square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in vision]

    want, want_grads = run(pixel_values=pixels)
    feats = encode_visuals(model, pixels, grids)
    assert len(feats) == 2 and feats[1].shape[0] == int(grids[1].prod()) // 4
    got, got_grads = run(mm_encoder_outputs=encoder_outputs(list(feats)))
    model.zero_grad()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_generation_with_the_cache_encodes_a_shared_image_once_and_generates_the_same(
    family_model, family_encoder
):
    tiny, encoder = family_model, family_encoder
    model, processor = tiny
    a, b = encode(encoder, solid(200, 140)), encode(encoder, solid(140, 196, (0, 90, 200)))

    def ctx(s, key):
        return Context(
            s.input_ids.tolist(), s.mm_token_type_ids.tolist(), [s.pixel_values], [s.image_grid_thw[0]], key
        )

    contexts = [ctx(a, 0), ctx(a, 1), ctx(b, 2), ctx(a, 3)]  # G copies of one prompt and another
    greedy = Sampling(do_sample=False)
    plain = HFGenerator(model, processor).generate(contexts, [10] * 4, greedy)
    cache = ImageFeatures(model)
    calls, handle = count_images(model)
    try:
        cached = HFGenerator(model, processor, features=cache).generate(contexts, [10] * 4, greedy)
    finally:
        handle.remove()
    assert cached == plain
    assert calls["n"] == 2 and cache.hits == 2


def test_deepstack_features_reach_the_language_model(qwen3vl):
    """Negative control: the same forward with the DeepStack levels zeroed gives other logits at
    and after the visual tokens, so the cache paths above keep features that matter."""
    from mm.encode import ConversationEncoder

    model, processor = qwen3vl
    s = encode(ConversationEncoder(processor), solid(200, 140))
    with torch.no_grad():
        feats = encode_visuals(model, s.pixel_values, s.image_grid_thw)[0]
        kw = dict(
            input_ids=s.input_ids[None],
            image_grid_thw=s.image_grid_thw,
            mm_token_type_ids=s.mm_token_type_ids[None],
        )
        full = model(mm_encoder_outputs=encoder_outputs(feats), **kw).logits
        flat = feats.clone()
        flat[:, 1:] = 0
        without = model(mm_encoder_outputs=encoder_outputs(flat), **kw).logits
    first = int((s.mm_token_type_ids == 1).nonzero()[0])
    assert torch.equal(full[0, :first], without[0, :first])  # causal: nothing before the image changes
    assert (full[0, first:] - without[0, first:]).abs().max() > 1e-3
