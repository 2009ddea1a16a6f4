"""GRPO with ``rollout.generator: vllm``: the same run as with ``cached`` when sampling is greedy,
vLLM holding the trainer's updated weights after every step (full, ZeRO-3 gathered, LoRA merged),
the log-prob gap reported, truncated importance sampling by hand-computed numbers, and the error a
missing vLLM environment gives.

Greedy rollouts make a group's G completions one and the same, so GRPO's group-relative
advantages (and its loss) are all zero and nothing would be updated. These runs train with a
registered policy loss instead (``unlikely``: the mean log-prob of the sampled tokens, minimised),
which moves the weights at every step and makes each step's greedy completion differ from the
last: the losses agree only if both generators produced the same ids, and a rollout after an
update sees the update only if the weights reached vLLM. Images (data/cls) run through the vision
tower, which is trained too, so stale image features in vLLM would show.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from alignment.grpo.trainer import GRPOTrainer
from alignment.infra.metrics import read_metrics
from alignment.losses import RL_LOSSES, grpo_loss
from alignment.train import train
from tests.alignment.conftest import ROOT
from tests.conftest import subprocess_env
from tests.testing_utils import require_deepspeed
from tests.vllm_utils import assert_same_rows, vllm_python_or_skip

CLS = os.path.join(ROOT, "configs", "cls_rl", "grpo.yaml")


def unlikely(*, logp, old_logp, advantages, mask, ref_logp=None, tis_weights=None):
    """Minimise the sampled tokens' mean log-prob (greedy completions move away every step)."""
    mask = mask.to(logp.dtype)
    loss = (logp * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"clip_fraction": 0.0, "ratio_mean": 1.0, "kl": 0.0}


def overrides(generator: str, steps: int = 3, *extra: str) -> list[str]:
    return [
        "model.name_or_path=tiny-h32",
        "data.eval=null",
        "data.prompts_per_step=2",
        "data.micro_batch_size=8",
        "rollout.num_generations=4",
        "rollout.max_completion_length=12",
        "rollout.temperature=0",
        f"rollout.generator={generator}",
        "rollout.vllm.kv_cache_gib=1",
        "loss.kind=unlikely",
        "loss.beta=0",
        "optim.lr=1e-2",
        "optim.schedule=constant",
        f"train.max_steps={steps}",
        "train.epochs=10",
        "train.export=false",
        "train.save_every=0",
        "train.deepspeed=zero0",
        *extra,
    ]


@pytest.fixture
def probed(monkeypatch):
    """Around every push of the weights into vLLM: vLLM's greedy ids before it, the trainer's own
    (the cached generator on the policy as it is now) and vLLM's after it, on two of the prompts."""
    from vision_tools.engine import EngineConfig, ToolEngine
    from vision_tools.generation import make_generator

    monkeypatch.setitem(RL_LOSSES, "unlikely", unlikely)
    seen = []
    push = GRPOTrainer.sync_rollout_weights

    def probe(self):
        st = self.state
        if not hasattr(st.engine.generator, "update_weights"):  # cached: nothing to push
            return push(self)
        cfg = EngineConfig(max_turns=1, max_turn_tokens=12, max_resamples=0)
        prompts = [rec.prompt for rec in st.dataset[:2]]

        def greedy(generator):
            engine = ToolEngine(self.model, self.processor, config=cfg, generator=generator)
            return engine.run(prompts, st.rollouts.base_dir)

        was = self.model.training
        self.model.eval()
        gen = st.engine.generator
        with torch.no_grad():
            before, own = greedy(gen), greedy(make_generator("cached", self.model, self.processor))
        timing = push(self)
        with torch.no_grad():
            after = greedy(gen)
        self.model.train(was)
        seen.append({"before": before, "own": own, "after": after, "timing": timing, "model": self.model})
        return timing

    monkeypatch.setattr(GRPOTrainer, "sync_rollout_weights", probe)
    return seen


def check_pushes(seen: list[dict], steps: int, changes: bool = True) -> None:
    """A push before each rollout (steps of them); after each, vLLM decodes as the trainer's
    policy; from the second on (after an update) vLLM before the push did not (``changes``)."""
    assert len(seen) == steps
    for k, s in enumerate(seen):
        assert s["timing"] is not None and s["timing"]["seconds"] > 0
        assert_same_rows(s["model"], s["after"], s["own"], f"rollout {k} after the push")
    if changes:
        stale = [
            k
            for k, s in enumerate(seen[1:], 1)
            if s["before"][0].input_ids.tolist() != s["own"][0].input_ids.tolist()
        ]
        assert stale, "no update changed the greedy ids: the push is not tested"


@require_deepspeed
@pytest.mark.slow
def test_greedy_grpo_with_vllm_is_the_cached_run(tmp_path, probed):
    """3 greedy steps: the same losses, entropies and response lengths as with cached (so the same
    rollout ids at every step), vLLM holding the updated weights before every rollout, the gap
    between vLLM's log-probs and the trainer's reported (fp32: noise), the push timed."""
    vllm_python_or_skip()
    runs = {}
    for gen in ("cached", "vllm"):
        out = str(tmp_path / gen)
        train(CLS, overrides(gen), output_dir=out)
        runs[gen] = read_metrics(out)
    check_pushes(probed, 3)
    for c, v in zip(runs["cached"], runs["vllm"]):
        assert v["response_length"] == c["response_length"] and v["reward_mean"] == c["reward_mean"]
        assert abs(v["loss"] - c["loss"]) < 1e-5 and abs(v["m_entropy"] - c["m_entropy"]) < 1e-5
        assert 0 <= v["rollout/logp_gap"] < 1e-4 and v["rollout/logp_gap_max"] < 1e-3
        assert v["rollout/weight_sync_s"] > 0 and "rollout/logp_gap" not in c
    assert len({r["loss"] for r in runs["vllm"]}) == 3  # the updates changed what was sampled


