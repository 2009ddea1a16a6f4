"""GRPO / DAPO on the shared DeepSpeed loop (``mmpost train`` with ``algorithm: grpo``).

Each optimizer step:

1. take ``prompts_per_step`` RL records, roll each out ``num_generations`` times through the
   vision_tools engine (batched sampling with KV cache; one turn, or several with tool calls);
   the trajectories' ids are scored as they are (token-in/token-out) and only tokens the model
   generated count (tool-result turns are masked out);
2. score the last turn of every rollout with the configured rewards (weighted sum), and turn
   them into group-relative advantages;
3. split the sequences into micro-batches and minimise ``alignment.losses.grpo_loss``; the loop
   accumulates exactly (the loss of a micro-batch is returned as a sum with its own denominator:
   tokens for token_mean, sequences for sequence_mean and fixed_length).

With ``mu = 1`` (one update per rollout batch, as ViRC and DAPO run) the old log-probs equal
the current ones, so the ratio is 1 and needs no extra forward pass. With ``mu > 1`` the
rollout batch is reused for ``mu`` optimizer steps; its log-probs under the sampling policy are
computed once (no grad) and stored with each micro-batch, so the ratio and clipping act.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections import Counter

import torch

from alignment.grpo_config import GRPOConfig
from alignment.infra import distributed as dist
from alignment.loop import Trainer
from alignment.losses import group_advantages, grpo_loss
from alignment.rewards import combine
from alignment.shared_prompt import TREE_KEYS, shared_prompt_batch, worth_sharing
from mm.attention import choose_backend, uses_varlen
from mm.collate import pad_batch
from mm.config import ConfigError
from mm.dataset import Problem, iter_jsonl
from mm.encode import IGNORE
from mm.image_features import ImageFeatures, encoder_outputs, vision_frozen
from mm.loading import load_for_training, unwrap
from mm.logprobs import labelled_logprobs, target_logprobs


def sequence_logprobs(base, labels, inputs: dict, image_embeds=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L-1] log-probs of the labelled tokens and their mean entropy, from padded rows or from
    shared-prompt rows (``alignment.shared_prompt``: scattered back to the padded layout)."""
    tree = [inputs.pop(k, None) for k in TREE_KEYS]
    if image_embeds is not None:  # features cached at rollout time
        inputs["mm_encoder_outputs"] = encoder_outputs(image_embeds)
    hidden = base.model(**inputs).last_hidden_state  # [rows, L, D]
    if tree[0] is None:
        lp = labelled_logprobs(hidden, base.lm_head, labels, entropy=True)
        return lp.dense(), lp.mean_entropy()
    src, dst, tgt = tree
    lp, ent = target_logprobs(hidden.reshape(-1, hidden.shape[-1])[src], tgt, base.lm_head, entropy=True)
    logp = torch.zeros(labels.shape[0] * (labels.shape[1] - 1), dtype=torch.float32, device=hidden.device)
    logp[dst] = lp
    return logp.view(labels.shape[0], -1), ent.sum() / max(1, tgt.numel())


