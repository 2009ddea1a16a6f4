"""LeRobot v3.0 datasets as VLA data: the synthetic set written with write_lerobot (pyarrow + PyAV
H.264) and read back against its JSONL copy; training on it against training on the same frames as
JSONL; bad datasets; the CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from alignment.infra.metrics import read_metrics
from alignment.train import build_config
from alignment.vla import VLATrainer
from mm.dataset import DataError
from vla.data import NormStats, VLADataset
from vla.datasets import open_vla_dataset
from vla.lerobot import LeRobotVLADataset
from vla.synth import write_vla_synth, write_vla_synth_lerobot

pytest.importorskip("av")
pytest.importorskip("pyarrow")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VLA_YAML = os.path.join(ROOT, "configs", "spatial_forcing", "vla.yaml")
SF_YAML = os.path.join(ROOT, "configs", "spatial_forcing", "vla_sf.yaml")
K, N = 8, 6  # chunk, scenes (= episodes of K frames)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same 6 scenes as JSONL, as lossy LeRobot (4 episodes per file: 2 files) and as lossless LeRobot."""
    d = tmp_path_factory.mktemp("lerobot")
    return {
        "jsonl": write_vla_synth(str(d / "jsonl"), n=N, n_test=1, seed=3),
        "lossy": write_vla_synth_lerobot(str(d / "lossy"), n=N, n_test=1, seed=3, episodes_per_file=4),
        "lossless": write_vla_synth_lerobot(str(d / "lossless"), n=N, n_test=1, seed=3, lossless=True),
    }


@pytest.fixture(scope="module")
def lossy(sets, vla_encoder):
    return LeRobotVLADataset(sets["lossy"]["train"], vla_encoder, K, 7, 2)


@pytest.fixture(scope="module")
def vla_encoder(tiny):
    from mm.encode import ConversationEncoder
    from mm.rope import RopeSpec
    from mm.visual import VisualConfig

    model, processor = tiny
    return ConversationEncoder(
        processor, VisualConfig(max_pixels=224 * 224), RopeSpec.from_config(model.config)
    )


def _records(path):
    return [json.loads(x) for x in open(path)]


def _source_views(jsonl, rec):
    from PIL import Image

    base = os.path.dirname(jsonl)
    items = [it for it in rec["messages"][0]["content"] if it["type"] == "image"]
    return [np.asarray(Image.open(os.path.join(base, it["image"])).convert("RGB")) for it in items]