@require_deepspeed
@pytest.mark.slow
def test_zero3_pushes_gathered_weights(tmp_path, probed):
    """Under ZeRO-3 (parameters partitioned) the push gathers each layer's parameters in turn."""
    vllm_python_or_skip()
    train(CLS, overrides("vllm", 2, "train.deepspeed=zero3"), output_dir=str(tmp_path / "z3"))
    check_pushes(probed, 2)


@require_deepspeed
@pytest.mark.slow
def test_lora_pushes_merged_weights(tmp_path, probed):
    """A LoRA policy: vLLM gets the base weights with the adapters merged in."""
    vllm_python_or_skip()
    train(CLS, overrides("vllm", 2, "model.lora_r=8", "optim.lr=5e-2"), output_dir=str(tmp_path / "lora"))
    check_pushes(probed, 2)


def test_truncated_importance_sampling_by_hand():
    """w = min(exp(old - rollout), cap) weighs each token's clipped policy term (not the KL)."""
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    rollout = torch.tensor([[-1.5, -1.0, -0.5]])
    w = torch.clamp(torch.exp(old - rollout), max=1.2)  # e^0.5 = 1.6487 -> 1.2, e^-1 = 0.3679, 1
    assert torch.allclose(w, torch.tensor([[1.2, 0.36788, 1.0]]), atol=1e-5)
    logp = old.clone().requires_grad_(True)
    mask = torch.ones(1, 3)
    adv = torch.tensor([2.0])
    loss, _ = grpo_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, tis_weights=w)
    # ratio 1: per token -A * w = -2 * (1.2, 0.36788, 1); token mean
    assert abs(loss.item() - (-2 * (1.2 + 0.36788 + 1.0) / 3)) < 1e-5
    loss.backward()  # d/dlogp of -A * ratio * w at ratio 1: -A * w / 3
    assert torch.allclose(logp.grad, -2 * w / 3, atol=1e-6)
    ref = torch.tensor([[-1.0, -1.0, -1.0]])
    kl_only, _ = grpo_loss(logp=old, old_logp=old, advantages=torch.zeros(1), mask=mask, ref_logp=ref,
                           beta=0.5, tis_weights=w)  # fmt: skip
    plain, _ = grpo_loss(logp=old, old_logp=old, advantages=torch.zeros(1), mask=mask, ref_logp=ref, beta=0.5)
    assert abs(kl_only.item() - plain.item()) < 1e-7  # the KL term is not weighted


def test_the_module_computes_tis_weights_and_the_gap(monkeypatch):
    """GRPOModule: with loss.tis_cap the loss gets min(exp(trainer old - rollout), cap) per token and
    the step's mean |trainer - rollout| log-prob gap is a metric."""
    from alignment.grpo.batch import GRPOBatch
    from alignment.grpo.config import GRPOConfig
    from alignment.grpo.module import GRPOModule
    from mm.config import from_dict

    seen = {}

    def spy(**kw):
        seen.update(kw)
        return torch.zeros((), requires_grad=True), {"clip_fraction": 0.0, "ratio_mean": 1.0, "kl": 0.0}

    cfg = from_dict(GRPOConfig, {"loss": {"tis_cap": 1.5}})
    module = GRPOModule(torch.nn.Linear(1, 1), cfg)
    module.loss_fn = spy
    labels = torch.tensor([[-100, 5, 6, -100]])
    old = torch.tensor([[-1.0, -2.0, -9.0]])  # log-probs of tokens 1..3 (the last is padding)
    rollout = torch.tensor([[-1.5, -1.0, 0.0]])
    batch = dict(labels=labels, advantages=torch.ones(1), old_logp=old, rollout_logp=rollout,
                 input_ids=torch.zeros(1, 4, dtype=torch.long))  # fmt: skip
    monkeypatch.setattr("alignment.grpo.module.sequence_logprobs", lambda base, b, e=None: (old.clone(), 0.0))
    _, n, stats = module(**GRPOBatch(**batch))
    w = seen["tis_weights"]
    assert torch.allclose(w[0, :2], torch.tensor([1.5, 0.36788]), atol=1e-5)  # min(e^0.5, 1.5), e^-1
    assert abs(stats["logp_gap"] / int(n) - (0.5 + 1.0) / 2) < 1e-6 and module.gap_max == 1.0


def test_no_vllm_environment_is_one_line_with_the_install_command(tmp_path):
    cmd = [sys.executable, "-m", "mmpost", "train", os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"),
           "rollout.generator=vllm", "rollout.vllm.python=/nonexistent/python", "train.max_steps=1",
           "--output-dir", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(OMP_NUM_THREADS="1"), cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "mmpost vllm-setup" in r.stderr and "/nonexistent/python" in r.stderr
