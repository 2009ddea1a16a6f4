"""MetaWorld for the VLA: expert demonstrations, the action width from the data, the closed loop.

The loop arithmetic (Wilson interval, chunk execution, temporal ensembling) is checked by hand
against a scripted fake environment; the simulator tests skip when mmpost[sim] is absent and check
the loop against the scripted expert (which succeeds) and a briefly trained VLA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mm.imports import is_available
from tests.conftest import subprocess_env
from vla.closed_loop import ClosedLoopConfig, evaluate_policy, run_episode, wilson_interval
from vla.demos import action_chunks

require_metaworld = pytest.mark.skipif(
    not is_available("metaworld"), reason="metaworld is not installed (pip install 'mmpost[sim]')"
)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wilson_interval_by_hand():
    # p = 10/20, z^2 = 3.8416: centre 0.5, half = 1.96 / 1.19208 * sqrt(0.0125 + 0.0024010) = 0.20070
    assert np.allclose(wilson_interval(10, 20), (0.29930, 0.70070), atol=1e-5)
    # 0/20: centre = half = 0.09604 / 1.19208 = 0.080565 -> [0, 0.16113]
    assert np.allclose(wilson_interval(0, 20), (0.0, 0.16113), atol=1e-5)
    # 3/3: centre 1.6403 / 2.28053 = 0.71927, half 0.85945 * sqrt(3.8416 / 36) = 0.28076
    assert np.allclose(wilson_interval(3, 3), (0.43850, 1.0), atol=1e-5)


def test_action_chunks_repeat_the_last_action():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)  # [[0, 1], [2, 3], [4, 5]]
    c = action_chunks(a, 4)
    assert c.shape == (3, 4, 2)
    assert c[0].tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]
    assert c[2].tolist() == [[4, 5]] * 4


class _LineEnv:
    """A 1-D stand-in for MetaWorld: the state is the sum of the actions; success at ``goal``."""

    task = "reach-v3"

    def __init__(self, goal=1e9):
        self.goal, self.actions = goal, []

    def reset(self, variation):
        self.x, self.actions = 0.0, []
        return np.array([self.x])

    def step(self, a):
        self.actions.append(float(a[0]))
        self.x += float(a[0])
        return np.array([self.x]), self.x >= self.goal

    def render(self):
        return [np.zeros((2, 2, 3), np.uint8)]


class _CountingPolicy:
    """Query q (0-based) answers the chunk [[10q + 0], [10q + 1], [10q + 2]]."""

    needs_views = True

    def __init__(self):
        self.queries = 0

    def __call__(self, env, obs, views, instruction):
        q, self.queries = self.queries, self.queries + 1
        return np.array([[10.0 * q + k] for k in range(3)])


def test_chunks_execute_k_steps_then_requery():
    env, policy = _LineEnv(), _CountingPolicy()
    cfg = ClosedLoopConfig(max_steps=5, execute=2)
    r = run_episode(env, policy, 0, cfg)
    assert env.actions == [0, 1, 10, 11, 20] and policy.queries == 3
    assert (r["success"], r["steps"]) == (False, 5)
    env, policy = _LineEnv(goal=12), _CountingPolicy()  # whole chunks: 0 1 2 | 10 -> x = 13 at step 4
    r = run_episode(env, policy, 0, ClosedLoopConfig(max_steps=9, execute=0))
    assert env.actions == [0, 1, 2, 10] and (r["success"], r["steps"]) == (True, 4)


def test_temporal_ensembling_by_hand():
    env, policy = _LineEnv(), _CountingPolicy()
    d = 0.5
    r = run_episode(
        env, policy, 0, ClosedLoopConfig(max_steps=3, ensemble=True, ensemble_decay=d), record=True
    )
    w1 = np.exp(-d)
    # step 0: query 0 says 0. step 1: query 0 says 1 (oldest), query 1 says 10.
    # step 2: query 0 says 2, query 1 says 11, query 2 says 20 (weights 1, e^-d, e^-2d).
    want = [0.0, (1 + 10 * w1) / (1 + w1), (2 + 11 * w1 + 20 * w1**2) / (1 + w1 + w1**2)]
    assert np.allclose(env.actions, want) and policy.queries == 3
    assert len(r["frames"]) == 3


def test_action_dims_come_from_the_data(tiny, tmp_path):
    from mm.dataset import DataError
    from mm.encode import ConversationEncoder
    from mm.rope import RopeSpec
    from mm.visual import VisualConfig
    from vla.data import VLADataset
    from vla.synth import write_vla_synth

    model, processor = tiny
    enc = ConversationEncoder(
        processor, VisualConfig(max_pixels=112 * 112), RopeSpec.from_config(model.config)
    )
    paths = write_vla_synth(str(tmp_path / "d4"), n=4, n_test=1, dims=4, size=32)
    ds = VLADataset(paths["train"], enc, 8, 0, 2)
    assert ds.dims == 4 and ds[0].actions.shape == (8, 4)
    recs = [json.loads(x) for x in open(paths["train"])]
    recs[2]["actions"] = [a + [0.0] for a in recs[2]["actions"]]
    bad = tmp_path / "d4" / "mixed.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(DataError, match="actions are 8 x 5, the config wants 8 x 4"):
        VLADataset(str(bad), enc, 8, 0, 2)


# ----------------------------------------------------------------------------- MetaWorld


@require_metaworld
def test_demos_are_reproducible_and_well_formed(tmp_path):
    from mmpost import main

    args = ["--tasks", "reach-v3", "--episodes", "1", "--views", "corner,gripperPOV", "--size", "32"]
    for name in ("a", "b"):
        assert main(["data", "metaworld-demos", str(tmp_path / name), *args, "--seed", "0"]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 3
    for f in files:  # byte-identical: views, records, summary
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    recs = [json.loads(x) for x in open(tmp_path / "a" / "train.jsonl")]
    summary = json.load(open(tmp_path / "a" / "demos.json"))
    assert summary["success"] == {"reach-v3": [1, 1]} and summary["records"] == len(recs)
    assert [r["meta"]["step"] for r in recs] == list(range(len(recs)))
    assert all(r["meta"]["success"] for r in recs)
    assert np.asarray(recs[0]["actions"]).shape == (8, 4) and len(recs[0]["proprio"]) == 4
    assert recs[-1]["actions"] == [recs[-1]["actions"][0]] * 8  # the last step repeats its action
    assert recs[1]["actions"][:7] == recs[0]["actions"][1:]  # chunks are the expert's next actions
    assert main(["data", "validate", str(tmp_path / "a" / "train.jsonl")]) == 0


@require_metaworld
def test_views_are_seeded_upright_and_hide_the_goal_unless_asked():
    from vla.metaworld import MetaWorldEnv

    hidden, shown = (MetaWorldEnv("reach-v3", 0, ("corner",), 48, g) for g in (False, True))
    a, b = hidden.reset(3), shown.reset(3)
    assert np.array_equal(a, b)  # the same state: only the marker differs
    va, vb = hidden.render()[0], shown.render()[0]
    assert va.shape == (48, 48, 3) and (va != vb).any(axis=-1).sum() > 0
    hidden.renderer.update_scene(hidden.env.data, camera="corner")
    assert np.array_equal(
        hidden.renderer.render()[::-1, ::-1], va
    )  # corner cameras are rolled: turned 180 degrees, not flipped
    hidden.close()
    shown.close()


@require_metaworld
def test_expert_succeeds_through_the_closed_loop(tmp_path):
    """The loop is validated against the scripted expert: it reaches success, with a video."""
    cfg = ClosedLoopConfig(env="metaworld:reach-v3", episodes=2, max_steps=150, size=32, out=str(tmp_path))
    r = evaluate_policy("expert", cfg, progress=False)
    assert (r["successes"], r["episodes"]) == (2, 2)
    assert all(0 < e["steps"] < 150 for e in r["per_episode"])
    assert r["ci95"] == pytest.approx(list(wilson_interval(2, 2)))
    assert os.path.getsize(r["videos"][0]) > 1000
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["success_rate"] == 1.0 and [e["variation"] for e in saved["per_episode"]] == [0, 1]
    cfg.workers, cfg.videos, cfg.out = 2, [], str(tmp_path / "two")  # two processes, the same episodes
    assert evaluate_policy("expert", cfg, progress=False)["per_episode"] == r["per_episode"]


@require_metaworld
def test_trained_vla_runs_closed_loop(tmp_path):
    """A short closed-loop run of a VLA trained for a few steps on one expert episode (one camera)."""
    from alignment.train import build_config
    from alignment.vla import VLATrainer
    from mmpost import main

    data = tmp_path / "demos"
    args = ["--tasks", "reach-v3", "--episodes", "1", "--views", "corner", "--size", "32"]
    assert main(["data", "metaworld-demos", str(data), *args]) == 0
    yaml = os.path.join(ROOT, "configs", "spatial_forcing", "metaworld_reach.yaml")
    over = [f"data.train={data / 'train.jsonl'}", "train.max_steps=2", "data.micro_batch_size=4"]
    summary = VLATrainer(build_config(yaml, over, output_dir=str(tmp_path / "run"))).run()
    meta = json.load(open(os.path.join(summary["model"], "vla.json")))
    assert (meta["chunk"], meta["dims"], meta["proprio_dim"]) == (8, 4, 4)  # 4-D actions from the data
    cfg = ClosedLoopConfig(
        env="metaworld:reach-v3",
        episodes=1,
        max_steps=6,
        views=["corner"],
        size=32,
        execute=4,
        out=str(tmp_path / "eval"),
    )
    r = evaluate_policy(summary["model"], cfg, progress=False)
    assert r["episodes"] == 1 and r["per_episode"][0]["steps"] in range(1, 7)
    assert os.path.isfile(r["videos"][0])


@require_metaworld
def test_no_offscreen_gl_is_a_clear_error(tmp_path):
    """MuJoCo's GLFW backend has no display here: the CLI says which MUJOCO_GL and packages to use."""
    env = subprocess_env(MUJOCO_GL="glfw", DISPLAY="")
    cmd = [
        sys.executable,
        "-m",
        "mmpost",
        "eval-policy",
        "expert",
        "--env",
        "metaworld:reach-v3",
        "--episodes",
        "1",
        "--size",
        "16",
        "--out",
        str(tmp_path),
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "MUJOCO_GL=egl" in p.stderr and "libosmesa6" in p.stderr
