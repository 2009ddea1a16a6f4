"""The turn parser: a table of well-formed turns and of every violation code."""

import json

import pytest

from vision_tools.protocol import CODES, ToolCall, parse_turn, question_text, result_text, system_prompt
from vision_tools.tools import ToolContext, crop_image

SIZES = ToolContext(sizes=[(280, 224), (112, 56)])  # image 0 and one tool result


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


T = "<think>I look at the bars.</think>"
LOOP = " ".join(["the bar is tall and"] * 6)

TABLE = [
    # well-formed: (text, "answer"/"tool_call", expected answer or call)
    (T + "<answer>42</answer>", "answer", "42"),
    (T + "\n<answer> B </answer>\n", "answer", "B"),
    ("  <think></think><answer>x = 3</answer>", "answer", "x = 3"),
    (T + call("crop_image", bbox_2d=[0, 0, 140, 112], image_index=0), "tool_call", "crop_image"),
    (T + " " + call("crop_image", bbox_2d=[0.5, 1, 280, 224], image_index=0), "tool_call", "crop_image"),
    (T + call("crop_image", bbox_2d=[0, 0, 112, 56], image_index=1), "tool_call", "crop_image"),
    (T + call("scale_image", scale_factor=2, image_index=0), "tool_call", "scale_image"),
    (T + call("scale_image", scale_factor=0.25, image_index=1), "tool_call", "scale_image"),
    (T + call("scale_image", scale_factor=4.0, image_index=0), "tool_call", "scale_image"),
    (T + call("display_image", image_index=1), "tool_call", "display_image"),
    (
        T + '<tool_call>\n{"name": "display_image", "arguments": "{\\"image_index\\": 0}"}\n</tool_call>',
        "tool_call",
        "display_image",
    ),
    # violations: (text, code, None)
    ("<answer>42</answer>", "bad_tags", None),
    ("I think it is 42", "bad_tags", None),
    (T, "bad_tags", None),
    (T + "<answer>42", "bad_tags", None),
    ("<answer>42</answer>" + T, "bad_tags", None),
    (T + "<answer>42</answer> and that is final", "bad_tags", None),
    ("<think>unclosed <answer>42</answer>", "bad_tags", None),
    (T + "<answer>1</answer><answer>2</answer>", "multiple_blocks", None),
    (T + call("display_image", image_index=0) + "<answer>3</answer>", "multiple_blocks", None),
    (T + T + "<answer>3</answer>", "multiple_blocks", None),
    (T + call("display_image", image_index=0) * 2, "multiple_blocks", None),
    (T + "<tool_call>{name: crop_image}</tool_call>", "bad_json", None),
    (
        T
        + '<tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 10, 10], "image_index": 0}</tool_call>',
        "bad_json",
        None,
    ),
    (T + '<tool_call>["crop_image"]</tool_call>', "bad_json", None),
    (T + '<tool_call>{"arguments": {"image_index": 0}}</tool_call>', "bad_json", None),
    (T + call("rotate_image", angle=90, image_index=0), "unknown_tool", None),
    (T + call("crop_image", bbox=[0, 0, 10, 10], image_index=0), "bad_arguments", None),
    (T + call("crop_image", bbox_2d=[0, 0, 10, 10]), "bad_arguments", None),
    (T + call("crop_image", bbox_2d="0,0,10,10", image_index=0), "bad_arguments", None),
    (T + call("crop_image", bbox_2d=[0, 0, 10], image_index=0), "bad_arguments", None),
    (T + call("display_image", image_index=2), "index_out_of_range", None),
    (T + call("crop_image", bbox_2d=[0, 0, 10, 10], image_index=-1), "index_out_of_range", None),
    (T + call("crop_image", bbox_2d=[0, 0, 300, 100], image_index=0), "bbox_out_of_bounds", None),
    (T + call("crop_image", bbox_2d=[0, 0, 100, 100], image_index=1), "bbox_out_of_bounds", None),
    (T + call("crop_image", bbox_2d=[-1, 0, 100, 100], image_index=0), "bbox_out_of_bounds", None),
    (T + call("crop_image", bbox_2d=[50, 50, 50, 100], image_index=0), "degenerate_bbox", None),
    (T + call("crop_image", bbox_2d=[60, 50, 40, 100], image_index=0), "degenerate_bbox", None),
    (
        T + call("scale_image", scale_factor=1.0, image_index=0),
        "tool_call",
        "scale_image",
    ),  # snaps (inference)
    (T + call("scale_image", scale_factor=4.5, image_index=0), "scale_out_of_range", None),
    (T + call("scale_image", scale_factor=8, image_index=0), "scale_out_of_range", None),
    (T + call("scale_image", scale_factor=0.1, image_index=0), "scale_out_of_range", None),
    (f"<think>{LOOP}</think><answer>4</answer>", "repetition", None),
    ("<think>" + "9" * 80 + "</think><answer>4</answer>", "repetition", None),
    (f"<think>{LOOP}", "repetition", None),
    (T + "<answer></answer>", "empty_answer", None),
    (T + "<answer>  \n </answer>", "empty_answer", None),
]


