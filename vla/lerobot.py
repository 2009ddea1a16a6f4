"""Read a LeRobot v3.0 dataset folder as VLA samples (``data.train: DIR`` with ``DIR/meta/info.json``).

One sample per frame, as lerobot's own ``LeRobotDataset`` gives them:

- views: every ``observation.images.*`` video feature, in info.json order, decoded lazily (per
  sample, PyAV) from the camera's mp4 at ``videos/KEY/from_timestamp`` (episodes metadata) + the
  frame's ``timestamp``; the nearest decoded frame must lie within ``tolerance_s`` (lerobot: 1e-4 s);
- proprio: ``observation.state`` of the frame (absent feature: no proprio);
- actions: ``action`` of the frame and the K - 1 following ones. Past the episode's last frame the
  index is clamped to it (the last action repeats), as lerobot's ``delta_timestamps`` query
  (``min(ep_end - 1, idx + delta)``, whose ``action_is_pad`` mask this trainer does not use) and
  OpenVLA-OFT's RLDS chunking (``tf.minimum(idx, traj_len - 1)``) both do;
- instruction: the frame's task string (``task_index`` -> ``meta/tasks.parquet``);
- normalisation: q01/q99 of ``action`` and ``observation.state`` from ``meta/stats.json`` (the same
  x -> 2 (x - q01) / (q99 - q01) - 1 as JSONL data; datasets whose stats lack quantiles use min/max).

The samples are ``VLASample`` objects, as ``VLADataset`` yields them, so the trainer is unchanged.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from mm.dataset import DataError, Problem
from mm.encode import ConversationEncoder
from mm.imports import require
from mm.records import RecordError
from mm.visual import VisualError
from vla.data import NormStats, VLAEncoder, VLASample, view_messages

INFO = os.path.join("meta", "info.json")
INFO_KEYS = ("codebase_version", "fps", "features", "data_path", "video_path", "total_episodes")
IMAGES = "observation.images."
FIX = "re-export the dataset with lerobot >= 0.4 (format v3.0) or copy the whole folder again"


def is_lerobot(path: str) -> bool:
    """True when ``path`` is a LeRobot dataset folder (it holds meta/info.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, INFO))


def _error(path: str, code: str, message: str, hint: str = FIX, row: int = 0) -> DataError:
    return DataError(Problem(path, row, code, message, hint))


def _read_table(path: str) -> dict:
    """Columns of a parquet file: numbers as numpy arrays (lists of numbers -> [N, n]), lists of
    strings as Python lists; lerobot's per-episode ``stats/*`` columns are skipped."""
    pa = require("pyarrow", "reading LeRobot datasets")
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise _error(path, "missing_file", "file not found, but the dataset's metadata names it")
    table = pq.read_table(path)
    out = {}
    for name in table.column_names:
        if name.startswith("stats/"):
            continue
        col = table.column(name)
        nested = (
            pa.types.is_list(col.type)
            or pa.types.is_fixed_size_list(col.type)
            or pa.types.is_large_list(col.type)
        )
        if nested and pa.types.is_string(col.type.value_type):
            out[name] = col.to_pylist()
        elif nested:
            out[name] = np.asarray(col.to_pylist(), np.float64)
        else:
            out[name] = col.to_numpy()
    return out


def decode_frame(path: str, t: float, tolerance_s: float = 1e-4) -> np.ndarray:
    """The [H, W, 3] uint8 RGB frame of the video at ``path`` whose timestamp is nearest ``t`` seconds."""
    av = require("av", "decoding LeRobot videos")
    with av.open(path) as container:
        stream = container.streams.video[0]
        # seek to the keyframe at or before t, then decode forward (PyAV cannot seek exactly)
        container.seek(max(0, round(t / stream.time_base) - 1), backward=True, any_frame=False, stream=stream)
        best, best_dt = None, float("inf")
        for frame in container.decode(stream):
            ts = float(frame.pts * stream.time_base)
            if abs(ts - t) < best_dt:
                best, best_dt = frame, abs(ts - t)
            if ts >= t:
                break
    if best is None or best_dt > tolerance_s:
        raise _error(
            path,
            "bad_timestamp",
            f"no frame within {tolerance_s} s of t = {t:.4f} s (nearest: {best_dt:.4f} s away)",
            "the episodes' videos/*/from_timestamp or the frames' timestamp column do not match the video",
        )
    return best.to_ndarray(format="rgb24")


