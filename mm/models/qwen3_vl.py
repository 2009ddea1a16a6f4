"""Qwen3-VL (dense ``qwen3_vl`` and MoE ``qwen3_vl_moe``): what differs from Qwen2.5-VL.

* 16-pixel patches merged 2 x 2: 32 pixels per merged token (Qwen2.5-VL: 28).
* Interleaved M-RoPE: the rotary frequencies cycle t, h, w, t, h, w, ... (``mrope_section``
  [24, 20, 20] counts each axis' share) instead of three contiguous sections. Positions are the
  same three rows; only the model's rotary maps them differently.
* Video time as text: before each frame group (one temporal patch) the prompt holds
  ``<t seconds>`` (the mean time of its two frames, one decimal) and the group's own
  ``<|vision_start|>...<|vision_end|>``; in the positions every group is a t = 1 block, so
  no absolute time enters the temporal row (``RopeSpec.frame_blocks``).
* DeepStack: the vision tower also returns merged features of some early blocks
  (``deepstack_merger_list``), which the language model adds to the visual tokens' hidden
  states after its first decoder layers. They travel with the visual tokens (``mm.image_features``).
* The chat template has no default system turn; ``<think>``, ``<tool_response>`` and their
  closing tags are added (non-special) tokens.

The MoE variant has the same vision tower, positions and prompt; its experts are fused
parameters (``mlp.experts.gate_up_proj``), so LoRA reaches its attention projections (and any
dense MLP layers), not the experts.
"""

from __future__ import annotations

from mm.chat_template import QWEN3_NON_SPECIAL, QWEN3_SPECIAL_TOKENS, QWEN3_VL_CHAT_TEMPLATE
from mm.models import ModelFamily

# Real Qwen3-VL preprocessor configs (preprocessor_config.json, video_preprocessor_config.json).
IMAGE_SIZE = {"shortest_edge": 64 * 32 * 32, "longest_edge": 16384 * 32 * 32}
VIDEO_SIZE = {"shortest_edge": 4 * 32 * 32, "longest_edge": 24576 * 32 * 32}
MEAN = STD = [0.5, 0.5, 0.5]


def interleaved_sections(head_dim: int) -> list[int]:
    """mrope_section (t, h, w) for the rotary half-dimension, in the real [24, 20, 20] proportion.

    Interleaving puts h at frequencies 1, 4, 7, ... < 3 h and w at 2, 5, 8, ... < 3 w, t everywhere
    else, so 3 * h <= half keeps the declared counts what the rotary really uses.
    """
    half = head_dim // 2
    hw = half * 20 // 64
    return [half - 2 * hw, hw, hw]


def deepstack_indexes(depth: int, layers: int) -> list[int]:
    """Vision blocks whose features DeepStack injects: up to 3, spread over the tower (the real
    27-block tower uses [8, 16, 24]), never more than the language model has layers."""
    k = max(1, min(3, layers, depth - 1))
    return [(i + 1) * depth // (k + 1) for i in range(k)]


def tiny_config(tokenizer, size: dict, model_type: str = "qwen3_vl"):
    """A Qwen3-VL (or, with ``model_type="qwen3_vl_moe"``, Qwen3-VL-MoE) config of ``size``
    (``mm.tiny``) whose special-token ids are ``tokenizer``'s."""
    import transformers

    p = size
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN3_SPECIAL_TOKENS}
    head_dim = p.get("head_dim") or max(32, p["hidden"] // p["heads"])
    text = dict(
        vocab_size=p.get("vocab") or (len(tokenizer) + 63) // 64 * 64,
        hidden_size=p["hidden"],
        intermediate_size=p["mlp"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv"],
        head_dim=head_dim,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        initializer_range=0.05,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": interleaved_sections(head_dim),
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
        num_position_embeddings=p.get("v_positions", 256),
        deepstack_visual_indexes=deepstack_indexes(p["v_depth"], p["layers"]),
        initializer_range=0.05,
    )
    if model_type == "qwen3_vl_moe":
        text.update(
            num_experts=p.get("experts", 4),
            num_experts_per_tok=p.get("top_k", 2),
            moe_intermediate_size=p.get("moe_mlp", p["mlp"] // 2),
            decoder_sparse_step=1,
        )
        config_class = transformers.Qwen3VLMoeConfig
    else:
        config_class = transformers.Qwen3VLConfig
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def tiny_processor(tokenizer):
    """The Qwen3-VL processor around ``tokenizer``: the real image processor (patch 16) and video
    processor with the checkpoints' sizes, means and chat template."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    geometry = dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=MEAN, image_std=STD)
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(IMAGE_SIZE), **geometry),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=dict(VIDEO_SIZE), cap_pixels_per_frame=True, **geometry),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


FAMILY = ModelFamily(
    name="qwen3_vl",
    model_classes={
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    },
    processor_class="Qwen3VLProcessor",
    patch_size=16,
    mrope_layout="interleaved",
    video_time="timestamps",
    deepstack=True,
    mergers=("merger", "deepstack_merger_list"),
    special_tokens=tuple(QWEN3_SPECIAL_TOKENS),
    non_special=frozenset(QWEN3_NON_SPECIAL),
    chat_template=QWEN3_VL_CHAT_TEMPLATE,
    tiny_config=tiny_config,
    tiny_processor=tiny_processor,
    tiny_model_type="qwen3_vl",
)
