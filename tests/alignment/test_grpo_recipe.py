"""GRPO batch semantics as the papers state them: prompts per step over all ranks, epochs with
mu > 1, and DAPO's dynamic sampling and overlong handling."""

import os
from types import SimpleNamespace

import pytest
import torch

from alignment.grpo import GRPOState, GRPOTrainer, PromptPlanner, Rollouts, Sequence, read_rl_records
from alignment.losses import group_advantages
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
        return [Sequence(None, 0, i // G, 0.0) for i in range(len(indices) * G)]

    trainer.rollout = rollout
    trainer.collate = lambda seqs: {"sequences": len(seqs)}
    per_epoch = trainer.state.planner.steps_per_epoch()
    assert per_epoch == 8
    steps = list(trainer.steps(0, per_epoch, per_epoch))
    assert [s for s, _ in steps] == list(range(1, 9))
    assert sorted(i for r in seen for i in r) == list(range(16))
    # the two steps of a rollout train on the same micro-batches (scored once, before the first)
    assert all(a is b for k in range(0, 8, 2) for a, b in zip(steps[k][1], steps[k + 1][1]))


class Policy(torch.nn.Linear):
    """Stands in for the policy where a rollout only switches its mode and reads its device."""

    device = torch.device("cpu")


def traj(text: str, tokens: int = 4, finish: str = "answer"):
    return SimpleNamespace(
        turns=[SimpleNamespace(text=text, image_index=None)],
        images=[],
        question="",
        violations=[],
        generated_tokens=tokens,
        finish_reason=finish,
        prompt_length=3,
        logprobs=None,  # the engine kept none (no vllm, no TIS)
        encoded=lambda rope=None, text=text, tokens=tokens: (text, tokens),  # what the batch would hold
    )


def rl_trainer(*overrides: str, trajectories=None):
    """A GRPO trainer on the letters prompts whose engine returns ``trajectories(prompts)``."""
    cfg = build_config(QS_GRPO, ["rollout.num_generations=4", *overrides])
    trainer = GRPOTrainer(cfg)
    records = read_rl_records(os.path.join(ROOT, cfg.data.train))
    engine = SimpleNamespace(  # a generator without weights of its own (no push)
        run=lambda prompts, base_dir: trajectories(prompts),
        encoder=SimpleNamespace(rope=None),
        generator=None,
    )
    planner = PromptPlanner(len(records), cfg.data.prompts_per_step, 1, 0)
    rollouts = Rollouts(cfg, engine, records, ROOT, trainer.judge, Policy(1, 1))
    trainer.state = GRPOState(Policy(1, 1), None, planner, 1, records, rollouts=rollouts)
    return trainer


def test_soft_overlong_punishment_is_added_to_the_reward():
    """L_max = 20 (max_completion_length), L_cache = 4: completions of 10, 17, 20 and 25 tokens that
    all contain the answer (reward 1) get 1 + (0, -0.25, -1, -1)."""
    lengths = iter([10, 17, 20, 25])
    trainer = rl_trainer(
        "rollout.max_completion_length=20",
        "loss.overlong_cache=4",
        trajectories=lambda prompts: [traj("an x", next(lengths)) for _ in prompts],
    )
    (group,) = trainer.state.rollouts.roll([0])
    assert group.rewards.tolist() == [1.0, 0.75, 0.0, 0.0]
    assert group.parts["overlong_penalty"] == [0.0, -0.25, -1.0, -1.0]


def test_overlong_filtering_drops_truncated_completions_from_the_loss():
    """Rewards (1, 0, 0, 1), the last completion cut at the length limit: it keeps its place in the
    group's advantages but is left out of the batch."""
    outs = iter([("x", "answer"), ("no", "answer"), ("no", "answer"), ("x", "max_tokens")])

    def trajectories(prompts):
        return [traj(text, finish=finish) for (text, finish), _ in zip(outs, prompts)]

    trainer = rl_trainer("loss.overlong_filter=true", "data.prompts_per_step=1", trajectories=trajectories)
    seqs = trainer.rollout([0])
    full = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    assert [s.sample[0] for s in seqs] == ["x", "no", "no"]
    assert torch.allclose(torch.tensor([s.advantage for s in seqs]), full[:3])
    assert trainer.rollout_stats["overlong"] == 0.25


def test_dynamic_sampling_never_pads_with_zero_advantage_groups():
    """Only prompts 0 and 1 ever get differing rewards; 4 prompts per step, 2 refill rounds: the step
    trains on the informative groups it found (fewer than 4), not on zero-advantage fillers, and
    the missing micro-batches are skipped ones (weight 0) so the step keeps its accumulation."""
    spread = set()

    def trajectories(prompts):  # G copies of each prompt in a row: the first of a group says x
        return [traj("x" if p[0].content in spread and k % 4 == 0 else "no") for k, p in enumerate(prompts)]

    trainer = rl_trainer(
        "loss.dynamic_sampling=true",
        "loss.max_refills=2",
        "data.prompts_per_step=4",
        "data.micro_batch_size=4",
        trajectories=trajectories,
    )
    spread.update(trainer.state.dataset[i].prompt[0].content for i in (0, 1))
    trainer.state.grad_accum = 4
    trainer.collate = lambda seqs: {"adv": torch.tensor([s.advantage for s in seqs])}
    it = iter(trainer.micro_batches(0, 0))
    batches = [next(it) for _ in range(4)]
    stats = trainer.rollout_stats
    assert stats["refills"] == 2 and 1 <= stats["groups_trained"] < 4, stats
    real = [b for b in batches if b is not None]
    assert len(real) == stats["groups_trained"] and batches[len(real) :] == [None] * (4 - len(real))
    assert all(b["adv"].abs().sum() > 0 for b in real)  # every trained group has a reward spread


def test_a_rank_without_informative_groups_runs_a_weightless_stand_in(tiny, encoder):
    """Dynamic sampling finds no group with a reward spread: the rank still runs its micro-batches
    (collectives stay in step) but every one weighs 0: a stand-in of one prompt, then skipped ones."""
    from alignment.loop import STAND_IN

    trainer = rl_trainer(
        "loss.dynamic_sampling=true",
        "loss.max_refills=1",
        "data.prompts_per_step=2",
        "data.micro_batch_size=4",
        trajectories=lambda prompts: [traj("no") for _ in prompts],
    )
    trainer.state.processor, trainer.state.engine.encoder = tiny[1], encoder
    trainer.state.grad_accum = 2
    it = iter(trainer.micro_batches(0, 0))
    batches = [next(it) for _ in range(2)]
    assert batches[0][STAND_IN] and batches[1] is None
    assert trainer.rollout_stats["groups_trained"] == 0

    scaled = []

    class Engine:
        def __call__(self, labels, advantages, **_):
            return advantages.sum() * 0 + 1.0, torch.tensor(int((labels[:, 1:] != -100).sum())), {}

        def backward(self, loss, scale_wrt_gas=False):
            scaled.append(float(loss))

        def step(self):
            pass

        def get_global_grad_norm(self):
            return 0.0

    stats = trainer.train_step(Engine(), batches, "cpu")
    assert scaled == [0.0, 0.0] and stats["loss"] == 0.0 and stats["samples"] == 0


def test_rewards_by_source_score_each_row_with_its_own_rewards():
    """EasyR1/verl data_source picks the rewards: prompt 0 (geo) by accuracy + 0.5 format, prompt 1
    (chart) by 2 x format, prompt 2 (no data_source) by `rewards` (contains_answer). Completions
    (think+answer x, answer x, x, no) score by hand: accuracy 1 1 0 0, format 1 0 0 0, contains
    1 1 1 0; each reward/NAME is its mean over the rows that used it."""
    texts = ["<think>t</think><answer>x</answer>", "<answer>x</answer>", "x", "no"]
    trainer = rl_trainer(
        "data.prompts_per_step=3",
        "rewards_by_source.geo.accuracy=1.0",
        "rewards_by_source.geo.format_think_answer=0.5",
        "rewards_by_source.chart.format_think_answer=2.0",
        trajectories=lambda prompts: [traj(texts[k % 4]) for k in range(len(prompts))],
    )
    for i, source in [(0, "geo"), (1, "chart")]:
        trainer.state.dataset[i].meta = {"data_source": source}
    geo, chart, plain = trainer.state.rollouts.roll([0, 1, 2])
    assert geo.rewards.tolist() == [1.5, 1.0, 0.0, 0.0]
    assert set(geo.parts) == {"accuracy", "format_think_answer"}
    assert chart.rewards.tolist() == [2.0, 0.0, 0.0, 0.0] and set(chart.parts) == {"format_think_answer"}
    assert plain.rewards.tolist() == [1.0, 1.0, 1.0, 0.0] and set(plain.parts) == {"contains_answer"}
    trainer.rollout([0, 1, 2])
    stats = trainer.rollout_stats
    assert stats["reward/accuracy"] == stats["accuracy"] == 2 / 4  # geo's 4 rows
    assert stats["reward/format_think_answer"] == 2 / 8  # geo's and chart's 8 rows
    assert stats["reward/contains_answer"] == 3 / 4  # the plain prompt's 4 rows
    assert stats["reward_mean"] == (2.5 + 2.0 + 3.0) / 12


def test_a_bad_reward_name_in_rewards_by_source_fails_at_load():
    with pytest.raises(ConfigError, match="rewards_by_source.geo.acuracy: unknown reward 'acuracy'"):
        build_config(QS_GRPO, ["rewards_by_source.geo.acuracy=1.0"])
    with pytest.raises(ConfigError, match="rewards_by_source.geo: expected a mapping"):
        build_config(QS_GRPO, ["rewards_by_source.geo=accuracy"])


def test_held_out_rewards_follow_the_data_source():
    """The held-out GRPO scores use the same choice: one greedy rollout per prompt ("<answer>x</answer>":
    accuracy 1, format 0, contains 1); reward/NAME sums come with the count of rows that used it,
    and a reward no row of the batch used still reports (0, 0) so every rank has the same keys."""
    from alignment.grpo.held_out import GRPOHeldOut

    trainer = rl_trainer(
        "rewards_by_source.geo.accuracy=1.0",
        "rewards_by_source.geo.format_think_answer=0.5",
        "rewards_by_source.chart.cls_format=1.0",
        trajectories=None,
    )
    held = object.__new__(GRPOHeldOut)
    held.cfg, held.judge, held.records, held.base_dir = (
        trainer.cfg,
        trainer.judge,
        trainer.state.dataset,
        ROOT,
    )
    held.engine = SimpleNamespace(run=lambda prompts, base_dir: [traj("<answer>x</answer>") for _ in prompts])
    held.records[0].meta = {"data_source": "geo"}
    out = held.sums(None, {"indices": [0, 1, 2]})
    assert out == {
        "reward": (1.0 + 1.0 + 1.0, 3),
        "reward/accuracy": (1.0, 1),
        "reward/format_think_answer": (0.0, 1),
        "reward/contains_answer": (2.0, 2),
        "reward/cls_format": (0.0, 0),
        "accuracy": (1.0, 1),
    }