class LeRobotVLADataset(torch.utils.data.Dataset):
    """The frames of a LeRobot v3.0 dataset as VLA samples (same arguments and samples as VLADataset)."""

    def __init__(
        self,
        root: str,
        encoder: ConversationEncoder,
        chunk: int,
        dims: int,
        max_views: int,
        use_proprio: bool = True,
        on_error: str = "raise",
        stats: NormStats | None = None,
        cache: bool = False,
        tolerance_s: float = 1e-4,
    ):
        self.on_error, self.chunk, self.tolerance_s = on_error, chunk, tolerance_s
        self.problems: list[Problem] = []
        self._load_metadata(root, max_views, dims, use_proprio)
        self.stats = stats or self._load_stats()
        self.vla = VLAEncoder(encoder, chunk, self.proprio_dim)
        self.cache: dict[int, VLASample] | None = {} if cache else None

    # ------------------------------------------------------------------ metadata, checked up front

    def _load_metadata(self, root: str, max_views: int, dims: int, use_proprio: bool = True) -> None:
        """info.json, tasks, episodes (frame ranges, video files) and the frames' columns."""
        self.root = self.path = root
        info = self.info = self._load_info()
        self.fps = info["fps"]
        feats = info["features"]
        self.cameras = [k for k, f in feats.items() if k.startswith(IMAGES)]
        info_path = os.path.join(root, INFO)
        if not self.cameras:
            raise _error(
                info_path, "no_views", f"no {IMAGES}* feature", "a VLA sample needs one camera view at least"
            )
        not_video = [k for k in self.cameras if feats[k].get("dtype") != "video"]
        if not_video:
            raise _error(
                info_path,
                "image_features",
                f"{not_video} are stored as images in the parquet files; only video features are read",
                "re-encode the dataset with use_videos=True (lerobot) or write it with write_lerobot",
            )
        if not 1 <= len(self.cameras) <= max_views:
            raise _error(
                info_path,
                "bad_views",
                f"{len(self.cameras)} cameras; data.max_views is {max_views}",
                "raise data.max_views",
            )
        if "action" not in feats:
            raise _error(info_path, "missing_actions", "no 'action' feature", "a VLA dataset records actions")
        self.action_dim = int(feats["action"]["shape"][0])
        if dims and self.action_dim != dims:  # dims 0: the action space comes from the data
            raise _error(
                info_path,
                "bad_actions",
                f"'action' has {self.action_dim} dimensions, the config wants {dims}",
                f"set action.dims={self.action_dim} (or 0: read it from the data)",
            )
        self.dims = self.action_dim
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes(info)
        self._load_frames(info)
        self.proprio_dim = self.state.shape[1] if use_proprio else 0

    def _load_info(self) -> dict:
        path = os.path.join(self.root, INFO)
        if not os.path.isfile(path):
            raise _error(
                path,
                "not_lerobot",
                "no meta/info.json: not a LeRobot dataset folder",
                "point data.train at the dataset's root folder (the one holding meta/)",
            )
        with open(path) as f:
            info = json.load(f)
        for key in INFO_KEYS:
            if key not in info:
                raise _error(
                    path, "bad_info", f"missing key {key!r} (LeRobot v3.0 info.json has {list(INFO_KEYS)})"
                )
        if info["codebase_version"] != "v3.0":
            raise _error(
                path,
                "bad_version",
                f"codebase_version is {info['codebase_version']!r}; this reader reads v3.0",
                "convert with lerobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`",
            )
        return info

    def _load_tasks(self) -> list[str]:
        t = _read_table(os.path.join(self.root, "meta", "tasks.parquet"))
        out = [""] * len(t["task_index"])
        for i, task in zip(t["task_index"], t["task"]):
            out[int(i)] = str(task)
        return out

    def _load_episodes(self, info: dict) -> dict[int, dict]:
        folder = os.path.join(self.root, "meta", "episodes")
        files = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".parquet")
        )
        if not files:
            raise _error(
                folder, "missing_file", "no episodes metadata (meta/episodes/chunk-*/file-*.parquet)"
            )
        episodes = {}
        for path in files:
            t = _read_table(path)
            for r in range(len(t["episode_index"])):
                e = int(t["episode_index"][r])
                if not 0 <= e < info["total_episodes"]:
                    raise _error(
                        path,
                        "bad_episode",
                        f"episode_index {e} is out of range: info.json has "
                        f"total_episodes {info['total_episodes']}",
                        row=r,
                    )
                episodes[e] = {k: v[r] for k, v in t.items()}
                episodes[e]["_file"] = path
        for e, ep in episodes.items():
            for key in self.cameras:
                path = os.path.join(
                    self.root,
                    info["video_path"].format(
                        video_key=key,
                        chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                        file_index=int(ep[f"videos/{key}/file_index"]),
                    ),
                )
                if not os.path.isfile(path):
                    raise _error(
                        path,
                        "missing_video",
                        f"video of episode {e} ({key}) not found",
                        "copy the dataset's videos/ folder with the rest",
                    )
                ep[f"_video/{key}"] = path
        return episodes

    def _load_frames(self, info: dict) -> None:
        parts = {}
        for ep in self.episodes.values():
            key = (int(ep["data/chunk_index"]), int(ep["data/file_index"]))
            if key not in parts:
                path = os.path.join(
                    self.root, info["data_path"].format(chunk_index=key[0], file_index=key[1])
                )
                parts[key] = (path, _read_table(path))
        cols: dict[str, list] = {}
        for path, t in parts.values():
            bad = [e for e in t["episode_index"].tolist() if e not in self.episodes]
            if bad:
                row = t["episode_index"].tolist().index(bad[0])
                raise _error(
                    path,
                    "bad_episode",
                    f"frames of episode {bad[0]}, which the episodes metadata does not list",
                    row=row,
                )
            for k, v in t.items():
                cols.setdefault(k, []).append(v)
        t = {k: np.concatenate(v) for k, v in cols.items()}
        order = np.argsort(t["index"])
        self.index = t["index"][order]
        if not np.array_equal(self.index, np.arange(len(order))):
            raise _error(os.path.join(self.root, "data"), "bad_index", "the frames' 'index' is not 0..N-1")
        self.action = t["action"][order].astype(np.float32)  # [N, D]
        state = t.get("observation.state")
        self.state = (
            np.zeros((len(order), 0), np.float32) if state is None else state[order].astype(np.float32)
        )
        self.timestamp = t["timestamp"][order].astype(np.float64)
        self.frame_episode = t["episode_index"][order].astype(np.int64)
        self.frame_index = t["frame_index"][order].astype(np.int64)
        self.task_index = t["task_index"][order].astype(np.int64)
        if self.task_index.max() >= len(self.tasks):
            raise _error(
                os.path.join(self.root, "meta", "tasks.parquet"),
                "bad_task",
                f"task_index {self.task_index.max()} is not in tasks.parquet ({len(self.tasks)} tasks)",
            )
        for e, ep in self.episodes.items():
            lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
            if not (0 <= lo < hi <= len(order)) or np.any(self.frame_episode[lo:hi] != e):
                raise _error(
                    ep["_file"],
                    "bad_episode",
                    f"episode {e}: frames {lo}..{hi} are not its frames in data/",
                    row=list(self.episodes).index(e),
                )

    def _load_stats(self) -> NormStats:
        path = os.path.join(self.root, "meta", "stats.json")
        if not os.path.isfile(path):
            raise _error(path, "missing_file", "no meta/stats.json: the normalisation statistics are missing")
        with open(path) as f:
            stats = json.load(f)

        def bounds(key: str, dim: int) -> tuple[list, list]:
            if not dim:
                return [], []
            s = stats.get(key, {})
            lo, hi = ("q01", "q99") if "q01" in s and "q99" in s else ("min", "max")
            if lo not in s or hi not in s:
                raise _error(path, "bad_stats", f"no q01/q99 (or min/max) for {key!r}")
            return [float(x) for x in s[lo]], [float(x) for x in s[hi]]

        return NormStats(*bounds("action", self.action_dim), *bounds("observation.state", self.proprio_dim))

    # ------------------------------------------------------------------ samples

    def __len__(self) -> int:
        return len(self.index)

    def chunk_indices(self, i: int) -> np.ndarray:
        """Frames of the action chunk of frame ``i``: i..i+K-1 clamped to the episode's last frame."""
        end = int(self.episodes[int(self.frame_episode[i])]["dataset_to_index"])
        return np.minimum(i + np.arange(self.chunk), end - 1)

    def views(self, i: int) -> list[np.ndarray]:
        """The frame's camera images, [H, W, 3] uint8 each, decoded from the videos."""
        ep = self.episodes[int(self.frame_episode[i])]
        return [
            decode_frame(
                ep[f"_video/{k}"],
                float(ep[f"videos/{k}/from_timestamp"]) + self.timestamp[i],
                self.tolerance_s,
            )
            for k in self.cameras
        ]

    def sample_id(self, i: int) -> str:
        return f"episode_{self.frame_episode[i]:06d}_frame_{self.frame_index[i]:06d}"

    def __getitem__(self, i: int) -> VLASample | None:
        from PIL import Image

        if self.cache is not None and i in self.cache:
            return self.cache[i]
        try:
            images = [Image.fromarray(v) for v in self.views(i)]
            messages = view_messages(images, self.tasks[self.task_index[i]])
            proprio = self.stats.normalize_proprio(self.state[i, : self.proprio_dim])
            enc, slots, proprio, views = self.vla.encode(messages, None, proprio, self.sample_id(i))
        except (RecordError, VisualError, DataError) as e:
            problem = (
                e.problem if isinstance(e, DataError) else Problem(self.root, i, e.code, e.message, e.hint)
            )
            if self.on_error == "raise":
                raise DataError(problem) from e
            self.problems.append(problem)
            return None
        actions = torch.from_numpy(self.stats.normalize_actions(self.action[self.chunk_indices(i)]))
        sample = VLASample(enc, slots, proprio, views, actions, i, self.sample_id(i))
        if self.cache is not None:
            self.cache[i] = sample
        return sample

    def write_jsonl(self, out: str) -> str:
        """Every frame as an mmpost VLA record (views as PNG, raw actions/proprio) in OUT/train.jsonl."""
        from PIL import Image

        os.makedirs(os.path.join(out, "images"), exist_ok=True)
        path = os.path.join(out, "train.jsonl")
        with open(path, "w") as f:
            for i in range(len(self)):
                names = []
                for k, img in zip(self.cameras, self.views(i)):
                    names.append(f"images/{self.sample_id(i)}_{k[len(IMAGES) :]}.png")
                    Image.fromarray(img).save(os.path.join(out, names[-1]))
                rec = {
                    "id": self.sample_id(i),
                    "messages": view_messages(names, self.tasks[self.task_index[i]]),
                    "actions": self.action[self.chunk_indices(i)].tolist(),
                    "proprio": self.state[i].tolist(),
                }
                f.write(json.dumps(rec) + "\n")
        return path


