"""The RL-loss registry: a loss registered by one line trains through GRPO's module (``loss.kind``),
with its own hyperparameters from ``loss.options``; unknown kinds and missing options are config
errors that name the fix."""

import pytest
import torch

from alignment.grpo import GRPOModule
from alignment.grpo.config import GRPOConfig, GRPOLossConfig
from alignment.losses import RL_LOSSES, loss_arguments
from mm.collate import pad_batch
from mm.config import ConfigError
from mm.encode import IGNORE
from tests.alignment.test_grpo import scripted_trajectory


def reinforce(*, logp, old_logp, advantages, mask, ref_logp=None, scale: float):
    """REINFORCE with the group baseline, token-mean, scaled."""
    mask = mask.to(logp.dtype)
    loss = -(scale * advantages[:, None] * logp * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"clip_fraction": 0.0, "ratio_mean": 1.0, "kl": 0.0}


def test_a_registered_loss_trains_through_the_grpo_module(tiny, monkeypatch):
    monkeypatch.setitem(RL_LOSSES, "reinforce", "tests.alignment.test_rl_losses:reinforce")
    model, processor = tiny
    traj = scripted_trajectory(tiny)
    batch = pad_batch([traj.encoded()] * 2, processor.tokenizer.pad_token_id)
    batch["advantages"] = torch.tensor([1.0, -0.5])
    cfg = GRPOConfig(loss=GRPOLossConfig(kind="reinforce", options={"scale": 0.5}))
    module = GRPOModule(model, cfg)
    assert module.loss_fn is reinforce and module.hyper == {"scale": 0.5}
    total, units, _ = module(**batch)
    # by hand: the model's own log-probs of the labelled tokens (a full log-softmax), weighted
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "mm_token_type_ids", "advantages")}
    with torch.no_grad():
        full = torch.log_softmax(model(**inputs).logits[:, :-1].float(), -1)
    tgt = batch["labels"][:, 1:]
    valid = tgt != IGNORE
    logp = full.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * valid
    want = -(0.5 * batch["advantages"][:, None] * logp).sum() / valid.sum()
    assert int(units) == int(valid.sum())  # token_mean: the loss is a sum over generated tokens
    assert abs(total.item() / int(units) - want.item()) < 1e-5


def test_unknown_kinds_and_missing_options_name_the_fix(monkeypatch):
    with pytest.raises(ConfigError, match="loss.kind='gspo': use one of grpo"):
        GRPOLossConfig(kind="gspo")
    monkeypatch.setitem(RL_LOSSES, "reinforce", reinforce)
    with pytest.raises(ConfigError, match=r"reinforce needs scale: set loss.options.scale"):
        loss_arguments(reinforce, {"clip_low": 0.2})
