"""Sampled tokens' log-probs (``EngineConfig.logprobs`` -> ``TurnIds.logprobs`` -> ``TurnRecord.logprobs``)
against the trainer's: ``mm.logprobs`` over one forward of the finished trajectory, for sampled
multi-turn rollouts (resampled attempts, shared prefills, turns resumed across calls), with each
decoding backend."""

import pytest
import torch

from mm.config import ConfigError
from mm.logprobs import labelled_logprobs
from mm.rope import RopeSpec
from tests.conftest import solid
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import ScriptedGenerator

TOL = 1e-4


def prompts(n: int, copies: int) -> list[list[dict]]:
    sizes = [(56, 84), (84, 56), (112, 56)]
    return [
        build_prompt(solid(*sizes[i % 3], (30 * i, 90, 40)), f"How many shapes in {i}?")
        for i in range(n)
        for _ in range(copies)
    ]


def trainer_logprobs(model, traj) -> torch.Tensor:
    """The log-probs the trainer gives the trajectory's generated tokens: one forward of its ids,
    ``mm.logprobs.labelled_logprobs`` at the labelled (generated) positions, in order."""
    sample = traj.encoded(RopeSpec.from_config(model.config))
    with torch.no_grad():
        logits = model(**sample.model_inputs()).logits  # [1, L, V]
    return labelled_logprobs(logits, None, sample.labels[None]).values


SAMPLED = dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, seed=0)


@pytest.mark.parametrize("kind", ["cached", "hf"])
def test_sampled_rollouts_log_probs_equal_the_trainers(tiny, kind):
    """Temperature 0.7, top-k 5, top-p 0.9, a resample per violating turn: each token's log-prob is
    still the model's own distribution (temperature 1, nothing cut), as the trainer scores it."""
    model, processor = tiny
    cfg = EngineConfig(
        max_turns=3, max_turn_tokens=10, max_resamples=1, logprobs=True, generator=kind, **SAMPLED
    )
    trajs = ToolEngine(model, processor, config=cfg).run(prompts(2, 3))
    worst = 0.0
    for t in trajs:
        got = torch.tensor(t.logprobs)
        assert len(got) == t.generated_tokens and all(
            len(r.logprobs) == r.span[1] - r.span[0] for r in t.turns
        )
        worst = max(worst, float((got - trainer_logprobs(model, t)).abs().max()))
    assert worst < TOL, worst
    assert any(r.attempts > 1 for t in trajs for r in t.turns)  # committed resampled attempts are covered
    assert sum(len(t.turns) for t in trajs) > len(trajs)  # and turns after a tool result


def test_turns_resumed_across_calls_keep_their_log_probs(tiny):
    """The server's rounds (``advance``, 3 tokens a call): a turn cut and resumed hands back the
    log-probs of all its ids, equal to whole turns' (greedy) and to the trainer's."""
    model, processor = tiny
    cfg = EngineConfig(max_turns=2, max_turn_tokens=12, max_resamples=0, logprobs=True)
    engine = ToolEngine(model, processor, config=cfg)
    whole = engine.run(prompts(3, 1))
    convs = engine.start(prompts(3, 1))
    while engine.advance(convs, 3):
        pass
    for conv, ref in zip(convs, whole):
        t = engine.trajectory(conv)
        assert t.input_ids.tolist() == ref.input_ids.tolist()
        assert torch.allclose(torch.tensor(t.logprobs), torch.tensor(ref.logprobs), atol=1e-5)
        assert float((torch.tensor(t.logprobs) - trainer_logprobs(model, t)).abs().max()) < TOL
    assert max(r.span[1] - r.span[0] for c in convs for r in c.turns) > 3  # turns were cut


def test_rollouts_that_do_not_ask_compute_no_log_probs(tiny, monkeypatch):
    model, processor = tiny

    def refuse(*args):
        raise AssertionError("log-probs computed without being asked for")

    monkeypatch.setattr("vision_tools.generation.cached.sampled_logprobs", refuse)
    cfg = EngineConfig(max_turns=2, max_turn_tokens=6, max_resamples=0)
    (t,) = ToolEngine(model, processor, config=cfg).run(prompts(1, 1))
    assert t.logprobs is None and all(r.logprobs is None for r in t.turns)


def test_a_generator_without_log_probs_is_refused(tiny):
    model, processor = tiny
    scripted = ScriptedGenerator(processor, [["<answer>1</answer>"]])
    with pytest.raises(ConfigError, match="ScriptedGenerator generator does not return log-probs"):
        ToolEngine(model, processor, config=EngineConfig(logprobs=True), generator=scripted)
