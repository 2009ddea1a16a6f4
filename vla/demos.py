"""MetaWorld expert demonstrations as VLA records: ``mmpost data metaworld-demos OUT --tasks reach-v3``.

For each task, episode ``e`` rolls out the scripted expert (``metaworld.policies``) in variation
``e`` of ``MT1(task, seed)`` until its first success (or the step limit) and writes one record per
step: the views at that step (PNG, ``images/TASK/eEEE_tSSS_VIEW.png``), the instruction, the
robot's proprio (hand xyz, gripper opening) and the next K expert actions (4-D: xyz delta,
gripper effort; past the episode's end the last action repeats). ``meta`` holds task, episode,
variation, step and the episode's ``success`` flag. Only successful episodes are kept unless
``keep_failed``. ``OUT/train.jsonl`` holds the records, ``OUT/demos.json`` what was asked and
per-task success counts. Goal markers are hidden unless ``show_goal`` (``vla.metaworld``). Deterministic given the arguments: the expert and the renderer are.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mm.imports import require


def action_chunks(actions: np.ndarray, chunk: int) -> np.ndarray:
    """[T, D] -> [T, chunk, D]: row t holds actions t .. t+chunk-1, the last action repeated past T."""
    T = len(actions)
    idx = np.minimum(np.arange(T)[:, None] + np.arange(chunk)[None], T - 1)
    return actions[idx]


def rollout_expert(env, variation: int, max_steps: int) -> tuple[list, list, list, bool]:
    """(frames per step, proprio per step, expert action per step, success) of one episode,
    stopping after the step that first succeeds."""
    obs = env.reset(variation)
    frames, proprio, actions, success = [], [], [], False
    for _ in range(max_steps):
        frames.append(env.render())
        proprio.append(env.proprio(obs))
        a = env.expert_action(obs)
        actions.append(np.clip(a, -1, 1))
        obs, success = env.step(a)
        if success:
            break
    return frames, proprio, actions, success


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
    progress: bool = True,
) -> dict:
    """Write OUT/train.jsonl, OUT/images/ and OUT/demos.json; returns the summary."""
    from vla.metaworld import MetaWorldEnv, instruction

    cv2 = require("cv2", "writing the demonstration views")
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
        "success": {},
        "records": 0,
    }
    from tqdm import tqdm

    bar = tqdm(total=len(tasks) * episodes, unit="episode", desc="expert demos", disable=not progress)
    path = os.path.join(out, "train.jsonl")
    with open(path, "w") as f:
        for task in tasks:
            os.makedirs(os.path.join(out, "images", task), exist_ok=True)
            text, ok = instruction(task), 0
            env = MetaWorldEnv(task, seed, views, size, show_goal)
            for e in range(episodes):
                frames, proprio, actions, success = rollout_expert(env, e, max_steps)
                ok += success
                bar.update(1)
                if not (success or keep_failed):
                    continue
                chunks = action_chunks(np.asarray(actions, np.float32), chunk)
                for t, imgs in enumerate(frames):
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
    with open(os.path.join(out, "demos.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
