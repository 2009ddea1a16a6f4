"""The CRU data builder: problems -> stage-1 / stage-2 trajectories, crops really executed."""

import json

import numpy as np
import pytest
from PIL import Image

from mm.data_cli import run_validate
from mm.visual import VisualConfig
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
