"""The CRU data builder: problems -> stage-1 / stage-2 trajectories, crops really executed."""

import json

import numpy as np
import pytest
from PIL import Image

from mm.visual import VisualConfig
from mmpost.data.checks import run_validate
from tests.conftest import solid
from vision_tools.crux import build_crux, cru_turns
from vision_tools.protocol import parse_turn


@pytest.fixture
def problems(tmp_path):
    solid(280, 224).save(tmp_path / "a.png")
    solid(300, 200, (20, 20, 200)).save(tmp_path / "b.png")
    rows = [
        {
            "id": "two",
            "image": "a.png",
            "question": "Which is taller?",
            "answer": "B",
            "plan": "Two bars.",
            "regions": [
                {"bbox": [0, 0, 140, 224], "question": "How tall is A?", "steps": ["A is 3."]},
                {"bbox": [140, 0, 280, 224], "question": "How tall is B?", "steps": ["B is 5."]},
            ],
            "final": "5 > 3, so B.",
        },
        {
            "id": "resized",
            "image": "b.png",
            "question": "What is it?",
            "answer": "7",
            "regions": [{"bbox": [30, 20, 150, 100], "question": "Look left.", "steps": ["It is 7."]}],
        },
        {
            "id": "flat",
            "image": "a.png",
            "question": "Q?",
            "answer": "1",
            "regions": [{"bbox": [10, 10, 10, 50], "steps": []}],
        },
    ]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def records(path):
    return {r["id"]: r for r in map(json.loads, open(path))}


def test_stage2_trajectories(problems, tmp_path):
    out = tmp_path / "out"
    counts = build_crux(str(problems), str(out))
    assert counts == {"written": 2, "dropped (degenerate_bbox)": 1}
    recs = records(out / "stage2.jsonl")
    msgs = recs["two"]["messages"]
    assert [m["role"] for m in msgs] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    a1, a2, a3 = (msgs[i]["content"] for i in (2, 4, 6))
    assert a1.startswith("<think>Planning: Two bars.\n\nHow tall is A?</think><tool_call>")
    assert a2.startswith("<think>A is 3.\n\nHow tall is B?</think><tool_call>")
    assert a3 == "<think>B is 5.\n5 > 3, so B.</think><answer>B</answer>"
    assert parse_turn(a2).call.arguments == {"bbox_2d": [140, 0, 280, 224], "image_index": 0}
    assert msgs[3]["content"][1]["text"].startswith("Image 1: 140 x 224.")
    crop = Image.open(out / msgs[3]["content"][0]["image"])
    assert np.array_equal(np.asarray(crop), np.asarray(solid(280, 224).crop((0, 0, 140, 224))))
    assert recs["two"]["meta"]["bbox"] == [[0, 0, 140, 224], [140, 0, 280, 224]]
    assert run_validate(str(out / "stage2.jsonl"), VisualConfig()) == 0


def test_boxes_follow_the_image_as_the_model_sees_it(problems, tmp_path):
    build_crux(str(problems), str(tmp_path / "out"))
    msgs = records(tmp_path / "out" / "stage2.jsonl")["resized"]["messages"]
    # 300 x 200 is shown as 308 x 196 (smart_resize); the box scales by (308/300, 196/200):
    # floor(30*1.0267)=30, floor(20*0.98)=19, ceil(150*1.0267)=154, ceil(100*0.98)=98
    assert "Image 0: 308 x 196." in msgs[1]["content"][1]["text"]
    assert parse_turn(msgs[2]["content"]).call.arguments["bbox_2d"] == [30, 19, 154, 98]


def test_stage1_drops_tool_result_images_only(problems, tmp_path):
    out = tmp_path / "out"
    build_crux(str(problems), str(out))
    s1, s2 = (
        records(out / "stage1.jsonl")["two"]["messages"],
        records(out / "stage2.jsonl")["two"]["messages"],
    )

    def images(m):
        return [c for c in m["content"] if c.get("type") == "image"] if isinstance(m["content"], list) else []

    assert [len(images(m)) for m in s2] == [0, 1, 0, 1, 0, 1, 0]
    assert [len(images(m)) for m in s1] == [0, 1, 0, 0, 0, 0, 0]
    text = [
        [c for c in m["content"] if c.get("type") == "text"]
        if isinstance(m["content"], list)
        else m["content"]
        for m in s1
    ]
    assert text == [
        [c for c in m["content"] if c.get("type") == "text"]
        if isinstance(m["content"], list)
        else m["content"]
        for m in s2
    ]
    assert records(out / "stage1.jsonl")["two"]["meta"]["stage"] == 1


