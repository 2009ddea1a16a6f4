"""The training loop shared by every algorithm: DeepSpeed engine, accumulation, checkpoints, logs.

The contract a trainer fills in (``Trainer`` below):

* ``setup(device) -> TrainState``: the model, processor, step planner, accumulation and data;
* ``build_module()``: the nn.Module DeepSpeed wraps; ``forward(**micro_batch)`` returns
  ``(loss_sum, units, stats)``, the loss summed over its loss units (``alignment.units``), their
  number and summed metrics;
* ``loss_unit``: the function of ``alignment.units`` that counts those units in a micro-batch;
* ``micro_batches(epoch, start_step)``: this rank's micro-batches, ``grad_accum`` per step;
* ``score(batch, device)``: the no-grad passes a micro-batch needs before the step (reference
  log-probs, a teacher's features); a data iterator never runs the model to score.

``run`` then reads as its steps: optimizer, engine, resume, then per optimizer step

    take grad_accum micro-batches for this rank and score them
    N = loss units of the whole step, summed over ranks
    for each micro-batch: loss_sum, n = engine(batch); backward(loss_sum * world / N)
    engine.step()           # DeepSpeed averages over ranks, clips, steps AdamW and the schedule
    log, save

so the gradient is exactly d(sum of unit losses of the global step / N): per-unit averaging
that does not depend on how units are split into rows, micro-batches or ranks (a packed run
and a padded run of the same data give the same update).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from alignment import units
from alignment.evaluator import Evaluator, HeldOut
from alignment.infra import checkpoint
from alignment.infra import distributed as dist
from alignment.infra.deepspeed_setup import (
    deepspeed_config,
    grad_norm,
    param_groups,
    reports_grad_norm,
    zero_stage,
)
from alignment.infra.export import export_hf
from alignment.infra.metrics import MetricsLogger
from alignment.infra.schedule import lr_multiplier, warmup_steps
from alignment.loop_config import OptimConfig, TrainConfig
from mm.config import ConfigError, to_dict


class Planner(Protocol):
    def steps_per_epoch(self) -> int: ...


@dataclass
class TrainState:
    """What a trainer's ``setup`` hands the loop (trainers add their own fields in a subclass)."""

    model: torch.nn.Module  # the policy: its parameters are optimised and exported
    processor: Any
    planner: Planner  # steps_per_epoch() sets the epoch length and the LR schedule
    grad_accum: int  # micro-batches per optimizer step on each rank
    dataset: Any  # what micro_batches() reads (records, samples or pairs)
    attn: str = "sdpa"  # the attention backend the model was loaded with


STAND_IN = "stand_in"  # a micro-batch key: the batch runs (collectives stay in step) with weight 0


class ContractError(RuntimeError):
    """A trainer or its module broke the loop's contract (the message names the method)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a micro-batch (packed rows mark padding with seq_id -1)."""
    if "seq_ids" in batch:
        return int((batch["seq_ids"] >= 0).sum())
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None and mask.dim() == 2 else int(batch["input_ids"].numel())


def batch_samples(batch: dict) -> int:
    """Samples of a micro-batch (packed rows number theirs in ``seq_ids``)."""
    return int(batch["seq_ids"].max() + 1) if "seq_ids" in batch else int(batch["input_ids"].shape[0])


@dataclass
class Window:
    """Throughput counters between two logged steps."""

    start: float = field(default_factory=time.time)
    tokens: int = 0
    visual: int = 0
    samples: int = 0

    def add(self, stats: dict) -> None:
        self.tokens += stats["tokens"]
        self.visual += stats["visual_tokens"]
        self.samples += stats["samples"]


