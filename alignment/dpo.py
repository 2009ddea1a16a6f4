"""DPO with an SFT term on the shared DeepSpeed loop (``mmpost train`` with ``algorithm: dpo``).

    mmpost train configs/specs/dpo_cold_start.yaml [key=value ...]

Loss per pair (``alignment.losses.dpo_loss``): sigmoid DPO (or IPO / hinge) on the policy's and
the reference's log-probs of the chosen and rejected responses, plus ``sft_weight`` x the mean
NLL per token of the chosen response (SPECS: lambda = 1). The loop averages over the pairs of
the optimizer step (the denominator is pairs, summed over micro-batches and ranks).

One forward per micro-batch covers both sides of every pair: chosen and rejected are two
samples of the same (packed or padded) batch, and the prompt's images go through the vision
tower once per pair, their features filling the placeholders of both sides.

The reference is the starting model, in the training dtype: under bf16 (``train.precision``
bf16, or auto on CUDA) the policy is cast to bf16 before the reference is taken, as DeepSpeed
would cast it, so policy and reference agree at step 0. By default its log-probs are computed
once before the first step (the policy in eval mode, before any update; each rank scores its
share of the pairs the planner uses) and cached in memory and in ``OUTPUT/ref_logps.pt``, keyed
by the data, the starting model (path + weight fingerprint), visual limits, chat template, dtype
and normalisation: a resumed run reads them back, a changed setup recomputes them, and no second
model is kept. With ``loss.precompute_ref: false`` a frozen copy (same dtype) scores each
micro-batch (under LoRA, the policy with its adapters disabled: no copy).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
from functools import partial

import torch

from alignment import units
from alignment.data import MicroBatches, StepPlanner, check_layout, check_lengths, loader
from alignment.dpo_config import DPOConfig
from alignment.dpo_data import PairDataset, collate_pair_plan
from alignment.evaluator import HeldOut, shard_plan
from alignment.infra import distributed as dist
from alignment.loop import Trainer, TrainState
from alignment.losses import dpo_loss
from mm.attention import choose_backend
from mm.config import ConfigError
from mm.encode import ConversationEncoder
from mm.image_features import encode_visuals, encoder_outputs
from mm.loading import load_for_training, resolve_init, unwrap
from mm.logprobs import labelled_logprobs
from mm.rope import RopeSpec

FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids", "use_cache")  # of a pair batch, to the LM
STATS = ("dpo_loss", "sft_loss", "chosen_reward", "rejected_reward", "margin", "accuracy")


def policy_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (summed log-prob, token count) of a pair batch in one forward, images encoded
    once per pair (see ``alignment.dpo_data``)."""
    base = unwrap(model)
    inputs = {k: v for k, v in batch.items() if k in FORWARD_KEYS}
    encoded = {}
    for kind, pix, grid, order in (
        ("image", "pixel_values", "image_grid_thw", "image_order"),
        ("video", "pixel_values_videos", "video_grid_thw", "video_order"),
    ):
        if batch.get(pix) is not None:
            feats = encode_visuals(base, batch[pix], batch[grid], kind)  # [tokens, D] per item of the pairs
            encoded[kind] = [feats[i] for i in batch[order].tolist()]  # the placeholders of both sides
    outputs = encoder_outputs(**encoded) or None
    hidden = base.model(**inputs, mm_encoder_outputs=outputs).last_hidden_state  # [B, L, D]
    return labelled_logprobs(hidden, base.lm_head, batch["labels"]).per_sample(batch["seq_ids"])


def reference_logps(model, batch: dict, normalized: bool) -> torch.Tensor:
    """Per-sample log-probs [2P] of a pair batch under the reference: ``model`` (a frozen copy),
    or under LoRA the policy ``model`` with its adapters disabled (the starting model)."""
    with torch.no_grad(), _no_adapters(model):
        total, count = policy_logps(model, batch)
    return total / count if normalized else total


