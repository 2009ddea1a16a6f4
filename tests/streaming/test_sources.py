"""Video sources: files, folders, synthetic; empty, corrupt and truncated files."""

import os

import numpy as np
import pytest
from PIL import Image

from mm.synthetic import moving_dot_frames, write_video
from mm.visual import VisualError
from streaming.sources import FileSource, FolderSource, SyntheticSource, open_source


@pytest.fixture
def clip(tmp_path):
    return write_video(str(tmp_path / "clip.mp4"), moving_dot_frames(40, size=112), fps=8)  # 5 s


def test_file_source_gives_two_frames_per_second(clip):
    src = open_source(clip)
    assert isinstance(src, FileSource) and src.duration == 5
    secs = list(src.seconds())
    assert [s.index for s in secs] == [0, 1, 2, 3, 4]
    assert all(len(s.frames) == 2 and s.frames[0].shape == (112, 112, 3) for s in secs)
    # the encoder's rule for a 1-second segment of an 8 fps clip: frames 8k and 8k + 7
    want = moving_dot_frames(40, size=112)[15]
    assert np.abs(secs[1].frames[1].astype(int) - want.astype(int)).mean() < 12  # lossy codec


def test_empty_and_corrupt_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VisualError, match="empty"):
        open_source(str(empty))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(VisualError) as e:
        open_source(str(junk))
    assert e.value.code == "bad_video" and "re-encode" in str(e.value)
    with pytest.raises(FileNotFoundError, match="camera:N"):
        open_source(str(tmp_path / "missing.mp4"))


def test_truncated_files(clip, tmp_path):
    data = open(clip, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])  # OpenCV's mp4 keeps its index at the end: lost
    with pytest.raises(VisualError) as e:
        open_source(str(cut))
    assert e.value.code == "bad_video"
    webm = write_video(str(tmp_path / "clip.webm"), moving_dot_frames(40, size=112), fps=8)
    data = open(webm, "rb").read()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) * 2 // 3])
    src = open_source(str(tmp_path / "cut.webm"))  # a stream format: the first part still plays
    secs = list(src.seconds())
    assert 1 <= len(secs) < 5 and [s.index for s in secs] == list(range(len(secs)))
    full = list(open_source(webm).seconds())
    for a, b in zip(secs, full):  # what it plays is the clip's own frames
        assert np.array_equal(a.frames[0], b.frames[0])


def test_bad_frames_mid_stream_are_skipped_with_a_warning(clip, monkeypatch):
    import streaming.sources as sources

    real = sources._reader

    def flaky(path):
        read = real(path)
        return lambda idx: (_ for _ in ()).throw(OSError("damaged")) if idx[0] == 16 else read(idx)

    monkeypatch.setattr(sources, "_reader", flaky)
    src = open_source(clip)
    with pytest.warns(UserWarning, match="second 2: frames could not be decoded"):
        secs = list(src.seconds())
    assert [s.index for s in secs] == [0, 1, 3, 4] and src.skipped == 1


def test_folder_and_synthetic_sources(tmp_path):
    for i, f in enumerate(moving_dot_frames(6, size=56)):
        Image.fromarray(f).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(str(tmp_path))
    assert isinstance(src, FolderSource) and src.duration == 3  # 6 frames at 2 fps
    assert [len(s.frames) for s in src.seconds()] == [2, 2, 2]
    syn = open_source("synthetic:4")
    assert isinstance(syn, SyntheticSource) and len(list(syn.seconds())) == 4
    os.makedirs(tmp_path / "nothing")
    with pytest.raises(VisualError, match="no image files"):
        FolderSource(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError):  # a file named synthetic_*.mp4 is a file, not the generator
        open_source(str(tmp_path / "synthetic_clip.mp4"))
