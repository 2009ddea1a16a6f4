"""CachedGenerator (one prefill per distinct prompt, KV cache kept across turns) against
HFGenerator (``model.generate`` over every full context): the same greedy ids in fp32, for
groups of equal prompts, rows ending at different lengths, left padding and tool turns that
bring new images (sized with the family's factor), also through the image-feature cache; and
less work (fewer prefilled rows and tokens). Every test runs once per model family
(``preset``: Qwen2.5-VL, Qwen3-VL with DeepStack)."""

import pytest
import torch

from mm.chat_template import ASSISTANT_HEADER, IM_END, IMAGE_PAD, IMAGE_PLACEHOLDER, turn
from mm.encode import ConversationEncoder
from mm.image_features import ImageFeatures
from mm.loading import load_model
from mm.rope import RopeSpec
from mm.visual import VisualConfig
from tests.conftest import solid
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import Context, Sampling, make_generator
from vision_tools.generation.cached import CachedGenerator
from vision_tools.generation.hf import HFGenerator

SIZES = [(56, 84), (112, 56), (84, 84)]


def prompts(encoder):
    out = []
    for i, (w, h) in enumerate(SIZES):
        content = [
            {"type": "image", "image": solid(w, h, (i * 40, 20, 90))},
            {"type": "text", "text": "Hi " * (4 * i + 1)},
        ]
        out.append(encoder.encode([{"role": "user", "content": content}], add_generation_prompt=True))
    return out


def context(s, key, session=None) -> Context:
    sizes = s.image_grid_thw.prod(-1).tolist()
    pixels = list(torch.split(s.pixel_values, sizes))
    return Context(
        s.input_ids.tolist(),
        s.mm_token_type_ids.tolist(),
        pixels,
        list(s.image_grid_thw),
        key,
        session=session,
    )


def with_tool_result(processor, c: Context, new: list[int], image) -> Context:
    """``c`` + the turn the model wrote + a user turn holding ``image`` + the next header (the
    engine's layout)."""
    tok = processor.tokenizer
    closed = bool(new) and new[-1] == tok.convert_tokens_to_ids(IM_END)
    text = ("" if closed else IM_END) + "\n" + turn("user", IMAGE_PLACEHOLDER + "Image 1.") + ASSISTANT_HEADER
    ids = tok(text, add_special_tokens=False)["input_ids"]
    r = processor.image_processor(images=[image], do_resize=False, return_tensors="pt")
    grid = r["image_grid_thw"][0]
    n, at = int(grid.prod()) // 4, ids.index(tok.convert_tokens_to_ids(IMAGE_PAD))
    types = [0] * at + [1] * n + [0] * (len(ids) - at - 1)
    ids = ids[:at] + ids[at : at + 1] * n + ids[at + 1 :]
    return Context(
        c.input_ids + new + ids,
        c.types + [0] * len(new) + types,
        c.pixel_values + [r["pixel_values"]],
        c.grids + [grid],
        c.key,
        session=c.session,
    )


