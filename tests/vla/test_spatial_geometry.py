"""The geometric Spatial Forcing teacher (vla.spatial.geometry) against hand-computed numbers:
back-projection for known cameras and depth maps, the token grid, pooling, the Fourier features,
the normalisation statistics, the features folder, and the errors that say how to make features.
The simulator tests (skipped without mmpost[sim]) check the camera model against MuJoCo itself:
depth against exact ray casts, and the goal marker's known position in the upright views."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mm.imports import is_available
from vla.metaworld import upright
from vla.spatial import geometry as G

require_metaworld = pytest.mark.skipif(
    not is_available("metaworld"), reason="metaworld is not installed (pip install 'mmpost[sim]')"
)

# ----------------------------------------------------------------------------- camera model


def test_focal_length_by_hand():
    assert G.focal_length(90.0, 4) == pytest.approx(2.0)  # (4 / 2) / tan(45 deg)
    assert G.focal_length(45.0, 112) == pytest.approx(56 / math.tan(math.radians(22.5)))  # 135.196


def test_backproject_fronto_parallel_plane_by_hand():
    """Identity camera at the origin (looks along world -z, y up), fovy 90 on 4 x 4 px: f = 2 and
    the pixel centres sit at u, v = -1.5, -0.5, 0.5, 1.5 from the image centre. A plane at depth 2
    gives p = 2 (u / 2, -v / 2, -1) = (u, -v, -2)."""
    p = G.backproject(np.full((4, 4), 2.0), 90.0, np.zeros(3), np.eye(3))
    assert p.shape == (4, 4, 3)
    assert p[0, 0].tolist() == pytest.approx([-1.5, 1.5, -2.0])  # top left: left and up
    assert p[0, 3].tolist() == pytest.approx([1.5, 1.5, -2.0])
    assert p[3, 0].tolist() == pytest.approx([-1.5, -1.5, -2.0])
    assert p[2, 1].tolist() == pytest.approx([-0.5, -0.5, -2.0])


def test_backproject_posed_camera_by_hand():
    """A camera at (1, 2, 3) looking along world +y: camera x = world x, camera y (up) = world z,
    camera z (backwards) = world -y; those are cam_xmat's columns. 2 x 2 px at fovy 90: f = 1,
    u, v = +-0.5. A wall at y = 5 is at depth 3, so pixel (0, 0) is p_cam = 3 (-0.5, 0.5, -1)
    = (-1.5, 1.5, -3), i.e. world (1 - 1.5, 2 + 3, 3 + 1.5) = (-0.5, 5, 4.5). Pooled to one token,
    the mean point is the camera's foot on the wall, (1, 5, 3)."""
    R = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    pos = np.array([1.0, 2.0, 3.0])
    p = G.backproject(np.full((2, 2), 3.0), 90.0, pos, R.reshape(-1))  # MuJoCo's flat (9,) form
    assert p[0, 0].tolist() == pytest.approx([-0.5, 5.0, 4.5])
    assert p[0, 1].tolist() == pytest.approx([2.5, 5.0, 4.5])
    assert p[1, 0].tolist() == pytest.approx([-0.5, 5.0, 1.5])
    assert p[1, 1].tolist() == pytest.approx([2.5, 5.0, 1.5])
    f = G.point_features(p, np.ones((2, 2), bool), (1, 1), n_freqs=1, f_min=0.5)
    assert f[0, 0, :3].tolist() == pytest.approx([1.0, 5.0, 3.0])
    # mean of [sin, cos](2 pi 0.5 q) per axis: x in {-0.5, 2.5}: sin pi x = -1, 1 -> 0; cos -> 0;
    # y = 5: sin 5 pi = 0, cos = -1; z in {4.5, 1.5}: sin = 1, -1 -> 0; cos -> 0. Valid fraction 1.
    assert f[0, 0, 3:].tolist() == pytest.approx([0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 1.0], abs=1e-6)


