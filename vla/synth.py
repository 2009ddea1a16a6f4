"""A synthetic reaching task where 3-D understanding pays: ``mmpost data vla-synth OUT --n N``.

Each scene has a coloured ball at a random 3-D position (x, y in [-0.5, 0.5], z in [0, 0.5]) and
a gripper at another (given as ``proprio`` = [x, y, z, open]). Two 112 x 112 views are rendered
with OpenCV by pinhole projection: a third-person camera in front of the table (image position
gives x and height z, apparent size gives depth y) and a top-down "wrist" camera (image position
gives x and y, apparent size gives height z). The instruction names the ball's colour; the
action chunk moves the gripper to the ball along a straight line with a smooth-step velocity
profile over K steps (xyz deltas), turns it toward the ball (yaw), and closes it on the last
step. So the target of every action is the ball's 3-D position, which no single view shows
fully. Deterministic given the seed.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from mm.imports import require

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (225, 195, 30)}
RADIUS = 0.12
FOCAL = 90.0


def _project_front(p, size: int) -> tuple[float, float, float]:
    d = p[1] + 2.0  # camera at y = -2, z = 0.25, looking along +y
    c = size / 2
    return c + FOCAL * p[0] / d, c - FOCAL * (p[2] - 0.25) / d, FOCAL * RADIUS / d


def _project_top(p, size: int) -> tuple[float, float, float]:
    d = 1.6 - p[2]  # camera at z = 1.6 looking down
    c = size / 2
    return c + FOCAL * p[0] / d, c + FOCAL * p[1] / d, FOCAL * RADIUS / d


def _ball(img, u, v, r, color) -> None:
    cv2 = require("cv2", "rendering the VLA synthetic scenes")
    s = 4  # sub-pixel precision for cv2's fixed-point drawing
    centre = (int(round(u * (1 << s))), int(round(v * (1 << s))))
    cv2.circle(img, centre, int(round(r * (1 << s))), color, -1, cv2.LINE_AA, s)
    hi = tuple(min(255, c + 70) for c in color)
    cv2.circle(img, (centre[0] - int(r * 5), centre[1] - int(r * 5)), int(r * 5), hi, -1, cv2.LINE_AA, s)


def render_views(target, color: str, size: int = 112, distractors=()) -> tuple[np.ndarray, np.ndarray]:
    """(front, top) RGB uint8 images of the ball at ``target`` (+ distractor balls)."""
    cv2 = require("cv2", "rendering the VLA synthetic scenes")
    front = np.zeros((size, size, 3), np.uint8)
    front[: size // 2] = (235, 235, 228)  # wall
    for k in range(size // 2, size):  # floor: darker towards the camera (a depth cue)
        front[k] = (200 - (k - size // 2), 190 - (k - size // 2), 170 - (k - size // 2) // 2)
    top = np.full((size, size, 3), (205, 195, 175), np.uint8)
    for t in np.linspace(-0.5, 0.5, 5):  # table grid at z = 0 seen from above
        a, b = _project_top((t, -0.5, 0), size), _project_top((t, 0.5, 0), size)
        cv2.line(top, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (170, 160, 140), 1, cv2.LINE_AA)
        a, b = _project_top((-0.5, t, 0), size), _project_top((0.5, t, 0), size)
        cv2.line(top, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (170, 160, 140), 1, cv2.LINE_AA)
    balls = [(target, color), *distractors]
    for p, c in sorted(balls, key=lambda b: -b[0][1]):  # far first
        _ball(front, *_project_front(p, size), COLORS[c])
    for p, c in sorted(balls, key=lambda b: b[0][2]):  # low first
        _ball(top, *_project_top(p, size), COLORS[c])
    return front, top


def action_chunk(gripper, target, chunk: int = 8, dims: int = 7) -> np.ndarray:
    """[chunk, dims]: xyz deltas of a smooth-step move to ``target``, roll/pitch 0, yaw toward the
    target spread over the chunk, gripper +1 (open) then -1 (close) on the last step."""
    g, t = np.asarray(gripper[:3], float), np.asarray(target, float)
    s = np.arange(chunk + 1) / chunk
    s = s * s * (3 - 2 * s)  # smooth step 0 -> 1
    path = g[None] + (t - g)[None] * s[:, None]  # [K+1, 3]
    out = np.zeros((chunk, max(dims, 7)))
    out[:, :3] = np.diff(path, axis=0)
    out[:, 5] = math.atan2(t[1] - g[1], t[0] - g[0]) / chunk
    out[:, 6] = 1.0
    out[-1, 6] = -1.0
    return out[:, :dims]


def _point(rng) -> list[float]:
    return [float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.0, 0.5))]


def _scenes(rng, count: int, size: int, chunk: int, dims: int, distractors: int):
    """(colour, target, gripper, front, top, actions) of ``count`` scenes, in the generator's order."""
    for _ in range(count):
        color = str(rng.choice(list(COLORS)))
        target, gripper = _point(rng), _point(rng) + [1.0]
        others = [c for c in COLORS if c != color]
        extra = [(_point(rng), str(rng.choice(others))) for _ in range(distractors)]
        front, top = render_views(target, color, size, extra)
        actions = np.round(action_chunk(gripper, target, chunk, dims), 6)
        yield color, target, [round(x, 6) for x in gripper], front, top, actions


