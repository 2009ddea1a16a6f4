"""The tiny offline model/processor: real special tokens, the real chat template, consistent ids."""

from mm.chat_template import ASSISTANT_HEADER, IMAGE_PLACEHOLDER, QWEN_SPECIAL_TOKENS, turn
from tests.conftest import solid


def test_special_token_ids_match_config(tiny):
    model, processor = tiny
    tok, cfg = processor.tokenizer, model.config
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(QWEN_SPECIAL_TOKENS)
    assert cfg.image_token_id == ids["<|image_pad|>"]
    assert cfg.video_token_id == ids["<|video_pad|>"]
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    assert cfg.eos_token_id == ids["<|im_end|>"] == tok.eos_token_id
    assert cfg.pad_token_id == ids["<|endoftext|>"] == tok.pad_token_id
    # real Qwen order: consecutive ids starting at <|endoftext|>
    base = ids["<|endoftext|>"]
    assert [ids[t] - base for t in QWEN_SPECIAL_TOKENS] == list(range(len(QWEN_SPECIAL_TOKENS)))
    assert cfg.text_config.vocab_size >= len(tok)


def test_special_tokens_are_single_tokens_and_roundtrip(tiny):
    tok = tiny[1].tokenizer
    for t in QWEN_SPECIAL_TOKENS:
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]
    text = 'Hello wörld <tool_call>{"name": "crop_image"}</tool_call> 3.14 漢字'
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


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


def test_turn_strings_are_what_the_template_renders(tiny):
    """The strings code splices into token streams (mm.chat_template.turn, ...) equal the template's."""
    processor = tiny[1]
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": "a"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A square."},
    ]
    rendered = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    built = turn("system", "Be brief.") + turn("user", IMAGE_PLACEHOLDER + "What?")
    assert rendered == built + turn("assistant", "A square.") + ASSISTANT_HEADER


def test_weights_are_deterministic():
    from mm.loading import load_model

    a, _ = load_model("tiny")
    b, _ = load_model("tiny")
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