def test_backproject_slanted_plane_by_hand():
    """The plane z = -(2 + x) seen from the origin along -z: along the ray t (a, b, -1) the depth
    solves t = 2 + a t, t = 2 / (1 - a), with a = u / f in {-0.75, -0.25, 0.25, 0.75} (fovy 90, 4 px)."""
    a = np.array([-0.75, -0.25, 0.25, 0.75])
    p = G.backproject(np.broadcast_to(2.0 / (1.0 - a), (4, 4)), 90.0, np.zeros(3), np.eye(3))
    assert np.allclose(p[..., 2], -(2.0 + p[..., 0]))  # every point on the plane
    assert p[1, 3].tolist() == pytest.approx([6.0, 2.0, -8.0])  # a = 0.75: t = 8, b = 0.25


def test_project_inverts_backproject():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R, pos = q * np.sign(np.linalg.det(q)), rng.normal(size=3)
    depth = rng.uniform(0.5, 3.0, size=(6, 8))
    col, row, z = G.project(G.backproject(depth, 50.0, pos, R), 50.0, pos, R, 6, 8)
    assert np.allclose(col, np.arange(8)[None] + 0.5) and np.allclose(row, np.arange(6)[:, None] + 0.5)
    assert np.allclose(z, depth)


def test_upright_turns_corner_views_only_and_validity():
    x = np.arange(6).reshape(2, 3)
    assert upright(x, "corner").tolist() == [[5, 4, 3], [2, 1, 0]]  # 180 degrees, not a flip
    assert upright(x, "corner3").tolist() == [[5, 4, 3], [2, 1, 0]]
    assert upright(x, "gripperPOV").tolist() == x.tolist()
    assert G.valid_depth(np.array([0.5, 98.9, 99.5, np.inf, 0.0]), 100.0).tolist() == [
        True,
        True,
        False,  # the far plane: sky
        False,
        False,
    ]


# ----------------------------------------------------------------------------- token grid, pooling


def test_token_grid_is_the_students():
    # smart_resize to multiples of 28 (min 4 x 28^2, the VLA's max 224^2), one token per 28 x 28
    assert [G.token_grid(s, s) for s in (32, 64, 84, 112, 224, 480)] == [
        (2, 2),
        (2, 2),
        (3, 3),
        (4, 4),
        (8, 8),
        (8, 8),
    ]
    assert G.token_grid(112, 168) == (4, 6)


def test_cell_index_and_patch_pool_by_hand():
    assert G.cell_index(4, 2).tolist() == [0, 0, 1, 1]
    assert G.cell_index(5, 2).tolist() == [0, 0, 1, 1, 1]  # pixel centres 0.2 0.6 | 1.0 1.4 1.8 cells
    x = np.arange(16, dtype=np.float64).reshape(4, 4, 1)
    valid = np.ones((4, 4), bool)
    valid[0, :2] = False  # the top-left cell keeps 4 and 5
    valid[2:, 2:] = False  # the bottom-right cell is sky
    pooled, frac = G.patch_pool(x, valid, (2, 2))
    assert pooled[..., 0].tolist() == [[4.5, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, 0.0]]
    assert frac.tolist() == [[0.5, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="cannot be pooled"):
        G.patch_pool(x, valid, (5, 5))


def test_fourier_embed_by_hand_and_its_kernel():
    e = G.fourier_embed(np.array([[0.25, 0.0, 0.125]]), np.array([1.0, 2.0]))
    # per axis [sin 2 pi f q for f in (1, 2)] + [cos ...]
    want = [1.0, 0.0, 0.0, -1.0] + [0.0, 0.0, 1.0, 1.0] + [math.sqrt(0.5), 1.0, math.sqrt(0.5), 0.0]
    assert e[0].tolist() == pytest.approx(want, abs=1e-6)
    a, b = np.array([0.1, -0.2, 0.3]), np.array([0.05, 0.4, 0.0])
    f = G.fourier_frequencies(6)
    kernel = sum(math.cos(2 * math.pi * fk * (a[c] - b[c])) for c in range(3) for fk in f)
    assert float(G.fourier_embed(a, f) @ G.fourier_embed(b, f)) == pytest.approx(kernel, abs=1e-5)


def test_point_features_layout_by_hand():
    """A 4 x 4 point map, one token split 2 x 2 (sub = 2): the four quadrants' means row-major,
    each [q | sin, cos per axis | valid fraction]; then centre and scale on a 2 x 2 grid."""
    pts = np.zeros((4, 4, 3))
    for (r, c), x in zip([(0, 0), (0, 2), (2, 0), (2, 2)], [0.1, 0.2, 0.3, 0.4]):
        pts[r : r + 2, c : c + 2, 0] = x
    valid = np.ones((4, 4), bool)
    valid[3, 3] = False
    f = G.point_features(pts, valid, (1, 1), n_freqs=1, f_min=1.0, sub=2)
    assert f.shape == (1, 1, 40) == (1, 1, G.feature_dim(1, sub=2)) and f.dtype == np.float32
    quads = f[0, 0].reshape(4, 10)
    assert quads[:, 0].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert quads[:, -1].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.75])
    for k, x in enumerate([0.1, 0.2, 0.3, 0.4]):
        want = [math.sin(2 * math.pi * x), math.cos(2 * math.pi * x), 0.0, 1.0, 0.0, 1.0]
        assert quads[k, 3:9].tolist() == pytest.approx(want, abs=1e-6)
    g = G.point_features(pts, valid, (2, 2), centre=(0.1, 0.0, 0.0), scale=0.5)
    assert g.shape == (2, 2, G.feature_dim()) == (2, 2, 40)
    assert g[1, 1, 0] == pytest.approx((0.4 - 0.1) / 0.5)
    sky = G.point_features(pts, np.zeros((4, 4), bool), (2, 2))
    assert not sky.any()  # no valid pixel: all zeros


