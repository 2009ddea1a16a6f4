"""Qwen3.5 (``qwen3_5``, ``qwen3_5_moe``): natively multimodal, a hybrid language model of Gated
DeltaNet (linear attention) layers and gated full-attention layers, with Qwen3-VL's vision side
(16-pixel patches, 2 x 2 merge, timestamped videos, interleaved M-RoPE; no DeepStack).

It loads and trains in the pad layout. Packing and streaming are refused, because of what
transformers 5.25's implementation does (measured in tests/mm/test_models.py):

* packing: a linear-attention layer mixes the whole row. Its causal depthwise conv1d (kernel 4)
  runs over the row, so a sample's first tokens read the previous sample's last ones, and its
  recurrent state carries from one sample into the next. The 4-D block mask only reaches the
  full-attention layers (``create_recurrent_attention_mask`` returns None for it), and the
  torch path of ``chunk_gated_delta_rule`` ignores ``cu_seqlens``; the conv never gets a
  per-token sequence index. A packed row is not its samples run alone.
* streaming: the recurrent state is a running summary of every token seen; no token can be
  evicted from it, so a bounded cache with eviction (StreamingVLM) cannot hold.
"""

from __future__ import annotations

from mm.chat_template import QWEN3_SPECIAL_TOKENS
from mm.models import LM_LINEARS, ModelFamily

PACKING = (
    "its Gated DeltaNet layers run a causal conv1d and a recurrent state across the whole row "
    "(transformers 5.25: no per-sample reset on the torch path, the 4-D mask reaches only the "
    "full-attention layers), so packed samples leak into each other; use the pad layout (data.layout=pad)"
)
STREAMING = (
    "a Gated DeltaNet state summarises every token seen and cannot evict any, so the bounded "
    "streaming cache cannot hold"
)


def tiny_config(tokenizer, size: dict, model_type: str = "qwen3_5"):
    """A Qwen3.5 config of ``size`` (one linear-attention and one full-attention layer per two
    layers) whose special-token ids are ``tokenizer``'s (for local test checkpoints)."""
    from transformers import Qwen3_5Config

    p = size
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN3_SPECIAL_TOKENS}
    layers = max(2, p["layers"])
    text = dict(
        vocab_size=p.get("vocab") or (len(tokenizer) + 63) // 64 * 64,
        hidden_size=p["hidden"],
        intermediate_size=p["mlp"],
        num_hidden_layers=layers,
        layer_types=["linear_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv"],
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        initializer_range=0.05,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [3, 3, 2],  # rotary half-dim 8, interleaved (the real one is [11, 11, 10] of 32)
            "mrope_interleaved": True,
        },
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=p["v_depth"],
        hidden_size=p["v_hidden"],
        intermediate_size=p["v_hidden"] * 2,
        num_heads=p["v_heads"],
        out_hidden_size=p["hidden"],
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=256,
        initializer_range=0.05,
    )
    return Qwen3_5Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


FAMILY = ModelFamily(
    name="qwen3_5",
    model_classes={
        "qwen3_5": "Qwen3_5ForConditionalGeneration",
        "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
    },
    processor_class="Qwen3VLProcessor",
    patch_size=16,
    mrope_layout="interleaved",
    video_time="timestamps",
    lora_targets=LM_LINEARS[:-1] + "|in_proj_qkv|in_proj_z|out_proj)",
    special_tokens=tuple(QWEN3_SPECIAL_TOKENS),
    tiny_config=tiny_config,
    tiny_model_type="qwen3_5",
    packing=PACKING,
    streaming=STREAMING,
)
