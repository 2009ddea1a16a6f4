"""`mmpost data validate`: every bad-input kind gives its error line with the right line number."""

import io
import json
import re

import pytest

from mm.dataset import DataError, RecordDataset
from mm.visual import VisualConfig
from mmpost import main
from mmpost.data.checks import run_validate
from tests.conftest import solid


def good(image="ok.png"):
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": "A."},
        ]
    }


@pytest.fixture
def bad_file(tmp_path):
    solid(64, 64).save(tmp_path / "ok.png")
    solid(2000, 2000).save(tmp_path / "big.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    lines = [
        json.dumps(good()),  # 1 ok
        '{"messages": [{"role": "user", "content": "hi"}',  # 2 bad JSON
        json.dumps(
            {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]}
        ),  # 3
        json.dumps({"messages": []}),  # 4 empty messages
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),  # 5 no assistant
        json.dumps(good("missing.png")),  # 6 missing image
        json.dumps(good("corrupt.png")),  # 7 undecodable image
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "video", "video": "nope.mp4"}]},
                    {"role": "assistant", "content": "y"},
                ]
            }
        ),  # 8 missing video
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "video", "video": "corrupt.mp4"}]},
                    {"role": "assistant", "content": "y"},
                ]
            }
        ),  # 9 undecodable video
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]},
                    {"role": "assistant", "content": "y"},
                ]
            }
        ),  # 10 unsupported content
        json.dumps(good("big.png")),  # 11 over budget (5041 tokens > 1000)
        "",  # 12 blank: ignored
        json.dumps({"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}),  # 13 ok (RL)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


EXPECTED = {
    2: "bad_json",
    3: "unknown_role",
    4: "empty_messages",
    5: "no_assistant",
    6: "missing_image",
    7: "bad_image",
    8: "missing_video",
    9: "bad_video",
    10: "unsupported_content",
    11: "over_budget",
}


def test_each_problem_on_its_line(bad_file):
    out = io.StringIO()
    code = run_validate(str(bad_file), VisualConfig(max_visual_tokens=1000, budget_policy="reject"), out=out)
    text = out.getvalue()
    assert code == 1
    for line, kind in EXPECTED.items():
        assert f"{bad_file}:{line}: [{kind}]" in text, (line, kind, text)
    problem_lines = [ln for ln in text.splitlines() if re.match(re.escape(str(bad_file)) + r":\d+: \[", ln)]
    assert len(problem_lines) == len(EXPECTED)
    assert text.count("fix: ") >= len(EXPECTED) - 1
    assert "12 record(s), 2 ok, 10 with problems" in text


def test_shrink_policy_reports_over_budget_as_shrunk(bad_file):
    out = io.StringIO()
    run_validate(str(bad_file), VisualConfig(max_visual_tokens=1000, budget_policy="shrink"), out=out)
    assert "[over_budget]" not in out.getvalue()
    assert "1 over the visual-token budget will be shrunk" in out.getvalue()


def test_cli_exit_codes_and_no_traceback(bad_file, tmp_path, capsys):
    assert (
        main(["data", "validate", str(bad_file), "--max-visual-tokens", "1000", "--budget-policy", "reject"])
        == 1
    )
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps(good()) + "\n")
    assert main(["data", "validate", str(ok)]) == 0
    assert main(["data", "validate", str(tmp_path / "absent.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "data file not found" in err and "Traceback" not in err


def test_dataset_on_error(bad_file, encoder):
    with pytest.raises(DataError, match=r"data.jsonl:2: \[bad_json\]"):
        RecordDataset(str(bad_file), encoder, on_error="raise")
    ds = RecordDataset(str(bad_file), encoder, on_error="skip")
    assert ds.skipped == 5  # lines 2-5 and 10 fail parsing; visual problems surface when encoded
    items = [ds[i] for i in range(len(ds))]
    assert sum(x is None for x in items) == 4  # lines 6-9: missing/corrupt image and video
    assert ds.skipped == 9
    assert items[0] is not None and items[0].visual_tokens > 0
    assert [p.line for p in ds.problems] == [2, 3, 4, 5, 10, 6, 7, 8, 9]