def test_feature_stats_and_normalize_by_hand():
    """Two frames of one view, a 1 x 2 grid, d = 2; token (0, 1) of frame 1 is empty (all 0)."""
    F = np.zeros((2, 1, 1, 2, 2))
    F[0, 0, 0, 0], F[1, 0, 0, 0], F[0, 0, 0, 1] = [1.0, 2.0], [3.0, 6.0], [5.0, 5.0]
    mean, std = G.feature_stats(F, "residual")
    assert mean.shape == (1, 1, 2, 2)
    assert mean[0, 0, 0].tolist() == [2.0, 4.0] and mean[0, 0, 1].tolist() == [5.0, 5.0]  # empty not counted
    # residuals of the 3 non-empty tokens: [-1, -2], [1, 2], [0, 0] -> std sqrt(2/3), sqrt(8/3)
    assert std.tolist() == pytest.approx([math.sqrt(2 / 3), math.sqrt(8 / 3)])
    z = G.normalize(F[1], mean, std)  # one record [V, gh, gw, d] against the per-position means
    assert z[0, 0, 0].tolist() == pytest.approx([1 / math.sqrt(2 / 3), 2 / math.sqrt(8 / 3)], abs=1e-5)
    assert z[0, 0, 1].tolist() == [0.0, 0.0]  # empty stays empty
    mean_z, std_z = G.feature_stats(F, "zscore")  # per channel over [1, 2], [3, 6], [5, 5]
    assert mean_z.tolist() == pytest.approx([3.0, 13 / 3])
    assert std_z.tolist() == pytest.approx([math.sqrt(8 / 3), np.std([2.0, 6.0, 5.0])])
    with pytest.raises(ValueError, match="residual, zscore, none"):
        G.feature_stats(F, "minmax")


def test_targets_on_the_students_grid_only_add_the_position_embedding():
    """Features on the student's grid go through Spatial Forcing's targets unchanged: the bilinear
    resampling is the identity and VGGT's position embedding x pos_scale is added, as for VGGT."""
    from vla.spatial.align import alignment_targets, vggt_position_embedding, vggt_uv_grid

    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (112, 112, 3))
    f = torch.from_numpy(G.point_features(pts, np.ones((112, 112), bool), G.token_grid(112, 112)))
    want = f + 0.1 * vggt_position_embedding(vggt_uv_grid(4, 4), 40)
    assert torch.allclose(alignment_targets(f, (4, 4), 0.1), want.reshape(16, 40))


# ----------------------------------------------------------------------------- the features folder


