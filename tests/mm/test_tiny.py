"""The tiny offline models/processors (Qwen2.5-VL, Qwen3-VL): real special tokens, the real chat
templates, consistent ids."""

import pytest

from mm.chat_template import ASSISTANT_HEADER, IMAGE_PLACEHOLDER, turn
from tests.conftest import solid


def test_special_token_ids_match_config(family_model, family):
    model, processor = family_model
    specials = family.special_tokens
    tok, cfg = processor.tokenizer, model.config
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    assert len(set(ids.values())) == len(specials)
    assert cfg.image_token_id == ids["<|image_pad|>"]
    assert cfg.video_token_id == ids["<|video_pad|>"]
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    eos = cfg.eos_token_id if family.name == "qwen2_5_vl" else model.generation_config.eos_token_id[0]
    pad = cfg.pad_token_id if family.name == "qwen2_5_vl" else cfg.text_config.pad_token_id
    assert eos == ids["<|im_end|>"] == tok.eos_token_id
    assert pad == ids["<|endoftext|>"] == tok.pad_token_id
    # real Qwen order: consecutive ids starting at <|endoftext|>
    base = ids["<|endoftext|>"]
    assert [ids[t] - base for t in specials] == list(range(len(specials)))
    assert cfg.text_config.vocab_size >= len(tok)


def test_special_tokens_are_single_tokens_and_roundtrip(family_model, family):
    tok = family_model[1].tokenizer
    for t in family.special_tokens:
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]
    text = 'Hello wörld <tool_call>{"name": "crop_image"}</tool_call> 3.14 漢字'
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # non-special added tokens survive skip_special_tokens (Qwen3-VL: <think>, <tool_response>)
    ids = tok("<|im_start|><think>a</think><tool_call>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>a</think><tool_call>"
    if family.name == "qwen3_vl":
        assert (
            len(tok("<think></think><tool_response></tool_response>", add_special_tokens=False)["input_ids"])
            == 4
        )


def test_chat_template_renders_like_qwen25vl(tiny):
    processor = tiny[1]
    conv = [
        {
            "role": "user",
            "content": [{"type": "image", "image": solid(56, 56)}, {"type": "text", "text": "What is this?"}],
        },
        {"role": "assistant", "content": "A square."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": solid(56, 56)},
                {"type": "video", "video": "v.mp4"},
                {"type": "text", "text": "And these?"},
            ],
        },
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\nA square.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"
        "And these?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == expected
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(with_system, tokenize=False, add_vision_id=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    numbered = [
        {"role": "user", "content": [{"type": "image", "image": "a"}, {"type": "image", "image": "b"}]}
    ]
    assert "Picture 1: <|vision_start|>" in processor.apply_chat_template(
        numbered, tokenize=False, add_vision_id=True
    )
    assert "Picture 2: <|vision_start|>" in processor.apply_chat_template(
        numbered, tokenize=False, add_vision_id=True
    )


def test_chat_template_renders_like_qwen3vl(qwen3vl):
    """Hand-written Qwen3-VL prompt: no default system turn, add_vision_id numbering, a system
    turn only as the first message."""
    processor = qwen3vl[1]
    conv = [
        {
            "role": "user",
            "content": [{"type": "image", "image": "a"}, {"type": "text", "text": "What is this?"}],
        },
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "And?"}]},
    ]
    assert processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\nA square.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>And?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *conv[:1]]
    assert processor.apply_chat_template(with_system, tokenize=False, add_vision_id=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
    )


def test_turn_strings_are_what_the_template_renders(family_model):
    """The strings code splices into token streams (mm.chat_template.turn, ...) equal the template's."""
    processor = family_model[1]
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": "a"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A square."},
    ]
    rendered = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    built = turn("system", "Be brief.") + turn("user", IMAGE_PLACEHOLDER + "What?")
    assert rendered == built + turn("assistant", "A square.") + ASSISTANT_HEADER


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen3vl", "tiny-qwen3vl-moe"])
def test_weights_are_deterministic(name):
    from mm.loading import load_model

    a, _ = load_model(name)
    b, _ = load_model(name)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert (pa == pb).all(), na


def test_real_vocabulary_preset(tiny):
    """tiny-151k: the tiny model with Qwen2.5-VL's 151,936-token embedding and LM head, nothing else changed."""
    from mm.loading import load_model

    big, _ = load_model("tiny-151k")
    assert big.get_input_embeddings().weight.shape == (151936, 64)
    assert big.lm_head.weight.shape == (151936, 64)
    small = {n: p.shape for n, p in tiny[0].named_parameters()}
    differ = {n for n, p in big.named_parameters() if small[n] != p.shape}
    assert differ == {"model.language_model.embed_tokens.weight", "lm_head.weight"}


def test_qwen3vl_presets_are_the_real_architecture(qwen3vl):
    """tiny-qwen3vl: Qwen3-VL's classes, interleaved M-RoPE, two DeepStack levels; the MoE preset
    has routed experts; unknown presets name the presets."""
    from mm.loading import load_model
    from mm.tiny import resolve_preset

    model, processor = qwen3vl
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert model.config.text_config.rope_parameters["mrope_interleaved"] is True
    assert len(model.model.visual.deepstack_merger_list) == 2
    moe, _ = load_model("tiny-qwen3vl-moe")
    assert moe.config.text_config.num_experts == 4 and moe.config.text_config.num_experts_per_tok == 2
    with pytest.raises(ValueError, match="presets: tiny, small"):
        resolve_preset("tiny-qwen9")