# ---------------------------------------------------------------------- mmpost data validate / stats


def _open_metadata(path: str) -> LeRobotVLADataset:
    """The dataset's metadata and frame columns, checked as the trainer checks them (no encoder)."""
    ds = LeRobotVLADataset.__new__(LeRobotVLADataset)
    ds._load_metadata(path, max_views=10**6, dims=0)
    return ds


def _video_span(path: str) -> tuple[float, int]:
    """(duration in seconds, frame count) of a video's first stream, from its header (no decoding)."""
    av = require("av", "checking LeRobot videos")
    with av.open(path) as container:
        stream = container.streams.video[0]
        n = stream.frames
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = container.duration / 1e6 if container.duration else 0.0
        rate = float(stream.average_rate or 0)
        if not n and rate:
            n = round(duration * rate)
    return duration, int(n)


def validate_lerobot(path: str) -> list[Problem]:
    """Every problem of a LeRobot dataset: the metadata's (the first one stops the reading, as in
    training) or, per episode and camera, a video that ends before the episode's last frame."""
    try:
        ds = _open_metadata(path)
    except DataError as e:
        return [e.problem]
    problems, spans = [], {}
    fps = float(ds.fps)
    for row, (e, ep) in enumerate(ds.episodes.items()):
        last = float(ds.timestamp[int(ep["dataset_to_index"]) - 1])
        for k in ds.cameras:
            video = ep[f"_video/{k}"]
            if video not in spans:
                spans[video] = _video_span(video)
            duration, n = spans[video]
            end = float(ep[f"videos/{k}/from_timestamp"]) + last  # the timestamp of its last frame
            covered = max(duration, n / fps)
            if end > covered - 0.5 / fps:
                problems.append(
                    Problem(
                        ep["_file"],
                        row,
                        "short_video",
                        f"episode {e} ({k}) ends at t = {end:.3f} s but {video} holds "
                        f"{n} frame(s), {duration:.3f} s",
                        "the episodes' videos/*/from_timestamp do not match the video: re-export the dataset",
                    )
                )
    return problems


def lerobot_stats(path: str) -> dict:
    """Counts and shapes of a LeRobot dataset (raises DataError on bad metadata)."""
    ds = _open_metadata(path)
    feats = ds.info["features"]
    lengths = [int(ep["dataset_to_index"]) - int(ep["dataset_from_index"]) for ep in ds.episodes.values()]
    return {
        "episodes": len(ds.episodes),
        "frames": len(ds.index),
        "fps": ds.fps,
        "tasks": len(ds.tasks),
        "cameras": {k[len(IMAGES) :]: tuple(feats[k]["shape"][:2]) for k in ds.cameras},
        "action_dim": ds.action_dim,
        "state_dim": int(ds.state.shape[1]),
        "episode_lengths": lengths,
    }
