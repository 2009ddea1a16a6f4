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

import torch

from alignment.data import StepPlanner, check_lengths
from alignment.dpo_config import DPOConfig
from alignment.dpo_data import PairDataset, PairMicroBatches
from alignment.infra import distributed as dist
from alignment.loop import Trainer
from alignment.losses import dpo_loss
from mm.attention import choose_backend
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


class DPOModule(torch.nn.Module):
    """forward(**pair batch) -> (summed loss over pairs, number of pairs, summed metrics)."""

    model_attr = "model"  # where the trained VLM lives (see alignment.infra.export)

    def __init__(self, model, cfg: DPOConfig, ref=None):
        super().__init__()
        self.model, self.cfg = model, cfg
        # not a submodule: DeepSpeed must neither train nor shard the reference
        self.__dict__["ref"] = ref

    def reference(self, batch: dict) -> torch.Tensor:
        """Per-sample log-probs under the reference (when not precomputed)."""
        with torch.no_grad():
            if self.ref is not None:
                total, count = policy_logps(self.ref, batch)
            else:  # LoRA: the policy without its adapters is the starting model
                with self.model.disable_adapter():
                    total, count = policy_logps(self.model, batch)
        return total / count if self.cfg.loss.normalized() else total

    def forward(self, ref_logps=None, pair_index=None, **batch):
        lc = self.cfg.loss
        total, count = policy_logps(self.model, batch)
        logps = total / count if lc.normalized() else total
        if ref_logps is None:
            ref_logps = self.reference(batch)
        loss, m = dpo_loss(
            logps[0::2],
            logps[1::2],
            ref_logps[0::2],
            ref_logps[1::2],
            lc.beta,
            lc.kind,
            chosen_nll=-total[0::2] / count[0::2],
            sft_weight=lc.sft_weight,
        )
        stats = {k: float(m[k].sum()) for k in STATS}
        return loss.sum(), torch.tensor(loss.shape[0]), stats


class DPOTrainer(Trainer):
    name = "dpo"

    def setup(self, device: str):
        cfg: DPOConfig = self.cfg
        self.attn = choose_backend(cfg.model.attn, device)
        self.model, self.processor = load_for_training(
            cfg.model, cfg.init_from, self.attn, self.train_cfg.seed
        )
        self.model.to(device)
        if not cfg.data.train:
            raise ValueError("data.train is empty: set it to a preference JSONL (prompt, chosen, rejected)")
        encoder = ConversationEncoder(
            self.processor, cfg.data.visual, RopeSpec.from_config(self.model.config)
        )
        self.dataset = PairDataset(
            cfg.data.train, encoder, on_error=cfg.data.on_error, format=cfg.data.format
        )
        lengths = self.dataset.lengths()
        check_lengths(self.dataset, lengths, cfg.data, "pair (prompt twice + both responses)")
        self.planner = StepPlanner(
            lengths, cfg.data, dist.world(), self.train_cfg.gradient_accumulation_steps, self.train_cfg.seed
        )
        self.ref_model, self.ref_logps = None, None
        if self.bf16:
            # DeepSpeed casts the policy to bf16 (its fp32 master weights are made from those bf16
            # values), so the reference is the bf16 starting model too: step 0 has h = 0 exactly
            self.model.to(torch.bfloat16)
        if cfg.loss.precompute_ref:
            self.ref_logps = self._cached_reference(device)
        elif not hasattr(self.model, "disable_adapter"):
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.model.train()
        if self.dataset.skipped and dist.is_main():
            print(
                f"skipping {self.dataset.skipped} bad pair(s); first: {self.dataset.problems[0]}", flush=True
            )

    def _reference_key(self) -> dict:
        """What the cached reference log-probs depend on: the data, the starting model (path and
        a fingerprint of its weights), how samples are rendered, the dtype and the normalisation."""
        cfg = self.cfg
        return {
            "data": os.path.abspath(cfg.data.train),
            "mtime": os.path.getmtime(cfg.data.train),
            "pairs": len(self.dataset),
            "usable": len(self.planner.usable),
            "model": resolve_init(cfg.model, cfg.init_from),
            "weights": weights_fingerprint(self.model),
            "visual": dataclasses.asdict(cfg.data.visual),
            "chat_template": getattr(self.processor, "chat_template", None)
            or self.processor.tokenizer.chat_template,
            "dtype": str(next(self.model.parameters()).dtype),
            "length_normalize": cfg.loss.normalized(),
        }

    def _cached_reference(self, device: str) -> torch.Tensor:
        """[n_pairs, 2] reference log-probs (chosen, rejected), computed once with the starting model
        (in the training dtype) for the pairs the planner uses (the rest stay 0), each rank scoring
        its share; cached in ``OUTPUT/ref_logps.pt`` under ``_reference_key``."""
        path = os.path.join(self.train_cfg.output_dir, "ref_logps.pt")
        key = self._reference_key()
        if os.path.isfile(path):
            saved = torch.load(path)
            if saved.get("key") == key:
                return saved["ref"]
            if dist.is_main():
                print(f"{path} was computed for other data or another model: recomputing", flush=True)
        mb = max(1, self.cfg.data.micro_batch_size)
        mine = self.planner.usable[dist.rank() :: dist.world()]
        plan = [mine[k : k + mb] for k in range(0, len(mine), mb)]
        batches = PairMicroBatches(
            self.dataset, plan, "pad", self.processor.tokenizer.pad_token_id, self.attn
        )
        from tqdm import tqdm

        index, values = [], []
        self.model.eval()
        with torch.no_grad(), _no_adapters(self.model):
            for batch in tqdm(
                batches, desc="reference log-probs", disable=not dist.is_main() or len(plan) < 20
            ):
                if batch is None:
                    continue
                b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                total, count = policy_logps(self.model, b)
                lp = total / count if self.cfg.loss.normalized() else total
                index.append(batch["pair_index"])
                values.append(lp.view(-1, 2).float().cpu())
        ref = torch.zeros(len(self.dataset), 2)
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
        return DPOModule(self.model, self.cfg, self.ref_model)

    @staticmethod
    def count_tokens(batch: dict) -> int:
        return int(batch["pair_index"].numel())  # the loss is a mean over pairs

    def micro_batches(self, epoch: int, start_step: int):
        plan = self.planner.rank_micro_batches(epoch, dist.rank(), start_step)
        mb = PairMicroBatches(
            self.dataset,
            plan,
            self.cfg.data.layout,
            self.processor.tokenizer.pad_token_id,
            self.attn,
            self.ref_logps,
        )
        return torch.utils.data.DataLoader(
            mb,
            batch_size=None,
            shuffle=False,
            num_workers=self.cfg.data.num_workers,
            prefetch_factor=2 if self.cfg.data.num_workers else None,
        )


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
