"""MetaWorld (MT1) episodes for VLA demonstrations and closed-loop evaluation, rendered offscreen.

``MetaWorldEnv(task, seed, views, size)`` runs episodes of one task: ``reset(variation)`` /
``step(action)`` return the 39-number state, ``render()`` the camera views (RGB
uint8, corner cameras turned 180 degrees upright), ``proprio(obs)`` the robot's part of the state
(hand xyz + gripper opening), ``expert_action(obs)`` the task's scripted policy. Variation ``i`` is
``metaworld.MT1(task, seed=seed).train_tasks[i % 50]``: which goal and object positions an episode
gets depends on (seed, i) only, never on process or order.

MuJoCo picks its OpenGL backend when it is first imported, from ``MUJOCO_GL``: ``mm.imports`` sets
``egl`` (Mesa EGL: ``apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri``) unless the
variable is already set (``osmesa`` needs ``apt-get install -y libosmesa6``; both give the same
pixels). Shadows and reflections are turned off (about 5x faster frames) and goal markers hidden
unless ``show_goal``, so a view shows the robot and the objects only (then the goal of reach,
push and pick-place is in no view: the tasks are only partly observable from pixels). A shown
marker is MetaWorld's sphere of radius 0.02 m (about 3 px across in a 112 px corner view) in the
task's colour (reach's is red like the puck and the finger pads); ``goal_size`` sets its radius
and ``goal_rgba`` its colour. Sites never collide, so neither changes the physics or success.

``point_maps()`` gives each view's 3-D structure for the geometric Spatial Forcing teacher
(``vla.spatial.geometry``): MuJoCo's metric depth back-projected with the camera's pose at this
frame into world points, oriented like the RGB view, and the mask of pixels that hit geometry.
"""

from __future__ import annotations

import os

import numpy as np

from mm.config import ConfigError
from mm.imports import require

CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
PROPRIO_DIM = 4  # obs[0:3] hand position, obs[3] gripper opening
TABLE_CENTRE = (0.0, 0.6, 0.0)  # body "tablelink", the table top at z = 0 (metres): the scene's origin
INSTRUCTIONS = {
    "reach-v3": "reach the goal position with the gripper",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
}
GL_HINT = (
    "MuJoCo cannot render offscreen: set MUJOCO_GL=egl (apt-get install -y libegl1 libegl-mesa0 "
    "libgl1-mesa-dri) or MUJOCO_GL=osmesa (apt-get install -y libosmesa6) before Python starts"
)


class RenderError(RuntimeError):
    """MuJoCo has no usable offscreen OpenGL context."""


def require_metaworld():
    """Import metaworld (and MuJoCo) with an offscreen GL backend chosen; a clear error when absent."""
    require("mujoco", "MetaWorld simulation")
    return require("metaworld", "MetaWorld demonstrations and closed-loop evaluation")


def instruction(task: str) -> str:
    """The language instruction of a task (a fixed sentence per task)."""
    return INSTRUCTIONS.get(task) or task.rsplit("-v", 1)[0].replace("-", " ")


def upright(x: np.ndarray, camera: str) -> np.ndarray:
    """A view as mmpost shows it: the corner cameras are mounted upside down, so their images (and
    depth, point and mask maps, which must turn alike) are turned 180 degrees; others unchanged."""
    return np.ascontiguousarray(x[::-1, ::-1] if camera.startswith("corner") else x)


def parse_env(spec: str) -> str:
    """``metaworld:push-v3`` -> ``push-v3`` (the only simulator here)."""
    sim, _, task = spec.partition(":")
    if sim != "metaworld" or not task:
        raise ValueError(f"--env {spec!r}: expected metaworld:TASK, e.g. metaworld:push-v3")
    return task