def test_no_regions_is_a_single_answer_turn():
    assert cru_turns({"answer": "4", "plan": "Easy."}, []) == [
        "<think>Planning: Easy.</think><answer>4</answer>"
    ]


def test_malformed_problems_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"image": "a.png", "question": "q", "answer": "1"}\n{"image": "a.png", "question": "q"}\n'
    )
    solid(56, 56).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"p.jsonl:2: .*answer"):
        build_crux(str(path), str(tmp_path / "out"))
    path.write_text('{"image": "nope.png", "question": "q", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: .*not found"):
        build_crux(str(path), str(tmp_path / "out"))


def test_scale_and_display_units_over_several_images(tmp_path):
    """A problem with two images and one unit of each tool: the prompt shows images 0 and 1 (one
    size line each); the crop of image 1 is of image 1's pixels; scale_image(2) of image 0 and
    display_image of the crop (image 2) are executed by the engine (images 3 and 4); a scale factor
    RL would reject (1.0) drops its problem."""
    solid(280, 224).save(tmp_path / "a.png")
    solid(140, 112, (20, 20, 200)).save(tmp_path / "b.png")
    units = [
        {"bbox": [0, 0, 56, 56], "image": 1, "question": "Top-left of B?", "steps": ["It is 2."]},
        {"tool": "scale_image", "scale_factor": 2, "image": 0, "question": "Details of A?", "steps": ["3."]},
        {"tool": "display_image", "image": 2, "question": "Check the crop again.", "steps": ["Still 2."]},
    ]
    rows = [
        {"id": "multi", "images": ["a.png", "b.png"], "question": "Sum?", "answer": "5", "regions": units},
        {
            "id": "gap",
            "image": "a.png",
            "question": "Q?",
            "answer": "1",
            "regions": [{"tool": "scale_image", "scale_factor": 1.0, "steps": []}],
        },
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert build_crux(str(path), str(out)) == {"written": 1, "dropped (scale_out_of_range)": 1}
    rec = records(out / "stage2.jsonl")["multi"]
    msgs = rec["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"] + ["assistant", "user"] * 3 + ["assistant"]
    first = msgs[1]["content"]
    assert [c["type"] for c in first] == ["image", "image", "text"]
    assert first[2]["text"].startswith("Image 0: 280 x 224.\nImage 1: 140 x 112.\nQuestion: Sum?\n\n")
    calls = [parse_turn(msgs[i]["content"]).call for i in (2, 4, 6)]
    assert [(c.name, c.arguments) for c in calls] == [
        ("crop_image", {"bbox_2d": [0, 0, 56, 56], "image_index": 1}),
        ("scale_image", {"scale_factor": 2, "image_index": 0}),
        ("display_image", {"image_index": 2}),
    ]
    results = [Image.open(out / msgs[i]["content"][0]["image"]) for i in (3, 5, 7)]
    b_crop = solid(140, 112, (20, 20, 200)).crop((0, 0, 56, 56))  # 56 x 56: smart_resize keeps it
    assert np.array_equal(np.asarray(results[0]), np.asarray(b_crop))  # image 2: a crop of image 1
    assert results[1].size == (560, 448)  # image 3: image 0 x 2 (multiples of 28 already)
    assert np.array_equal(np.asarray(results[2]), np.asarray(b_crop))  # image 4: image 2 again
    texts = [msgs[i]["content"][1]["text"] for i in (3, 5, 7)]
    assert texts[0].startswith("Image 2: 56 x 56.") and texts[1].startswith("Image 3: 560 x 448.")
    assert texts[1].endswith("Question: Sum?")  # scale_image repeats the question
    assert texts[2].startswith("Image 4: 56 x 56.")
    assert rec["meta"]["tools"] == ["crop_image", "scale_image", "display_image"]
    assert rec["meta"]["bbox"] == [[0, 0, 56, 56], None, None]
    assert run_validate(str(out / "stage2.jsonl"), VisualConfig()) == 0


def test_bad_units_name_the_line_and_the_fix(tmp_path):
    solid(56, 56).save(tmp_path / "a.png")
    path = tmp_path / "p.jsonl"
    cases = [
        ({"tool": "rotate_image"}, "use one of crop_image, scale_image, display_image"),
        ({"bbox": [0, 0, 10, 10], "image": 1}, "crops image 1, but the problem has 1 image"),
        ({"tool": "scale_image"}, "needs a numeric 'scale_factor'"),
        ({"tool": "display_image", "image": -1}, "'image' must be an image index >= 0"),
    ]
    for unit, message in cases:
        row = {"image": "a.png", "question": "q", "answer": "1", "regions": [unit]}
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(ValueError, match=rf"p.jsonl:1: .*{message}"):
            build_crux(str(path), str(tmp_path / "out"))