class DPOModule(torch.nn.Module):
    """forward(**pair batch with ref_logps) -> (summed loss over pairs, number of pairs, summed metrics)."""

    model_attr = "model"  # where the trained VLM lives (see alignment.infra.export)

    def __init__(self, model, cfg: DPOConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, ref_logps=None, pair_index=None, **batch):
        if ref_logps is None:
            raise ValueError(
                "DPOModule needs ref_logps (reference log-probs per sample): precomputed, or added by "
                "DPOTrainer.score before the step"
            )
        lc = self.cfg.loss
        total, count = policy_logps(self.model, batch)
        logps = total / count if lc.normalized() else total
        loss, m = dpo_loss(
            policy_chosen_logps=logps[0::2],
            policy_rejected_logps=logps[1::2],
            ref_chosen_logps=ref_logps[0::2],
            ref_rejected_logps=ref_logps[1::2],
            beta=lc.beta,
            kind=lc.kind,
            chosen_nll=-total[0::2] / count[0::2],
            sft_weight=lc.sft_weight,
        )
        stats = {k: float(m[k].sum()) for k in STATS}
        return loss.sum(), torch.tensor(loss.shape[0]), stats


@dataclasses.dataclass
class DPOState(TrainState):
    ref_logps: torch.Tensor | None = None  # [n_pairs, 2] precomputed (chosen, rejected), or None
    ref_model: torch.nn.Module | None = None  # a frozen copy scoring each micro-batch (not under LoRA)


