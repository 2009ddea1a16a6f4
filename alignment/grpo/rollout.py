"""GRPO's rollouts: which prompts a step takes, G completions each through the tool engine, their
rewards, and the group-relative advantages of the sequences the step trains on.

``PromptPlanner`` gives each rank its prompts of each rollout batch. :class:`Rollouts` runs them:
``roll`` samples ``num_generations`` completions per prompt (one turn, or several with tool
calls) and scores the last turn of each with the configured rewards (weighted sum, plus DAPO's
soft overlong punishment) into a :class:`Group`; calling it takes a rollout batch's prompts,
refills groups whose rewards are all equal (DAPO dynamic sampling), turns rewards into
advantages and returns one :class:`~alignment.grpo.batch.Sequence` per trained completion (DAPO
overlong filtering leaves truncated ones out), with the batch's statistics.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alignment.grpo.batch import Sequence
from alignment.grpo.config import GRPOConfig
from alignment.infra import distributed as dist
from alignment.losses import group_advantages
from alignment.rewards import combine, last_turns, reward_inputs
from alignment.rewards.builtin import soft_overlong_penalty
from mm.config import ConfigError
from mm.dataset import DataError, Problem
from mm.formats import open_records

if TYPE_CHECKING:
    from mm.records import RLRecord
    from vision_tools.engine import ToolEngine, Trajectory


def read_rl_records(path: str, fmt: str = "auto") -> list:
    """The RL records (prompt + answer) of a data file in any format ``mm.formats`` reads."""
    if not path:
        raise DataError("data.train is empty: set it to an RL JSONL (prompt + answer per line)")
    out = []
    for line, rec in open_records(path, fmt):
        if isinstance(rec, Problem):
            raise DataError(str(rec))
        if rec.kind != "rl":
            raise DataError(f"{path}:{line}: GRPO needs RL records (prompt + answer), got {rec.kind}")
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no records")
    return out


def declare(records: list, tools) -> None:
    """Make every prompt's system turn declare the tools the engine executes (none: ``tools`` None,
    the prompts stay as the data has them)."""
    if tools is None:
        return
    from vision_tools.protocol import declare_tools

    for rec in records:
        rec.prompt = declare_tools(rec.prompt, tools)


class PromptPlanner:
    """Which prompts each rollout takes: a seeded shuffle per epoch. A rollout batch holds
    ``per_step`` prompts over all ranks (rank r rolls out its ``per_step / world`` of them) and
    serves ``mu`` optimizer steps, so an epoch of ``n`` prompts scores each once in
    ``n // per_step`` rollouts and takes ``mu`` times as many steps."""

    def __init__(self, n: int, per_step: int, world: int, seed: int, mu: int = 1):
        if per_step % world:
            raise ConfigError(
                f"data.prompts_per_step={per_step} is global over ranks and must divide by the "
                f"{world} ranks (each rolls out an equal share)"
            )
        self.n, self.per_step, self.world, self.seed, self.mu = n, per_step, world, seed, mu
        self.per_rank = per_step // world

    def rollouts_per_epoch(self) -> int:
        return max(1, self.n // self.per_step)

    def steps_per_epoch(self) -> int:
        return self.rollouts_per_epoch() * self.mu

    def prompts(self, epoch: int, rollout: int, rank: int) -> list[int]:
        """Rank ``rank``'s prompts of rollout ``rollout`` of ``epoch``."""
        order = list(range(self.n))
        random.Random(self.seed + epoch).shuffle(order)
        start = rollout * self.per_step + rank * self.per_rank
        return [order[(start + i) % self.n] for i in range(self.per_rank)]


@dataclass
class Group:
    """One prompt's ``num_generations`` rollouts and their rewards."""

    record: RLRecord
    trajectories: list[Trajectory]
    rewards: torch.Tensor  # [G] weighted sum of the configured rewards
    parts: dict[str, list[float]]  # reward name -> [G] unweighted values

    @property
    def informative(self) -> bool:
        """Whether the rewards differ (a group with one reward for all has zero advantages)."""
        return bool(self.rewards.std() > 0)


def score_group(cfg: GRPOConfig, record: RLRecord, trajectories: list[Trajectory], judge) -> Group:
    """The rewards of one prompt's rollouts: its rewards (``rewards_for`` its meta) on their last
    turns, plus DAPO's soft overlong punishment when ``loss.overlong_cache`` is set."""
    sample = reward_inputs(record, trajectories[0], judge, cfg.rollout.coords)
    total, parts = combine(cfg.rewards_for(record.meta), last_turns(trajectories), **sample)
    if cfg.loss.overlong_cache:  # added to the reward
        limit = cfg.rollout.max_completion_length * cfg.rollout.max_turns
        pen = [
            soft_overlong_penalty(t.generated_tokens, limit, cfg.loss.overlong_cache) for t in trajectories
        ]
        total = [r + p for r, p in zip(total, pen)]
        parts["overlong_penalty"] = pen
    return Group(record, trajectories, torch.tensor(total), parts)


class Rollouts:
    """Rolls out a rank's prompts through ``engine`` and scores them (see the module docstring).

    ``records``: the RL records; ``base_dir``: where their relative image paths start; ``judge``:
    for the rewards that need one; ``features``: the image-feature cache, cleared per batch;
    ``any_rank(flag)``: ``flag`` on any rank (ranks that must run the same forwards agree on
    refills); ``policy``: the model, switched to eval mode while it samples."""

    def __init__(
        self,
        cfg: GRPOConfig,
        engine: ToolEngine,
        records: list,
        base_dir: str,
        judge,
        policy=None,
        features=None,
        any_rank: Callable[[bool], bool] = bool,
    ):
        self.cfg, self.engine, self.records, self.base_dir, self.judge = cfg, engine, records, base_dir, judge
        self.policy, self.features, self.any_rank = policy, features, any_rank

    @torch.no_grad()
    def roll(self, indices: list[int]) -> list[Group]:
        """G completions of each prompt ``indices``, scored."""
        G = self.cfg.rollout.num_generations
        recs = [self.records[i] for i in indices]
        prompts = [r.prompt for r in recs for _ in range(G)]  # Messages: the engine encodes each prompt once
        if self.policy is not None:
            self.policy.eval()
        trajs = self.engine.run(prompts, self.base_dir)
        if self.policy is not None:
            self.policy.train()
        return [
            score_group(self.cfg, rec, trajs[j * G : (j + 1) * G], self.judge) for j, rec in enumerate(recs)
        ]

    def __call__(self, indices: list[int], draw_key: str, device: str) -> tuple[list[Sequence], dict]:
        """The sequences a rollout batch of prompts ``indices`` trains on, and its statistics
        (averaged over ranks where every rank has them); ``draw_key`` seeds the refills' draws."""
        cfg, G = self.cfg, self.cfg.rollout.num_generations
        t0 = time.perf_counter()
        if self.features is not None:  # features of the last rollout's images: stale or unneeded
            self.features.clear()
        rolled = self.roll(indices)
        chosen, refills = rolled, 0
        if cfg.loss.dynamic_sampling:  # groups with one reward for all teach nothing: draw others
            informative = [g for g in rolled if g.informative]
            rng = random.Random(draw_key)
            # under ZeRO-3 on several ranks every rank rolls (maybe nothing) while any rank refills
            while refills < cfg.loss.max_refills and self.any_rank(len(informative) < len(indices)):
                want = max(0, len(indices) - len(informative))
                more = self.roll(rng.sample(range(len(self.records)), want))
                informative += [g for g in more if g.informative]
                rolled += more
                refills += 1
            chosen = informative[: len(indices)]  # the cap spent: fewer groups, never zero-advantage ones
        stats = rollout_stats(cfg, rolled, chosen, refills, time.perf_counter() - t0, device)
        if not chosen:
            return [], stats
        adv = group_advantages(torch.cat([g.rewards for g in chosen]), G, cfg.loss.advantage_scale)
        rows = [(j, t) for j, g in enumerate(chosen) for t in g.trajectories]
        rope = self.engine.encoder.rope
        seqs = [  # DAPO overlong filtering drops truncated completions (their rewards shaped the advantages)
            Sequence(t.encoded(rope), t.prompt_length, j, float(a), t.logprobs)
            for (j, t), a in zip(rows, adv)
            if not (cfg.loss.overlong_filter and t.finish_reason == "max_tokens")
        ]
        return seqs, stats


def rollout_stats(
    cfg: GRPOConfig, rolled: list[Group], chosen: list[Group], refills: int, t_gen: float, device: str
) -> dict:
    """Rewards, violations, tool calls and lengths of every rollout (refills included), averaged
    over ranks where every rank has them."""
    every = [t for g in rolled for t in g.trajectories]
    all_r = torch.cat([g.rewards for g in rolled])
    n = len(every)
    parts_all, parts_n = Counter(), Counter()  # a reward's mean: over the rows that used it
    for g in rolled:
        for name, vals in g.parts.items():
            parts_all[name] += sum(vals)
            parts_n[name] += len(vals)
    violations = Counter(code for t in every for code in t.violations)
    stats = {
        "reward_mean": float(all_r.mean()),
        "reward_std": float(all_r.std()) if n > 1 else 0.0,
        **{f"reward/{k}": v / parts_n[k] for k, v in parts_all.items()},
        **{f"violations/{k}": v / n for k, v in violations.items()},
        "tool_calls": sum(rec.image_index is not None for t in every for rec in t.turns) / n,  # executed
        "response_length": sum(t.generated_tokens for t in every) / n,
        "generation_s": t_gen,
        "informative_groups": sum(float(g.informative) for g in chosen) / max(1, len(chosen)),
        "groups_trained": len(chosen),  # per rank; < the rank's prompts when dynamic sampling ran dry
        "refills": refills,
        "overlong": sum(t.finish_reason == "max_tokens" for t in every) / n,
    }
    if "accuracy" in parts_all:
        stats["accuracy"] = parts_all["accuracy"] / parts_n["accuracy"]
    # averages over every rank's rollouts (the keys are the same on all ranks; with
    # rewards_by_source a rank may lack a reward's rows, so its reward/NAME stays the rank's own)
    named = [] if cfg.rewards_by_source else [f"reward/{k}" for k in cfg.rewards]
    shared = ["reward_mean", "response_length", "tool_calls", *named]
    shared = [k for k in shared if k in stats]
    means = dist.all_sum([stats[k] for k in shared], device) / dist.world()
    stats.update({k: float(v) for k, v in zip(shared, means)})
    return stats
