"""Qwen2-VL: Qwen2.5-VL's geometry (14-pixel patches, 2 x 2 merge, contiguous M-RoPE) without
absolute time: a video's temporal position is its temporal-patch index. Same tokens and chat
template as Qwen2.5-VL.
"""

from __future__ import annotations

from mm.chat_template import NON_SPECIAL, QWEN2_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
from mm.models import ModelFamily
from mm.models.qwen2_5_vl import MAX_PIXELS, MIN_PIXELS, contiguous_sections


def tiny_config(tokenizer, size: dict, model_type: str = "qwen2_vl"):
    """A Qwen2-VL config of ``size`` whose special-token ids are ``tokenizer``'s."""
    from transformers import Qwen2VLConfig

    p = size
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=p.get("vocab") or (len(tokenizer) + 63) // 64 * 64,
            hidden_size=p["hidden"],
            intermediate_size=p["mlp"],
            num_hidden_layers=p["layers"],
            num_attention_heads=p["heads"],
            num_key_value_heads=p["kv"],
            initializer_range=0.05,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": contiguous_sections(p["hidden"] // p["heads"]),
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=p["v_depth"],
            embed_dim=p["v_hidden"],
            hidden_size=p["hidden"],
            num_heads=p["v_heads"],
            mlp_ratio=2,
            spatial_merge_size=2,
            initializer_range=0.05,
        ),
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
    """The Qwen2-VL processor around ``tokenizer`` (real image/video processors)."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS * 32, max_pixels=MAX_PIXELS),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


FAMILY = ModelFamily(
    name="qwen2_vl",
    model_classes={"qwen2_vl": "Qwen2VLForConditionalGeneration"},
    processor_class="Qwen2VLProcessor",
    patch_size=14,
    mrope_layout="contiguous",
    video_time="none",
    special_tokens=tuple(QWEN_SPECIAL_TOKENS),
    non_special=frozenset(NON_SPECIAL),
    chat_template=QWEN2_VL_CHAT_TEMPLATE,
    tiny_config=tiny_config,
    tiny_processor=tiny_processor,
    tiny_model_type="qwen2_vl",
)
