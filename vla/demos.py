"""MetaWorld expert demonstrations as VLA records: ``mmpost data metaworld-demos OUT --tasks reach-v3``.

For each task, episode ``e`` rolls out the scripted expert (``metaworld.policies``) in variation
``e`` of ``MT1(task, seed)`` until its first success (or the step limit) and writes one record per
step: the views at that step (PNG, ``images/TASK/eEEE_tSSS_VIEW.png``), the instruction, the
robot's proprio (hand xyz, gripper opening) and the next K expert actions (4-D: xyz delta,
gripper effort; past the episode's end the last action repeats). ``meta`` holds task, episode,
variation, step and the episode's ``success`` flag. Only successful episodes are kept unless
``keep_failed``. ``OUT/train.jsonl`` holds the records, ``OUT/demos.json`` what was asked and
per-task success counts. Goal markers are hidden unless ``show_goal`` (``vla.metaworld``;
``goal_size`` / ``goal_rgba`` set their radius and colour: give closed-loop evaluation the same).
Deterministic given the arguments: the expert and the renderer are.

``teacher_features="geometry"`` also writes ``OUT/teacher-geometry/``, the geometric Spatial
Forcing teacher's features of the same frames in ``vla.spatial.features``' layout (train with
``align.teacher=geometry align.features=OUT/teacher-geometry``): per view, MuJoCo's depth
back-projected to world points (relative to the table centre) and pooled on the student's token
grid for ``size`` (``vla.spatial.geometry``), then normalised over the whole set (``residual``: the
mean of each token position removed; ``zscore``; ``none``), the statistics kept in meta.json.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mm.config import ConfigError
from mm.imports import require


def action_chunks(actions: np.ndarray, chunk: int) -> np.ndarray:
    """[T, D] -> [T, chunk, D]: row t holds actions t .. t+chunk-1, the last action repeated past T."""
    T = len(actions)
    idx = np.minimum(np.arange(T)[:, None] + np.arange(chunk)[None], T - 1)
    return actions[idx]


def rollout_expert(env, variation: int, max_steps: int, observe=None) -> tuple[list, list, list, bool]:
    """(frames per step, proprio per step, expert action per step, success) of one episode,
    stopping after the step that first succeeds. A frame is ``env.render()``, or
    ``(env.render(), observe(env))`` when ``observe`` is given (e.g. the teacher's features)."""
    obs = env.reset(variation)
    frames, proprio, actions, success = [], [], [], False
    for _ in range(max_steps):
        frames.append(env.render() if observe is None else (env.render(), observe(env)))
        proprio.append(env.proprio(obs))
        a = env.expert_action(obs)
        actions.append(np.clip(a, -1, 1))
        obs, success = env.step(a)
        if success:
            break
    return frames, proprio, actions, success


GEOMETRY_FOLDER = "teacher-geometry"
GEOMETRY_OPTIONS = {"scale": 1.0, "n_freqs": 6, "f_min": 0.25, "sub": 1}  # d = 40 (point_features)


def geometry_observer(size: int, **options):
    """``env -> [V, gh, gw, d]`` float32: the geometry teacher's features of the current frame,
    on the student's token grid of a ``size`` px view (``vla.spatial.geometry.point_features``)."""
    from vla.metaworld import TABLE_CENTRE
    from vla.spatial.geometry import point_features, token_grid

    grid = token_grid(size, size)
    options = {"centre": TABLE_CENTRE, **GEOMETRY_OPTIONS, **options}

    def observe(env) -> np.ndarray:
        return np.stack([point_features(p, ok, grid, **options) for p, ok in env.point_maps()])

    return observe


def write_metaworld_demos(
    out: str,
    tasks: list[str],
    episodes: int = 10,
    views: tuple[str, ...] = ("corner", "gripperPOV"),
    size: int = 224,
    seed: int = 0,
    chunk: int = 8,
    max_steps: int = 200,
    keep_failed: bool = False,
    show_goal: bool = False,
    goal_size: float = 0.0,
    goal_rgba=None,
    teacher_features: str | None = None,
    feature_normalize: str = "residual",
    progress: bool = True,
) -> dict:
    """Write OUT/train.jsonl, OUT/images/ and OUT/demos.json (and OUT/teacher-geometry/ with
    ``teacher_features="geometry"``); returns the summary."""
    from vla.metaworld import MetaWorldEnv, instruction
    from vla.spatial.geometry import NORMALIZE

    cv2 = require("cv2", "writing the demonstration views")
    if teacher_features not in (None, "", "geometry"):
        raise ConfigError(f"teacher features {teacher_features!r}: the demonstrations write geometry only")
    if feature_normalize not in NORMALIZE:
        raise ConfigError(f"feature normalisation {feature_normalize!r}: use one of {', '.join(NORMALIZE)}")
    observe = geometry_observer(size) if teacher_features == "geometry" else None
    os.makedirs(out, exist_ok=True)
    summary = {
        "tasks": list(tasks),
        "episodes": episodes,
        "views": list(views),
        "size": size,
        "seed": seed,
        "chunk": chunk,
        "max_steps": max_steps,
        "keep_failed": keep_failed,
        "show_goal": show_goal,
        "goal_size": goal_size,
        "goal_rgba": list(goal_rgba or []),
        "teacher_features": teacher_features or None,
        "success": {},
        "records": 0,
    }
    from tqdm import tqdm

    bar = tqdm(total=len(tasks) * episodes, unit="episode", desc="expert demos", disable=not progress)
    path = os.path.join(out, "train.jsonl")
    ids, teacher_feats = [], []  # the geometry teacher's features, one [V, gh, gw, d] per record
    with open(path, "w") as f:
        for task in tasks:
            os.makedirs(os.path.join(out, "images", task), exist_ok=True)
            text, ok = instruction(task), 0
            env = MetaWorldEnv(task, seed, views, size, show_goal, goal_size, goal_rgba)
            for e in range(episodes):
                frames, proprio, actions, success = rollout_expert(env, e, max_steps, observe)
                ok += success
                bar.update(1)
                if not (success or keep_failed):
                    continue
                chunks = action_chunks(np.asarray(actions, np.float32), chunk)
                for t, imgs in enumerate(frames):
                    if observe is not None:
                        imgs, feats = imgs
                        ids.append(f"{task}-e{e:03d}-t{t:03d}")
                        teacher_feats.append(feats)
                    names = [f"images/{task}/e{e:03d}_t{t:03d}_{v}.png" for v in views]
                    for name, img in zip(names, imgs):
                        cv2.imwrite(os.path.join(out, name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                    rec = {
                        "id": f"{task}-e{e:03d}-t{t:03d}",
                        "messages": [
                            {
                                "role": "user",
                                "content": [
                                    *({"type": "image", "image": n} for n in names),
                                    {"type": "text", "text": text},
                                ],
                            }
                        ],
                        "actions": np.round(chunks[t], 6).tolist(),
                        "proprio": [round(float(x), 6) for x in proprio[t]],
                        "meta": {"task": task, "episode": e, "variation": e, "step": t, "success": success},
                    }
                    f.write(json.dumps(rec) + "\n")
                    summary["records"] += 1
            env.close()
            summary["success"][task] = [ok, episodes]
    bar.close()
    if observe is not None:
        meta = write_geometry_features(out, path, ids, teacher_feats, feature_normalize, summary)
        summary["features"] = {"folder": meta["folder"], "grid": meta["grid"], "dim": meta["dim"]}
    with open(os.path.join(out, "demos.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def write_geometry_features(
    out: str, data: str, ids: list, feats: list, normalize: str, summary: dict
) -> dict:
    """Normalise the geometry features over the whole set and write OUT/teacher-geometry."""
    import torch

    from vla.metaworld import TABLE_CENTRE
    from vla.spatial import geometry as G
    from vla.spatial.features import save_features

    if not feats:
        raise ValueError("no successful expert episode: nothing to write teacher features for")
    F = np.stack(feats)  # [N, V, gh, gw, d]
    stats = None
    if normalize != "none":
        mean, std = G.feature_stats(F, normalize)
        F = G.normalize(F, mean, std)
        stats = {"mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist()}
    folder = os.path.join(out, GEOMETRY_FOLDER)
    how = {k: summary[k] for k in ("tasks", "views", "size", "seed", "show_goal", "goal_size", "goal_rgba")}
    geometry = {
        **how,
        "centre": list(TABLE_CENTRE),
        **GEOMETRY_OPTIONS,
        "normalize": normalize,
        "stats": stats,
    }
    meta = save_features(folder, data, ids, [torch.from_numpy(x) for x in F], "geometry", geometry=geometry)
    return {**meta, "folder": folder}
