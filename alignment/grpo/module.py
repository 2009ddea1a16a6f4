"""GRPO's training module: the policy's log-probs of a micro-batch's generated tokens, then the
configured policy loss (``alignment.losses.RL_LOSSES``, called with keywords), returned as the
loop wants it: the loss summed over its units (``loss_unit_of``), their number and metrics."""

from __future__ import annotations

import inspect

import torch

from alignment import units
from alignment.grpo.batch import GRPOBatch
from alignment.grpo.config import GRPOConfig
from alignment.losses import loss_arguments, rl_loss
from mm.config import ConfigError
from mm.encode import IGNORE
from mm.image_features import encoder_outputs
from mm.loading import unwrap
from mm.logprobs import labelled_logprobs, target_logprobs


def sequence_logprobs(base, batch: GRPOBatch, image_embeds=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L-1] log-probs of the labelled tokens and their mean entropy under ``base`` (a VLM on the
    batch's device), from padded rows or from shared-prompt rows (scattered back to the padded
    layout); ``image_embeds``: the images' cached features instead of their pixels."""
    labels = batch.labels.to(base.device)
    inputs = batch.model_inputs(base.device, images=image_embeds is None)
    if image_embeds is not None:
        inputs["mm_encoder_outputs"] = encoder_outputs(image_embeds.to(base.device))
    hidden = base.model(**inputs).last_hidden_state  # [rows, L', D]
    if batch.tree is None:
        lp = labelled_logprobs(hidden, base.lm_head, labels, entropy=True)
        return lp.dense(), lp.mean_entropy()
    src, dst, tgt = (t.to(base.device) for t in batch.tree)
    lp, ent = target_logprobs(hidden.reshape(-1, hidden.shape[-1])[src], tgt, base.lm_head, entropy=True)
    logp = torch.zeros(labels.shape[0] * (labels.shape[1] - 1), dtype=torch.float32, device=hidden.device)
    logp[dst] = lp
    return logp.view(labels.shape[0], -1), ent.sum() / max(1, tgt.numel())


def loss_unit_of(aggregation: str) -> units.LossUnit:
    """GRPO's loss unit: generated tokens (token_mean), or completions (sequence_mean, fixed_length)."""
    return units.supervised_tokens if aggregation == "token_mean" else units.sequences


class GRPOModule(torch.nn.Module):
    """forward(**micro-batch) -> (loss as a sum over its denominator units, number of units, stats)."""

    model_attr = "model"  # where the trained VLM lives (see alignment.infra.export)

    def __init__(self, model, cfg: GRPOConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        lc = cfg.loss
        self.loss_fn = rl_loss(lc.kind)
        hyper = {
            "clip_low": lc.clip_low,
            "clip_high": lc.clip_high,
            "aggregation": lc.aggregation,
            "max_tokens": cfg.rollout.max_completion_length * cfg.rollout.max_turns,
            "beta": lc.beta,
            **lc.options,
        }
        self.hyper = loss_arguments(self.loss_fn, hyper)
        self.tis_cap = lc.tis_cap
        if self.tis_cap and "tis_weights" not in inspect.signature(self.loss_fn).parameters:
            raise ConfigError(f"loss.tis_cap: the {lc.kind} loss takes no tis_weights (truncated IS weights)")
        self.gap_max = 0.0  # the largest |rollout - trainer| log-prob gap since the trainer read it

    def forward(self, **fields):
        batch = GRPOBatch(**fields)
        logp, entropy = sequence_logprobs(unwrap(self.model), batch, batch.image_embeds)
        # the policy that sampled, as the trainer computes it (mu = 1: the current one)
        old = logp.detach() if batch.old_logp is None else batch.old_logp
        mask = batch.labels[:, 1:] != IGNORE
        extra, gap = {}, None
        if batch.rollout_logp is not None:  # the rollout engine's own log-probs of the same tokens
            diff = old.detach() - batch.rollout_logp.to(old.device)
            gaps = diff.abs()[mask]
            gap = float(gaps.mean()) if gaps.numel() else 0.0
            self.gap_max = max(self.gap_max, float(gaps.max()) if gaps.numel() else 0.0)
            if self.tis_cap:  # truncated importance sampling: min(pi_old / pi_rollout, cap)
                extra["tis_weights"] = torch.clamp(torch.exp(diff), max=self.tis_cap)
        loss, m = self.loss_fn(
            logp=logp,
            old_logp=old,
            advantages=batch.advantages,
            mask=mask,
            ref_logp=batch.ref_logp,
            **extra,
            **self.hyper,
        )
        n = loss_unit_of(self.cfg.loss.aggregation)({"labels": batch.labels})
        stats = {
            "clip_fraction": m["clip_fraction"] * n,
            "ratio": m["ratio_mean"] * n,
            "kl": m["kl"] * n,
            "entropy": float(entropy) * n,
        }
        if gap is not None:
            stats["logp_gap"] = gap * n
        if "tis_weights" in extra:
            w = extra["tis_weights"][mask]
            stats["tis_weight"] = (float(w.mean()) if w.numel() else 1.0) * n
        return loss * n, torch.tensor(n), stats
