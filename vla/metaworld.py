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
push and pick-place is in no view: the tasks are only partly observable from pixels).
"""

from __future__ import annotations

import os

import numpy as np

from mm.imports import require

CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
PROPRIO_DIM = 4  # obs[0:3] hand position, obs[3] gripper opening
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


def parse_env(spec: str) -> str:
    """``metaworld:push-v3`` -> ``push-v3`` (the only simulator here)."""
    sim, _, task = spec.partition(":")
    if sim != "metaworld" or not task:
        raise ValueError(f"--env {spec!r}: expected metaworld:TASK, e.g. metaworld:push-v3")
    return task


class MetaWorldEnv:
    def __init__(self, task: str, seed: int = 0, views=("corner",), size: int = 224, show_goal: bool = False):
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

    def reset(self, variation: int) -> np.ndarray:
        """Start an episode of variation ``variation`` (mod 50) -> the first state."""
        import mujoco

        self.env.set_task(self.variations[variation % len(self.variations)])
        obs, _ = self.env.reset()
        m = self.env.model
        for name, _ in [] if self.show_goal else self.env._target_site_config:  # known after a reset
            m.site_rgba[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name), 3] = 0  # goal marker
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
            out.append(np.ascontiguousarray(img[::-1, ::-1] if cam.startswith("corner") else img))
        return out

    @staticmethod
    def proprio(obs) -> np.ndarray:
        return np.asarray(obs[:PROPRIO_DIM], np.float32)

    def expert_action(self, obs) -> np.ndarray:
        return np.asarray(self.expert.get_action(obs), np.float32)

    def close(self) -> None:
        self.renderer.close()
        self.env.close()
