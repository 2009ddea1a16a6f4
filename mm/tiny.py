"""A tiny, fully offline Qwen2.5-VL: real architecture at toy width, for tests and the quickstart.

``tiny_processor()`` builds a byte-level BPE tokenizer (merges learned here from a built-in
corpus, so nothing is downloaded) that carries the real Qwen2.5-VL special tokens and chat
template, plus the real Qwen2.5-VL image and video processors. ``tiny_model()`` builds a
``Qwen2_5_VLForConditionalGeneration`` with 2 decoder layers of width 64 and a 2-block vision
tower, with deterministic weights; its special-token ids are the tokenizer's. The "small"
preset is wider and deeper (tens of millions of parameters) for benchmarks where compute,
not Python overhead, decides on a CPU; "medium" (0.8 B parameters, head dim 128 as in the real
models) is for GPU benchmarks. "tiny-151k", "small-151k" and "medium-151k" are the same with
Qwen's real 151,936-token vocabulary (embedding and LM head at real width).
"""

from __future__ import annotations

import collections
from functools import cache

import torch

from mm.chat_template import NON_SPECIAL, QWEN2_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS

# Real Qwen2.5-VL preprocessor defaults.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16384

_CORPUS = """
You are a helpful assistant. The user asks a question about the image and the assistant answers.
<think> Let me look at the picture carefully. The triangle has sides of length 3, 4 and 5, so the
angle opposite the longest side is a right angle. </think> <answer> 90 </answer>
Image 0: 640 x 480. Question: What is the area of the shaded region? Let's think step by step.
Call tool if needed, then answer. Format strictly as: think, tool call (if tools needed), answer.
Fully utilize the tools and make comprehensive use of the results. Keep thinking.
{"name": "crop_image", "arguments": {"bbox_2d": [10, 20, 200, 240], "image_index": 0}}
{"name": "scale_image", "arguments": {"scale_factor": 2.0, "image_index": 1}}
{"name": "display_image", "arguments": {"image_index": 0}}
Please choose one from list [ cat, dog, bird, airplane, automobile, ship, truck, horse, frog, deer ].
Please output the thinking process in and final answer in tags. Please directly output the answer.
Commentate on this match. The striker passes the ball to the left wing, who crosses into the box.
What a goal! The keeper had no chance. ... Time=0-1s The robot picks up the red cube and places it
in the bowl. Describe this video. The number of circles is 7. The answer is B. 0 1 2 3 4 5 6 7 8 9
"""


def _learn_bpe(text: str, num_merges: int) -> list[tuple[str, str]]:
    """Learn byte-level BPE merges on ``text`` (pure Python, deterministic tie-breaking)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = collections.Counter(w for w, _ in pre.pre_tokenize_str(text))
    splits = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter = collections.Counter()
        for w, n in words.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for w, s in splits.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    return merges


@cache
def _vocab_and_merges(num_merges: int = 400) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = _learn_bpe(_CORPUS, num_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for t in QWEN_SPECIAL_TOKENS:  # after the BPE vocabulary, in the real relative order
        vocab[t] = len(vocab)
    return vocab, tuple(merges)


def tiny_tokenizer():
    """Byte-level BPE Qwen2Tokenizer with the real Qwen2.5-VL special tokens and chat template."""
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = _vocab_and_merges()
    tok = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # tuples: strings fail with "failed to extract enum PyMerges"
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=131072,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    tok.add_tokens(
        [AddedToken(t, special=t not in NON_SPECIAL, normalized=False) for t in QWEN_SPECIAL_TOKENS]
    )
    return tok


def tiny_processor():
    """The Qwen2.5-VL processor around the tiny tokenizer (real image/video processors)."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = tiny_tokenizer()
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS * 32, max_pixels=MAX_PIXELS)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


PRESETS = {
    # hidden, layers, heads, kv heads, mlp, vision width, vision depth
    "tiny": dict(hidden=64, layers=2, heads=4, kv=2, mlp=128, v_hidden=32, v_depth=2, v_heads=2),
    "small": dict(hidden=512, layers=8, heads=8, kv=4, mlp=1536, v_hidden=256, v_depth=4, v_heads=4),
    "medium": dict(hidden=2048, layers=16, heads=16, kv=4, mlp=5504, v_hidden=1024, v_depth=8, v_heads=16),
}
QWEN_VOCAB = 151936  # Qwen2.5-VL's real vocabulary: the LM head and the loss at real width
PRESETS.update(
    {f"{name}-151k": dict(PRESETS[name], vocab=QWEN_VOCAB) for name in ("tiny", "small", "medium")}
)


def tiny_config(tokenizer, preset: str = "tiny"):
    """A Qwen2.5-VL config at toy size whose special-token ids are ``tokenizer``'s."""
    from transformers import Qwen2_5_VLConfig

    p = PRESETS[preset]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = p["hidden"] // p["heads"]
    half = head_dim // 2  # mrope sections split the rotary half-dimension: (t, h, w)
    t_sec = half // 4
    section = [t_sec, (half - t_sec) // 2, half - t_sec - (half - t_sec) // 2]
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
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
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


def tiny_model(tokenizer, preset: str = "tiny", attn_implementation: str = "sdpa", seed: int = 0):
    """Build the toy Qwen2_5_VLForConditionalGeneration with deterministic weights (fp32)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = tiny_config(tokenizer, preset)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [config.eos_token_id, config.bos_token_id]
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval()
