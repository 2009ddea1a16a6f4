"""The ViRC turn protocol: the prompts, and one parser for assistant turns.

An assistant turn is exactly one of::

    <think>...</think><tool_call>{"name": ..., "arguments": {...}}</tool_call>
    <think>...</think><answer>...</answer>

:func:`parse_turn` returns a :class:`Turn`, or a :class:`Violation` with a stable code:

==================  =========================================================================
bad_tags            missing/misordered/unclosed tags, or text outside the blocks
multiple_blocks     more than one think, tool_call or answer block
bad_json            the tool call is not ``{"name": str, "arguments": {...}}`` JSON
unknown_tool        no tool of that name
bad_arguments       arguments missing, extra, or of the wrong type
index_out_of_range  ``image_index`` names an image that does not exist (yet)
bbox_out_of_bounds  a crop box leaves the image
degenerate_bbox     a crop box with no area (or thinner than 1:200)
scale_out_of_range  a scale factor outside 0.25-4 (inference, snapped) or 0.25-0.5 / 1.5-4 (RL)
repetition          a repetition loop
empty_answer        an empty ``<answer></answer>``
==================  =========================================================================

Image-dependent checks (index, bbox, scale) need the sizes of the conversation's images: pass a
:class:`~vision_tools.tools.ToolContext` (``ToolContext(sizes=[(w, h), ...])`` is enough). The
engine and the rewards use this one parser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from mm.records import Message, parse_message
from vision_tools.tools import Tool, ToolContext, ToolError, as_toolset

CODES = (
    "bad_tags",
    "multiple_blocks",
    "bad_json",
    "unknown_tool",
    "bad_arguments",
    "index_out_of_range",
    "bbox_out_of_bounds",
    "degenerate_bbox",
    "scale_out_of_range",
    "repetition",
    "empty_answer",
)

TOOL_CODES = ("over_budget", "tool_error")  # raised when a valid-looking call runs (engine, HTTP API)

FORMAT = (
    "Format strictly as: <think>...</think> <tool_call>...</tool_call> (if tools needed) "
    "<answer>...</answer> (if available)."
)
QUESTION = (
    "{images}\nQuestion: {question}\n\nLet's think step by step. Call **tool** if needed, then answer. "
    + FORMAT
)
RESULT = (
    "Image {k}: {w} x {h}. Fully utilize the tools and make comprehensive use of the results. Keep thinking."
)
SYSTEM = "You are a helpful assistant."
TOOLS_PREAMBLE = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{schemas}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def system_prompt(tools=None, preamble: str = SYSTEM) -> str:
    """The system prompt declaring the tools as Qwen/Hermes function schemas in ``<tools>``."""
    schemas = "\n".join(json.dumps(t.schema()) for t in as_toolset(tools).values())
    return preamble + TOOLS_PREAMBLE.format(schemas=schemas)


def declare_tools(messages: list[dict] | list[Message], tools) -> list[dict] | list[Message]:
    """``messages`` (dicts or ``Message``s; the same kind comes back) whose system turn declares
    exactly ``tools``: a ``# Tools`` section already there is replaced, other system text is kept
    before it; without a system turn, one is added."""
    as_messages = bool(messages) and isinstance(messages[0], Message)
    first = messages[0] if messages else None
    role = (first.role if as_messages else first["role"]) if first is not None else None
    rest = list(messages[1:] if role == "system" else messages)
    if role == "system":
        text = first.text() if as_messages else parse_message(first, "messages[0]").text()
        content = system_prompt(tools, preamble=text.split(TOOLS_PREAMBLE[:11])[0])
    else:
        content = system_prompt(tools)
    if as_messages:
        return [Message("system", content), *rest]
    return [{"role": "system", "content": content}, *(dict(m) for m in rest)]


def question_text(question: str, size: tuple[int, int] | list[tuple[int, int]]) -> str:
    """The first user turn's text (after image 0; with a list of sizes, after images 0..n-1, one
    ``Image k: W x H.`` line each)."""
    sizes = size if isinstance(size, list) else [size]
    images = "\n".join(f"Image {k}: {w} x {h}." for k, (w, h) in enumerate(sizes))
    return QUESTION.format(images=images, question=question)


def result_text(k: int, size: tuple[int, int], question: str | None = None) -> str:
    """The text of a tool-result user turn (``question`` is repeated after scale_image)."""
    text = RESULT.format(k=k, w=size[0], h=size[1])
    return text + (f"\nQuestion: {question}" if question else "")


def error_text(violation: Violation) -> str:
    """What the model reads when its turn could not be executed."""
    return f"Error ({violation.code}): {violation.message}. Keep thinking. {FORMAT}"


@dataclass
class ToolCall:
    name: str
    arguments: dict

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments})


@dataclass
class Turn:
    """A well-formed assistant turn."""

    kind: Literal["tool_call", "answer"]
    think: str
    call: ToolCall | None = None
    answer: str | None = None
    ok: bool = field(default=True, init=False)


@dataclass
class Violation:
    """A turn that breaks the protocol: ``code`` is stable (see CODES), ``message`` is for people."""

    code: str
    message: str
    call: ToolCall | None = None  # the parsed call, when the violation is in its arguments
    ok: bool = field(default=False, init=False)


_TURN = re.compile(
    r"\s*<think>(?P<think>.*?)</think>\s*"
    r"(?:<tool_call>(?P<call>.*?)</tool_call>|<answer>(?P<answer>.*?)</answer>)\s*",
    re.S,
)
_CHAR_LOOP = re.compile(r"(.{1,30}?)\1{9,}", re.S)


def find_repetition(text: str, min_cycles: int = 4, min_words: int = 20, max_period: int = 50) -> str | None:
    """The repeated unit if ``text`` holds a loop: a unit of 1..max_period words repeated at
    least ``min_cycles`` times in a row covering ``min_words`` words, or a short character unit
    repeated 10+ times over 50+ characters."""
    return _word_loop(text, min_cycles, min_words, max_period) or _char_loop(text)


def _word_loop(text: str, min_cycles: int = 4, min_words: int = 20, max_period: int = 50) -> str | None:
    """A unit of 1..max_period words repeated at least ``min_cycles`` times in a row covering
    ``min_words`` words."""
    words = text.split()
    n = len(words)
    for p in range(1, min(max_period, n // min_cycles) + 1):
        run = 0
        for i in range(n - p):
            run = run + 1 if words[i] == words[i + p] else 0
            if run + p >= max(min_cycles * p, min_words):
                return " ".join(words[i + 1 - run : i + 1 - run + p])
    return None


def _char_loop(text: str) -> str | None:
    """A short character unit repeated 10+ times over 50+ characters."""
    for m in _CHAR_LOOP.finditer(text):
        if len(m.group(0)) >= 50 and m.group(1).strip():
            return m.group(1)
    return None


def in_a_loop(tok, ids: list[int], every: int = 16, span: int = 48, max_period: int = 64) -> bool:
    """Whether a turn so far (its token ``ids``) already holds a repetition loop, so that the
    whole turn is a ``repetition`` violation whatever it writes next. Looked at every ``every``
    tokens: a cheap token test (the last ``span`` or more tokens repeat with a period of up to
    ``max_period``), then :func:`find_repetition`'s two tests: the word loop on the text up to its
    last whitespace (a word still being written could change; the words before it cannot), the
    character loop on all of it but a trailing U+FFFD (more text cannot undo a run of a unit)."""
    n = len(ids)
    if n < span or n % every:
        return False
    for p in range(1, min(max_period, n // 4) + 1):
        m = max(4 * p, span)
        if m <= n and ids[n - m : n - p] == ids[n - m + p :]:
            break
    else:
        return False
    text = tok.decode(ids)
    cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    # a trailing U+FFFD may be a character whose bytes are still coming: not part of a loop yet
    return _word_loop(text[: max(cut, 0)]) is not None or _char_loop(text.rstrip("\ufffd")) is not None


def parse_turn(text: str, tools=None, ctx: ToolContext | None = None) -> Turn | Violation:
    """Parse one assistant turn; see the module docstring for the violation codes.

    ``tools``: a list of tools (None: the ViRC tools) or a ``{name: Tool}`` dict.
    ``ctx``: sizes of the conversation's images, for the image-dependent checks (optional).
    """
    unit = find_repetition(text)
    if unit is not None:
        return Violation("repetition", f"the turn repeats {unit[:40]!r} in a loop")
    counts = {t: text.count(f"<{t}>") for t in ("think", "tool_call", "answer")}
    if counts["think"] > 1 or counts["tool_call"] + counts["answer"] > 1:
        return Violation(
            "multiple_blocks",
            f"found {counts['think']} think, {counts['tool_call']} tool_call and {counts['answer']} answer "
            "blocks; a turn has one think block and then one tool_call or one answer",
        )
    m = _TURN.fullmatch(text)
    if m is None:
        return Violation(
            "bad_tags",
            "a turn must be <think>...</think> followed by one <tool_call>...</tool_call> or "
            "<answer>...</answer>, with nothing outside",
        )
    think = m.group("think").strip()
    if m.group("answer") is not None:
        answer = m.group("answer").strip()
        if not answer:
            return Violation("empty_answer", "the <answer> block is empty")
        return Turn("answer", think, answer=answer)
    call = parse_call(m.group("call"))
    if isinstance(call, Violation):
        return call
    return check_call(call, tools, ctx) or Turn("tool_call", think, call=call)


def parse_call(body: str) -> ToolCall | Violation:
    """The JSON body of a ``<tool_call>`` block."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return Violation("bad_json", f"the tool call is not valid JSON ({e.msg} at char {e.pos})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or "arguments" not in obj:
        return Violation("bad_json", 'the tool call must be {"name": "<tool>", "arguments": {...}}')
    args = obj["arguments"]
    if isinstance(args, str):  # some models emit the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return Violation("bad_json", "the tool call's arguments string is not valid JSON")
    return ToolCall(obj["name"], args)


def check_call(call: ToolCall, tools=None, ctx: ToolContext | None = None) -> Violation | None:
    """Name, argument and (with ``ctx``) image checks of a parsed call; None if it is valid."""
    toolset = tools if isinstance(tools, dict) else as_toolset(tools)
    tool: Tool | None = toolset.get(call.name)
    if tool is None:
        return Violation(
            "unknown_tool", f"there is no tool {call.name!r}; available: {', '.join(toolset)}", call
        )
    try:
        if ctx is None:
            tool.validate(call.arguments)
        else:
            tool.check(call.arguments, ctx)
    except ToolError as e:
        return Violation(e.code, e.message, call)
    return None