def prefill_shapes(model, run, *args):
    """``run(*args)``, and the [rows, tokens] of every language-model forward it makes."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        out = run(*args)
    finally:
        hook.remove()
    return out, seen


@pytest.fixture(params=["sdpa", "eager"])
def attn_model(request, preset, family_model):
    """The family's tiny model with SDPA (the decoding steps hand it a ready mask) and with eager
    attention (the 2-D mask, which transformers expands)."""
    if request.param == "sdpa":
        return family_model
    return load_model(preset, attn="eager")[0].eval(), family_model[1]


def test_greedy_ids_equal_generate_over_groups_and_tool_turns_with_less_prefill(attn_model):
    model, processor = attn_model
    encoder = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))
    f = encoder.family.factor  # tool results are sized as the family's processor takes them
    ps = prompts(encoder)
    rows = [0, 0, 0, 1, 1, 2]  # groups of 3, 2 and 1 copies
    hf, cached = HFGenerator(model, processor), CachedGenerator(model, processor)
    featured = CachedGenerator(model, processor, features=ImageFeatures(model))  # DeepStack: [n, 1 + k, D]
    old = [context(ps[r], k) for k, r in enumerate(rows)]
    new = [context(ps[r], k, {}) for k, r in enumerate(rows)]
    feat = [context(ps[r], k, {}) for k, r in enumerate(rows)]
    limits = [12, 5, 12, 9, 12, 3]
    for t in range(4):  # the prompt, then 3 tool turns with a new image each
        a = hf.generate(old, limits, Sampling())
        b, shapes = prefill_shapes(model, cached.generate, new, limits, Sampling())
        assert a == b, f"turn {t}"
        assert featured.generate(feat, limits, Sampling()) == a, f"turn {t} (cached features)"
        assert len({len(x) for x in a}) > 1  # rows finish at different lengths
        full = max(len(c.input_ids) for c in new)
        if t == 0:
            assert shapes[0] == (3, full)  # one prefill row per distinct prompt
        else:  # only what is new since the last turn goes through the model
            assert shapes[0][0] == len(rows) and shapes[0][1] < full - 40
        assert all(shape[1] == 1 for shape in shapes[1:])
        for c, n in zip(new, b):  # the session holds the context and the fed new tokens
            assert c.session["ids"] == c.input_ids + n[: len(c.session["ids"]) - len(c.input_ids)]
            assert c.session["kv"][0][0].shape[2] == len(c.session["ids"])
        images = [solid(2 * f + f * (k % 3), 2 * f + f * t, (k * 30, 100, 10)) for k in range(len(rows))]
        old = [with_tool_result(processor, c, n, im) for c, n, im in zip(old, a, images)]
        new = [with_tool_result(processor, c, n, im) for c, n, im in zip(new, b, images)]
        feat = [with_tool_result(processor, c, n, im) for c, n, im in zip(feat, a, images)]
        limits = [4 + 3 * k for k in range(len(rows))]


def test_a_resampled_turn_reuses_the_cache_of_its_context_only(family_model):
    model, processor = family_model
    encoder = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))
    p = prompts(encoder)[1]
    session = {}
    c = context(p, 0, session)
    cached = CachedGenerator(model, processor)
    first = cached.generate([c], [8], Sampling())
    assert len(session["ids"]) > len(c.input_ids)  # holds the generated tokens too
    # the same context again (a resample): the stored turn is cut away, not continued
    again, shapes = prefill_shapes(model, cached.generate, [c], [8], Sampling())
    assert again == first == HFGenerator(model, processor).generate([context(p, 0)], [8], Sampling())
    assert shapes[0] == (1, 1)  # only the last prompt token is run again


def test_top_k_one_sampling_is_greedy_and_a_seed_repeats(family_model):
    model, processor = family_model
    encoder = ConversationEncoder(processor, VisualConfig(), RopeSpec.from_config(model.config))
    ps = prompts(encoder)
    ctxs = [context(ps[r], k) for k, r in enumerate([0, 0, 1, 2])]
    cached = CachedGenerator(model, processor)
    greedy = HFGenerator(model, processor).generate(ctxs, [10] * 4, Sampling())
    assert cached.generate(ctxs, [10] * 4, Sampling(True, 0.7, 1.0, 1)) == greedy
    torch.manual_seed(3)
    a = cached.generate(ctxs, [10] * 4, Sampling(True, 1.5, 1.0, 0))
    torch.manual_seed(3)
    assert cached.generate(ctxs, [10] * 4, Sampling(True, 1.5, 1.0, 0)) == a
    assert a[0] != a[1] or a[0] != greedy[0]  # the copies of one prompt are sampled, not copied


def engine_prompts(n: int, copies: int) -> list:
    images = [solid(w, h, (20 * i, 90, 40)) for i, (w, h) in enumerate(SIZES)]
    return [build_prompt(images[i % 3], f"How many shapes in {i}?") for i in range(n) for _ in range(copies)]


@pytest.mark.parametrize("turns,copies,batch", [(1, 4, 16), (3, 3, 4)])
def test_engine_trajectories_equal_the_generate_path(family_model, turns, copies, batch):
    model, processor = family_model
    cfg = {"max_turns": turns, "max_turn_tokens": 12, "max_resamples": 0, "batch_size": batch}
    ps = engine_prompts(3, copies)
    runs = {}
    for kind in ("hf", "cached"):
        engine = ToolEngine(model, processor, config=EngineConfig(generator=kind, **cfg))
        assert type(engine.generator) is type(make_generator(kind, model, processor))
        runs[kind] = engine.run(ps)
    for a, b in zip(runs["hf"], runs["cached"]):
        assert torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.generated, b.generated)
        assert [t.span for t in a.turns] == [t.span for t in b.turns]
    if turns > 1:
        assert max(len(t.turns) for t in runs["cached"]) == turns


def test_sampled_engine_rollouts_are_scored_as_generated(family_model):
    """Token-in/token-out with sampling: the trainer's forward over each trajectory gives every
    sampled token a finite log-prob (no suppressed control token was drawn), and the ids,
    mask and spans agree."""
    model, processor = family_model
    cfg = EngineConfig(
        max_turns=3, max_turn_tokens=10, max_resamples=0, do_sample=True, seed=0, top_k=0, top_p=1.0
    )
    trajs = ToolEngine(model, processor, config=cfg).run(engine_prompts(2, 3))
    suppress = HFGenerator(model, processor).suppress
    for t in trajs:
        mask = torch.zeros_like(t.generated)
        for r in t.turns:
            mask[r.span[0] : r.span[1]] = True
        assert torch.equal(mask, t.generated)
        with torch.no_grad():
            logits = model(**t.encoded(RopeSpec.from_config(model.config)).model_inputs()).logits[0]
        logits[:, suppress] = -float("inf")
        where = torch.nonzero(t.generated).flatten()
        logp = logits[where - 1].log_softmax(-1).gather(-1, t.input_ids[where, None])
        assert torch.isfinite(logp).all()


def test_unknown_generator_is_named():
    with pytest.raises(ValueError, match="generator='sglang'"):
        make_generator("sglang", None, None)


def test_a_row_stopped_by_a_string_drops_the_padding_after_it(tiny):
    """generate pads a row that a stop string finished with <|endoftext|> (an end id) while other
    rows go on; the trimmed row ends at the stop string, as when it runs alone."""
    model, processor = tiny
    tok = processor.tokenizer
    gen = HFGenerator(model, processor)
    call = tok("x</tool_call>", add_special_tokens=False)["input_ids"]
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    assert gen._trim(call + [pad, pad], 10) == call
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert gen._trim(call[:1] + [end, pad], 10) == call[:1] + [end]


def test_prompts_sharing_a_system_prompt_prefill_it_once_across_calls(family_model):
    """With ``prefixes`` (the server), the system turn of a prompt is kept: later prompts that
    start with it (the ~900-token tool system prompt) run only the rest, and give the same greedy
    ids as model.generate over the whole prompt; a prompt with another system prompt is kept too."""
    model, processor = family_model
    engine = ToolEngine(model, processor, config=EngineConfig(max_turns=1, max_turn_tokens=8))
    asks = [build_prompt(solid(56 + 28 * i, 84), f"How many shapes in {i}?") for i in range(3)]
    asks.append(asks[0][:1] + [{"role": "user", "content": "How many shapes without an image?"}])
    other = {"role": "system", "content": "You count shapes in pictures and answer with one number. " * 4}
    asks += [[other, asks[0][1]], [other, asks[1][1]]]
    ctxs = [c.context() for c in engine.start(asks, keys=list(range(6)))]
    ref = HFGenerator(model, processor).generate(ctxs, [8] * 6, Sampling())
    end = processor.tokenizer.convert_tokens_to_ids(IM_END)
    system, system2 = (c.input_ids.index(end) + 1 for c in (ctxs[0], ctxs[4]))
    assert system > 800 and 40 < system2 < 100
    gen = CachedGenerator(model, processor, prefixes=2)
    first, shapes = prefill_shapes(model, gen.generate, ctxs[:1], [8], Sampling())
    assert first == ref[:1] and shapes[0] == (1, len(ctxs[0].input_ids))  # nothing kept yet
    assert [len(k) for k in gen.prefixes] == [system]
    rest, shapes = prefill_shapes(model, gen.generate, ctxs[1:4], [8] * 3, Sampling())
    assert rest == ref[1:4]
    assert shapes[0] == (3, max(len(c.input_ids) - system for c in ctxs[1:4]))
    assert len(gen.prefixes) == 1  # prompts that started from the kept system turn add none
    # another system prompt: it shares only the turn header, is prefilled and kept; the next
    # prompt with it runs only its own user turn
    out, _ = prefill_shapes(model, gen.generate, ctxs[4:5], [8], Sampling())
    assert out == ref[4:5] and sorted(len(k) for k in gen.prefixes) == [system2, system]
    out, shapes = prefill_shapes(model, gen.generate, ctxs[5:], [8], Sampling())
    assert out == ref[5:] and shapes[0] == (1, len(ctxs[5].input_ids) - system2)


def test_the_decoding_cache_appends_in_place_and_equals_concatenation():
    from vision_tools.generation.cached import _GrowingLayer

    layer = _GrowingLayer(3)
    parts = [torch.randn(2, 4, n, 8) for n in (5, 1, 1, 1, 2)]
    keys, _ = layer.update(parts[0], -parts[0])
    buffer = layer._k.data_ptr()
    for k, p in enumerate(parts[1:], 2):
        keys, values = layer.update(p, -p)
        assert torch.equal(keys, torch.cat(parts[:k], 2)) and torch.equal(values, -keys)
        assert (layer._k.data_ptr() == buffer) == (k <= 4)  # 5 + room 3 = 8 positions, then it grows
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert torch.equal(layer.keys, torch.cat(parts, 2)[[1, 1, 0]]) and layer.get_seq_length() == 10


def test_the_ready_decoding_mask_is_the_one_transformers_builds(family_model):
    """A one-token step over a left-padded cache: the mask ``CachedGenerator`` hands the model
    (SDPA's, ready: the per-layer-type mapping for Qwen2.5-VL, the 4-D mask itself for Qwen3-VL,
    whose text model takes no mapping) gives the logits of the 2-D mask transformers expands;
    none at all does not."""
    import copy

    model, processor = family_model
    gen = CachedGenerator(model, processor)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 600, (3, 20), generator=g)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :7], mask[2, :3] = 0, 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True).cache
        step = dict(input_ids=torch.randint(100, 600, (3, 1), generator=g), position_ids=pos[:, :, -1:] + 1)
        full = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        logits = {
            name: model(**step, attention_mask=m, cache=copy.deepcopy(cache), use_cache=True).logits
            for name, m in [
                ("2-D", full),
                ("ready", gen._step_mask(full.bool(), padded=True)),
                ("none", gen._step_mask(full.bool(), padded=False)),
            ]
        }
    assert torch.equal(logits["ready"], logits["2-D"])
    assert not torch.allclose(logits["none"][0], logits["2-D"][0])  # row 0 would read its padding
    assert torch.allclose(logits["none"][1], logits["2-D"][1], atol=1e-5)  # row 1 has none
