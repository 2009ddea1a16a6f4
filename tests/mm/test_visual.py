"""Visual sources: paths, data URLs, frame lists, decord and the OpenCV fallback, clear errors."""

import base64
import io

import pytest
import torch

import mm.visual as visual
from mm.synthetic import moving_dot_frames, write_video
from mm.visual import VisualConfig, VisualError, load_visuals, plan_item, plan_visuals
from tests.conftest import solid
from tests.testing_utils import require_decord, require_opencv

pytestmark = require_opencv


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "dot.mp4"
    return str(write_video(str(path), moving_dot_frames(12, size=56), fps=4.0))


def test_video_plan_and_frames(video):
    p = plan_item({"type": "video", "video": video, "fps": 2.0}, VisualConfig(), None)
    assert p.frames == 6 and p.hw == (56, 56)  # 12 frames at 4 fps = 3 s -> 6 frames at 2 fps
    assert p.tokens == 3 * 4
    _, videos = load_visuals([p], VisualConfig())
    assert videos[0].shape == (6, 3, 56, 56)
    # the dot moves right: its centre of mass (red channel minus others) increases
    red = videos[0][:, 0] - videos[0][:, 1]
    xs = [(r.sum(0) * torch.arange(56)).sum() / r.sum() for r in red]
    assert all(b > a for a, b in zip(xs, xs[1:]))


def test_video_segment(video):
    p = plan_item(
        {"type": "video", "video": video, "video_start": 1.0, "video_end": 2.0}, VisualConfig(), None
    )
    assert p.frames == 2  # one second at 2 fps


@require_decord  # compares decord with the OpenCV fallback
def test_opencv_fallback_matches_decord(video, monkeypatch):
    a = visual.read_video_frames(video, [0, 5, 11])
    monkeypatch.setattr(visual, "is_available", lambda name: name != "decord")
    b = visual.read_video_frames(video, [0, 5, 11])
    info = visual.probe_video(video)
    assert info.frames == 12 and (info.height, info.width) == (56, 56)
    assert a.shape == b.shape == (3, 3, 56, 56)
    assert (a.float() - b.float()).abs().mean() < 2.0  # same decoder family, same frames


def test_data_url_and_pil_and_relative(tmp_path):
    img = solid(100, 50)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    img.save(tmp_path / "a.png")
    plans = plan_visuals([{"image": url}, {"image": img}, {"image": "a.png"}], VisualConfig(), str(tmp_path))
    assert [p.hw for p in plans] == [(56, 112)] * 3
    images, _ = load_visuals(plans, VisualConfig())
    assert images[0].tobytes() == images[1].tobytes() == images[2].tobytes()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(VisualError, match="not allowed"):
        plan_item({"image": "https://example.com/x.png"}, VisualConfig(), None)
    with pytest.raises(VisualError, match="not found"):
        plan_item({"image": "nope.png"}, VisualConfig(), str(tmp_path))
    with pytest.raises(VisualError, match="aspect ratio"):
        plan_item({"image": solid(2000, 5)}, VisualConfig(), None)
    frames = [solid(56, 56)]
    p = plan_item({"video": frames}, VisualConfig(), None)
    assert p.frames == 2  # a single frame is repeated to fill one temporal patch


def test_qwen3vl_sizes_are_multiples_of_32_and_keep_the_frame_times(tmp_path, video):
    """factor=32 (Qwen3-VL): 100 x 50 -> 96 x 64 (round(100/32) = 3, round(50/32) = 2 tokens a side);
    a video plan records when each sampled frame was (frame index / the file's fps)."""
    p = plan_item({"image": solid(100, 50)}, VisualConfig(), None, factor=32)
    assert p.hw == (64, 96) and p.tokens == 2 * 3
    v = plan_item({"type": "video", "video": video, "fps": 2.0}, VisualConfig(), None, factor=32)
    assert v.hw == (64, 64) and v.tokens == 3 * 4  # 56 -> 64: 2 x 2 tokens, 6 frames -> 3 groups
    assert v.seconds == [0.0, 0.5, 1.0, 1.75, 2.25, 2.75]  # frames 0, 2, 4, 7, 9, 11 of 12 at 4 fps
    frames = plan_item(
        {"video": [solid(56, 56)] * 3, "sample_fps": 2.0, "video_start": 10.0}, VisualConfig(), None
    )
    assert frames.frames == 4 and frames.seconds == [10.0, 10.5, 11.0, 11.0]  # the last repeats
