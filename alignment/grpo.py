"""GRPO / DAPO on the shared DeepSpeed loop (``mmpost train`` with ``algorithm: grpo``).

Each optimizer step:

1. ``rollout``: take ``prompts_per_step`` RL records (over all ranks: each rank rolls out its
   share), roll each out ``num_generations`` times through the vision_tools engine (batched
   sampling with KV cache; one turn, or several with tool calls), score the last turn of every
   rollout with the configured rewards (weighted sum) and turn them into group-relative
   advantages: a ``RolloutBatch`` of ``Group``s' sequences;
   the trajectories' ids are scored as they are (token-in/token-out) and only tokens the model
   generated count (tool-result turns are masked out);
2. split the sequences into micro-batches; ``score`` (a step of the loop, before the update)
   adds the no-grad log-probs the loss needs: the sampling policy's (mu > 1) and the reference's;
3. minimise ``alignment.losses.grpo_loss``; the loop accumulates exactly (the loss of a
   micro-batch is returned as a sum over its loss units, ``loss_unit_of``: generated tokens for
   token_mean, sequences for sequence_mean and fixed_length).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alignment import units
from alignment.grpo_config import GRPOConfig
from alignment.infra import distributed as dist
from alignment.loop import STAND_IN, Trainer, TrainState
from alignment.losses import group_advantages, grpo_loss
from alignment.rewards import combine, soft_overlong_penalty
from alignment.shared_prompt import TREE_KEYS, shared_prompt_batch, worth_sharing
from mm.attention import choose_backend, uses_varlen
from mm.collate import pad_batch
from mm.config import ConfigError
from mm.dataset import Problem
from mm.encode import IGNORE, EncodedSample
from mm.formats import open_records
from mm.image_features import ImageFeatures, encoder_outputs, vision_frozen
from mm.loading import load_for_training, unwrap
from mm.logprobs import labelled_logprobs, target_logprobs

if TYPE_CHECKING:
    from mm.records import RLRecord
    from vision_tools.engine import ToolEngine, Trajectory


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
        n = loss_unit_of(lc.aggregation)({"labels": labels})
        stats = {
            "clip_fraction": m["clip_fraction"] * n,
            "ratio": m["ratio_mean"] * n,
            "kl": m["kl"] * n,
            "entropy": float(entropy) * n,
        }
        return loss * n, torch.tensor(n), stats


def loss_unit_of(aggregation: str) -> units.LossUnit:
    """GRPO's loss unit: generated tokens (token_mean), or completions (sequence_mean, fixed_length)."""
    return units.supervised_tokens if aggregation == "token_mean" else units.sequences


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


@dataclass
class RolloutBatch:
    """The sequences of one rollout batch, as the trainer scores them (token-in, token-out)."""

    samples: list[EncodedSample]  # the trajectories' ids, labels on generated tokens only
    prompt_lengths: list[int]
    groups: list[int]  # which group (prompt) each sequence belongs to
    advantages: torch.Tensor  # [sequences] group-relative advantages

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class GRPOState(TrainState):
    ref: torch.nn.Module | None = None  # a frozen copy of the starting policy (loss.beta > 0)
    base_dir: str = ""  # where the records' relative image paths start
    engine: ToolEngine | None = None  # rollouts: batched sampling, turns and tool calls
    features: ImageFeatures | None = None  # image features cached per rollout batch
    vision_frozen: bool = False
    share_prompt: bool = False
    pair_cost: float = 0.0  # see worth_sharing
    sharded: bool = False  # ZeRO-3 over several ranks: ranks agree on every forward


def declare(records: list, tools) -> None:
    """Make every prompt's system turn declare the tools the engine executes (none: ``tools`` None,
    the prompts stay as the data has them)."""
    if tools is None:
        return
    from mm.records import parse_message
    from vision_tools.protocol import declare_tools

    for rec in records:
        declared = declare_tools([m.to_dict() for m in rec.prompt], tools)
        rec.prompt = [parse_message(m, "prompt") for m in declared]