def test_layout_is_lerobot_v3(sets):
    import pyarrow.parquet as pq

    root = sets["lossy"]["train"]
    info = json.load(open(os.path.join(root, "meta", "info.json")))
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert (info["total_episodes"], info["total_frames"]) == (N, N * K)
    assert info["features"]["action"] == {"dtype": "float32", "shape": [7], "names": None}
    assert info["features"]["observation.images.front"]["shape"] == [112, 112, 3]
    for f in ("file-000", "file-001"):  # 4 + 2 episodes
        assert os.path.isfile(os.path.join(root, "data", "chunk-000", f + ".parquet"))
        assert os.path.isfile(
            os.path.join(root, "videos", "observation.images.wrist", "chunk-000", f + ".mp4")
        )
    eps = pq.read_table(os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet")).to_pylist()
    assert [e["data/file_index"] for e in eps] == [0, 0, 0, 0, 1, 1]
    # episodes share a video file back to back: the 3rd of a file starts 2 x 8 frames / 10 fps in
    assert [e["videos/observation.images.front/from_timestamp"] for e in eps] == [0, 0.8, 1.6, 2.4, 0, 0.8]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [
        (8 * i, 8 * i + 8) for i in range(N)
    ]
    tasks = pq.read_table(os.path.join(root, "meta", "tasks.parquet")).column("task").to_pylist()
    recs = _records(sets["jsonl"]["train"])
    assert sorted(tasks) == sorted({r["messages"][0]["content"][2]["text"] for r in recs})


def test_read_back_equals_the_jsonl_copy(sets, lossy, vla_encoder):
    """Frame 0 of episode i is record i: chunk, proprio and instruction exact (float32); later
    frames: the state moved by the actions' xyz deltas, the chunk clamped at the episode's end."""
    recs = _records(sets["jsonl"]["train"])
    assert len(lossy) == N * K and lossy.proprio_dim == 4
    errors = []
    for e, rec in enumerate(recs):
        acts = np.asarray(rec["actions"], np.float32)
        state = np.asarray(rec["proprio"], np.float64)
        src = _source_views(sets["jsonl"]["train"], rec)
        for t in range(K):
            i = e * K + t
            want = acts[[min(t + k, K - 1) for k in range(K)]]  # the last action repeats past the end
            np.testing.assert_array_equal(lossy.action[lossy.chunk_indices(i)], want)
            np.testing.assert_allclose(lossy.state[i], state, atol=1e-6)
            assert lossy.tasks[lossy.task_index[i]] == rec["messages"][0]["content"][2]["text"]
            state[:3] += acts[t, :3]
            for got, ref in zip(lossy.views(i), src):
                errors.append(np.abs(got.astype(int) - ref.astype(int)))
        np.testing.assert_array_equal(lossy.state[e * K], np.asarray(rec["proprio"], np.float32))
    # H.264 at crf 18 with 4:2:0 chroma: flat areas come back within a few levels, but the saturated,
    # anti-aliased ball edges lose half their chroma resolution (single pixels off by up to ~100).
    per_frame = [x.mean() for x in errors]
    assert max(per_frame) < 2.5, max(per_frame)
    assert np.percentile(np.concatenate([x.ravel() for x in errors]), 99) <= 10
    lossless = LeRobotVLADataset(sets["lossless"]["train"], vla_encoder, K, 7, 2)
    for e, rec in enumerate(recs):
        for got, ref in zip(lossless.views(e * K + 5), _source_views(sets["jsonl"]["train"], rec)):
            np.testing.assert_array_equal(got, ref)  # RGB H.264 at qp 0 is lossless


def test_samples_are_normalised_with_stats_json(sets, lossy):
    stats = json.load(open(os.path.join(sets["lossy"]["train"], "meta", "stats.json")))
    recs = _records(sets["jsonl"]["train"])
    frames = np.concatenate([np.asarray(r["actions"], np.float32) for r in recs])  # every frame's action
    np.testing.assert_allclose(
        stats["action"]["q01"], np.quantile(frames.astype(np.float64), 0.01, 0), atol=1e-7
    )
    lo, hi = np.asarray(stats["action"]["q01"]), np.asarray(stats["action"]["q99"])
    s = lossy[13]  # episode 1, frame 5
    raw = lossy.action[[13, 14, 15, 15, 15, 15, 15, 15]]
    span = np.where(hi - lo > 1e-8, hi - lo, 1)
    want = np.clip(np.where(hi - lo > 1e-8, 2 * (raw - lo) / span - 1, 0), -1, 1)
    np.testing.assert_allclose(s.actions.numpy(), want, atol=1e-6)
    plo, phi = np.asarray(stats["observation.state"]["q01"]), np.asarray(stats["observation.state"]["q99"])
    pspan = np.where(phi - plo > 1e-8, phi - plo, 1)
    pwant = np.clip(np.where(phi - plo > 1e-8, 2 * (lossy.state[13] - plo) / pspan - 1, 0), -1, 1)
    np.testing.assert_allclose(s.proprio.numpy(), pwant, atol=1e-6)
    assert s.id == "episode_000001_frame_000005" and len(s.views) == 2 and s.actions.shape == (K, 7)


def test_training_on_lerobot_equals_training_on_its_frames_as_jsonl(sets, lossy, tmp_path):
    """The decoded frames written back as PNG records (raw chunks and state): same losses step for step
    when both runs normalise with meta/stats.json."""
    jsonl = lossy.write_jsonl(str(tmp_path / "frames"))
    stats = lossy.stats

    class FixedStats(VLATrainer):
        def setup(self, device):
            state = super().setup(device)
            state.dataset.stats = stats  # the JSONL run would otherwise compute its own q01/q99
            return state

    losses = {}
    for name, data, cls in (("lerobot", sets["lossy"]["train"], VLATrainer), ("jsonl", jsonl, FixedStats)):
        out = str(tmp_path / name)
        over = [f"data.train={data}", "train.max_steps=3", "data.micro_batch_size=4", "train.epochs=1"]
        trainer = cls(build_config(VLA_YAML, over, output_dir=out))
        trainer.run()
        assert type(trainer.dataset) is (LeRobotVLADataset if name == "lerobot" else VLADataset)
        losses[name] = [m["loss"] for m in read_metrics(out)]
    assert len(losses["lerobot"]) == 3
    assert losses["lerobot"] == pytest.approx(losses["jsonl"], rel=1e-6, abs=1e-7)
    assert NormStats.load(str(tmp_path / "lerobot")) == stats  # norm_stats.json of the run = stats.json's


def test_spatial_forcing_live_teacher_on_lerobot(sets, tmp_path):
    over = [f"data.train={sets['lossy']['train']}", "train.max_steps=2", "data.micro_batch_size=4"]
    out = str(tmp_path / "sf")
    VLATrainer(build_config(SF_YAML, over, output_dir=out)).run()
    assert all(m["m_align"] > 0 and m["m_action_l1"] > 0 for m in read_metrics(out))
    with pytest.raises(ValueError, match="align.features is read with JSONL data only"):
        VLATrainer(build_config(SF_YAML, [*over, f"align.features={tmp_path}"])).setup("cpu")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_bad_datasets_name_the_file_and_the_fix(sets, vla_encoder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = sets["lossy"]["train"]

    def error(root, **kw):
        with pytest.raises(DataError) as e:
            LeRobotVLADataset(root, vla_encoder, K, kw.pop("dims", 7), 2)
        return str(e.value)

    root = _copy(src, tmp_path / "no_fps")
    info = json.load(open(os.path.join(root, "meta", "info.json")))
    del info["fps"]
    json.dump(info, open(os.path.join(root, "meta", "info.json"), "w"))
    msg = error(root)
    assert "meta/info.json" in msg and "missing key 'fps'" in msg and "fix:" in msg

    root = _copy(src, tmp_path / "bad_episode")
    path = os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet")
    t = pq.read_table(path)
    ep = t.column("episode_index").to_pylist()
    ep[4] = 17
    pq.write_table(t.set_column(0, "episode_index", pa.array(ep)), path)
    msg = error(root)
    assert (
        path in msg
        and " row 4:" in msg
        and "episode_index 17 is out of range" in msg
        and "total_episodes 6" in msg
    )

    root = _copy(src, tmp_path / "no_video")
    video = os.path.join(root, "videos", "observation.images.wrist", "chunk-000", "file-001.mp4")
    os.remove(video)
    msg = error(root)
    assert video in msg and "episode 4" in msg and "copy the dataset's videos/ folder" in msg

    msg = error(src, dims=6)
    assert "'action' has 7 dimensions, the config wants 6" in msg and "action.dims=7" in msg

    with pytest.raises(DataError, match="no meta/info.json"):
        open_vla_dataset(os.path.dirname(sets["jsonl"]["train"]), "lerobot", vla_encoder, K, 7, 2)
    assert isinstance(open_vla_dataset(src, "auto", vla_encoder, K, 7, 2), LeRobotVLADataset)


def test_cli_vla_synth_lerobot(tmp_path):
    from mmpost import main

    assert main(["data", "vla-synth", str(tmp_path), "--n", "2", "--n-test", "1", "--format", "lerobot"]) == 0
    info = json.load(open(tmp_path / "train" / "meta" / "info.json"))
    assert (
        info["total_episodes"] == 2
        and info["features"]["observation.images.front"]["info"]["video.codec"] == "h264"
    )
    assert (
        tmp_path / "test" / "videos" / "observation.images.front" / "chunk-000" / "file-000.mp4"
    ).is_file()


def _episode_lengths(root):
    """The episodes' lengths as written: frames per episode_index in the data/ parquet files."""
    import pyarrow.parquet as pq

    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "data")) for f in fs]
    eps = np.concatenate([pq.read_table(f).column("episode_index").to_numpy() for f in files])
    return np.bincount(eps).tolist()