def test_feature_folder_and_the_errors_that_say_how_to_make_it(tmp_path):
    from vla.spatial.features import FeatureStore, save_features
    from vla.spatial.teacher import build_teacher

    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "a"}\n{"id": "b"}\n')
    feats = [torch.full((2, 4, 4, 40), float(i)) for i in range(2)]
    meta = save_features(
        str(tmp_path / "geo"), str(data), ["a", "b"], feats, "geometry", geometry={"size": 112}
    )
    assert (meta["grid"], meta["dim"], meta["image_size"], meta["geometry"]) == ([4, 4], 40, 0, {"size": 112})
    assert not (tmp_path / "geo.tmp").exists()  # written as geo.tmp, renamed into place
    store = FeatureStore(str(tmp_path / "geo"))
    store.check("geometry", 0, str(data))
    assert torch.equal(store.get(1), feats[1])
    with pytest.raises(ValueError, match="teacher 'geometry', the config asks for 'random'"):
        store.check("random", 0, str(data))
    data.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match="--teacher-features geometry"):  # the fix names the demos command
        store.check("geometry", 0, str(data))
    with pytest.raises(ValueError, match="metaworld-demos OUT --teacher-features geometry"):
        build_teacher("geometry")  # no live form: it needs the simulator
    with pytest.raises(ValueError, match="random, timm:NAME, vggt or geometry"):
        build_teacher("nope")


def test_geometry_teacher_without_features_is_a_config_error(tmp_path):
    from alignment.train import build_config
    from alignment.vla import VLATrainer
    from mm.config import ConfigError

    over = ["data.train=x.jsonl", "align.alpha=0.5", "align.teacher=geometry"]
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = build_config(
        os.path.join(root, "configs", "spatial_forcing", "metaworld_reach.yaml"),
        over,
        output_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match="align.teacher=geometry needs align.features"):
        VLATrainer(cfg).setup("cpu")


# ----------------------------------------------------------------------------- MuJoCo ground truth


@require_metaworld
def test_sim_depth_backprojects_onto_the_ray_cast_geometry():
    """Every pixel of both views: the back-projected MuJoCo depth against mj_ray's exact hit along
    the pixel-centre ray (sites such as the fingertip pads are drawn but not ray-cast, and
    silhouettes can disagree, so 95% of the pixels, not all, agree to 1 mm)."""
    import mujoco

    from vla.metaworld import MetaWorldEnv

    env = MetaWorldEnv("reach-v3", 0, ("corner", "gripperPOV"), 24)
    try:
        env.reset(0)
        m, d = env.env.model, env.env.data
        r = mujoco.Renderer(m, 24, 24)
        r.enable_depth_rendering()
        geomgroup, hit = np.array([1, 1, 1, 0, 0, 0], np.uint8), np.zeros(1, np.int32)
        for cam in env.views:
            fovy, pos, R = env.camera(cam)
            r.update_scene(d, camera=cam)
            depth = r.render()  # the renderer's orientation, before the corner turn
            points = G.backproject(depth, fovy, pos, R)
            rays = G.pixel_rays(fovy, 24, 24) @ R.T
            errors = []
            for i, j in np.ndindex(24, 24):
                v = rays[i, j] / np.linalg.norm(rays[i, j])
                t = mujoco.mj_ray(m, d, pos, v, geomgroup, 1, -1, hit)
                if t >= 0:
                    errors.append(np.linalg.norm(points[i, j] - (pos + t * v)))
            errors = np.array(errors)
            assert len(errors) > 200, cam
            assert np.mean(errors < 1e-3) > 0.95 and np.median(errors) < 1e-4, (cam, np.median(errors))
            mine = dict(zip(env.views, env.point_maps()))[cam][0]  # the env's own path, turned upright
            assert np.allclose(mine, upright(points, cam))
        r.close()
    finally:
        env.close()


