"""Closed-loop evaluation of a VLA in MetaWorld: ``mmpost eval-policy MODEL --env metaworld:push-v3``.

Episode ``i`` runs variation ``first_variation + i`` of ``MT1(task, seed)`` for at most
``max_steps`` control steps and counts as a success when the simulator reports success at any
step. The policy sees the rendered views, the instruction and the proprio and answers an action
chunk [K, D]: either ``execute`` actions of it run before the next query (0: all K), or, with
``ensemble``, the policy is queried at every step and the action for step t is the weighted mean
of every chunk's prediction for t, weight exp(-decay x i) with i = 0 the oldest (ACT's temporal
ensembling). MODEL ``expert`` runs the scripted expert through the same loop (it validates the
loop: the experts succeed). Results: success rate with a 95% Wilson interval, mean steps to
success, per-episode outcomes (``results.json``) and an mp4 of the chosen episodes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from mm.config import opt


@dataclass
class ClosedLoopConfig:
    env: str = opt("metaworld:push-v3", "simulator and task: metaworld:TASK (an MT1 task, e.g. reach-v3)")
    episodes: int = opt(20, "episodes to run")
    seed: int = opt(0, "MT1 seed: which 50 task variations (demos written with another seed are held out)")
    first_variation: int = opt(0, "variation of episode 0; episode i runs variation first_variation + i")
    max_steps: int = opt(200, "control steps per episode at most (MetaWorld's own limit: 500)")
    views: list[str] = opt(
        factory=lambda: ["corner", "gripperPOV"], help="cameras, in the order the model was trained with"
    )
    size: int = opt(224, "side of each rendered view in pixels (as in the demonstrations)")
    show_goal: bool = opt(False, "render the goal markers (as in the demonstrations: --show-goal)")
    goal_size: float = opt(
        0.0, "radius of the goal markers in metres, as in the demonstrations (0: MetaWorld's 0.02)"
    )
    goal_rgba: list[float] = opt(
        factory=list,
        help="colour of the goal markers, r g b [a], as in the demonstrations (empty: the task's)",
    )
    execute: int = opt(0, "actions of each chunk executed before the next prediction (0: the whole chunk)")
    ensemble: bool = opt(
        False, "temporal ensembling: predict every step, average the chunks' overlapping actions"
    )
    ensemble_decay: float = opt(
        0.01, "ensemble weight exp(-decay x i), i = 0 the oldest prediction (ACT: 0.01)"
    )
    workers: int = opt(1, "processes running episodes in parallel (each loads the model)")
    videos: list[int] = opt(factory=lambda: [0], help="episodes written as mp4 (views side by side)")
    fps: int = opt(20, "frame rate of the videos")
    out: str = opt("", "folder for results.json and the videos (default: MODEL/eval-TASK-seedS)")
    device: str = opt("cpu", "device of the model")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


class ExpertPolicy:
    """The task's scripted expert as a policy (reads the full state; a chunk of one action)."""

    needs_views = False

    def __call__(self, env, obs, views, instruction) -> np.ndarray:
        return env.expert_action(obs)[None]


class VLAClosedLoopPolicy:
    """An exported VLA (``vla.policy.VLAPolicy``) fed the views and the robot's proprio."""

    needs_views = True

    def __init__(self, path: str, device: str = "cpu"):
        from vla.policy import VLAPolicy

        self.policy = VLAPolicy.from_pretrained(path, device=device)

    def __call__(self, env, obs, views, instruction) -> np.ndarray:
        from PIL import Image

        images = [Image.fromarray(v) for v in views]
        proprio = env.proprio(obs) if self.policy.meta["proprio_dim"] else None
        return self.policy.predict_actions(images, instruction, proprio)


def load_policy(model: str, device: str = "cpu"):
    return ExpertPolicy() if model == "expert" else VLAClosedLoopPolicy(model, device)