class DPOTrainer(Trainer):
    name = "dpo"

    loss_unit = staticmethod(units.pairs)  # the loss is a mean over pairs
    state: DPOState

    def setup(self, device: str) -> DPOState:
        cfg: DPOConfig = self.cfg
        attn = choose_backend(cfg.model.attn, device)
        model, processor = load_for_training(cfg.model, cfg.init_from, attn, self.train_cfg.seed)
        model.to(device)
        check_layout(cfg.data, model)  # a pair's packed row only where packing is exact (Qwen3.5: pad)
        if not cfg.data.train:
            raise ConfigError("data.train is empty: set it to a preference JSONL (prompt, chosen, rejected)")
        encoder = ConversationEncoder(processor, cfg.data.visual, RopeSpec.from_config(model.config))
        dataset = PairDataset(cfg.data.train, encoder, on_error=cfg.data.on_error, format=cfg.data.format)
        # max_tokens bounds one sequence (prompt + one response), as SPECS' max length; a pair
        # (both sequences, one packed row) takes up to twice that
        sides = dataset.side_lengths()
        check_lengths(
            dataset, [max(s) for s in sides], cfg.data, "its longer sequence (prompt + one response)"
        )
        lengths = [sum(s) if max(s) <= cfg.data.max_tokens else 0 for s in sides]  # 0: not used
        ga = self.train_cfg.gradient_accumulation_steps
        planner = StepPlanner(
            lengths,
            layout=cfg.data.layout,
            micro_batch_size=cfg.data.micro_batch_size,
            max_tokens=2 * cfg.data.max_tokens,
            world=dist.world(),
            grad_accum=ga,
            seed=self.train_cfg.seed,
        )
        state = DPOState(model, processor, planner, ga, dataset, attn)
        if self.bf16:
            # DeepSpeed casts the policy to bf16 (its fp32 master weights are made from those bf16
            # values), so the reference is the bf16 starting model too: step 0 has h = 0 exactly
            model.to(torch.bfloat16)
        if cfg.loss.precompute_ref:
            state.ref_logps = self._cached_reference(state, device)
        elif not hasattr(model, "disable_adapter"):
            state.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        model.train()
        if dataset.skipped and dist.is_main():
            print(f"skipping {dataset.skipped} bad pair(s); first: {dataset.problems[0]}", flush=True)
        return state

    def _reference_key(self, state: DPOState) -> dict:
        """What the cached reference log-probs depend on: the data, the starting model (path and
        a fingerprint of its weights), how samples are rendered, the dtype and the normalisation."""
        cfg = self.cfg
        return {
            "data": os.path.abspath(cfg.data.train),
            "mtime": os.path.getmtime(cfg.data.train),
            "pairs": len(state.dataset),
            "usable": len(state.planner.usable),
            "model": resolve_init(cfg.model, cfg.init_from),
            "weights": weights_fingerprint(state.model),
            "visual": dataclasses.asdict(cfg.data.visual),
            "chat_template": getattr(state.processor, "chat_template", None)
            or state.processor.tokenizer.chat_template,
            "dtype": str(next(state.model.parameters()).dtype),
            "length_normalize": cfg.loss.normalized(),
        }

    def _cached_reference(self, state: DPOState, device: str) -> torch.Tensor:
        """[n_pairs, 2] reference log-probs (chosen, rejected), computed once with the starting model
        (in the training dtype) for the pairs the planner uses (the rest stay 0), each rank scoring
        its share; cached in ``OUTPUT/ref_logps.pt`` under ``_reference_key``."""
        path = os.path.join(self.train_cfg.output_dir, "ref_logps.pt")
        key = self._reference_key(state)
        if os.path.isfile(path):
            saved = torch.load(path)
            if saved.get("key") == key:
                return saved["ref"]
            if dist.is_main():
                print(f"{path} was computed for other data or another model: recomputing", flush=True)
        mb = max(1, self.cfg.data.micro_batch_size)
        mine = state.planner.usable[dist.rank() :: dist.world()]
        plan = [mine[k : k + mb] for k in range(0, len(mine), mb)]
        pad_id = state.processor.tokenizer.pad_token_id
        batches = MicroBatches(
            plan, partial(collate_pair_plan, state.dataset, "pad", pad_id, state.attn, None)
        )
        from tqdm import tqdm

        index, values = [], []
        state.model.eval()
        for batch in tqdm(batches, desc="reference log-probs", disable=not dist.is_main() or len(plan) < 20):
            if batch is None:
                continue
            b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            lp = reference_logps(state.model, b, self.cfg.loss.normalized())
            index.append(batch["pair_index"])
            values.append(lp.view(-1, 2).float().cpu())
        ref = torch.zeros(len(state.dataset), 2)
        for idx, val in dist.all_gather_object(
            (
                torch.cat(index) if index else torch.zeros(0, dtype=torch.long),
                torch.cat(values) if values else ref[:0],
            )
        ):
            ref[idx] = val
        if dist.is_main():
            os.makedirs(self.train_cfg.output_dir, exist_ok=True)
            torch.save({"key": key, "ref": ref}, path + ".tmp")
            os.replace(path + ".tmp", path)
        return ref

    def build_module(self):
        return DPOModule(self.model, self.cfg)

    def micro_batches(self, epoch: int, start_step: int):
        plan = self.state.planner.rank_micro_batches(epoch, dist.rank(), start_step)
        pad_id = self.processor.tokenizer.pad_token_id
        collate = partial(
            collate_pair_plan,
            self.dataset,
            self.cfg.data.layout,
            pad_id,
            self.state.attn,
            self.state.ref_logps,
        )
        return loader(plan, collate, self.cfg.data.num_workers)

    def held_out(self, path: str, limit: int, device: str) -> DPOHeldOut:
        return DPOHeldOut(self, path, limit, device)

    def score(self, batch: dict, device: str) -> dict:
        """Reference log-probs of a micro-batch when they were not precomputed."""
        if "ref_logps" in batch:
            return batch
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        b["ref_logps"] = reference_logps(self.state.ref_model or self.model, b, self.cfg.loss.normalized())
        return b


class DPOHeldOut(HeldOut):
    """Held-out preference pairs: DPO loss, reward margin and preference accuracy."""

    def __init__(self, trainer, path: str, limit: int, device: str):
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


def weights_fingerprint(model, samples: int = 8) -> str:
    """sha256 of the starting model's weights (LoRA adapters left out): per tensor, its name,
    shape and ``samples`` evenly spaced values. Cheap, and any training step changes it."""
    h = hashlib.sha256()
    for name, t in sorted(unwrap(model).state_dict().items()):
        if "lora_" in name:
            continue
        flat = t.detach().flatten()
        picked = flat[torch.linspace(0, flat.numel() - 1, samples).long()] if flat.numel() else flat
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(picked.double().cpu().numpy().tobytes())
    return h.hexdigest()


def _no_adapters(model):
    """The starting model: LoRA adapters disabled (a no-op without LoRA)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
