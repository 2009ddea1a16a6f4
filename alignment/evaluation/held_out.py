"""Held-out sets of each algorithm for evaluation during training (``during_training.Evaluator``).

A held-out set reads ``data.eval`` with the trainer's own encoder, gives this rank's share of the
records as batches (``batches``) and scores one batch as sums ``{name: (numerator, denominator)}``
(``sums``), from which the Evaluator makes ratios over all ranks:

- SFT ``loss``: summed NLL of the supervised tokens / their count (the training loss, per token);
  with ``train.eval_generate``, ``accuracy``: greedy answers to the records' prompts matched to
  their ``answer`` as ``mmpost eval`` does (records without an answer do not count);
- DPO ``loss``, ``margin``, ``accuracy``, ``chosen_reward``, ``rejected_reward``: per pair means of
  ``alignment.losses.dpo_loss``, the reference log-probs computed once with the starting model;
- VLA ``action_l1``: mean |predicted - true| normalised action over samples, steps and dimensions;
- GRPO ``reward`` (the weighted sum), ``reward/NAME`` per reward function and ``accuracy`` (when
  an accuracy reward is configured): one greedy rollout per held-out prompt, through the same
  engine settings as training (turns, tools, coords) but without sampling.

Every rank runs the same number of batches (ZeRO-3 gathers parameters collectively in each
forward): a rank with fewer records repeats one with weight 0.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from alignment.infra import distributed as dist
from mm.config import ConfigError


def shard_plan(n: int, micro_batch_size: int) -> list[tuple[list[int], float]]:
    """This rank's batches of records ``0..n-1`` (records ``rank, rank + world, ...``) as
    (indices, weight), padded with weight-0 repeats to the same count on every rank."""
    if n == 0:
        raise ConfigError("data.eval holds no usable records")
    world, mb = dist.world(), max(1, micro_batch_size)
    mine = list(range(n))[dist.rank() :: world]
    plan = [(mine[k : k + mb], 1.0) for k in range(0, len(mine), mb)]
    count = math.ceil(math.ceil(n / world) / mb)
    filler = plan[0][0] if plan else [0]
    return plan + [(filler, 0.0)] * (count - len(plan))


class HeldOut:
    """``n`` records scored ``mb`` at a time; ``len()`` is the number of batches of every rank."""

    n = mb = 0

    def __len__(self) -> int:
        return len(shard_plan(self.n, self.mb))


class SFTHeldOut(HeldOut):
    """Held-out conversations: the next-token loss on their supervised tokens."""

    def __init__(self, trainer, path: str, limit: int):
        from mm.dataset import RecordDataset

        train = trainer.dataset
        self.ds = RecordDataset(
            path,
            train.encoder,
            on_error=train.on_error,
            transform=train.transform,
            format=trainer.cfg.data.format,
        )
        self.n = min(len(self.ds), limit) if limit else len(self.ds)
        self.mb = trainer.cfg.data.micro_batch_size
        self.pad_id = trainer.processor.tokenizer.pad_token_id
        self.processor, tc = trainer.processor, trainer.train_cfg
        self.max_new_tokens = tc.eval_max_new_tokens if tc.eval_generate else 0
        if self.max_new_tokens and tc.deepspeed == "zero3" and dist.world() > 1:
            raise ConfigError("train.eval_generate is not supported under ZeRO-3 on several ranks; use zero2")

    def batches(self):
        from mm.collate import pad_batch

        for indices, weight in shard_plan(self.n, self.mb):
            samples = [s for s in (self.ds[i] for i in indices) if s is not None]
            if samples:
                yield {**pad_batch(samples, self.pad_id), "indices": indices}, weight

    def sums(self, module, batch: dict) -> dict:
        indices = batch.pop("indices")
        nll, count, _ = module(**batch)
        out = {"loss": (nll, count)}
        if self.max_new_tokens:
            correct, n = self.answers(module.model, [self.ds.records[i] for i in indices])
            out["accuracy"] = (correct, n)
        return out

    def answers(self, model, records: list) -> tuple[int, int]:
        """Greedy answers to the prompts of ``records`` that carry an ``answer`` (the turns before
        the first assistant turn; through the tool engine when the system prompt declares tools),
        matched as ``mmpost eval`` matches them: (correct, records with an answer)."""
        from alignment.evaluation.answers import answers_match, extract_answer
        from alignment.evaluation.evaluate import generate, tool_rollouts, uses_tools
        from mm.loading import unwrap

        recs = [r for r in records if r.answer is not None]
        prompts = [
            r.messages[: next(i for i, m in enumerate(r.messages) if m.role == "assistant")] for r in recs
        ]
        model, base, correct = unwrap(model), self.ds.base_dir, 0
        for rec, p in zip(recs, prompts):
            if uses_tools(p):
                ((_, pred, _),) = tool_rollouts(model, self.processor, [p], base, self.max_new_tokens, 8)
            else:
                text = generate(model, self.processor, self.ds.encoder, [p], base, self.max_new_tokens)[0]
                pred = extract_answer(text)
            correct += answers_match(pred, rec.answer)
        return correct, len(recs)


class DPOHeldOut(HeldOut):
    """Held-out preference pairs: DPO loss, reward margin and preference accuracy."""

    def __init__(self, trainer, path: str, limit: int, device: str):
        from alignment.data import MicroBatches
        from alignment.dpo import policy_logps
        from alignment.dpo_data import PairDataset, collate_pair_plan

        data = trainer.cfg.data
        self.ds = PairDataset(path, trainer.dataset.encoder, on_error=data.on_error, format=data.format)
        self.n = min(len(self.ds), limit) if limit else len(self.ds)
        self.mb = data.micro_batch_size
        pad_id, attn = trainer.processor.tokenizer.pad_token_id, trainer.state.attn
        self.make = lambda plan, ref=None: MicroBatches(  # noqa: E731
            plan, partial(collate_pair_plan, self.ds, "pad", pad_id, attn, ref)
        )
        # the reference: the model as it is now (the Evaluator is built before any step or resume)
        model, normalized = trainer.model, trainer.cfg.loss.normalized()
        ref = torch.zeros(len(self.ds), 2)
        was = model.training
        model.eval()
        with torch.no_grad():
            plan = shard_plan(self.n, self.mb)
            for batch, (_, weight) in zip(self.make([p for p, _ in plan]), plan):
                if batch is None:
                    continue
                b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                total, count = policy_logps(model, b)  # weight-0 repeats run too (ZeRO-3 keeps step)
                if weight:
                    lp = total / count if normalized else total
                    ref[batch["pair_index"]] = lp.view(-1, 2).float().cpu()
        model.train(was)
        self.ref = sum(dist.all_gather_object(ref))  # each pair was scored on one rank, 0 elsewhere

    def batches(self):
        plan = shard_plan(self.n, self.mb)
        for batch, (_, weight) in zip(self.make([p for p, _ in plan], self.ref), plan):
            if batch is not None:
                yield batch, weight

    def sums(self, module, batch: dict) -> dict:
        loss, pairs, stats = module(**batch)
        out = {"loss": (loss, pairs)}
        for k in ("margin", "accuracy", "chosen_reward", "rejected_reward"):
            out[k] = (stats[k], pairs)
        return out


class VLAHeldOut(HeldOut):
    """Held-out VLA records (normalised with the training set's statistics): action L1."""

    def __init__(self, trainer, path: str, limit: int):
        from alignment.vla.data import collate, open_vla_dataset

        cfg, a = trainer.cfg, trainer.cfg.action
        self.ds = open_vla_dataset(
            path,
            cfg.data.format,
            trainer.dataset.vla.encoder,
            a.chunk,
            a.dims,
            cfg.data.max_views,
            a.use_proprio,
            cfg.data.on_error,
            stats=trainer.dataset.stats,
        )
        self.n = min(len(self.ds), limit) if limit else len(self.ds)
        self.mb = cfg.data.micro_batch_size
        pad_id, views = trainer.processor.tokenizer.pad_token_id, cfg.data.max_views
        self.collate = lambda samples: collate(samples, pad_id, views)  # noqa: E731

    def batches(self):
        for indices, weight in shard_plan(self.n, self.mb):
            samples = [s for s in (self.ds[i] for i in indices) if s is not None]
            if samples:
                yield self.collate(samples), weight

    def sums(self, module, batch: dict) -> dict:
        _, n, stats = module(**batch)  # no teacher features: the action L1 alone
        return {"action_l1": (stats["action_l1"], n)}


class GRPOHeldOut(HeldOut):
    """Held-out RL prompts: one greedy rollout each, scored by the configured rewards."""

    def __init__(self, trainer, path: str, limit: int):
        import dataclasses
        import os

        from alignment.grpo import declare
        from vision_tools.engine import ToolEngine
        from vision_tools.generation import HFGenerator

        self.trainer = trainer
        self.records = trainer._read(path)  # data.format applies to data.eval too
        tools = trainer.cfg.rollout.toolset()
        declare(self.records, tools)  # as training's prompts
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.n = min(len(self.records), limit) if limit else len(self.records)
        self.mb = trainer.cfg.data.micro_batch_size
        greedy = dataclasses.replace(trainer.state.engine.cfg, do_sample=False, batch_size=self.mb)
        generator = HFGenerator(trainer.model, trainer.processor, synced_gpus=trainer.state.sharded)
        self.engine = ToolEngine(trainer.model, trainer.processor, tools, greedy, generator)

    def batches(self):
        for indices, weight in shard_plan(self.n, self.mb):
            yield {"indices": indices}, weight

    def sums(self, module, batch: dict) -> dict:
        from alignment.rewards import combine

        cfg, recs = self.trainer.cfg, [self.records[i] for i in batch["indices"]]
        trajs = self.engine.run([[m.to_dict() for m in r.prompt] for r in recs], self.base_dir)
        # every configured reward's key on every rank, with a count of the rows that used it
        # (rewards_by_source: a reward's mean is over its sources' rows)
        rewards = (cfg.rewards, *cfg.rewards_by_source.values())
        sums = dict.fromkeys(["reward", *(f"reward/{k}" for w in rewards for k in w)], 0.0)
        counts = dict.fromkeys(sums, 0)
        for rec, t in zip(recs, trajs):
            n_images = sum(len(m.visual_items()) for m in rec.prompt)
            sample = {  # what the training rollouts hand the rewards (GRPOTrainer._roll)
                "answer": rec.answer,
                "meta": rec.meta or {},
                "images": t.images[:n_images],
                "question": t.question or "",
                "judge": self.trainer.judge,
                "coords": cfg.rollout.coords,
            }
            total, parts = combine(cfg.rewards_for(rec.meta), [t.turns[-1].text if t.turns else ""], **sample)
            for name, value in [("reward", total[0]), *((f"reward/{k}", v[0]) for k, v in parts.items())]:
                sums[name] += value
                counts[name] += 1
        out = {k: (v, counts[k]) for k, v in sums.items()}
        if "reward/accuracy" in out:
            out["accuracy"] = out["reward/accuracy"]
        return out


def held_out_set(trainer, path: str, limit: int, device: str):
    """The held-out set of ``trainer``'s algorithm on ``path`` (``limit`` records at most, 0: all)."""
    if trainer.name == "sft":
        return SFTHeldOut(trainer, path, limit)
    if trainer.name == "dpo":
        return DPOHeldOut(trainer, path, limit, device)
    if trainer.name == "vla":
        return VLAHeldOut(trainer, path, limit)
    if trainer.name == "grpo":
        return GRPOHeldOut(trainer, path, limit)
    raise ConfigError(f"train.eval_every: evaluation during training is not available for {trainer.name}")