def run_episode(env, policy, variation: int, cfg: ClosedLoopConfig, record: bool = False) -> dict:
    """One episode -> {variation, success, steps (to the first success, or run), frames if record}."""
    from vla.metaworld import instruction

    text = instruction(env.task)
    obs = env.reset(variation)
    pending: list = []  # the rest of the current chunk
    votes: dict[int, list] = {}  # ensembling: step -> predictions for it, oldest first
    frames = []
    for t in range(cfg.max_steps):
        query = cfg.ensemble or not pending
        views = env.render() if record or (query and policy.needs_views) else None
        if record:
            frames.append(np.concatenate(views, axis=1))
        if cfg.ensemble:
            for k, a in enumerate(policy(env, obs, views, text)):
                votes.setdefault(t + k, []).append(a)
            cands = np.stack(votes.pop(t))  # [n, D]
            w = np.exp(-cfg.ensemble_decay * np.arange(len(cands)))
            action = (w[:, None] * cands).sum(0) / w.sum()
        else:
            if not pending:
                chunk = policy(env, obs, views, text)
                pending = list(chunk[: cfg.execute or len(chunk)])
            action = pending.pop(0)
        obs, success = env.step(action)
        if success:
            return {"variation": variation, "success": True, "steps": t + 1, "frames": frames}
    return {"variation": variation, "success": False, "steps": cfg.max_steps, "frames": frames}


_worker: dict = {}


def _init_worker(model: str, cfg: ClosedLoopConfig) -> None:
    from vla.metaworld import MetaWorldEnv, parse_env

    _worker["env"] = MetaWorldEnv(
        parse_env(cfg.env), cfg.seed, cfg.views, cfg.size, cfg.show_goal, cfg.goal_size, cfg.goal_rgba
    )
    _worker["policy"] = load_policy(model, cfg.device)
    _worker["cfg"] = cfg


def _run(i: int) -> dict:
    cfg = _worker["cfg"]
    out = run_episode(_worker["env"], _worker["policy"], cfg.first_variation + i, cfg, record=i in cfg.videos)
    return {"episode": i, **out}


def write_video(path: str, frames: list, fps: int = 20) -> str:
    """RGB frames [H, W, 3] uint8 -> an mp4 (OpenCV's mp4v writer)."""
    from mm.imports import require

    cv2 = require("cv2", "writing episode videos")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (no mp4v encoder in this build)")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def summarize(episodes: list[dict]) -> dict:
    n, k = len(episodes), sum(e["success"] for e in episodes)
    lo, hi = wilson_interval(k, n)
    steps = [e["steps"] for e in episodes if e["success"]]
    return {
        "successes": k,
        "episodes": n,
        "success_rate": k / n if n else 0.0,
        "ci95": [lo, hi],
        "mean_steps_to_success": float(np.mean(steps)) if steps else None,
    }


def evaluate_policy(model: str, cfg: ClosedLoopConfig, progress: bool = True) -> dict:
    """Run the episodes (in ``workers`` processes), write results.json and the videos; the results."""
    from tqdm import tqdm

    from vla.metaworld import parse_env

    task = parse_env(cfg.env)
    if not 0 < cfg.max_steps <= 500:
        raise ValueError(f"max_steps={cfg.max_steps}: MetaWorld episodes last 1..500 steps")
    out = cfg.out or os.path.join(model if os.path.isdir(model) else ".", f"eval-{task}-seed{cfg.seed}")
    os.makedirs(out, exist_ok=True)
    ids = range(cfg.episodes)
    bar = dict(total=cfg.episodes, unit="episode", desc=f"{model} on {task}", disable=not progress)
    if cfg.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(cfg.workers, _init_worker, (model, cfg)) as pool:
            results = list(tqdm(pool.imap(_run, ids), **bar))
    else:
        _init_worker(model, cfg)
        try:
            results = [_run(i) for i in tqdm(ids, **bar)]
        finally:
            _worker.pop("env").close()
            _worker.clear()  # the model too
    videos = []
    for r in results:
        frames = r.pop("frames")
        if frames:
            name = f"episode{r['episode']:03d}_{'success' if r['success'] else 'failure'}.mp4"
            videos.append(write_video(os.path.join(out, name), frames, cfg.fps))
    summary = {
        "model": model,
        "task": task,
        **summarize(results),
        "videos": videos,
        "config": asdict(cfg),
        "per_episode": results,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    summary["results"] = os.path.join(out, "results.json")
    return summary