def test_cli_validate_and_stats_lerobot(sets, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmpost import main

    src = sets["lossy"]["train"]
    lengths = _episode_lengths(src)
    assert main(["data", "validate", src]) == 0
    out = capsys.readouterr().out
    assert f"{len(lengths)} episode(s), {sum(lengths)} frame(s), 0 with problems" in out

    assert main(["data", "stats", src, "--format", "lerobot"]) == 0
    out = capsys.readouterr().out
    info = json.load(open(os.path.join(src, "meta", "info.json")))
    h, w = info["features"]["observation.images.front"]["shape"][:2]
    assert f"{len(lengths)} episode(s), {sum(lengths)} frame(s) at {info['fps']} fps" in out
    assert f"front {h}x{w}" in out and "action dims 7" in out
    assert f"state dims {info['features']['observation.state']['shape'][0]}" in out
    row = next(x for x in out.splitlines() if x.startswith("episode frames")).split()[2:]
    assert row == [str(min(lengths)), str(int(np.median(lengths))), str(max(lengths)), str(max(lengths)),
                   f"{np.mean(lengths):.1f}"]  # fmt: skip

    root = _copy(src, tmp_path / "no_video")
    video = os.path.join(root, "videos", "observation.images.wrist", "chunk-000", "file-001.mp4")
    os.remove(video)
    assert main(["data", "validate", root]) == 1
    out = capsys.readouterr().out
    assert video in out and "[missing_video]" in out and "copy the dataset's videos/ folder" in out

    root = _copy(src, tmp_path / "bad_episode")
    path = os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet")
    t = pq.read_table(path)
    ep = t.column("episode_index").to_pylist()
    ep[4] = 17
    pq.write_table(t.set_column(0, "episode_index", pa.array(ep)), path)
    assert main(["data", "validate", root]) == 1
    out = capsys.readouterr().out
    assert path in out and "episode_index 17 is out of range" in out and "fix:" in out
    assert main(["data", "stats", root]) == 1
    assert "episode_index 17" in capsys.readouterr().out

    # a video shorter than its episodes: every episode past its end is named
    root = _copy(src, tmp_path / "short_video")
    video = os.path.join(root, "videos", "observation.images.front", "chunk-000", "file-000.mp4")
    shutil.copy(os.path.join(root, "videos", "observation.images.front", "chunk-000", "file-001.mp4"), video)
    assert main(["data", "validate", root]) == 1
    out = capsys.readouterr().out
    assert "[short_video]" in out and "episode 2 (observation.images.front)" in out
    assert "episode 1 " not in out  # file-001 holds 2 episodes: episodes 0 and 1 still fit


def test_cli_stats_lerobot_uneven_episodes(tmp_path, capsys):
    """Stats of episodes of unequal length, a non-square camera, 3-d actions and 2-d state: every
    number equals the one computed from the episodes as written (quantiles: numpy's nearest rank)."""
    from mmpost import main
    from vla.lerobot_write import Episode, write_lerobot

    rng = np.random.default_rng(0)
    lengths, tasks = [3, 9, 5, 12, 4], ["pick", "place", "pick", "push", "place"]
    episodes = [
        Episode(
            task,
            {"top": rng.integers(0, 255, (n, 32, 48, 3), dtype=np.uint8)},
            rng.normal(size=(n, 3)).astype(np.float32),
            rng.normal(size=(n, 2)).astype(np.float32),
        )
        for n, task in zip(lengths, tasks)
    ]
    root = write_lerobot(str(tmp_path / "uneven"), episodes, fps=15, episodes_per_file=2)
    assert main(["data", "validate", root]) == 0
    assert f"5 episode(s), {sum(lengths)} frame(s), 0 with problems" in capsys.readouterr().out
    assert main(["data", "stats", root]) == 0
    out = capsys.readouterr().out
    assert f"5 episode(s), {sum(lengths)} frame(s) at 15 fps, {len(set(tasks))} task(s)" in out
    assert "camera(s): top 32x48; action dims 3, state dims 2" in out
    row = next(x for x in out.splitlines() if x.startswith("episode frames")).split()[2:]
    q = [int(np.percentile(lengths, p, method="nearest")) for p in (0, 50, 95, 100)]
    assert row == [*map(str, q), f"{np.mean(lengths):.1f}"] == ["3", "5", "12", "12", "6.6"]