@require_metaworld
def test_sim_goal_marker_is_where_the_camera_model_puts_it():
    """A 5 cm green goal marker: the pixels it covers in the upright corner view (shown vs hidden)
    are green and centred where the goal site projects (turned like the view), and the point map
    there lies on the marker's sphere, |p - centre| = radius."""
    from vla.metaworld import MetaWorldEnv

    S, radius = 112, 0.05
    shown, hidden = (
        MetaWorldEnv("reach-v3", 0, ("corner",), S, g, goal_size=radius, goal_rgba=[0.0, 0.8, 0.0])
        for g in (True, False)
    )
    try:
        for variation in (0, 7):
            shown.reset(variation), hidden.reset(variation)
            marker = (shown.render()[0] != hidden.render()[0]).any(-1)  # [S, S]
            assert marker.sum() > 20
            rgb = shown.render()[0][marker].mean(0)
            assert rgb[1] > 2 * rgb[0] and rgb[1] > 2 * rgb[2], rgb  # green, not the task's red
            centre = shown.env.data.site("goal").xpos.copy()
            assert np.allclose(centre, shown.env._target_pos)
            col, row, z = G.project(centre, *shown.camera("corner"), S, S)
            col, row = S - col, S - row  # the corner view is turned 180 degrees
            rows, cols = np.nonzero(marker)
            assert abs(rows.mean() - row) < 1.5 and abs(cols.mean() - col) < 1.5
            ((points, valid),) = shown.point_maps()
            i, j = int(row), int(col)
            assert valid[i, j] and abs(np.linalg.norm(points[i, j] - centre) - radius) < 3e-3
    finally:
        shown.close()
        hidden.close()


@pytest.mark.slow
@require_metaworld
def test_demos_with_geometry_features_train_and_run_closed_loop(tmp_path):
    """The pipeline in small: demonstrations with the geometry teacher's features and a visible
    marker -> a VLA trained a few steps with alpha > 0 on them -> closed-loop episodes that draw
    the marker as the demos did. The views are the same bytes as without the features."""
    import os

    from alignment.infra.metrics import read_metrics
    from alignment.train import build_config
    from alignment.vla import VLATrainer
    from mmpost import main
    from vla.closed_loop import ClosedLoopConfig, evaluate_policy

    args = ["--tasks", "reach-v3", "--episodes", "1", "--size", "32", "--show-goal"]
    args += ["--goal-size", "0.05", "--goal-rgba", "0", "0.8", "0"]
    data = tmp_path / "demos"
    assert main(["data", "metaworld-demos", str(data), *args, "--teacher-features", "geometry"]) == 0
    assert main(["data", "metaworld-demos", str(tmp_path / "plain"), *args]) == 0
    images = sorted(p.relative_to(data) for p in (data / "images").rglob("*.png"))
    assert images and all((data / p).read_bytes() == (tmp_path / "plain" / p).read_bytes() for p in images)
    recs = [json.loads(x) for x in open(data / "train.jsonl")]
    meta = json.load(open(data / "teacher-geometry" / "meta.json"))
    assert (meta["teacher"], meta["grid"], meta["dim"]) == ("geometry", [2, 2], 40)  # 32 px: 2 x 2 tokens
    assert meta["ids"] == [r["id"] for r in recs] and meta["geometry"]["normalize"] == "residual"
    assert meta["geometry"]["goal_size"] == 0.05 and len(meta["geometry"]["stats"]["mean"]) == 2  # per view
    f = torch.load(data / "teacher-geometry" / "000000.pt")
    assert f.shape == (2, 2, 2, 40) and torch.isfinite(f).all()

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    over = [
        f"data.train={data / 'train.jsonl'}",
        "align.alpha=0.5",
        "align.teacher=geometry",
        f"align.features={data / 'teacher-geometry'}",
        "train.max_steps=2",
        "train.log_every=1",
        "data.micro_batch_size=4",
    ]
    yaml = os.path.join(root, "configs", "spatial_forcing", "metaworld_reach.yaml")
    summary = VLATrainer(build_config(yaml, over, output_dir=str(tmp_path / "run"))).run()
    m = read_metrics(str(tmp_path / "run"))
    assert len(m) == 2 and all(0 < x["m_align"] < 2 and x["m_align_tokens"] == 8 for x in m)  # 2 views x 4
    cfg = ClosedLoopConfig(
        env="metaworld:reach-v3",
        episodes=1,
        max_steps=6,
        size=32,
        show_goal=True,
        goal_size=0.05,
        goal_rgba=[0.0, 0.8, 0.0],
        execute=4,
        videos=[],
        out=str(tmp_path / "eval"),
    )
    r = evaluate_policy(summary["model"], cfg, progress=False)
    assert r["episodes"] == 1 and r["per_episode"][0]["steps"] in range(1, 7)
    assert r["config"]["goal_size"] == 0.05
