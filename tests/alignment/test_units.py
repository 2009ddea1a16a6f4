"""Pure pieces: schedules, the answer matcher, step planning, the token loss."""

import math

import pytest
import torch

from alignment.data import DataConfig, StepPlanner
from alignment.evaluation.answers import answers_match, extract_answer
from alignment.infra.schedule import lr_multiplier, warmup_steps
from alignment.losses import token_nll_sum


def test_schedules_hand_computed():
    assert warmup_steps(100, 0.03) == 3 and warmup_steps(10, 0.0) == 0
    assert [lr_multiplier(s, 10, 2, "constant") for s in range(3)] == [0.5, 1.0, 1.0]
    assert lr_multiplier(2, 10, 2, "cosine") == 1.0
    assert lr_multiplier(6, 10, 2, "cosine") == pytest.approx(0.5)  # halfway through the decay
    assert lr_multiplier(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_multiplier(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_multiplier(10, 10, 2, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(4, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.4)))
    with pytest.raises(ValueError):
        lr_multiplier(0, 10, 0, "step")


@pytest.mark.parametrize(
    "pred,gold,ok",
    [
        ("42", "42", True),
        ("42.0", "42", True),
        ("1,000", "1000", True),
        ("3.14159", "3.1416", True),
        ("3.2", "3.1416", False),
        ("(B)", "B", True),
        ("b.", "B", True),
        ("C", "B", False),
        ("Red", "red", True),
        ("", "0", False),
        ("  ", "x", False),
        (None, "1", False),
        ("The answer is 7", "7", True),
    ],
)
def test_answers_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_extract_answer():
    assert extract_answer("<think>x</think><answer> 5 </answer>") == "5"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("no answer here") is None
    assert extract_answer("<answer></answer>") == ""


def test_planner_shards_steps_across_ranks():
    lengths = [10] * 12
    cfg = DataConfig(layout="pad", micro_batch_size=2)
    single = StepPlanner.of(lengths, cfg, world=1, grad_accum=2, seed=0)
    plain = dict(layout="pad", micro_batch_size=2, max_tokens=None, world=2, grad_accum=1, seed=0)
    r0 = StepPlanner(lengths, **plain).rank_micro_batches(0, 0)
    r1 = StepPlanner(lengths, **plain).rank_micro_batches(0, 1)
    one = single.rank_micro_batches(0, 0)
    assert single.steps_per_epoch() == 3
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(one[2 * k] + one[2 * k + 1]) for k in range(3)]
    assert single.rank_micro_batches(0, 0, start_step=1) == one[2:]
    assert single.micro_batches(0) != single.micro_batches(1)  # reshuffled every epoch
    with pytest.raises(ValueError, match="fewer micro-batches than one optimizer step"):
        StepPlanner.of([10, 10], cfg, world=1, grad_accum=4, seed=0)


def test_token_nll_sum_matches_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 5, 8)
    labels = torch.tensor([[-100, 3, 4, -100, 1], [-100, -100, 7, 2, -100]])
    total, n = token_nll_sum(hidden, head, labels, chunk=2)
    logits = head(hidden)[:, :-1]
    ref = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=-100
    )
    assert n == 5 and torch.allclose(total, ref, atol=1e-5)


def test_a_step_holds_the_global_batch_of_samples_whatever_the_packing():
    """Packed SFT counts samples: 2 ranks x 3 accumulation x 2 samples = 12 samples per step, so 50
    samples make 4 steps per epoch padded, packed in short rows or packed in long ones (the paper's
    trainer, padded, takes the same 4 steps), and every step holds exactly 12 samples."""
    import random

    lengths = [random.Random(k).randint(50, 900) for k in range(50)]
    for layout, max_tokens in (("pad", 1000), ("pack", 1000), ("pack", 4000)):
        plain = dict(layout=layout, micro_batch_size=2, max_tokens=max_tokens, world=2, grad_accum=3, seed=1)
        ranks = [StepPlanner(lengths, **plain) for _ in range(2)]
        assert ranks[0].steps_per_epoch() == 4, layout
        per_rank = [p.rank_micro_batches(0, r) for r, p in enumerate(ranks)]
        for step in range(4):
            mbs = [mb for own in per_rank for mb in own[3 * step : 3 * step + 3]]
            samples = [i for mb in mbs for i in (mb if layout == "pad" else [i for row in mb for i in row])]
            assert len(samples) == len(set(samples)) == 12
            if layout == "pack":  # rows within the limit
                assert all(sum(lengths[i] for i in row) <= max_tokens for mb in mbs for row in mb)
