"""The loop's contract (alignment/loop.py, alignment/units.py): what it asks of a trainer and
its module, the clear errors when they break it, the step's accumulation and the logged norm."""

import os

import pytest
import torch

from alignment import units
from alignment.loop import ContractError, Trainer, TrainState, seed_everything
from alignment.train import build_config
from mm.config import ConfigError
from tests.alignment.conftest import QUICKSTART, ROOT, base_overrides, run_sft
from tests.testing_utils import require_cuda, require_deepspeed, require_flash_attn

NO_CFG = type("C", (), {"train": None, "optim": None})()


class FakeEngine:
    """An engine whose module returns what ``forward`` gives; records the scaled backwards."""

    def __init__(self, forward):
        self.forward, self.scaled = forward, []

    def __call__(self, **batch):
        return self.forward(**batch)

    def backward(self, loss, scale_wrt_gas=False):
        self.scaled.append(float(loss))

    def step(self):
        pass

    def get_global_grad_norm(self):
        return 1.0


def sft_batch(labels: list[int]) -> dict:
    n = len(labels)
    return {
        "input_ids": torch.ones(1, n, dtype=torch.long),
        "labels": torch.tensor([labels]),
        "attention_mask": torch.ones(1, n, dtype=torch.long),
        "mm_token_type_ids": torch.zeros(1, n),
    }


def nll_2_per_token(labels, **_):
    n = (labels[:, 1:] != -100).sum()
    return torch.tensor(2.0) * n, n, {}


def test_units_count_by_hand():
    batch = {
        "labels": torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, -100]]),
        "pair_index": torch.tensor([3, 9]),
        "actions": torch.zeros(5, 8, 7),
    }
    assert units.supervised_tokens(batch) == 3  # positions 1, 2 of row 0 and 2 of row 1
    assert units.sequences(batch) == 2
    assert units.pairs(batch) == 2
    assert units.samples(batch) == 5
    assert units.describe(units.supervised_tokens) == "supervised tokens"


def test_skipped_micro_batch_has_zero_weight():
    """A micro-batch whose records were all skipped runs (collectives stay in step) but counts for nothing."""
    engine = FakeEngine(nll_2_per_token)
    stats = Trainer(NO_CFG).train_step(engine, [sft_batch([-100, 5, 6, -100]), None], "cpu")
    assert stats["loss"] == pytest.approx(2.0)  # the mean NLL of the one real micro-batch, not diluted
    assert engine.scaled == [pytest.approx(2.0), 0.0]  # 2 tokens x 2.0 / N=2; the stand-in backprops zero
    assert stats["tokens"] == 4 and stats["samples"] == 1


def test_step_mean_is_over_the_units_of_all_micro_batches():
    """Micro-batches of 3 and 1 supervised tokens at 2.0 per token: each backward is scaled by
    1/N with N = 4 (the step's tokens), not by 1/grad_accum; the logged loss is 2.0."""
    engine = FakeEngine(nll_2_per_token)
    stats = Trainer(NO_CFG).train_step(
        engine, [sft_batch([-100, 1, 2, 3]), sft_batch([-100, -100, 4, -100])], "cpu"
    )
    assert engine.scaled == [pytest.approx(6.0 / 4), pytest.approx(2.0 / 4)]
    assert stats["loss"] == pytest.approx(2.0)


def test_module_units_must_agree_with_the_loss_unit():
    """A module that counts sequences while the trainer's loss_unit counts supervised tokens: the
    step would be a mean over the wrong denominator; the loop stops and names both."""

    def per_sequence(labels, **_):
        return torch.tensor(1.0), torch.tensor(labels.shape[0]), {}

    with pytest.raises(ContractError, match=r"counted 1 loss units .*\(supervised tokens\) counts 2"):
        Trainer(NO_CFG).train_step(FakeEngine(per_sequence), [sft_batch([-100, 5, 6, -100])], "cpu")

    class PerSequence(Trainer):
        loss_unit = staticmethod(units.sequences)

    stats = PerSequence(NO_CFG).train_step(FakeEngine(per_sequence), [sft_batch([-100, 5, 6, -100])], "cpu")
    assert stats["loss"] == pytest.approx(1.0)


def test_module_must_return_loss_units_and_stats():
    def two(labels, **_):
        return torch.tensor(1.0), torch.tensor(2)

    with pytest.raises(ContractError, match=r"must return \(loss_sum, units, stats dict\)"):
        Trainer(NO_CFG).train_step(FakeEngine(two), [sft_batch([-100, 5, 6, -100])], "cpu")


def test_setup_must_return_a_train_state():
    class AttributeSetup(Trainer):
        def setup(self, device):
            self.planner = object()  # the old way: attributes the loop reads later
            return None

    with pytest.raises(
        ContractError, match=r"AttributeSetup.setup\(\) returned NoneType; it must return a TrainState"
    ):
        AttributeSetup(NO_CFG).checked_setup("cpu")

    class NoAccumulation(Trainer):
        def setup(self, device):
            return TrainState(torch.nn.Linear(1, 1), None, None, 0, [])

    with pytest.raises(ContractError, match="grad_accum must be >= 1, got 0"):
        NoAccumulation(NO_CFG).checked_setup("cpu")


