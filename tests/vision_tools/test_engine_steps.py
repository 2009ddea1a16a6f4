"""The engine's step-wise entry (the server's continuous batching), caller stop strings and
per-row cancellation, against the engine's own one-call ``run``."""

import pytest

from tests.conftest import solid
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import Context, Sampling, ScriptedGenerator, make_generator

GREEDY = {"max_turns": 3, "max_turn_tokens": 6, "max_resamples": 0}


def prompt(i: int) -> list[dict]:
    return build_prompt(solid(56 + 28 * i, 84), f"How many shapes in {i}?")


def test_a_conversation_joining_mid_run_gets_the_trajectory_it_gets_alone(tiny):
    """Continuous batching: B starts after A has taken a turn, and C after B; stepped together
    (greedy), each ends exactly as it does run alone."""
    model, processor = tiny
    engine = ToolEngine(model, processor, config=EngineConfig(**GREEDY))
    alone = [engine.run([prompt(i)])[0] for i in range(3)]
    running = engine.start([prompt(0)], keys=[10])
    engine.step(running)
    running += engine.start([prompt(1)], keys=[11])
    engine.step(running)
    running += engine.start([prompt(2)], keys=[12])
    while engine.step(running):
        pass
    for conv, ref in zip(running, alone):
        got = engine.trajectory(conv)
        assert got.input_ids.tolist() == ref.input_ids.tolist()
        assert [t.text for t in got.turns] == [t.text for t in ref.turns]
        assert got.finish_reason == ref.finish_reason


def test_a_caller_stop_string_ends_the_conversation_without_resampling(tiny):
    model, processor = tiny
    turns = ["<think>I see STOP here</think><answer>3</answer>", "<think>never</think><answer>4</answer>"]
    cfg = EngineConfig(max_turns=4, max_resamples=4, stop=["STOP"])
    traj = ToolEngine(model, processor, config=cfg, generator=ScriptedGenerator(processor, [turns])).run(
        [prompt(0)]
    )[0]
    assert traj.finish_reason == "stop" and traj.answer is None
    assert [t.attempts for t in traj.turns] == [1]  # not resampled, and no second turn
    bad = ["<think>no tags STOP", "<think>x</think><answer>1</answer>"]  # a violation that stops
    traj = ToolEngine(model, processor, config=cfg, generator=ScriptedGenerator(processor, [bad])).run(
        [prompt(0)]
    )[0]
    assert traj.finish_reason == "stop" and [t.attempts for t in traj.turns] == [1]


@pytest.mark.parametrize("kind", ["hf", "cached"])
def test_generation_stops_a_cancelled_row_at_once_and_leaves_the_others(tiny, kind):
    model, processor = tiny
    gen = make_generator(kind, model, processor)
    engine = ToolEngine(model, processor, config=EngineConfig(**GREEDY))
    a, b = (c.context() for c in engine.start([prompt(0), prompt(1)], keys=[1, 2]))
    full = gen.generate([a, b], [12, 12], Sampling())
    gen.cancelled = lambda key: key == 2
    cut = gen.generate([a, b], [12, 12], Sampling())
    assert cut[0] == full[0]  # the other row is untouched
    # one decoding step, then stopped (a finished row is padded; the pad is an end-of-turn token)
    assert cut[1][0] == full[1][0] and cut[1][1:] in ([], [gen.pad_id]) and len(full[1]) > 2
    gen.cancelled = lambda key: True
    assert [len(r) for r in gen.generate([a, b], [12, 12], Sampling())] == [1, 1]


@pytest.mark.parametrize("kind", ["hf", "cached"])
def test_a_caller_stop_string_stops_generation(tiny, kind):
    model, processor = tiny
    gen = make_generator(kind, model, processor)
    ctx = ToolEngine(model, processor, config=EngineConfig(**GREEDY)).start([prompt(0)])[0].context()
    assert isinstance(ctx, Context)
    full = gen.generate([ctx], [16], Sampling())[0]
    text = processor.tokenizer.decode(full)
    stop = text[4:6]
    cut = gen.generate([ctx], [16], Sampling(stop=(stop,)))[0]
    assert cut == full[: len(cut)] and stop in processor.tokenizer.decode(cut)
    assert stop not in processor.tokenizer.decode(cut[:-1])  # it ends on the token that completed it