def instruction(color: str) -> str:
    return f"move the gripper to the {color} ball"


def write_vla_synth(
    out: str,
    n: int = 256,
    n_test: int = 32,
    seed: int = 0,
    size: int = 112,
    chunk: int = 8,
    dims: int = 7,
    distractors: int = 0,
) -> dict:
    """Write OUT/train.jsonl, OUT/test.jsonl and OUT/images/; returns their paths."""
    cv2 = require("cv2", "rendering the VLA synthetic scenes")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    paths = {}
    for split, count in (("train", n), ("test", n_test)):
        path = os.path.join(out, f"{split}.jsonl")
        with open(path, "w") as f:
            for i, (color, target, gripper, front, top, actions) in enumerate(
                _scenes(rng, count, size, chunk, dims, distractors)
            ):
                names = []
                for view, img in (("front", front), ("wrist", top)):
                    name = f"images/{split}_{i:05d}_{view}.png"
                    cv2.imwrite(os.path.join(out, name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                    names.append(name)
                rec = {
                    "id": f"vla-{split}-{i:05d}",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image", "image": names[0]},
                                {"type": "image", "image": names[1]},
                                {"type": "text", "text": instruction(color)},
                            ],
                        }
                    ],
                    "actions": actions.tolist(),
                    "proprio": gripper,
                    "meta": {"target": target, "color": color},
                }
                f.write(json.dumps(rec) + "\n")
        paths[split] = path
    return paths


def write_vla_synth_lerobot(
    out: str,
    n: int = 256,
    n_test: int = 32,
    seed: int = 0,
    size: int = 112,
    chunk: int = 8,
    dims: int = 7,
    distractors: int = 0,
    fps: int = 10,
    lossless: bool = False,
    episodes_per_file: int = 1000,
) -> dict:
    """The same scenes as ``write_vla_synth`` (same seed, same order) as LeRobot v3.0 datasets OUT/train
    and OUT/test: scene i is episode i, K frames long (views ``front`` and ``wrist``); the state
    starts at the gripper and moves by each action's xyz delta, so frame 0's state is the record's
    proprio and frame 0's K-step chunk is the record's actions."""
    from vla.lerobot_write import Episode, write_lerobot

    rng = np.random.default_rng(seed)
    paths = {}
    for split, count in (("train", n), ("test", n_test)):
        episodes = []
        for color, _, gripper, front, top, actions in _scenes(rng, count, size, chunk, dims, distractors):
            state = np.tile(np.asarray(gripper), (chunk, 1))  # [K, 4]
            state[1:, :3] += np.cumsum(actions[:-1, :3], axis=0)
            images = {"front": np.stack([front] * chunk), "wrist": np.stack([top] * chunk)}
            episodes.append(Episode(instruction(color), images, actions, state))
        paths[split] = write_lerobot(
            os.path.join(out, split), episodes, fps, episodes_per_file, lossless=lossless
        )
    return paths