def test_score_runs_before_the_step_and_is_counted():
    """The trainer's score step adds what the module needs (here: the reference its loss reads)."""

    def needs_ref(labels, ref, **_):
        n = (labels[:, 1:] != -100).sum()
        return ref * n, n, {}

    class Scored(Trainer):
        def score(self, batch, device):
            return {**batch, "ref": torch.tensor(3.0)}

    stats = Scored(NO_CFG).train_step(FakeEngine(needs_ref), [sft_batch([-100, 5, 6, -100])], "cpu")
    assert stats["loss"] == pytest.approx(3.0)


def test_grpo_refuses_another_gradient_accumulation():
    """GRPO's accumulation is the rollout's micro-batches: another configured value is an error, not
    silently overwritten; 1 (the default) or the derived value are accepted."""
    from alignment.grpo import GRPOTrainer

    over = ["data.prompts_per_step=4", "rollout.num_generations=4", "data.micro_batch_size=8"]
    grpo = os.path.join(ROOT, "configs", "quickstart", "grpo.yaml")
    for ga, want in (("1", 2), ("2", 2)):
        cfg = build_config(grpo, [*over, f"train.gradient_accumulation_steps={ga}"])
        assert GRPOTrainer(cfg)._grad_accum(4) == want
        assert cfg.train.gradient_accumulation_steps == int(ga)  # never overwritten
    cfg = build_config(grpo, [*over, "train.gradient_accumulation_steps=8"])
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=8: GRPO derives it .* 16 sequences"):
        GRPOTrainer(cfg)._grad_accum(4)


@require_deepspeed
def test_zero0_logs_the_real_grad_norm(synth, tmp_path):
    """zero0 (no ZeRO, fp32): DeepSpeed clips the gradients itself and keeps no norm; the loop logs
    the norm before clipping. Step 1's equals a plain-PyTorch computation of the same step's
    gradient (mean over its supervised tokens), and zero2 logs the same norms."""
    from alignment.sft import SFTTrainer

    common = (
        "train.max_steps=2",
        "optim.lr=1e-3",
        "optim.max_grad_norm=0.01",
        "train.export=false",
        "train.gradient_accumulation_steps=2",
    )
    _, z0 = run_sft(synth, str(tmp_path / "z0"), *common, "train.deepspeed=zero0")
    _, z2 = run_sft(synth, str(tmp_path / "z2"), *common, "train.deepspeed=zero2")
    assert [m["grad_norm"] == m["grad_norm"] for m in z0] == [True, True]  # not NaN
    for a, b in zip(z0, z2):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), a["step"]
    # by hand: the first step's micro-batches, the summed token NLL over the step's tokens
    cfg = build_config(QUICKSTART, [*base_overrides(synth), *common], output_dir=str(tmp_path / "hand"))
    seed_everything(cfg.train.seed)
    trainer = SFTTrainer(cfg)
    trainer.state = trainer.setup("cpu")
    it = iter(trainer.micro_batches(0, 0))
    batches = [next(it) for _ in range(2)]
    module = trainer.build_module()
    n = sum(units.supervised_tokens(b) for b in batches)
    for b in batches:
        total, _, _ = module(**b)
        (total / n).backward()
    grads = [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
    assert z0[0]["grad_norm"] == pytest.approx(float(torch.cat(grads).norm()), rel=1e-4)
    assert z0[0]["grad_norm"] > 0.1  # clipping at 0.01 acted on it: the logged norm is the one before


@require_cuda
@require_deepspeed
def test_bf16_step_on_cuda_logs_finite_norm(synth, tmp_path):
    """precision auto on CUDA trains in bf16 (DeepSpeed's bf16 optimizer reports the norm)."""
    _, m = run_sft(synth, str(tmp_path), "train.max_steps=2", "train.export=false", "train.device=cuda")
    assert all(0 < x["grad_norm"] < float("inf") for x in m)


@require_flash_attn
@require_deepspeed
def test_packed_equals_padded_with_flash_attn_on_cuda(synth, tmp_path):
    """Invariant 1 on the GPU path: flash-attn varlen rows and padded SDPA batches of the same 24
    samples (one step covers the epoch) give the same loss and norm, within bf16 rounding."""
    common = (
        "train.max_steps=1",
        "train.export=false",
        "train.device=cuda",
        "train.precision=bf16",
        "data.max_tokens=3200",
    )
    _, packed = run_sft(
        synth,
        str(tmp_path / "pack"),
        *common,
        "model.attn=flash_attention_2",
        "data.layout=pack",
        "data.micro_batch_size=24",
        "train.gradient_accumulation_steps=1",
    )
    _, padded = run_sft(
        synth,
        str(tmp_path / "pad"),
        *common,
        "model.attn=sdpa",
        "data.layout=pad",
        "data.micro_batch_size=24",
        "train.gradient_accumulation_steps=1",
    )
    assert packed[0]["loss"] == pytest.approx(padded[0]["loss"], rel=2e-2)
    assert packed[0]["grad_norm"] == pytest.approx(padded[0]["grad_norm"], rel=5e-2)
