"""The Qwen2-VL / Qwen2.5-VL chat format: the turn strings, and the template of the checkpoints.

Code that writes tokens into a conversation without re-rendering it (the encoder's label
search, the tool engine's inserted turns, streaming's per-second turns) builds its strings here:

    turn("user", IMAGE_PLACEHOLDER + "Describe it.") + ASSISTANT_HEADER
    # '<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\\n'
    # '<|im_start|>assistant\\n'

The Jinja template is kept verbatim (as one line with explicit ``\\n``) so that the tiny offline
processor renders conversations exactly as the real one does. Newlines never follow a block tag,
so the ``trim_blocks`` setting of transformers' renderer cannot swallow them.
"""

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
TURN_END = IM_END + "\n"  # what closes every turn
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END  # one image (expanded to its visual tokens)


def turn_header(role: str) -> str:
    """``<|im_start|>{role}\\n``: what opens a turn."""
    return f"{IM_START}{role}\n"


ASSISTANT_HEADER = turn_header("assistant")  # the generation prompt; labels start after it


def turn(role: str, content: str) -> str:
    """A whole turn: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``."""
    return turn_header(role) + content + TURN_END


QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The special tokens of Qwen2.5-VL, in the order (and so with the relative ids) of the real vocabulary.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
# Added tokens that the real tokenizer does not flag as special (they survive skip_special_tokens).
NON_SPECIAL = {
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
}