class GRPOTrainer(Trainer):
    name = "grpo"
    state: GRPOState

    def __init__(self, cfg: GRPOConfig):
        super().__init__(cfg)
        self.judge = cfg.judge.build()  # scores turns for virc_turn (the rule-based fallback by default)
        self.rollout_stats: dict = {}
        self._draw_key = "0"

    @property
    def loss_unit(self) -> units.LossUnit:
        return loss_unit_of(self.cfg.loss.aggregation)

    def setup(self, device: str) -> GRPOState:
        cfg: GRPOConfig = self.cfg
        if cfg.loss.mu < 1:
            raise ConfigError(f"loss.mu must be >= 1, got {cfg.loss.mu}")
        from vision_tools.engine import EngineConfig, ToolEngine
        from vision_tools.generation import make_generator

        records = self._read(cfg.data.train)
        made = {(rec.meta or {}).get("coords", cfg.rollout.coords) for rec in records}
        if made - {cfg.rollout.coords}:  # boxes in the data and in rollouts must mean the same
            raise ConfigError(
                f"{cfg.data.train}: records made with coords={sorted(made)}, but rollout.coords="
                f"{cfg.rollout.coords}; set rollout.coords to the data's"
            )
        planner = PromptPlanner(
            len(records), cfg.data.prompts_per_step, dist.world(), self.train_cfg.seed, cfg.loss.mu
        )
        ga = self._grad_accum(planner.per_rank)
        attn = choose_backend(cfg.model.attn, device)
        model, processor = load_for_training(cfg.model, cfg.init_from, attn, self.train_cfg.seed)
        model.to(device)
        st = GRPOState(model, processor, planner, ga, records, attn)
        if cfg.loss.beta > 0:  # a frozen copy of the starting policy, in the policy's training dtype
            st.ref = copy.deepcopy(model).to(self.train_dtype(device)).eval().requires_grad_(False)
        st.base_dir = os.path.dirname(os.path.abspath(cfg.data.train))
        r = cfg.rollout
        engine_cfg = EngineConfig(
            max_turns=r.max_turns,
            max_turn_tokens=r.max_completion_length,
            do_sample=True,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_resamples=0,  # a violating turn is the model's own: it gets its (negative) reward
            coords=r.coords,
            snap_scale=False,  # RL's format check: scale factors 0.25-0.5 / 1.5-4 only, as given
            batch_size=planner.per_rank * r.num_generations,
            visual=cfg.data.visual,
        )
        # ZeRO-3 over several ranks: every rank must run the same forwards (the params are gathered
        # collectively in each), so generation steps, turns and calls are agreed between ranks
        st.sharded = self.train_cfg.deepspeed == "zero3" and dist.world() > 1
        with_images = {any(m.visual_items() for m in rec.prompt) for rec in records}
        if st.sharded and len(with_images) > 1:  # a rank without images would skip gathering the ViT
            raise ConfigError(
                f"{cfg.data.train}: some prompts have images and some do not; under ZeRO-3 on several "
                "ranks every rank must run the vision tower in each pass: split the data by modality "
                "or use zero2"
            )
        # a rank that finds every image cached would skip the vision tower that the others gather
        st.features = ImageFeatures(model) if r.image_cache and not st.sharded else None
        st.vision_frozen = vision_frozen(model)
        st.share_prompt = cfg.data.share_prompt and not uses_varlen(attn)
        text = model.config.get_text_config()
        st.pair_cost = 2 / (4 * text.hidden_size + 3 * text.intermediate_size)  # see worth_sharing
        generator = make_generator(r.generator, model, processor, st.sharded, st.features)
        tools = cfg.rollout.toolset()  # None (rollout.tools false): the prompts as the data has them
        declare(records, tools)
        st.engine = ToolEngine(model, processor, tools, engine_cfg, generator)
        for weights in (cfg.rewards, *cfg.rewards_by_source.values()):
            combine(weights, [])  # unknown reward names fail now, not after the first rollout
        return st

    def _grad_accum(self, prompts: int) -> int:
        """Micro-batches per step on a rank rolling out ``prompts`` prompts: their sequences in
        micro-batches of ``data.micro_batch_size``. A configured ``train.gradient_accumulation_steps``
        other than 1 must agree."""
        cfg = self.cfg
        sequences = prompts * cfg.rollout.num_generations
        ga = math.ceil(sequences / cfg.data.micro_batch_size)
        asked = self.train_cfg.gradient_accumulation_steps
        if asked not in (1, ga):
            raise ConfigError(
                f"train.gradient_accumulation_steps={asked}: GRPO derives it from the rollout "
                f"({prompts} prompts per rank x rollout.num_generations {cfg.rollout.num_generations} = "
                f"{sequences} sequences in micro-batches of data.micro_batch_size "
                f"{cfg.data.micro_batch_size}: {ga}); leave it at 1 and set those"
            )
        if ga != asked and dist.is_main():
            print(
                f"grpo: {sequences} sequences per step and rank in {ga} micro-batches of "
                f"{cfg.data.micro_batch_size}: gradient accumulation over {ga} (derived; "
                "train.gradient_accumulation_steps is not used)",
                flush=True,
            )
        return ga

    def _read(self, path: str) -> list:
        if not path:
            raise ValueError("data.train is empty: set it to an RL JSONL (prompt + answer per line)")
        out = []
        for line, rec in open_records(path, self.cfg.data.format):
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

    def step_metrics(self) -> dict:
        f = self.state.features
        if f is None:
            return self.rollout_stats
        # images the vision tower ran on, and lookups it was spared, in this rollout batch
        return {**self.rollout_stats, "images_encoded": f.encoded, "images_reused": f.hits}

    # -- rollouts -----------------------------------------------------------------------------

    def micro_batches(self, epoch: int, start_step: int):
        """Rollout batches cut into micro-batches; each rollout batch serves ``mu`` steps."""
        mu, mb = self.cfg.loss.mu, self.cfg.data.micro_batch_size
        first, skip = divmod(start_step, mu)  # a resume inside a rollout's mu steps re-rolls it
        planner = self.state.planner
        for r in range(first, planner.rollouts_per_epoch()):
            self._draw_key = f"{self.train_cfg.seed}/{epoch}/{r}/{dist.rank()}"  # refills resume identically
            prompts = planner.prompts(epoch, r, dist.rank())
            rollout = self.rollout(prompts)
            batches = [self._batch(rollout, k, k + mb) for k in range(0, len(rollout), mb)]
            # fewer sequences than planned (dynamic sampling ran dry, overlong filtering): the
            # missing micro-batches are skipped ones (weight 0); a rank with none left runs a
            # stand-in so collectives stay in step
            batches += [None] * (self.state.grad_accum - len(batches))
            if batches[0] is None:
                batches[0] = {**self._stand_in(prompts[0]), STAND_IN: True}
            for _ in range(mu - (skip if r == first else 0)):
                yield from batches  # the same dicts: scored once, before their first update

    @torch.no_grad()
    def _roll(self, indices: list[int]) -> list[Group]:
        """Roll out G completions per prompt and score them with the rewards."""
        cfg, G, st = self.cfg, self.cfg.rollout.num_generations, self.state
        recs = [st.dataset[i] for i in indices]
        prompts = [[m.to_dict() for m in r.prompt] for r in recs for _ in range(G)]
        self.model.eval()
        trajs = st.engine.run(prompts, st.base_dir)
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
                "judge": self.judge,
                "coords": cfg.rollout.coords,
            }
            total, parts = combine(
                cfg.rewards_for(rec.meta), [t.turns[-1].text if t.turns else "" for t in group], **sample
            )
            if cfg.loss.overlong_cache:  # DAPO's soft overlong punishment, added to the reward
                limit = cfg.rollout.max_completion_length * cfg.rollout.max_turns
                pen = [
                    soft_overlong_penalty(t.generated_tokens, limit, cfg.loss.overlong_cache) for t in group
                ]
                total = [r + p for r, p in zip(total, pen)]
                parts["overlong_penalty"] = pen
            groups.append(Group(rec, group, torch.tensor(total), parts))
        return groups

    def rollout(self, indices: list[int]) -> RolloutBatch:
        """Roll out the prompts ``indices`` (DAPO dynamic sampling: refill uninformative groups)
        and turn rewards into advantages; sets ``rollout_stats``."""
        cfg, G, st = self.cfg, self.cfg.rollout.num_generations, self.state
        t0 = time.perf_counter()
        if st.features is not None:  # features of the last rollout's images: stale or unneeded
            st.features.clear()
        rolled = self._roll(indices)
        chosen, refills = rolled, 0
        if cfg.loss.dynamic_sampling:  # groups with one reward for all teach nothing: draw others
            informative = [g for g in rolled if g.informative]
            rng = random.Random(self._draw_key)
            # under ZeRO-3 on several ranks every rank rolls (maybe nothing) while any rank refills
            while refills < cfg.loss.max_refills and self._any_rank(len(informative) < len(indices)):
                want = max(0, len(indices) - len(informative))
                more = self._roll(rng.sample(range(len(st.dataset)), want))
                informative += [g for g in more if g.informative]
                rolled += more
                refills += 1
            chosen = informative[: len(indices)]  # the cap spent: fewer groups, never zero-advantage ones
        t_gen = time.perf_counter() - t0
        self.rollout_stats = self._rollout_stats(rolled, chosen, refills, t_gen)
        if not chosen:
            return RolloutBatch([], [], [], torch.zeros(0))
        adv = group_advantages(torch.cat([g.rewards for g in chosen]), G, cfg.loss.advantage_scale)
        keep = [  # (group, trajectory, advantage); DAPO overlong filtering drops truncated completions
            (j, t, a)
            for (j, t), a in zip(((j, t) for j, g in enumerate(chosen) for t in g.trajectories), adv)
            if not (cfg.loss.overlong_filter and t.finish_reason == "max_tokens")
        ]
        return RolloutBatch(
            samples=[t.encoded(st.engine.encoder.rope) for _, t, _ in keep],
            prompt_lengths=[t.prompt_length for _, t, _ in keep],
            groups=[j for j, _, _ in keep],
            advantages=torch.stack([a for _, _, a in keep]) if keep else torch.zeros(0),
        )

    def _rollout_stats(self, rolled: list[Group], chosen: list[Group], refills: int, t_gen: float) -> dict:
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
        named = [] if self.cfg.rewards_by_source else [f"reward/{k}" for k in self.cfg.rewards]
        shared = ["reward_mean", "response_length", "tool_calls", *named]
        shared = [k for k in shared if k in stats]
        means = dist.all_sum([stats[k] for k in shared], str(self.model.device)) / dist.world()
        stats.update({k: float(v) for k, v in zip(shared, means)})
        return stats

    def _stand_in(self, index: int) -> dict:
        """A one-sequence micro-batch of prompt ``index`` (the loop gives it weight 0)."""
        st = self.state
        rec = st.dataset[index]
        sample = st.engine.encoder.encode(
            [m.to_dict() for m in rec.prompt], st.base_dir, add_generation_prompt=True
        )
        batch = pad_batch([sample], self.processor.tokenizer.pad_token_id)
        batch["advantages"] = torch.zeros(1)
        return batch

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` on any rank (ZeRO-3 on several ranks), else this rank's ``flag``."""
        if not self.state.sharded:
            return flag
        return bool(dist.all_sum([float(flag)], str(self.model.device))[0] > 0)

    def _batch(self, rollout: RolloutBatch, lo: int, hi: int) -> dict:
        """Sequences ``lo:hi`` of a rollout batch as one micro-batch (shared-prompt rows when a FLOP
        estimate says they are cheaper), with their advantages."""
        st = self.state
        samples, plens, groups = rollout.samples[lo:hi], rollout.prompt_lengths[lo:hi], rollout.groups[lo:hi]
        pad = self.processor.tokenizer.pad_token_id
        lengths = [len(s) for s in samples]
        if st.share_prompt and worth_sharing(lengths, plens, groups, st.pair_cost):
            batch = shared_prompt_batch(samples, plens, groups, pad, st.engine.merge)
        else:
            batch = pad_batch(samples, pad)
        batch["advantages"] = rollout.advantages[lo:hi].clone()
        return batch

    # -- scoring: the no-grad passes before a micro-batch's first update --------------------------

    def score(self, batch: dict, device: str) -> dict:
        """Old log-probs (mu > 1: the sampling policy, before any of the mu updates) and reference
        log-probs (beta > 0), stored in the micro-batch; a micro-batch reused for the next of its mu
        steps already holds them. The rollout's cached image features serve these passes (the
        weights have not changed since) and, with a frozen vision tower, the training pass too."""
        st, mu = self.state, self.cfg.loss.mu
        want_old = mu > 1 and "old_logp" not in batch
        want_ref = st.ref is not None and "ref_logp" not in batch
        embeds = None
        if st.features is not None and "pixel_values" in batch and (want_old or want_ref or st.vision_frozen):
            embeds = st.features.embeds(batch["pixel_values"], batch["image_grid_thw"])
            if st.vision_frozen:  # the training pass may use them too
                batch["image_embeds"] = embeds
                del batch["pixel_values"]
        if want_old:
            base = unwrap(self.model)
            was = base.training
            base.eval()
            batch["old_logp"] = self._logp(base, batch, embeds)
            base.train(was)
        if want_ref:  # the reference shares the policy's vision weights only while frozen
            batch["ref_logp"] = self._logp(st.ref, batch, embeds if st.vision_frozen else None)
        return batch

    @torch.no_grad()
    def _logp(self, model, batch: dict, embeds: torch.Tensor | None = None) -> torch.Tensor:
        dev = model.device
        skip = (
            "labels",
            "advantages",
            "mm_token_type_ids",
            "image_embeds",
            "seq_ids",
            "old_logp",
            "ref_logp",
        )
        skip += ("pixel_values",) if embeds is not None else ()
        inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items() if k not in skip}
        return sequence_logprobs(model, batch["labels"].to(dev), inputs, embeds)[0].cpu()