class GRPOModule(torch.nn.Module):
    """forward(batch) -> (loss as a sum over its denominator units, number of units, stats)."""

    model_attr = "model"  # where the trained VLM lives (see alignment.infra.export)

    def __init__(self, model, cfg: GRPOConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(
        self,
        labels,
        advantages,
        old_logp=None,
        ref_logp=None,
        mm_token_type_ids=None,
        image_embeds=None,
        seq_ids=None,  # shared-prompt rows: each token's sample (the loop counts samples from it)
        **inputs,
    ):
        base = unwrap(self.model)
        logp, entropy = sequence_logprobs(base, labels, inputs, image_embeds)
        mask = labels[:, 1:] != IGNORE
        lc = self.cfg.loss
        loss, m = grpo_loss(
            logp,
            logp.detach() if old_logp is None else old_logp,  # mu = 1: the sampling policy is the current one
            advantages,
            mask,
            lc.clip_low,
            lc.clip_high,
            lc.aggregation,
            self.cfg.rollout.max_completion_length * self.cfg.rollout.max_turns,
            ref_logp,
            lc.beta,
        )
        units = units_of(labels, lc.aggregation)
        stats = {
            "clip_fraction": m["clip_fraction"] * units,
            "ratio": m["ratio_mean"] * units,
            "kl": m["kl"] * units,
            "entropy": float(entropy) * units,
        }
        return loss * units, torch.tensor(units), stats


def units_of(labels: torch.Tensor, aggregation: str) -> int:
    """The denominator units of a micro-batch: generated tokens, or sequences."""
    if aggregation == "token_mean":
        return int((labels[:, 1:] != IGNORE).sum())
    return int(labels.shape[0])


class PromptPlanner:
    """Which prompts each rollout takes: a seeded shuffle per epoch, sharded over ranks; each
    rollout batch serves ``mu`` optimizer steps."""

    def __init__(self, n: int, per_step: int, world: int, seed: int, mu: int = 1):
        self.n, self.per_step, self.world, self.seed, self.mu = n, per_step, world, seed, mu

    def rollouts_per_epoch(self) -> int:
        return max(1, self.n // (self.per_step * self.world))

    def steps_per_epoch(self) -> int:
        return self.rollouts_per_epoch() * self.mu

    def prompts(self, epoch: int, step: int, rank: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed + epoch).shuffle(order)
        start = (step * self.world + rank) * self.per_step
        return [order[(start + i) % self.n] for i in range(self.per_step)]


class GRPOTrainer(Trainer):
    name = "grpo"

    def setup(self, device: str):
        cfg: GRPOConfig = self.cfg
        if cfg.loss.mu < 1:
            raise ConfigError(f"loss.mu must be >= 1, got {cfg.loss.mu}")
        from vision_tools.engine import EngineConfig, ToolEngine

        self.attn = choose_backend(cfg.model.attn, device)
        self.model, self.processor = load_for_training(
            cfg.model, cfg.init_from, self.attn, self.train_cfg.seed
        )
        self.model.to(device)
        self.ref = None
        if cfg.loss.beta > 0:  # a frozen copy of the starting policy, in the policy's training dtype
            self.ref = copy.deepcopy(self.model).to(self.train_dtype(device)).eval().requires_grad_(False)
        self.records = self._read(cfg.data.train)
        self.base_dir = os.path.dirname(os.path.abspath(cfg.data.train))
        G = cfg.rollout.num_generations
        sequences = cfg.data.prompts_per_step * G
        self.train_cfg.gradient_accumulation_steps = math.ceil(sequences / cfg.data.micro_batch_size)
        self.planner = PromptPlanner(
            len(self.records), cfg.data.prompts_per_step, dist.world(), self.train_cfg.seed
        )
        r = cfg.rollout
        engine_cfg = EngineConfig(
            max_turns=r.max_turns,
            max_turn_tokens=r.max_completion_length,
            do_sample=True,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_resamples=0,  # a violating turn is the model's own: it gets its (negative) reward
            batch_size=sequences,
            visual=cfg.data.visual,
        )
        from vision_tools.generation import make_generator

        # ZeRO-3 over several ranks: every rank must run the same forwards (the params are gathered
        # collectively in each), so generation steps, turns and calls are agreed between ranks
        sharded = self.sharded = self.train_cfg.deepspeed == "zero3" and dist.world() > 1
        with_images = {any(m.visual_items() for m in rec.prompt) for rec in self.records}
        if sharded and len(with_images) > 1:  # a rank without images would skip gathering the ViT
            raise ConfigError(
                f"{cfg.data.train}: some prompts have images and some do not; under ZeRO-3 on several "
                "ranks every rank must run the vision tower in each pass: split the data by modality "
                "or use zero2"
            )
        # a rank that finds every image cached would skip the vision tower that the others gather
        self.features = ImageFeatures(self.model) if r.image_cache and not sharded else None
        self.vision_frozen = vision_frozen(self.model)
        self.share_prompt = cfg.data.share_prompt and not uses_varlen(self.attn)
        text = self.model.config.get_text_config()
        self.pair_cost = 2 / (4 * text.hidden_size + 3 * text.intermediate_size)  # see worth_sharing
        generator = make_generator(r.generator, self.model, self.processor, sharded, self.features)
        self.engine = ToolEngine(self.model, self.processor, config=engine_cfg, generator=generator)
        combine(cfg.rewards, [])  # unknown reward names fail now, not after the first rollout
        self.rollout_stats: dict = {}
        self._draw_key = "0"

    def _read(self, path: str) -> list:
        if not path:
            raise ValueError("data.train is empty: set it to an RL JSONL (prompt + answer per line)")
        out = []
        for line, rec in iter_jsonl(path):
            if isinstance(rec, Problem):
                raise ValueError(str(rec))
            if rec.kind != "rl":
                raise ValueError(f"{path}:{line}: GRPO needs RL records (prompt + answer), got {rec.kind}")
            out.append(rec)
        if not out:
            raise ValueError(f"{path}: no records")
        return out

    def build_module(self):
        return GRPOModule(self.model, self.cfg)

    def count_tokens(self, batch: dict) -> int:
        return units_of(batch["labels"], self.cfg.loss.aggregation)

    def step_metrics(self) -> dict:
        return self.rollout_stats

    # -- rollouts -----------------------------------------------------------------------------

    def micro_batches(self, epoch: int, start_step: int):
        mu, mb = self.cfg.loss.mu, self.cfg.data.micro_batch_size
        first, skip = divmod(start_step, mu)  # a resume inside a rollout's mu steps re-rolls it
        for r in range(first, self.planner.rollouts_per_epoch()):
            self._draw_key = f"{self.train_cfg.seed}/{epoch}/{r}/{dist.rank()}"  # refills resume identically
            samples, plens, groups, advantages = self._rollout(self.planner.prompts(epoch, r, dist.rank()))
            batches = [
                self._batch(
                    samples[k : k + mb], plens[k : k + mb], groups[k : k + mb], advantages[k : k + mb]
                )
                for k in range(0, len(samples), mb)
            ]
            if self.features is not None:  # images the vision tower ran on, and lookups it was spared
                self.rollout_stats.update(
                    images_encoded=self.features.encoded, images_reused=self.features.hits
                )
            for _ in range(mu - (skip if r == first else 0)):
                yield from batches

    @torch.no_grad()
    def _roll(self, indices: list[int]) -> list[tuple]:
        """Roll out G completions per prompt and score them: (record, trajectories, rewards, parts)."""
        cfg, G = self.cfg, self.cfg.rollout.num_generations
        recs = [self.records[i] for i in indices]
        prompts = [[m.to_dict() for m in r.prompt] for r in recs for _ in range(G)]
        self.model.eval()
        trajs = self.engine.run(prompts, self.base_dir)
        self.model.train()
        groups = []
        for j, rec in enumerate(recs):
            group = trajs[j * G : (j + 1) * G]
            n_images = sum(len(m.visual_items()) for m in rec.prompt)
            sample = {
                "answer": rec.answer,
                "meta": rec.meta or {},
                "images": group[0].images[:n_images],  # the prompt's images, as the model saw them
                "question": group[0].question or "",
            }
            total, parts = combine(
                cfg.rewards, [t.turns[-1].text if t.turns else "" for t in group], **sample
            )
            groups.append((rec, group, torch.tensor(total), parts))
        return groups

    def _rollout(self, indices: list[int]):
        cfg, G = self.cfg, self.cfg.rollout.num_generations
        t0 = time.perf_counter()
        if self.features is not None:  # features of the last rollout's images: stale or unneeded
            self.features.clear()
        rolled = self._roll(indices)
        chosen, refills = rolled, 0
        if cfg.loss.dynamic_sampling:  # groups with one reward for all teach nothing: draw others
            informative = [g for g in rolled if g[2].std() > 0]
            rng = random.Random(self._draw_key)
            # under ZeRO-3 on several ranks every rank rolls (maybe nothing) while any rank refills
            while refills < cfg.loss.max_refills and self._any_rank(len(informative) < len(indices)):
                want = max(0, len(indices) - len(informative))
                more = self._roll(rng.sample(range(len(self.records)), want))
                informative += [g for g in more if g[2].std() > 0]
                rolled += more
                refills += 1
            rest = [g for g in rolled if g[2].std() == 0]
            chosen = (informative + rest)[: len(indices)]  # the batch keeps its size
        t_gen = time.perf_counter() - t0
        r = torch.cat([g[2] for g in chosen])
        adv = group_advantages(r, G, cfg.loss.advantage_scale)
        trajs = [t for g in chosen for t in g[1]]
        every = [t for g in rolled for t in g[1]]
        all_r = torch.cat([g[2] for g in rolled])
        n = len(every)
        parts_all = Counter()
        for g in rolled:
            for name, vals in g[3].items():
                parts_all[name] += sum(vals)
        violations = Counter(code for t in every for code in t.violations)
        self.rollout_stats = {
            "reward_mean": float(all_r.mean()),
            "reward_std": float(all_r.std()) if n > 1 else 0.0,
            **{f"reward/{k}": v / n for k, v in parts_all.items()},
            **{f"violations/{k}": v / n for k, v in violations.items()},
            "tool_calls": sum(rec.image_index is not None for t in every for rec in t.turns) / n,  # executed
            "response_length": sum(t.generated_tokens for t in every) / n,
            "generation_s": t_gen,
            "informative_groups": sum(float(g[2].std() > 0) for g in chosen) / len(chosen),
            "refills": refills,
        }
        if "accuracy" in parts_all:
            self.rollout_stats["accuracy"] = parts_all["accuracy"] / n
        # averages over every rank's rollouts (the keys are the same on all ranks)
        shared = ["reward_mean", "response_length", "tool_calls", *(f"reward/{k}" for k in cfg.rewards)]
        shared = [k for k in shared if k in self.rollout_stats]
        means = dist.all_sum([self.rollout_stats[k] for k in shared], str(self.model.device)) / dist.world()
        self.rollout_stats.update({k: float(v) for k, v in zip(shared, means)})
        samples = [t.encoded(self.engine.encoder.rope) for t in trajs]
        groups = [j for j, g in enumerate(chosen) for _ in g[1]]
        return samples, [t.prompt_length for t in trajs], groups, adv

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` on any rank (ZeRO-3 on several ranks), else this rank's ``flag``."""
        if not self.sharded:
            return flag
        return bool(dist.all_sum([float(flag)], str(self.model.device))[0] > 0)

    @torch.no_grad()
    def _logp(self, model, batch: dict, embeds: torch.Tensor | None = None) -> torch.Tensor:
        dev = model.device
        skip = ("labels", "advantages", "mm_token_type_ids", "image_embeds", "seq_ids")
        skip += ("pixel_values",) if embeds is not None else ()
        inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items() if k not in skip}
        return sequence_logprobs(model, batch["labels"].to(dev), inputs, embeds)[0].cpu()

    def _batch(self, samples, prompt_lengths, groups, advantages) -> dict:
        pad = self.processor.tokenizer.pad_token_id
        lengths = [len(s) for s in samples]
        if self.share_prompt and worth_sharing(lengths, prompt_lengths, groups, self.pair_cost):
            batch = shared_prompt_batch(samples, prompt_lengths, groups, pad, self.engine.merge)
        else:
            batch = pad_batch(samples, pad)
        batch["advantages"] = advantages.clone()
        embeds = None  # the rollout's cached image features: the weights have not changed since
        needed = self.vision_frozen or self.cfg.loss.mu > 1  # else no pass could use them
        if self.features is not None and needed and "pixel_values" in batch:
            embeds = self.features.embeds(batch["pixel_values"], batch["image_grid_thw"])
            if self.vision_frozen:  # the training pass may use them too
                batch["image_embeds"] = embeds
                del batch["pixel_values"]
        if self.cfg.loss.mu > 1:  # the sampling policy's log-probs, before any of the mu updates
            base = unwrap(self.model)
            was = base.training
            base.eval()
            batch["old_logp"] = self._logp(base, batch, embeds)
            base.train(was)
        if self.ref is not None:  # the reference shares the policy's vision weights only while frozen
            batch["ref_logp"] = self._logp(self.ref, batch, embeds if self.vision_frozen else None)
        return batch
