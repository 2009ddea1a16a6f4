"""Qwen2.5-VL: 14-pixel patches merged 2 x 2 (28 pixels per token), contiguous M-RoPE sections,
absolute time in a video's temporal position (``tokens_per_second``), one merger.

``tiny_config`` builds the real architecture at toy width (``mm.tiny`` sizes it) with the
special-token ids of the tokenizer it is given; ``tiny_processor`` wraps that tokenizer in the
real Qwen2.5-VL image and video processors and chat template.
"""

from __future__ import annotations

from mm.chat_template import NON_SPECIAL, QWEN2_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
from mm.models import ModelFamily

# Real Qwen2.5-VL preprocessor defaults.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16384


def contiguous_sections(head_dim: int) -> list[int]:
    """mrope_section (t, h, w) splitting the rotary half-dimension, about 1 : 1.5 : 1.5 as the real [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


def text_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}


def tiny_config(tokenizer, size: dict, model_type: str = "qwen2_5_vl"):
    """A Qwen2.5-VL config of ``size`` (``mm.tiny.PRESETS``) whose special-token ids are ``tokenizer``'s."""
    from transformers import Qwen2_5_VLConfig

    p = size
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = p.get("vocab") or (len(tokenizer) + 63) // 64 * 64  # ids past the tokenizer's are never seen
    text = dict(
        vocab_size=vocab_size,
        hidden_size=p["hidden"],
        intermediate_size=p["mlp"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv"],
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        initializer_range=0.05,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": contiguous_sections(p["hidden"] // p["heads"]),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=p["v_depth"],
        hidden_size=p["v_hidden"],
        intermediate_size=p["v_hidden"] * 2,
        num_heads=p["v_heads"],
        out_hidden_size=p["hidden"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        tokens_per_second=2,
        window_size=112,
        fullatt_block_indexes=[p["v_depth"] - 1],
        initializer_range=0.05,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )


def tiny_processor(tokenizer):
    """The Qwen2.5-VL processor around ``tokenizer`` (real image/video processors)."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS * 32, max_pixels=MAX_PIXELS)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


FAMILY = ModelFamily(
    name="qwen2_5_vl",
    model_classes={"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"},
    processor_class="Qwen2_5_VLProcessor",
    patch_size=14,
    mrope_layout="contiguous",
    video_time="absolute",
    special_tokens=tuple(QWEN_SPECIAL_TOKENS),
    non_special=frozenset(NON_SPECIAL),
    chat_template=QWEN2_VL_CHAT_TEMPLATE,
    tiny_config=tiny_config,
    tiny_processor=tiny_processor,
    tiny_model_type="qwen2_5_vl",
)
