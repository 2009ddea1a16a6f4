"""The Qwen chat format (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): the turn strings, and the templates of the checkpoints.

Code that writes tokens into a conversation without re-rendering it (the encoder's label
search, the tool engine's inserted turns, streaming's per-second turns) builds its strings here:

    turn("user", IMAGE_PLACEHOLDER + "Describe it.") + ASSISTANT_HEADER
    # '<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\\n'
    # '<|im_start|>assistant\\n'

The Jinja template is kept verbatim (as one line with explicit ``\\n``) so that the tiny offline
processor renders conversations exactly as the real one does. Newlines never follow a block tag,
so the ``trim_blocks`` setting of transformers' renderer cannot swallow them. Qwen3-VL's template
is kept verbatim in its own multi-line form: it controls every newline with ``{%- -%}`` tags, so
the renderer's settings give the real processor's text. The turn strings are the same for both;
Qwen3-VL differs in the prompt (no default system turn, ``tool`` turns as ``<tool_response>``
inside a user turn), in four more added tokens (``<tool_response>``, ``<think>`` and their
closing tags) and in videos (``mm.models.qwen3_vl``: a ``<t seconds>`` timestamp before each
frame group).
"""

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
TURN_END = IM_END + "\n"  # what closes every turn
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END  # one image (expanded to its visual tokens)
VIDEO_PLACEHOLDER = VISION_START + VIDEO_PAD + VISION_END  # what the templates render for one video


def turn_header(role: str) -> str:
    """``<|im_start|>{role}\\n``: what opens a turn."""
    return f"{IM_START}{role}\n"


ASSISTANT_HEADER = turn_header("assistant")  # the generation prompt; labels start after it


def turn(role: str, content: str) -> str:
    """A whole turn: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``."""
    return turn_header(role) + content + TURN_END


def frame_seconds(seconds: list[float], temporal_patch: int = 2) -> list[float]:
    """The time of each frame group (temporal patch): the mean of its first and last frame's time,
    as Qwen3-VL's processor computes it (``_calculate_timestamps``; the last frame repeats to fill)."""
    s = list(seconds) + list(seconds[-1:]) * (-len(seconds) % temporal_patch)
    return [(s[i] + s[i + temporal_patch - 1]) / 2 for i in range(0, len(s), temporal_patch)]


def timestamped_video(seconds: list[float], temporal_patch: int = 2) -> str:
    """Qwen3-VL's text for one video of frames at ``seconds``: per frame group ``<t seconds>`` and
    its own ``VIDEO_PLACEHOLDER`` (one ``<|video_pad|>``, expanded later to the group's tokens)::

        timestamped_video([0.0, 0.5, 1.0, 1.5])
        # '<0.2 seconds><|vision_start|><|video_pad|><|vision_end|><1.2 seconds><|vision_start|>...'
    """
    return "".join(f"<{t:.1f} seconds>" + VIDEO_PLACEHOLDER for t in frame_seconds(seconds, temporal_patch))


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

# Qwen3-VL adds these after Qwen2.5-VL's tokens (ids 151665-151668 in the real vocabulary); none is special.
QWEN3_EXTRA_TOKENS = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN3_SPECIAL_TOKENS = QWEN_SPECIAL_TOKENS + QWEN3_EXTRA_TOKENS
QWEN3_NON_SPECIAL = NON_SPECIAL | set(QWEN3_EXTRA_TOKENS)

# The chat template of Qwen3-VL's Instruct checkpoints (chat_template.json), verbatim.
QWEN3_VL_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
