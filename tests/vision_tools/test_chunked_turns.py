"""Turns generated in steps (``CachedGenerator.generate(..., steps=k)``, ``ToolEngine.advance``:
the server's rounds) against whole turns: the same greedy ids, no re-prefill of a resumed turn,
stop strings across a cut, and a short conversation that does not wait for a long turn."""

import torch

from tests.conftest import solid
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import STOP_STRINGS, Context, Sampling, turn_over
from vision_tools.generation.cached import CachedGenerator


def prompt(i: int) -> list[dict]:
    return build_prompt(solid(56 + 28 * i, 84), f"How many shapes in {i}?")


def fresh(c: Context) -> Context:
    return Context(c.input_ids, c.types, c.pixel_values, c.grids, c.key, session={})


def resumed(c: Context, part: list[int]) -> Context:
    """``c`` with its turn so far appended, as the engine hands it back."""
    return Context(c.input_ids + part, c.types + [0] * len(part), c.pixel_values, c.grids, c.key,
                   session=c.session, resumed=len(part))  # fmt: skip


def in_steps(gen, ctxs: list[Context], limits: list[int], steps: int) -> list[list[int]]:
    """Call ``gen`` with ``steps`` until every row's turn is over."""
    sampling, done = Sampling(), {}
    parts = {i: [] for i in range(len(ctxs))}
    while len(done) < len(ctxs):
        rows = [i for i in parts if i not in done]
        outs = gen.generate(
            [resumed(ctxs[i], parts[i]) for i in rows], [limits[i] for i in rows], sampling, steps
        )
        for i, out in zip(rows, outs):
            assert out[: len(parts[i])] == parts[i]  # a call returns the whole turn so far
            assert 1 <= len(out) - len(parts[i]) <= steps
            if turn_over(gen.tok, out, limits[i], STOP_STRINGS + sampling.stop, gen.end_ids):
                done[i] = out
            parts[i] = out
    return [done[i] for i in range(len(ctxs))]


def stop_after(tok, ids: list[int], at_least: int) -> tuple[int, str]:
    """(j, a 2-character stop string that token j + 1 of ``ids`` completes), j >= at_least."""
    for j in range(at_least, len(ids) - 1):
        head, more = tok.decode(ids[:j]), tok.decode(ids[: j + 1])
        stop = more[len(head) - 1 : len(head) + 1]
        if more.startswith(head) and len(stop) == 2 and stop not in head and "\ufffd" not in stop:
            return j, stop
    raise AssertionError("no such stop string in these ids")


def test_a_turn_in_steps_equals_the_whole_turn_and_prefills_one_token_per_resumed_row(tiny):
    model, processor = tiny
    engine = ToolEngine(model, processor, config=EngineConfig(max_turns=1))
    ctxs = [c.context() for c in engine.start([prompt(i) for i in range(3)])]
    gen = CachedGenerator(model, processor)
    limits = [17, 9, 12]
    whole = gen.generate([fresh(c) for c in ctxs], limits, Sampling())
    assert [len(w) for w in whole] == limits  # the tiny model does not end these turns early

    lengths = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: lengths.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        cut = in_steps(gen, [fresh(c) for c in ctxs], limits, steps=4)
    finally:
        hook.remove()
    assert cut == whole
    assert lengths[0][1] > 50  # the first call prefills the prompts
    assert all(shape[1] == 1 for shape in lengths[1:])  # later calls run the last token only


