"""Every reward on a table of completions, reward-hacking cases included; the judges."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from PIL import Image

from alignment.rewards import combine
from alignment.rewards.builtin import accuracy, cls_accuracy, cls_equality, cls_format, format_think_answer
from alignment.rewards.virc import crop_score, virc_turn
from evaluation.judge import HTTPJudge, RuleJudge
from tests.conftest import reply_chat

FORMAT = [
    ("<think>2+2 is 4</think><answer>4</answer>", 1.0),
    ("<think>x</think>\n<answer>4</answer>\n", 1.0),
    ("<answer>4</answer>", 0.0),  # no thinking
    ("<think>x</think>", 0.0),  # no answer
    ("<think>x</think><answer>4</answer> and more", 0.0),  # text outside
    ("<think>x</think><answer>3</answer><answer>4</answer>", 0.0),  # hedging with two answers
    ("<think>a</think><think>b</think><answer>4</answer>", 0.0),
    ("<answer>4</answer><think>x</think>", 0.0),  # wrong order
    ("<think>x<answer>4</answer></think>", 0.0),
]


@pytest.mark.parametrize("text, want", FORMAT)
def test_format_think_answer(text, want):
    assert format_think_answer([text]) == [want]


ACCURACY = [
    ("<think>.</think><answer>4</answer>", "4", 1.0),
    ("<think>.</think><answer>4.0</answer>", "4", 1.0),
    ("<think>.</think><answer>(B)</answer>", "B", 1.0),
    ("<think>.</think><answer> Paris. </answer>", "paris", 1.0),
    ("<think>.</think><answer>5</answer>", "4", 0.0),
    ("<think>.</think><answer></answer>", "4", 0.0),  # empty answer
    ("<think>.</think><answer>3</answer><answer>4</answer>", "4", 0.0),  # listing answers earns nothing
    ("the answer is 4", "4", 0.0),  # no answer block
]


@pytest.mark.parametrize("text, gold, want", ACCURACY)
def test_accuracy(text, gold, want):
    assert accuracy([text], answer=gold) == [want]


def test_cls_rewards():
    comps = [
        "<think>fur</think><answer> Tabby Cat </answer>",
        "<think>.</think><answer>dog</answer>",
        "tabby cat",  # no answer block: the whole completion is the answer (as released)
        " Tabby cat\n",
        "it is a tabby cat",  # the reward is equality, not the evaluation's substring rule
        "<think>.</think><answer>dog</answer><answer>tabby cat</answer>",  # hedging earns nothing
    ]
    assert cls_accuracy(comps, answer="tabby cat") == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert cls_equality(comps, answer="tabby cat") == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]  # exact, raw
    assert cls_accuracy(["<think>.</think><answer></answer>", ""], answer="") == [0.0, 0.0]


CLS_FORMAT = [
    ("<think>fur</think><answer>cat</answer>", 1.0),
    ("<think>fur</think> \n<answer>cat</answer>", 1.0),  # whitespace between the blocks only
    ("<think>fur</think><answer>cat</answer>\n", 0.0),  # nothing after (format_think_answer: 1)
    (" <think>fur</think><answer>cat</answer>", 0.0),  # nothing before
    ("<think>a</think><answer>cat</answer><answer>dog</answer>", 0.0),  # the release's regex: 1
    ("cat", 0.0),
]


@pytest.mark.parametrize("text, want", CLS_FORMAT)
def test_cls_format_is_the_released_full_match(text, want):
    assert cls_format([text]) == [want]


def call(name, think="I zoom into the left bar to read it", **arguments):
    return (
        f"<think>{think}</think><tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"
    )


SAMPLE = {
    "answer": "7",
    "image_sizes": [(280, 224)],
    "question": "Value of bar A?",
    "meta": {"bbox": [[0, 0, 140, 224]], "tool": "crop_image"},
}


def test_virc_turn_table():
    comps = [
        "<think>it reads 7</think><answer>7</answer>",  # correct answer: 0.8
        "<think>it reads 6</think><answer>6</answer>",  # wrong answer: 0
        call("crop_image", bbox_2d=[0, 0, 140, 224], image_index=0),  # precise crop: 0.5 + 0.4 + 0.1
        call("crop_image", bbox_2d=[0, 0, 280, 224], image_index=0),  # whole image: 0.5 + 0.32 + 0.1
        call("crop_image", bbox_2d=[0, 0, 35, 224], image_index=0),  # IoU 0.25: 0.5 + 0.4*0.4 + 0.1
        call("scale_image", scale_factor=2, image_index=0),  # not the reference tool: 0.5 + 0.32
        call("crop_image", think="", bbox_2d=[0, 0, 140, 224], image_index=0),  # no reasoning: 0.4 + 0.1
        call("crop_image", bbox_2d=[0, 0, 400, 224], image_index=0),  # out of bounds: -1
        call("crop_image", bbox_2d=[0, 0, 140, 224], image_index=3),  # no such image: -1
        call("scale_image", scale_factor=1.0, image_index=0),  # scale out of range: -1
        "<think>x</think><tool_call>{bad json}</tool_call>",  # -1
        "<think>x</think><answer>7</answer><answer>7</answer>",  # repeated answer: -1
    ]
    want = [0.8, 0.0, 1.0, 0.92, 0.76, 0.82, 0.5, -1, -1, -1, -1, -1]
    assert virc_turn(comps, **SAMPLE) == pytest.approx(want)


def test_virc_turn_counts_executed_calls_only():
    comp = [call("crop_image", bbox_2d=[0, 0, 140, 224], image_index=0)]
    # without image sizes a call cannot be checked, so it earns nothing
    assert virc_turn(comp, answer="7", meta=SAMPLE["meta"]) == [0.0]
    # with the images it is executed (and scored as a precise crop of the reference tool)
    img = Image.new("RGB", (280, 224))
    assert virc_turn(comp, answer="7", images=[img], meta=SAMPLE["meta"]) == pytest.approx([1.0])


def test_crop_score():
    assert crop_score([0, 0, 10, 10], None, (100, 100)) == 0.8
    assert crop_score([0, 0, 50, 100], [0, 0, 50, 100], (100, 100)) == 1.0
    assert crop_score([0, 0, 100, 100], [0, 0, 10, 10], (100, 100)) == 0.8
    assert crop_score([0, 0, 25, 100], [0, 0, 100, 100], (100, 100)) == pytest.approx(0.8 * 0.25 / 0.5)


def test_combine_weights_and_names():
    comps = ["<think>a</think><answer>4</answer>", "<answer>4</answer>"]
    total, parts = combine({"format_think_answer": 0.5, "accuracy": 1.0}, comps, answer="4")
    assert total == [1.5, 1.0] and parts == {"format_think_answer": [1.0, 0.0], "accuracy": [1.0, 1.0]}
    with pytest.raises(ValueError, match="unknown reward"):
        combine({"acuracy": 1.0}, comps, answer="4")


class FakeJudge(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):  # noqa: N802 - http.server's naming
        FakeJudge.calls += 1
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        assert body["messages"][0]["content"].startswith("Rate how well")
        if FakeJudge.calls == 1:  # the first request fails: the judge retries
            self.send_response(500)
            self.end_headers()
            return
        reply_chat(self, "7")

    def log_message(self, *a):
        pass


def test_http_judge_retries_caches_and_falls_back():
    server = HTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = HTTPJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge", timeout=5, retries=3)
        assert judge.score("q", "some reasoning") == pytest.approx(0.7)
        assert judge.score("q", "some reasoning") == pytest.approx(0.7)  # cached
        assert FakeJudge.calls == 2 and judge.requests == 2
    finally:
        server.shutdown()
    dead = HTTPJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge", timeout=0.5, retries=2)
    with pytest.warns(UserWarning, match="rule-based"):
        assert dead.score("q", "three words here") == 1.0  # RuleJudge's verdict
    assert RuleJudge().score("q", "too short") == 0.0


def test_virc_turn_reads_boxes_in_fixed_coordinates():
    """coords="fixed": boxes on the 0..999 grid, checked and compared there (the whole grid is the
    whole image, 0.8); in pixels the same box leaves a 280 x 224 image."""
    whole = call("crop_image", bbox_2d=[0, 0, 999, 999], image_index=0)
    half = call("crop_image", bbox_2d=[0, 0, 499, 999], image_index=0)
    sample = {**SAMPLE, "meta": {"bbox": [[0, 0, 499, 999]], "tool": "crop_image"}}
    assert virc_turn([whole, half], coords="fixed", **sample) == pytest.approx([0.92, 1.0])
    assert virc_turn([whole], **sample) == [-1.0]  # dynamic pixels: out of bounds
    fixed_meta = {**sample, "meta": {**sample["meta"], "coords": "fixed"}}  # or from the data
    assert virc_turn([whole], **fixed_meta) == pytest.approx([0.92])


def test_http_judge_cache_file_survives_the_run(tmp_path):
    """judge.cache: a second judge on the same file asks nothing it was asked before; a fallback
    score (server down) is not written, so it is asked again next time."""
    FakeJudge.calls = 1  # past the scripted first failure
    server = HTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, cache = f"http://127.0.0.1:{server.server_port}/v1", str(tmp_path / "judge.jsonl")
    try:
        assert HTTPJudge(url, "judge", cache_file=cache).score("q", "some reasoning") == pytest.approx(0.7)
        again = HTTPJudge(url, "judge", cache_file=cache)
        assert again.score("q", "some reasoning") == pytest.approx(0.7) and again.requests == 0
    finally:
        server.shutdown()
        FakeJudge.calls = 0
    dead = HTTPJudge(url, "judge", timeout=0.5, retries=1, cache_file=cache)
    with pytest.warns(UserWarning, match="rule-based"):
        assert dead.score("q", "three words here") == 1.0
    assert len(open(cache).read().splitlines()) == 1


def test_soft_overlong_penalty_hand_worked():
    """DAPO eq. 13 with L_max = 20, L_cache = 4: free up to 16 tokens, then (16 - |y|) / 4 down to
    -1 at 20, and -1 beyond; DAPO's own numbers (20,480 with a 4,096 cache): free to 16,384."""
    from alignment.rewards.builtin import soft_overlong_penalty

    assert [soft_overlong_penalty(n, 20, 4) for n in (10, 16, 17, 18, 19, 20, 25)] == [
        0.0,
        0.0,
        -0.25,
        -0.5,
        -0.75,
        -1.0,
        -1.0,
    ]
    assert soft_overlong_penalty(16384, 20480, 4096) == 0.0
    assert soft_overlong_penalty(18432, 20480, 4096) == -0.5
    with pytest.raises(ValueError, match="overlong cache 0 must be in 1..20"):
        soft_overlong_penalty(5, 20, 0)