class Trainer:
    """Setup, the step loop and saving; algorithms fill in the state, the module and the data."""

    name = "train"
    bf16 = False  # set by run(): whether DeepSpeed trains in bf16
    loss_unit: units.LossUnit = staticmethod(units.supervised_tokens)
    state: TrainState

    def __init__(self, cfg):
        self.cfg = cfg
        self.train_cfg: TrainConfig = cfg.train
        self.optim_cfg: OptimConfig = cfg.optim
        self._norm_by_hand = False  # set by run(): DeepSpeed keeps no gradient norm (zero0, fp32)

    # the state's model and processor, read by every trainer
    model = property(lambda self: self.state.model)
    processor = property(lambda self: self.state.processor)
    dataset = property(lambda self: self.state.dataset)

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, device: str) -> TrainState:
        """Load model/processor and data; return them with the step planner as a ``TrainState``."""
        raise NotImplementedError

    def build_module(self) -> torch.nn.Module:
        """The module DeepSpeed wraps; forward(**micro_batch) -> (loss_sum, units, stats dict)."""
        raise NotImplementedError

    def micro_batches(self, epoch: int, start_step: int):
        """Iterator over this rank's micro-batches of ``epoch`` from ``start_step``."""
        raise NotImplementedError

    def score(self, batch: dict, device: str) -> dict:
        """The no-grad passes a micro-batch needs before its step (none by default)."""
        return batch

    def extra_param_groups(self) -> list[dict]:
        """AdamW groups of trainable modules outside the model (heads of the VLA trainer)."""
        return []

    def export(self, engine, out_dir: str, stage: int) -> None:
        """Write the final model to ``out_dir`` (Hugging Face format)."""
        export_hf(engine, self.model, self.processor, out_dir, stage)

    def step_metrics(self) -> dict:
        """Extra metrics of the last step (rollout statistics of RL trainers)."""
        return {}

    def held_out(self, path: str, limit: int, device: str) -> HeldOut:
        """The held-out set scored every ``train.eval_every`` steps: ``data.eval`` at ``path``, its
        first ``limit`` records (0: all), read and scored as this algorithm scores (see
        ``alignment.evaluator``). Called after the engine is built and before a resume."""
        raise ConfigError(f"train.eval_every: evaluation during training is not available for {self.name}")

    # -- the loop ------------------------------------------------------------------------------
    def device(self) -> str:
        d = self.train_cfg.device
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        return f"cuda:{dist.local_rank()}" if d == "cuda" else d

    def train_dtype(self, device: str) -> torch.dtype:
        """The dtype DeepSpeed trains in (bf16 on CUDA under precision auto): frozen copies that
        must match the policy (a reference model) are cast to it."""
        p = self.train_cfg.precision
        return torch.bfloat16 if p == "bf16" or (p == "auto" and device.startswith("cuda")) else torch.float32

    def run(self) -> dict:
        tc = self.train_cfg
        device = self.start()
        self.state = self.checked_setup(device)
        module = self.build_module()
        steps_per_epoch = self.state.planner.steps_per_epoch()
        total = tc.max_steps or tc.epochs * steps_per_epoch
        optimizer, scheduler = self.optimizer(total)
        resume_from = self._resume_path()  # known before the engine: another world size changes its config
        engine, scheduler, stage = self.deepspeed_engine(module, optimizer, scheduler, resume_from)
        evaluator = Evaluator(self, device)  # before the resume: DPO's held-out reference is the start
        first, tokens_seen = self.resume(engine, total, resume_from)
        log = MetricsLogger(tc.output_dir, total, first, self.name, tc.report_to, to_dict(self.cfg))
        t_start, window, last_loss, step = time.time(), Window(), float("nan"), first
        for step, batches in self.steps(first, total, steps_per_epoch):
            stats = self.train_step(engine, batches, device)
            window.add(stats)
            tokens_seen += stats["tokens"]
            last_loss = stats["loss"]
            if step % tc.log_every == 0 or step == total:
                self.log(log, step, steps_per_epoch, stats, scheduler.get_last_lr()[0], window)
                window = Window()
            if evaluator.due(step, total):
                log.log(evaluator.run(step, engine, stage))
            if tc.save_every and step % tc.save_every == 0 and step < total:
                self.save(engine, step, tokens_seen)
        log.close()
        seconds = time.time() - t_start  # the steps themselves; the final save and export follow
        return self.finish(engine, stage, step, tokens_seen, last_loss, seconds, t_start)

    def start(self) -> str:
        """The device, the process group and the seeds."""
        device = self.device()
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init(device)
        seed_everything(self.train_cfg.seed)
        self.bf16 = self.train_dtype(device) == torch.bfloat16  # setup may need it (the DPO reference)
        return device

    def checked_setup(self, device: str) -> TrainState:
        state = self.setup(device)
        if not isinstance(state, TrainState):
            raise ContractError(
                f"{type(self).__name__}.setup() returned {type(state).__name__}; it must return a "
                "TrainState (model, processor, planner, grad_accum, dataset)"
            )
        if state.grad_accum < 1:
            raise ContractError(
                f"{type(self).__name__}.setup(): grad_accum must be >= 1, got {state.grad_accum}"
            )
        return state

    def optimizer(self, total: int):
        """AdamW over the model's trainable parts (per-part learning rates) and the trainer's own
        modules, with the warmup + decay schedule over ``total`` steps."""
        oc = self.optim_cfg
        groups = param_groups(
            self.model, oc.lr, oc.weight_decay, {"vision_tower": oc.lr_vision_tower, "merger": oc.lr_merger}
        ) + [g for g in self.extra_param_groups() if g["params"]]
        if not groups:
            raise ValueError("no trainable parameters: everything is frozen (see model.freeze)")
        # fused AdamW: one kernel over all parameters (4x faster than the default loop on CPU, 30M params)
        optimizer = torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, fused=True)
        warm = warmup_steps(total, oc.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_multiplier(
                s, total, warm, oc.schedule, oc.min_lr_ratio, oc.decay_step, oc.decay_gamma
            ),
        )
        return optimizer, scheduler

    def deepspeed_engine(self, module, optimizer, scheduler, resume_from: str | None = None):
        """The DeepSpeed engine around ``module``: (engine, its scheduler, ZeRO stage); set to load
        ``resume_from`` in DeepSpeed's universal format when other ranks wrote its ZeRO shards."""
        import deepspeed

        tc = self.train_cfg
        ds_cfg = deepspeed_config(
            tc.deepspeed,
            self.cfg.data.micro_batch_size,
            self.state.grad_accum,
            self.optim_cfg.max_grad_norm,
            self.bf16,
        )
        if resume_from and checkpoint.resharded(resume_from, dist.world(), zero_stage(ds_cfg)):
            ds_cfg["checkpoint"] = {**ds_cfg.get("checkpoint", {}), "load_universal": True}
        engine, _, _, scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
        )
        self._norm_by_hand = not reports_grad_norm(engine)
        return engine, scheduler, zero_stage(ds_cfg)

    def resume(self, engine, total: int, resume_from: str | None) -> tuple[int, int]:
        """(step, tokens seen) of the checkpoint ``resume_from``, loaded into ``engine``, or (0, 0)."""
        step, tokens_seen = 0, 0
        if resume_from:
            state = checkpoint.load(engine, resume_from)
            step, tokens_seen = state["step"], state["tokens_seen"]
            if dist.is_main():
                print(f"resumed from {resume_from} at step {step}/{total}", flush=True)
                self._check_step_batch(resume_from, state)
        checkpoint.clean_partial(self.train_cfg.output_dir)
        return step, tokens_seen

    def steps(self, step: int, total: int, steps_per_epoch: int):
        """(step number, this rank's micro-batches of it) from ``step`` to ``total``, epoch by epoch."""
        ga = self.state.grad_accum
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            it = iter(self.micro_batches(epoch, in_epoch))
            for _ in range(min(steps_per_epoch - in_epoch, total - step)):
                step += 1
                yield step, [next(it) for _ in range(ga)]

    def train_step(self, engine, batches: list[dict | None], device: str) -> dict:
        world = dist.world()
        # a micro-batch whose records were all skipped still runs (collectives stay in step), with weight 0
        weights = [0.0 if b is None or b.get(STAND_IN) else 1.0 for b in batches]
        valid = [b for b in batches if b is not None]
        if not valid:
            raise RuntimeError("every micro-batch of this step was skipped (bad records); check the data")
        batches = [self.score(valid[0] if b is None else b, device) for b in batches]
        counted = [self.loss_unit(b) for b in batches]
        n_global = float(dist.all_sum([sum(n * w for n, w in zip(counted, weights))], device)[0])
        scale = world / max(n_global, 1.0)
        loss_sum, norm = 0.0, None
        extra: dict[str, float] = {}
        for k, (b, w) in enumerate(zip(batches, weights)):
            b = {key: v.to(device) if torch.is_tensor(v) else v for key, v in b.items() if key != STAND_IN}
            total, st = self.checked_forward(engine, b, counted[k])
            engine.backward(total * (w * scale), scale_wrt_gas=False)
            if self._norm_by_hand and k == len(batches) - 1:  # before DeepSpeed clips them
                norm = grad_norm(engine.module)
            engine.step()
            loss_sum += float(total.detach()) * w
            for key, v in st.items():
                extra[key] = extra.get(key, 0.0) + float(v) * w
        keys = sorted(extra)
        tokens = sum(real_tokens(b) * w for b, w in zip(batches, weights))
        visual = sum(int((b["mm_token_type_ids"] != 0).sum()) * w for b, w in zip(batches, weights))
        samples = sum(batch_samples(b) * w for b, w in zip(batches, weights))
        red = dist.all_sum([loss_sum, tokens, visual, samples] + [extra[k] for k in keys], device)
        if norm is None:
            norm = engine.get_global_grad_norm()
        return {
            "loss": float(red[0]) / max(n_global, 1.0),
            "tokens": int(red[1]),
            "visual_tokens": int(red[2]),
            "samples": int(red[3]),
            "grad_norm": float(norm) if norm is not None else float("nan"),
            **{f"m_{k}": float(v) / max(n_global, 1.0) for k, v in zip(keys, red[4:].tolist())},
        }

    def checked_forward(self, engine, batch: dict, counted: int) -> tuple[torch.Tensor, dict]:
        """``engine(**batch)``, checked against the contract: (loss_sum, units, stats) whose units
        equal the loop's count of ``loss_unit`` in the batch."""
        out = engine(**batch)
        module = type(getattr(engine, "module", engine)).__name__
        if not (isinstance(out, tuple) and len(out) == 3 and isinstance(out[2], dict)):
            raise ContractError(
                f"{module}.forward returned {type(out).__name__}; it must return (loss_sum, units, stats dict)"
            )
        total, n, stats = out
        if int(n) != counted:
            raise ContractError(
                f"{module}.forward counted {int(n)} loss units in a micro-batch where "
                f"{type(self).__name__}.loss_unit ({units.describe(self.loss_unit)}) counts {counted}: "
                "the module and loss_unit must count the same units (see alignment/units.py)"
            )
        return total, stats

    def log(
        self, log: MetricsLogger, step: int, steps_per_epoch: int, stats: dict, lr: float, window: Window
    ):
        dt = max(time.time() - window.start, 1e-9)
        log.log(
            {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                "loss": stats["loss"],
                "lr": lr,
                "grad_norm": stats["grad_norm"],
                "tokens_per_s": window.tokens / dt,
                "samples_per_s": window.samples / dt,
                "text_tokens": window.tokens - window.visual,
                "visual_tokens": window.visual,
                **{k: v for k, v in stats.items() if k.startswith("m_")},
                **self.step_metrics(),
            }
        )

    def finish(
        self,
        engine,
        stage: int,
        step: int,
        tokens_seen: int,
        last_loss: float,
        seconds: float,
        t_start: float,
    ) -> dict:
        """The last checkpoint, the exported model and the run's summary."""
        tc = self.train_cfg
        ckpt = self.save(engine, step, tokens_seen)
        final = os.path.join(tc.output_dir, "final")
        if tc.export:
            self.export(engine, final, stage)
        summary = {
            "steps": step,
            "tokens": tokens_seen,
            "final_loss": last_loss,
            "seconds": seconds,
            "total_seconds": time.time() - t_start,
            "checkpoint": ckpt,
            "model": final if tc.export else None,
        }
        if dist.is_main():
            self.print_summary(summary)
        return summary

    def _resume_path(self) -> str | None:
        r = self.train_cfg.resume
        if r == "never":
            return None
        if r == "auto":
            return dist.broadcast_object(checkpoint.latest(self.train_cfg.output_dir))
        if not os.path.isfile(os.path.join(r, checkpoint.STATE)):
            raise FileNotFoundError(f"resume={r!r} is not a complete checkpoint (no {checkpoint.STATE})")
        return r

    def _step_micro_batches(self) -> int:
        """Micro-batches of one optimizer step over all ranks: the step planners' global batch."""
        return dist.world() * self.state.grad_accum

    def _check_step_batch(self, path: str, state: dict) -> None:
        """Warn when the resumed run's steps take another number of micro-batches than the
        checkpoint's: the plan's step k then holds other samples (some are seen twice or never)."""
        saved = state.get("step_micro_batches")
        if saved and saved != self._step_micro_batches():
            print(
                f"warning: {path} was written with {saved} micro-batches per optimizer step "
                f"({state['world_size']} rank(s)); this run takes {self._step_micro_batches()} "
                f"({dist.world()} rank(s) x {self.state.grad_accum}): set "
                "train.gradient_accumulation_steps so that ranks x it stays the same to continue "
                "with the same samples",
                flush=True,
            )

    def save(self, engine, step: int, tokens_seen: int) -> str:
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "config": to_dict(self.cfg),
            "world_size": dist.world(),
            "step_micro_batches": self._step_micro_batches(),
        }
        return checkpoint.save(engine, self.train_cfg.output_dir, step, state, self.train_cfg.keep_last)

    def print_summary(self, s: dict) -> None:
        loss = "nan" if not math.isfinite(s["final_loss"]) else f"{s['final_loss']:.4f}"
        print(
            f"\n{self.name} done: {s['steps']} steps, {s['tokens']} tokens in {s['seconds']:.1f}s, final loss {loss}"
        )
        print(f"  checkpoint: {s['checkpoint']}")
        if s["model"]:
            print(f"  model:      {s['model']}  (loads with mm.load_model or transformers)")
            data = getattr(self.cfg.data, "eval", None)
            if data:
                print(f"  evaluate:   mmpost eval {s['model']} --data {data}")
