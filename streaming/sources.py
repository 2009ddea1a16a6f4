"""Video sources for streaming: one :class:`Second` of frames at a time.

``open_source(spec)`` picks the source: a video file (decord, OpenCV fallback), a folder of
frames, ``camera:N`` or an ``rtsp://`` / ``http://`` stream (OpenCV), or ``synthetic:SECONDS``
(a moving dot, for tests and benchmarks). Files and folders run as fast as the model allows;
live sources are marked ``live`` and the engine paces them to the wall clock.

A file that cannot be opened raises :class:`~mm.visual.VisualError` with a fix; frames that fail
to decode in the middle of a stream are skipped with a warning (``skipped`` counts them) and
the stream goes on; the end of a stream simply ends the iteration.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mm.imports import is_available, require
from mm.visual import VisualError, probe_video

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Second:
    index: int  # the second of the stream: frames cover [index, index + 1)
    frames: list[np.ndarray]  # RGB uint8 [H, W, 3], ``fps`` of them (fewer at a gap)
    # each frame's time in the stream, in seconds (a file's: frame index / its fps, as the encoder
    # reads the frames of {"video_start": k, "video_end": k + 1}); None: evenly spread over the second
    times: list[float] | None = None

    def frame_times(self) -> list[float]:
        """Each frame's time in seconds (Qwen3-VL writes them as ``<t seconds>`` text)."""
        if self.times is not None:
            return list(self.times)
        return [self.index + j / len(self.frames) for j in range(len(self.frames))]

    @property
    def start(self) -> float:
        return float(self.index)

    @property
    def end(self) -> float:
        return float(self.index + 1)


class Source:
    live = False
    duration: float | None = None  # seconds, when known

    def __init__(self, fps: float = 2.0):
        self.fps, self.skipped = fps, 0

    def seconds(self) -> Iterator[Second]:
        raise NotImplementedError

    def _times(self, k: int) -> list[float]:
        n = max(1, round(self.fps))
        return [k + j / n for j in range(n)]

    def _skip(self, k: int, err: Exception) -> None:
        self.skipped += 1
        warnings.warn(f"second {k}: frames could not be decoded ({err}); skipped", stacklevel=2)


class FileSource(Source):
    def __init__(self, path: str, fps: float = 2.0):
        super().__init__(fps)
        info = probe_video(path)  # clear VisualError for a missing, empty or corrupt file
        if info.frames <= 0 or info.fps <= 0:
            raise VisualError("bad_video", f"{path}: no frames or no frame rate", "re-encode the video")
        self.path, self.info = path, info
        self.duration = info.frames / info.fps

    def seconds(self) -> Iterator[Second]:
        reader = _reader(self.path)
        n, fps, total = max(1, round(self.fps)), self.info.fps, self.info.frames
        for k in range(int(np.ceil(self.duration))):
            # the frames the encoder samples for {"video_start": k, "video_end": k + 1} (training data)
            first = min(total - 1, round(k * fps))
            last = min(total - 1, max(first, int(np.ceil((k + 1) * fps)) - 1))
            idx = np.linspace(first, last, n).round().astype(int).tolist()
            try:
                frames = reader(idx)
            except Exception as e:  # a damaged stretch: skip it and go on
                self._skip(k, e)
                continue
            yield Second(k, frames, [i / fps for i in idx])


def _reader(path: str):
    """A function from frame indices to RGB frames, keeping the file open."""
    if is_available("decord"):
        import decord

        try:
            vr = decord.VideoReader(path, num_threads=1)
            return lambda idx: list(vr.get_batch(idx).asnumpy())
        except Exception:  # fall back to OpenCV
            pass
    cv2 = require("cv2", "reading videos")
    cap = cv2.VideoCapture(path)
    state = {"pos": 0}

    def read(idx: list[int]) -> list[np.ndarray]:
        out = []
        for i in idx:
            if i != state["pos"]:
                cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, frame = cap.read()
            if not ok:
                raise VisualError("bad_video", f"frame {i} of {path} cannot be read")
            state["pos"] = i + 1
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return out

    return read


class FolderSource(Source):
    """Image files in name order, taken as a video at ``frame_rate`` frames per second."""

    def __init__(self, folder: str, fps: float = 2.0, frame_rate: float = 2.0):
        super().__init__(fps)
        self.files = sorted(
            os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS)
        )
        if not self.files:
            raise VisualError(
                "bad_video", f"{folder}: no image files", f"put frames ({', '.join(IMAGE_EXTS)}) there"
            )
        self.frame_rate = frame_rate
        self.duration = len(self.files) / frame_rate

    def seconds(self) -> Iterator[Second]:
        from PIL import Image

        for k in range(int(np.ceil(self.duration))):
            idx = [min(int(t * self.frame_rate), len(self.files) - 1) for t in self._times(k)]
            try:
                yield Second(k, [np.asarray(Image.open(self.files[i]).convert("RGB")) for i in idx])
            except Exception as e:
                self._skip(k, e)


class CameraSource(Source):
    """A camera index or a network stream through OpenCV; frames are taken on the wall clock."""

    live = True

    def __init__(self, spec: str | int, fps: float = 2.0):
        super().__init__(fps)
        cv2 = require("cv2", "cameras and streams")
        self.cap = cv2.VideoCapture(spec)
        if not self.cap.isOpened():
            raise VisualError(
                "bad_video", f"cannot open camera/stream {spec!r}", "check the device index or URL"
            )

    def seconds(self) -> Iterator[Second]:
        import cv2

        t0, k = time.monotonic(), 0
        while True:
            frames = []
            for t in self._times(k):
                while time.monotonic() - t0 < t:
                    self.cap.grab()  # keep the buffer fresh until the frame's time
                ok, frame = self.cap.read()
                if not ok:
                    return
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            yield Second(k, frames)
            k = max(k + 1, int(time.monotonic() - t0))  # a slow consumer skips the seconds it missed


class SyntheticSource(Source):
    """A dot moving across a plain background, ``seconds`` long (None: endless)."""

    def __init__(self, seconds: int | None = 10, size: int = 56, fps: float = 2.0):
        super().__init__(fps)
        self.n, self.size = seconds, size
        self.duration = seconds

    def seconds(self) -> Iterator[Second]:
        k = 0
        while self.n is None or k < self.n:
            yield Second(k, [self._frame(t) for t in self._times(k)])
            k += 1

    def _frame(self, t: float) -> np.ndarray:
        s = self.size
        f = np.full((s, s, 3), 240, np.uint8)
        x = int((t * 7) % (s - 12))
        f[s // 2 - 6 : s // 2 + 6, x : x + 12] = (220, 40, 40)
        return f


def open_source(spec: str, fps: float = 2.0) -> Source:
    """A source from a path or ``camera:N`` / ``rtsp://...`` / ``synthetic:SECONDS``."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        _, _, n = spec.partition(":")
        return SyntheticSource(int(n) if n else None, fps=fps)
    if spec.startswith("camera:"):
        return CameraSource(int(spec.split(":", 1)[1]), fps)
    if spec.startswith(("rtsp://", "http://", "https://", "udp://")):
        return CameraSource(spec, fps)
    if os.path.isdir(spec):
        return FolderSource(spec, fps)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"{spec}: no such video file or folder (or use camera:N / synthetic:SECONDS)")
    if os.path.getsize(spec) == 0:
        raise VisualError("bad_video", f"{spec} is empty (0 bytes)", "check the recording or the copy")
    return FileSource(spec, fps)