def test_a_stop_string_across_a_cut_ends_the_turn_where_the_whole_turn_ends(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    ctx = ToolEngine(model, processor, config=EngineConfig(max_turns=1)).start([prompt(0)])[0].context()
    gen = CachedGenerator(model, processor)
    full = gen.generate([fresh(ctx)], [16], Sampling())[0]
    j, stop = stop_after(tok, full, 3)
    whole = gen.generate([fresh(ctx)], [16], Sampling(stop=(stop,)))[0]
    assert whole == full[: j + 1]
    first = gen.generate([fresh(ctx)], [16], Sampling(stop=(stop,)), steps=j)[0]
    assert first == full[:j]  # cut before the stop string completed
    c = resumed(fresh(ctx), first)
    c.session = {}  # nothing kept: the resumed call prefills the whole context and still agrees
    assert gen.generate([c], [16], Sampling(stop=(stop,)), steps=4)[0] == whole


def test_conversations_advanced_in_steps_end_as_with_whole_turns(tiny):
    """Joining at different rounds, several turns each, cut every 3 tokens: the same
    trajectories as each conversation run alone with whole turns."""
    model, processor = tiny
    cfg = EngineConfig(max_turns=3, max_turn_tokens=10, max_resamples=0, generator="cached")
    engine = ToolEngine(model, processor, config=cfg)
    alone = [engine.run([prompt(i)])[0] for i in range(3)]
    running = engine.start([prompt(0)], keys=[10])
    engine.advance(running, 3)
    running += engine.start([prompt(1)], keys=[11])
    engine.advance(running, 3)
    engine.advance(running, 3)
    running += engine.start([prompt(2)], keys=[12])
    rounds = 3
    while engine.advance(running, 3):
        rounds += 1
    for conv, ref in zip(running, alone):
        got = engine.trajectory(conv)
        assert got.input_ids.tolist() == ref.input_ids.tolist()
        assert got.generated.tolist() == ref.generated.tolist()
        assert [t.text for t in got.turns] == [t.text for t in ref.turns]
        assert got.finish_reason == ref.finish_reason
    assert rounds > 3 * 3  # turns really were cut: 3 turns of up to 10 tokens take 4 rounds each


def test_a_short_conversation_does_not_wait_for_a_long_turn(tiny):
    """Two engines (as the server's request groups) share one generator: a 2-turn x 4-token
    conversation that joins while a 60-token turn runs is done long before that turn ends."""
    model, processor = tiny
    gen = CachedGenerator(model, processor)
    long = ToolEngine(
        model, processor, config=EngineConfig(max_turns=1, max_turn_tokens=60, max_resamples=0), generator=gen
    )
    short = ToolEngine(
        model, processor, config=EngineConfig(max_turns=2, max_turn_tokens=4, max_resamples=0), generator=gen
    )
    ref_long, ref_short = long.run([prompt(0)])[0], short.run([prompt(1)])[0]
    assert ref_long.generated_tokens == 60 and len(ref_short.turns) == 2  # the premise
    a = long.start([prompt(0)], keys=[1])
    long.advance(a, 8)
    b = short.start([prompt(1)], keys=[2])
    rounds = 0
    while b[0].finish is None:
        long.advance(a, 8), short.advance(b, 8)
        rounds += 1
    assert rounds == 2 and a[0].finish is None and len(a[0].partial) == 24
    while long.advance(a, 8):
        pass
    for conv, engine, ref in ((a[0], long, ref_long), (b[0], short, ref_short)):
        assert engine.trajectory(conv).input_ids.tolist() == ref.input_ids.tolist()
    torch.testing.assert_close(long.trajectory(a[0]).generated.sum(), torch.tensor(60))


def test_pause_decides_when_a_call_made_with_steps_ends(tiny):
    """``pause(rows done, rows)`` is asked from the ``steps``-th token on: here a call goes on
    until one row's turn ended, and the unfinished row comes back cut there."""
    model, processor = tiny
    engine = ToolEngine(model, processor, config=EngineConfig(max_turns=1))
    ctxs = [c.context() for c in engine.start([prompt(0), prompt(1)])]
    gen = CachedGenerator(model, processor)
    whole = gen.generate([fresh(c) for c in ctxs], [5, 12], Sampling())
    assert [len(w) for w in whole] == [5, 12]
    asked = []
    gen.pause = lambda done, rows: asked.append((done, rows)) or done >= 1
    cut = gen.generate([fresh(c) for c in ctxs], [5, 12], Sampling(), steps=2)
    assert cut == [whole[0], whole[1][:5]]
    assert asked == [(0, 2), (0, 2), (0, 2), (1, 2)]  # from the 2nd token to the 5th


def test_rows_of_one_call_may_sample_differently(tiny):
    """A server's rows at different attempts share a call: each row keeps its own sampling
    (top-k 1 samples the greedy token) and its own stop strings."""
    model, processor = tiny
    tok = processor.tokenizer
    engine = ToolEngine(model, processor, config=EngineConfig(max_turns=1))
    ctxs = [c.context() for c in engine.start([prompt(0), prompt(1)])]
    gen = CachedGenerator(model, processor)
    whole = gen.generate([fresh(c) for c in ctxs], [10, 10], Sampling())
    j, stop = stop_after(tok, whole[1], 1)
    assert stop in tok.decode(whole[0][: j + 1])  # the rows agree: only row 1 stops at it
    rows = [Sampling(), Sampling(do_sample=True, temperature=0.7, top_k=1, stop=(stop,))]
    got = gen.generate([fresh(c) for c in ctxs], [10, 10], rows)
    assert got == [whole[0], whole[1][: j + 1]]