class MetaWorldEnv:
    def __init__(
        self,
        task: str,
        seed: int = 0,
        views=("corner",),
        size: int = 224,
        show_goal: bool = False,
        goal_size: float = 0.0,
        goal_rgba=None,
    ):
        metaworld = require_metaworld()
        import mujoco

        bad = [v for v in views if v not in CAMERAS]
        if bad:
            raise ValueError(f"unknown camera(s) {bad}; MetaWorld cameras: {', '.join(CAMERAS)}")
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            raise ValueError(f"unknown MetaWorld task {task!r}; e.g. reach-v3, push-v3, pick-place-v3")
        bench = metaworld.MT1(task, seed=seed)  # builds the 50 variations: seconds, so once per env
        self.variations = bench.train_tasks
        self.env = bench.train_classes[task]()
        self.task, self.views, self.size, self.show_goal = task, tuple(views), size, show_goal
        self.goal_size, self.goal_rgba = goal_size, list(goal_rgba or [])
        if len(self.goal_rgba) not in (0, 3, 4):
            raise ConfigError(f"goal_rgba {self.goal_rgba}: give 3 or 4 numbers in [0, 1] (r g b [a])")
        self.max_steps = self.env.max_path_length
        self.expert = ENV_POLICY_MAP[task]()
        m = self.env.model
        m.light_castshadow[:] = 0
        m.mat_reflectance[:] = 0
        m.vis.global_.offwidth = max(m.vis.global_.offwidth, size)
        m.vis.global_.offheight = max(m.vis.global_.offheight, size)
        try:
            self.renderer = mujoco.Renderer(m, size, size)
        except Exception as e:  # no EGL/OSMesa library, no device: say what to install
            raise RenderError(f"{GL_HINT} (MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {e})") from e
        self.depth_renderer = None  # made on the first point_maps()
        self.cam_ids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in self.views]

    def reset(self, variation: int) -> np.ndarray:
        """Start an episode of variation ``variation`` (mod 50) -> the first state."""
        import mujoco

        self.env.set_task(self.variations[variation % len(self.variations)])
        obs, _ = self.env.reset()
        m = self.env.model
        for name, _ in self.env._target_site_config:  # the goal markers, known after a reset
            i = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name)
            if self.goal_size:
                m.site_size[i, 0] = self.goal_size  # a sphere's radius
            if self.goal_rgba:
                m.site_rgba[i, : len(self.goal_rgba)] = self.goal_rgba
            if not self.show_goal:
                m.site_rgba[i, 3] = 0
        return obs

    def step(self, action) -> tuple[np.ndarray, bool]:
        """One control step (action clipped to [-1, 1]) -> (state, success)."""
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        obs, _, _, _, info = self.env.step(a)
        return obs, bool(info["success"])

    def render(self) -> list[np.ndarray]:
        """The views, [size, size, 3] uint8 each, in ``views`` order."""
        out = []
        for cam in self.views:
            self.renderer.update_scene(self.env.data, camera=cam)
            img = self.renderer.render()
            out.append(upright(img, cam))
        return out

    def camera(self, view: str) -> tuple[float, np.ndarray, np.ndarray]:
        """(fovy in degrees, optical centre [3], camera-to-world rotation [3, 3]) of a view's camera
        now (gripperPOV moves with the hand, so read it at every frame)."""
        k = self.cam_ids[self.views.index(view)]
        d = self.env.data
        return float(self.env.model.cam_fovy[k]), d.cam_xpos[k].copy(), d.cam_xmat[k].reshape(3, 3).copy()

    def point_maps(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per view (world points [size, size, 3] in metres, valid [size, size] bool), oriented like
        ``render()``: back-projected in the renderer's orientation, then turned with the RGB."""
        import mujoco

        from vla.spatial.geometry import backproject, valid_depth

        m = self.env.model
        if self.depth_renderer is None:
            self.depth_renderer = mujoco.Renderer(m, self.size, self.size)
            self.depth_renderer.enable_depth_rendering()
        far = m.vis.map.zfar * m.stat.extent  # the far plane: where the sky reads
        out = []
        for cam in self.views:
            self.depth_renderer.update_scene(self.env.data, camera=cam)
            depth = self.depth_renderer.render()  # metric z-depth already (MuJoCo linearises it)
            points = backproject(depth, *self.camera(cam))
            out.append((upright(points, cam), upright(valid_depth(depth, far), cam)))
        return out

    @staticmethod
    def proprio(obs) -> np.ndarray:
        return np.asarray(obs[:PROPRIO_DIM], np.float32)

    def expert_action(self, obs) -> np.ndarray:
        return np.asarray(self.expert.get_action(obs), np.float32)

    def close(self) -> None:
        self.renderer.close()
        if self.depth_renderer is not None:
            self.depth_renderer.close()
        self.env.close()
