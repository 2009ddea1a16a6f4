"""GRPO batch semantics as the papers state them: prompts per step over all ranks, epochs with
mu > 1, and DAPO's dynamic sampling and overlong handling."""

import os

import pytest

from alignment.grpo import GRPOTrainer, PromptPlanner, RolloutBatch
from alignment.train import build_config
from mm.config import ConfigError
from tests.alignment.conftest import ROOT

QS_GRPO = os.path.join(ROOT, "configs", "quickstart", "grpo.yaml")


def test_two_ranks_run_the_prompts_of_one_rank():
    """prompts_per_step is global (ViRC 64, SPECS 128 are the papers' batches over all GPUs): two
    ranks split each rollout's prompts, and together take exactly the one-rank prompts."""
    one = PromptPlanner(n=16, per_step=4, world=1, seed=3)
    two = PromptPlanner(n=16, per_step=4, world=2, seed=3)
    assert one.rollouts_per_epoch() == two.rollouts_per_epoch() == 4
    for epoch in (0, 1):
        for r in range(4):
            r0, r1 = two.prompts(epoch, r, 0), two.prompts(epoch, r, 1)
            assert len(r0) == len(r1) == 2
            assert r0 + r1 == one.prompts(epoch, r, 0)
    with pytest.raises(ConfigError, match="prompts_per_step=4 is global over ranks and must divide by the 3"):
        PromptPlanner(n=16, per_step=4, world=3, seed=0)


def test_an_epoch_with_mu_2_scores_every_prompt_once():
    """mu = 2: each rollout batch serves two optimizer steps, so one epoch of the 16 quickstart
    prompts (4 per rollout) is 4 rollouts and 8 steps (the LR schedule's length per epoch), and
    rolls out every prompt exactly once."""
    cfg = build_config(QS_GRPO, ["loss.mu=2", "train.epochs=1"])
    trainer = GRPOTrainer(cfg)
    trainer.state = trainer.setup("cpu")
    seen = []
    G = cfg.rollout.num_generations

    def rollout(indices):
        seen.append(list(indices))
        n = len(indices) * G
        return RolloutBatch([None] * n, [0] * n, [i // G for i in range(n)], None)

    trainer.rollout = rollout
    trainer._batch = lambda rollout, lo, hi: {"sequences": (lo, hi)}
    per_epoch = trainer.state.planner.steps_per_epoch()
    assert per_epoch == 8
    steps = list(trainer.steps(0, per_epoch, per_epoch))
    assert [s for s, _ in steps] == list(range(1, 9))
    assert sorted(i for r in seen for i in r) == list(range(16))
    # the two steps of a rollout train on the same micro-batches (scored once, before the first)
    assert all(a is b for k in range(0, 8, 2) for a, b in zip(steps[k][1], steps[k + 1][1]))