@pytest.mark.parametrize("text, expect, detail", TABLE, ids=[f"{i}-{row[1]}" for i, row in enumerate(TABLE)])
def test_parse_table(text, expect, detail):
    got = parse_turn(text, ctx=SIZES)
    if expect in ("answer", "tool_call"):
        assert got.ok, got
        assert got.kind == expect
        assert (got.answer if expect == "answer" else got.call.name) == detail
        assert got.think == ("" if text.lstrip().startswith("<think></think>") else "I look at the bars.")
    else:
        assert not got.ok and got.code == expect, got
        assert got.message


def test_table_covers_every_code_and_is_large():
    assert len(TABLE) >= 30
    assert {row[1] for row in TABLE} >= set(CODES)


def test_call_keeps_the_arguments_as_written_and_the_tool_coerces_them():
    got = parse_turn(T + call("crop_image", bbox_2d=[0, 0, 140, 112], image_index=0.0), ctx=SIZES)
    assert got.call == ToolCall("crop_image", {"bbox_2d": [0, 0, 140, 112], "image_index": 0.0})
    assert type(got.call.arguments["image_index"]) is float
    coerced = crop_image.validate(got.call.arguments)
    assert type(coerced["image_index"]) is int and all(type(v) is float for v in coerced["bbox_2d"])


def test_without_sizes_only_schema_checks_run():
    # image 5 does not exist, but without a context the parser cannot know
    assert parse_turn(T + call("display_image", image_index=5)).ok
    assert parse_turn(T + call("display_image", image_index="5")).code == "bad_arguments"


def test_legitimate_text_is_not_a_repetition():
    text = (
        "<think>"
        + " ".join(f"step {i}: add {i} to the total." for i in range(40))
        + "</think><answer>780</answer>"
    )
    assert parse_turn(text).ok


def test_prompts():
    sp = system_prompt()
    schemas = [json.loads(line) for line in sp.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()]
    assert [s["function"]["name"] for s in schemas] == ["crop_image", "scale_image", "display_image"]
    assert question_text("How many?", (280, 224)).startswith("Image 0: 280 x 224.\nQuestion: How many?\n\n")
    assert result_text(2, (112, 56)) == (
        "Image 2: 112 x 56. Fully utilize the tools and make comprehensive use of the results. Keep thinking."
    )
    assert result_text(1, (56, 56), "How many?").endswith("Keep thinking.\nQuestion: How many?")


def test_rl_checks_scale_factors_strictly():
    """Inference snaps any factor in [0.25, 4]; the RL format check (snap_scale off) rejects the
    gap (0.5, 1.5), as ViRC's reward does."""
    rl = ToolContext(sizes=[(280, 224)], snap_scale=False)
    for factor in (0.75, 1.0, 1.4):
        assert parse_turn(T + call("scale_image", scale_factor=factor, image_index=0), ctx=SIZES).ok
        got = parse_turn(T + call("scale_image", scale_factor=factor, image_index=0), ctx=rl)
        assert got.code == "scale_out_of_range" and "1.5-4" in got.message
    for factor in (0.5, 1.5, 3.3):
        assert parse_turn(T + call("scale_image", scale_factor=factor, image_index=0), ctx=rl).ok
