"""GRPO / DAPO on the shared DeepSpeed loop (``mmpost train`` with ``algorithm: grpo``).

Each optimizer step:

1. roll out (``alignment.grpo.rollout``): take ``prompts_per_step`` RL records (over all ranks:
   each rank rolls out its share), sample each ``num_generations`` times through the vision_tools
   engine, score the last turn of every rollout with the configured rewards and turn them into
   group-relative advantages: one ``Sequence`` per completion, scored later as the engine
   produced it (token-in/token-out; only tokens the model generated count);
2. collate the sequences into ``GRPOBatch`` micro-batches (``alignment.grpo.batch``); ``score``
   (a step of the loop, before the update) adds the no-grad log-probs the loss needs: the
   sampling policy's (mu > 1) and the reference's;
3. minimise the configured policy loss (``alignment.grpo.module``); the loop accumulates exactly
   (the loss of a micro-batch is a sum over its loss units: generated tokens for token_mean,
   sequences for sequence_mean and fixed_length).

With ``mu = 1`` (one update per rollout batch, as ViRC and DAPO run) the old log-probs equal
the current ones, so the ratio is 1 and needs no extra forward pass. With ``mu > 1`` the
rollout batch is reused for ``mu`` optimizer steps; its log-probs under the sampling policy are
computed once (no grad) and stored with each micro-batch, so the ratio and clipping act.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import torch

from alignment.grpo.batch import GRPOBatch, Sequence, collate
from alignment.grpo.config import GRPOConfig
from alignment.grpo.held_out import GRPOHeldOut
from alignment.grpo.module import GRPOModule, loss_unit_of, sequence_logprobs
from alignment.grpo.rollout import PromptPlanner, Rollouts, declare, read_rl_records
from alignment.infra import distributed as dist
from alignment.loop import Trainer, TrainState
from alignment.rewards import combine
from mm.attention import choose_backend, uses_varlen
from mm.collate import pad_batch
from mm.config import ConfigError
from mm.image_features import ImageFeatures, vision_frozen
from mm.loading import load_for_training, unwrap
from mm.models import family_of


@dataclasses.dataclass
class GRPOState(TrainState):
    ref: torch.nn.Module | None = None  # a frozen copy of the starting policy (loss.beta > 0)
    rollouts: Rollouts | None = None  # prompts -> scored sequences, through the engine
    features: ImageFeatures | None = None  # image features cached per rollout batch
    vision_frozen: bool = False
    share_prompt: bool = False
    pair_cost: float = 0.0  # see alignment.grpo.shared_prompt.worth_sharing
    sharded: bool = False  # ZeRO-3 over several ranks: ranks agree on every forward

    @property
    def engine(self):
        return self.rollouts.engine


class GRPOTrainer(Trainer):
    name = "grpo"
    state: GRPOState

    def __init__(self, cfg: GRPOConfig):
        super().__init__(cfg)
        self.judge = cfg.judge.build()  # scores turns for virc_turn (the rule-based fallback by default)
        self.rollout_stats: dict = {}
        self._draw_key = "0"
        self.sync_seconds: list[float] = []  # each push of the policy into the rollout engine
        self._stale = True  # the rollout engine's weights are not the policy's (before the first push)

    @property
    def loss_unit(self):
        return loss_unit_of(self.cfg.loss.aggregation)

    def setup(self, device: str) -> GRPOState:
        cfg: GRPOConfig = self.cfg
        if cfg.loss.mu < 1:
            raise ConfigError(f"loss.mu must be >= 1, got {cfg.loss.mu}")
        from vision_tools.engine import EngineConfig, ToolEngine
        from vision_tools.generation import make_generator

        records = read_rl_records(cfg.data.train, cfg.data.format)
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
        r = cfg.rollout
        engine_cfg = EngineConfig(
            max_turns=r.max_turns,
            max_turn_tokens=r.max_completion_length,
            do_sample=r.temperature > 0,  # temperature 0: greedy rollouts
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_resamples=0,  # a violating turn is the model's own: it gets its (negative) reward
            coords=r.coords,
            snap_scale=False,  # RL's format check: scale factors 0.25-0.5 / 1.5-4 only, as given
            batch_size=planner.per_rank * r.num_generations,
            generator=r.generator,
            visual=cfg.data.visual,
            # the rollout engine's own log-probs: the gap to the trainer's (rollout/logp_gap) and TIS
            logprobs=r.generator == "vllm" or cfg.loss.tis_cap > 0,
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
        # a shared-prompt row is a packed row: only where packing is exact (Qwen3.5: padded rows)
        exact = family_of(model.config).packing is None
        st.share_prompt = cfg.data.share_prompt and not uses_varlen(attn) and exact
        text = model.config.get_text_config()
        st.pair_cost = 2 / (4 * text.hidden_size + 3 * text.intermediate_size)  # see worth_sharing
        generator = make_generator(
            r.generator, model, processor, synced_gpus=st.sharded, features=st.features, options=r.vllm
        )
        tools = cfg.rollout.toolset()  # None (rollout.tools false): the prompts as the data has them
        declare(records, tools)
        engine = ToolEngine(model, processor, tools, engine_cfg, generator)
        base_dir = os.path.dirname(os.path.abspath(cfg.data.train))
        st.rollouts = Rollouts(cfg, engine, records, base_dir, self.judge, model, st.features, self._any_rank)
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

    def build_module(self):
        return GRPOModule(self.model, self.cfg)

    def print_summary(self, s: dict) -> None:
        super().print_summary(s)
        if self.sync_seconds:
            t = sorted(self.sync_seconds)
            print(f"  vLLM weight pushes: {len(t)}, median {t[len(t) // 2]:.3f} s, max {t[-1]:.3f} s")

    def run(self) -> dict:
        try:
            return super().run()
        finally:  # the vllm generator's server (and any other out-of-process engine) ends with the run
            if getattr(self, "state", None) is not None and self.state.rollouts is not None:
                self.state.engine.generator.close()

    def train_step(self, engine, batches, device: str) -> dict:
        """The loop's step; then the rollout engine's weights are stale, and the step's gap between
        the rollout engine's log-probs and the trainer's moves to the rollout metrics."""
        stats = super().train_step(engine, batches, device)
        self._stale = True
        if "m_logp_gap" in stats:
            module = getattr(engine, "module", engine)
            self.rollout_stats["rollout/logp_gap"] = stats.pop("m_logp_gap")
            self.rollout_stats["rollout/logp_gap_max"] = module.gap_max  # this rank's
            module.gap_max = 0.0
        return stats

    # -- the rollout engine's weights -------------------------------------------------------------

    def sync_rollout_weights(self) -> dict | None:
        """Push the policy's weights into a rollout engine that holds its own copy (vllm) when an
        update happened since the last push (and before the first rollout): every rank takes part
        (ZeRO-3 gathers), the time is printed once and logged (rollout/weight_sync_s)."""
        gen = self.state.engine.generator
        if not hasattr(gen, "update_weights") or not self._stale:
            return None
        timing = gen.update_weights(self.model)
        self._stale = False
        self.sync_seconds.append(timing["seconds"])
        if dist.is_main() and len(self.sync_seconds) == 1:
            print(
                f"grpo: policy weights pushed into vLLM in {timing['seconds']:.3f} s "
                f"({timing['bytes'] / 2**20:.1f} MiB; gather {timing['gather']:.3f} s, file "
                f"{timing.get('write', 0):.3f} s, reload + cache resets {timing.get('load', 0):.3f} s); "
                "logged as rollout/weight_sync_s",
                flush=True,
            )
        return timing

    def held_out(self, path: str, limit: int, device: str) -> GRPOHeldOut:
        return GRPOHeldOut(self, path, limit)

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
            seqs = self.rollout(prompts)
            batches = [self.collate(seqs[k : k + mb]) for k in range(0, len(seqs), mb)]
            # fewer sequences than planned (dynamic sampling ran dry, overlong filtering): the
            # missing micro-batches are skipped ones (weight 0); a rank with none left runs a
            # stand-in so collectives stay in step
            batches += [None] * (self.state.grad_accum - len(batches))
            if batches[0] is None:
                batches[0] = dataclasses.replace(self._stand_in(prompts[0]), stand_in=True)
            for _ in range(mu - (skip if r == first else 0)):
                yield from batches  # the same batches: scored once, before their first update

    def rollout(self, indices: list[int]) -> list[Sequence]:
        """The sequences rollout batch ``indices`` trains on; sets ``rollout_stats``. A rollout
        engine with its own weights (vllm) gets the policy's first; colocated, it is awake only
        while it rolls out."""
        gen = self.state.engine.generator
        if hasattr(gen, "wake"):
            gen.wake()
        timing = self.sync_rollout_weights()
        seqs, self.rollout_stats = self.state.rollouts(indices, self._draw_key, str(self.model.device))
        if hasattr(gen, "sleep"):
            gen.sleep()
        if timing is not None:
            self.rollout_stats["rollout/weight_sync_s"] = timing["seconds"]
        return seqs

    def collate(self, seqs: list[Sequence]) -> GRPOBatch:
        """One micro-batch (shared-prompt rows when a FLOP estimate says they are cheaper)."""
        st = self.state
        pad = self.processor.tokenizer.pad_token_id
        return collate(seqs, pad, st.share_prompt, st.pair_cost, st.engine.merge)

    def _stand_in(self, index: int) -> GRPOBatch:
        """A one-sequence micro-batch of prompt ``index`` (the loop gives it weight 0)."""
        st = self.state
        rec = st.dataset[index]
        sample = st.engine.encoder.encode(rec.prompt, st.rollouts.base_dir, add_generation_prompt=True)
        return GRPOBatch(
            **pad_batch([sample], self.processor.tokenizer.pad_token_id), advantages=torch.zeros(1)
        )

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` on any rank (ZeRO-3 on several ranks), else this rank's ``flag``."""
        if not self.state.sharded:
            return flag
        return bool(dist.all_sum([float(flag)], str(self.model.device))[0] > 0)

    # -- scoring: the no-grad passes before a micro-batch's first update --------------------------

    def score(self, batch: GRPOBatch, device: str) -> GRPOBatch:
        """Old log-probs (mu > 1: the sampling policy, before any of the mu updates) and reference
        log-probs (beta > 0), stored in the micro-batch; a micro-batch reused for the next of its mu
        steps already holds them. The rollout's cached image features serve these passes (the
        weights have not changed since) and, with a frozen vision tower, the training pass too."""
        st, mu = self.state, self.cfg.loss.mu
        want_old = mu > 1 and batch.old_logp is None
        want_ref = st.ref is not None and batch.ref_logp is None
        embeds = None
        if (
            st.features is not None
            and batch.pixel_values is not None
            and (want_old or want_ref or st.vision_frozen)
        ):
            embeds = st.features.embeds(batch.pixel_values, batch.image_grid_thw)
            if st.vision_frozen:  # the training pass may use them too
                batch.image_embeds, batch.pixel_values = embeds, None
        if want_old:
            base = unwrap(self.model)
            was = base.training
            base.eval()
            batch.old_logp = self._logp(base, batch, embeds)
            base.train(was)
        if want_ref:  # the reference shares the policy's vision weights only while frozen
            batch.ref_logp = self._logp(st.ref, batch, embeds if st.vision_frozen else None)
        return batch

    @torch.no_grad()
    def _logp(self, model, batch: GRPOBatch, embeds: torch.Tensor | None = None) -> torch.Tensor:
        return sequence_logprobs(model, batch, embeds)[0].cpu()
