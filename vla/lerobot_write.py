"""Write episodes as a LeRobot v3.0 dataset (pyarrow + PyAV), for tests and ``mmpost data vla-synth --format lerobot``.

The ``lerobot`` package does not install beside this project's torch, so the layout is written
directly, as lerobot's ``datasets`` package lays it out (``utils.py``, ``dataset_metadata.py``,
``dataset_writer.py``, ``video_utils.py`` of format v3.0)::

    meta/info.json                      codebase_version "v3.0", fps, features (dtype/shape), path templates
    meta/stats.json                     per feature min/max/mean/std/count and q01..q99
    meta/tasks.parquet                  task (the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, frame range,
                                               data and video file indices, video from/to timestamps
    data/chunk-000/file-000.parquet     one row per frame, several episodes per file
    videos/observation.images.X/chunk-000/file-000.mp4   the episodes' frames back to back

Videos are H.264 (libx264, 4:2:0, lossy) by default; ``lossless=True`` writes RGB H.264 at
qp 0 (libx264rgb), which decodes to the exact pixels. A keyframe every ``gop`` frames keeps the
per-sample seek short (lerobot's default is 2).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from mm.imports import require

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # lerobot's DEFAULT_QUANTILES -> q01, q10, q50, q90, q99


@dataclass
class Episode:
    """One recorded episode: T frames of every camera, the robot state and the action at each frame."""

    task: str
    images: dict[str, np.ndarray]  # camera name (without "observation.images.") -> [T, H, W, 3] uint8
    action: np.ndarray  # [T, D]
    state: np.ndarray | None = None  # [T, P]


def _file_index(n: int, chunks_size: int) -> tuple[int, int]:
    """The n-th file's (chunk, file) indices: files fill a chunk up to chunks_size, then the next chunk."""
    return n // chunks_size, n % chunks_size


def _stats(x: np.ndarray) -> dict:
    x = x.reshape(len(x), -1).astype(np.float64)
    out = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        "count": np.array([len(x)]),
    }
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(x, q, axis=0)
    return {k: v.tolist() for k, v in out.items()}


def _image_stats(frames: np.ndarray) -> dict:
    """Per-channel statistics of frames scaled to [0, 1], shaped [3, 1, 1] as lerobot writes them."""
    s = _stats(frames.reshape(-1, 3) / 255.0)
    return {k: (v if k == "count" else [[[c]] for c in v]) for k, v in s.items()}


def _encode_video(path: str, frames: np.ndarray, fps: int, lossless: bool, crf: int, gop: int) -> dict:
    av = require("av", "writing LeRobot videos")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    codec, pix_fmt = ("libx264rgb", "rgb24") if lossless else ("libx264", "yuv420p")
    options = {"g": str(gop), ("qp" if lossless else "crf"): str(0 if lossless else crf)}
    h, w = frames.shape[1:3]
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for n, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return {
        "video.height": h,
        "video.width": w,
        "video.codec": "h264",
        "video.pix_fmt": pix_fmt,
        "video.is_depth_map": False,
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
    }


def write_lerobot(
    root: str,
    episodes: list[Episode],
    fps: int = 10,
    episodes_per_file: int = 1000,
    chunks_size: int = 1000,
    lossless: bool = False,
    crf: int = 18,
    gop: int = 2,
    robot_type: str | None = None,
) -> str:
    """Write ``episodes`` as a LeRobot v3.0 dataset under ``root``; returns root.

    ``episodes_per_file`` episodes share one data parquet and one mp4 per camera (lerobot splits
    files by size in MB; a count is the same layout, easier to test)."""
    pa = require("pyarrow", "writing LeRobot datasets")
    import pyarrow.parquet as pq

    if not episodes:
        raise ValueError("write_lerobot: no episodes")
    cams = list(episodes[0].images)
    has_state = episodes[0].state is not None
    tasks = list(dict.fromkeys(e.task for e in episodes))
    task_index = {t: i for i, t in enumerate(tasks)}
    features, video_info, rows, start = {}, {}, [], 0
    for f0 in range(0, len(episodes), episodes_per_file):
        group = episodes[f0 : f0 + episodes_per_file]
        chunk, file = _file_index(f0 // episodes_per_file, chunks_size)
        cols: dict[str, list] = {k: [] for k in ("action", "observation.state", "timestamp", "frame_index")}
        cols.update(episode_index=[], index=[], task_index=[])
        before = 0  # frames of this file's earlier episodes
        for k, ep in enumerate(group):
            e, T = f0 + k, len(ep.action)
            if sorted(ep.images) != sorted(cams) or any(len(v) != T for v in ep.images.values()):
                raise ValueError(f"episode {e}: every episode needs {T} frames of the cameras {cams}")
            cols["action"].append(np.asarray(ep.action, np.float32))
            if has_state:
                cols["observation.state"].append(np.asarray(ep.state, np.float32))
            cols["timestamp"].append(np.arange(T, dtype=np.float32) / fps)
            cols["frame_index"].append(np.arange(T))
            cols["episode_index"].append(np.full(T, e))
            cols["index"].append(np.arange(start, start + T))
            cols["task_index"].append(np.full(T, task_index[ep.task]))
            row = {
                "episode_index": e,
                "tasks": [ep.task],
                "length": T,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": start,
                "dataset_to_index": start + T,
            }
            for cam in cams:
                key = f"observation.images.{cam}"
                row.update(
                    {
                        f"videos/{key}/chunk_index": chunk,
                        f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": before / fps,
                        f"videos/{key}/to_timestamp": (before + T) / fps,
                    }
                )
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            rows.append(row)
            start, before = start + T, before + T
        table = {}
        for name, parts in cols.items():
            if not parts:
                continue
            x = np.concatenate(parts)
            if x.ndim == 2:  # fixed-size float lists, as datasets' Sequence(float32, length=n) stores them
                table[name] = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
            else:
                table[name] = pa.array(x)
        path = os.path.join(root, DATA_PATH.format(chunk_index=chunk, file_index=file))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table(table), path)
        for cam in cams:
            key = f"observation.images.{cam}"
            frames = np.concatenate([ep.images[cam] for ep in group])
            path = os.path.join(root, VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file))
            video_info[key] = _encode_video(path, frames, fps, lossless, crf, gop)

    actions = np.concatenate([np.asarray(e.action, np.float32) for e in episodes])
    stats = {"action": _stats(actions)}
    features["action"] = {"dtype": "float32", "shape": [actions.shape[1]], "names": None}
    if has_state:
        states = np.concatenate([np.asarray(e.state, np.float32) for e in episodes])
        stats["observation.state"] = _stats(states)
        features["observation.state"] = {"dtype": "float32", "shape": [states.shape[1]], "names": None}
    for cam in cams:
        key = f"observation.images.{cam}"
        frames = np.concatenate([e.images[cam] for e in episodes])
        stats[key] = _image_stats(frames)
        features[key] = {
            "dtype": "video",
            "shape": list(frames.shape[1:]),
            "names": ["height", "width", "channels"],
            "info": video_info[key],
        }
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}

    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    ep_path = os.path.join(root, EPISODES_PATH.format(chunk_index=0, file_index=0))
    os.makedirs(os.path.dirname(ep_path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), ep_path)
    pq.write_table(
        pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": tasks}),
        os.path.join(root, "meta", "tasks.parquet"),
    )
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": int(start),
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    with open(os.path.join(root, "meta", "info.json"), "w") as f:
        json.dump(info, f, indent=4)
    with open(os.path.join(root, "meta", "stats.json"), "w") as f:
        json.dump(stats, f, indent=4)
    return root
