"""GRPO's held-out set (``train.eval_every``): one greedy rollout per held-out prompt, through the
training rollouts' engine settings (turns, tools, coords, decoding backend) without sampling,
scored by the configured rewards: ``reward`` (the weighted sum), ``reward/NAME`` per reward
function and ``accuracy`` (when an accuracy reward is configured)."""

from __future__ import annotations

import dataclasses
import os

from alignment.evaluator import HeldOut, shard_plan
from alignment.grpo.rollout import declare, read_rl_records
from alignment.rewards import combine, last_turns, reward_inputs


class GRPOHeldOut(HeldOut):
    """Held-out RL prompts: one greedy rollout each, scored by the configured rewards."""

    def __init__(self, trainer, path: str, limit: int):
        from vision_tools.engine import ToolEngine
        from vision_tools.generation import make_generator

        cfg = trainer.cfg
        self.cfg, self.judge = cfg, trainer.judge
        self.records = read_rl_records(path, cfg.data.format)  # data.format applies to data.eval too
        tools = cfg.rollout.toolset()
        declare(self.records, tools)  # as training's prompts
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.n = min(len(self.records), limit) if limit else len(self.records)
        self.mb = cfg.data.micro_batch_size
        greedy = dataclasses.replace(
            trainer.state.engine.cfg, do_sample=False, batch_size=self.mb, logprobs=False
        )
        self.trainer = trainer
        generator = trainer.state.engine.generator  # vllm: the rollouts' engine (weights pushed first)
        if not hasattr(generator, "update_weights"):
            generator = make_generator(
                cfg.rollout.generator, trainer.model, trainer.processor, synced_gpus=trainer.state.sharded
            )
        self.engine = ToolEngine(trainer.model, trainer.processor, tools, greedy, generator)

    def batches(self):
        gen = self.engine.generator
        if hasattr(gen, "update_weights"):  # a rollout engine with its own copy: the policy's weights now
            gen.wake()
            self.trainer.sync_rollout_weights()
        for indices, weight in shard_plan(self.n, self.mb):
            yield {"indices": indices}, weight
        if hasattr(gen, "update_weights"):
            gen.sleep()

    def sums(self, module, batch: dict) -> dict:
        cfg, recs = self.cfg, [self.records[i] for i in batch["indices"]]
        trajs = self.engine.run([r.prompt for r in recs], self.base_dir)
        # every configured reward's key on every rank, with a count of the rows that used it
        # (rewards_by_source: a reward's mean is over its sources' rows)
        rewards = (cfg.rewards, *cfg.rewards_by_source.values())
        sums = dict.fromkeys(["reward", *(f"reward/{k}" for w in rewards for k in w)], 0.0)
        counts = dict.fromkeys(sums, 0)
        for rec, t in zip(recs, trajs):
            sample = reward_inputs(rec, t, self.judge, cfg.rollout.coords)
            total, parts = combine(cfg.rewards_for(rec.meta), last_turns([t]), **sample)
            for name, value in [("reward", total[0]), *((f"reward/{k}", v[0]) for k, v in parts.items())]:
                sums[name] += value
                counts[name] += 1
        out = {k: (v, counts[k]) for k, v in sums.items()}
        if "reward/accuracy" in out:
            out["accuracy"] = out["reward/accuracy"]
        return out
