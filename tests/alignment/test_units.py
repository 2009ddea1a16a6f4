"""Pure pieces: schedules, the answer matcher, step planning, the skipped-batch weight."""

import math

import pytest
import torch

from alignment.data import DataConfig, StepPlanner
from alignment.infra.schedule import lr_multiplier, warmup_steps
from evaluation.answers import answers_match, extract_answer


def test_schedules_hand_computed():
    assert warmup_steps(100, 0.03) == 3 and warmup_steps(10, 0.0) == 0
    assert [lr_multiplier(s, 10, 2, "constant") for s in range(3)] == [0.5, 1.0, 1.0]
    assert lr_multiplier(2, 10, 2, "cosine") == 1.0
    assert lr_multiplier(6, 10, 2, "cosine") == pytest.approx(0.5)  # halfway through the decay
    assert lr_multiplier(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_multiplier(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_multiplier(10, 10, 2, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(4, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.4)))
    with pytest.raises(ValueError, match="unknown schedule 'steps'"):
        lr_multiplier(0, 10, 0, "steps")


def test_step_schedule_is_multistep_lr():
    """``step``: 1 until decay_step, then decay_gamma (OpenVLA-OFT's MultiStepLR, one milestone);
    warmup first when asked. Compared with torch's MultiStepLR, step by step."""
    assert [lr_multiplier(s, 6, 0, "step", decay_step=3) for s in range(6)] == [1, 1, 1, 0.1, 0.1, 0.1]
    assert [lr_multiplier(s, 6, 2, "step", decay_step=4, decay_gamma=0.5) for s in range(6)] == [
        0.5,
        1.0,
        1.0,
        1.0,
        0.5,
        0.5,
    ]
    with pytest.raises(ValueError, match="decay_step >= 1"):
        lr_multiplier(0, 10, 0, "step")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=5e-4)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[4], gamma=0.1)
    ours = []
    for s in range(8):
        assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 * lr_multiplier(s, 8, 0, "step", decay_step=4))
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours[3] == pytest.approx(5e-4) and ours[4] == pytest.approx(5e-5)


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


def test_skipped_micro_batch_has_zero_weight():
    """A micro-batch whose records were all skipped runs (collectives stay in step) but counts for nothing."""
    from alignment.loop import Trainer

    class FakeEngine:
        def __init__(self):
            self.scaled = []

        def __call__(self, labels, **_):
            n = (labels[:, 1:] != -100).sum()
            return torch.tensor(2.0) * n, n, {}

        def backward(self, loss, scale_wrt_gas=False):
            self.scaled.append(float(loss))

        def step(self):
            pass

        def get_global_grad_norm(self):
            return 1.0

    batch = {
        "input_ids": torch.ones(1, 4, dtype=torch.long),
        "labels": torch.tensor([[-100, 5, 6, -100]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "mm_token_type_ids": torch.zeros(1, 4),
    }
    engine = FakeEngine()
    stats = Trainer(cfg=type("C", (), {"train": None, "optim": None})()).train_step(
        engine, [batch, None], "cpu"
    )
    assert stats["loss"] == pytest.approx(2.0)  # the mean NLL of the one real micro-batch, not diluted
    assert engine.scaled == [pytest.approx(2.0), 0.0]  # 2 tokens x 2.0 / N=2; the stand-in backprops zero
    assert stats["tokens"] == 4 and stats["samples"] == 1


def test_export_finds_the_model_where_the_wrapping_module_declares_it():
    """ZeRO-3 export keeps the state-dict keys under the module's declared model attribute."""
    from alignment.infra.export import model_prefix
    from alignment.sft import CausalLMLoss

    inner = torch.nn.Linear(2, 3)
    wrapped = CausalLMLoss(inner)
    prefix = model_prefix(wrapped)
    kept = {k[len(prefix) :] for k in wrapped.state_dict() if k.startswith(prefix)}
    assert prefix == "model." and kept == set(inner.state_dict())

    class Undeclared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = inner

    with pytest.raises(TypeError, match="model_attr"):
        model_prefix(Undeclared())


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
