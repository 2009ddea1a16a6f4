"""A turn caught in a repetition loop ends early (``EngineConfig.cut_loops``, the server's
default): only once the loop makes the whole turn a ``repetition`` violation whatever follows,
so the verdict is the uncut turn's; greedy, the cut turn is a prefix of the uncut one."""

import random

from tests.conftest import solid
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.protocol import find_repetition, in_a_loop, parse_turn
from vision_tools.serve_config import ServeConfig

VARIED = " ".join(f"step {i}: add {i} to the total, which gives {i * (i + 1) // 2}." for i in range(60))


def test_a_loop_is_found_once_certain_and_every_continuation_keeps_the_verdict(tiny):
    tok = tiny[1].tokenizer
    rng = random.Random(0)
    vocab = [t for t in range(len(tok)) if t < 600]
    for unit in ("the cat sat on the mat ", "7, 7, 8, ", "ab", "Question 7 Question 8 "):
        ids = tok("<think>Let me look. " + unit * 60, add_special_tokens=False)["input_ids"]
        k = next(k for k in range(1, len(ids) + 1) if in_a_loop(tok, ids[:k]))
        assert k <= 96 < len(ids)  # found within a few cycles, long before the loop ends
        assert k % 16 == 0 and not any(in_a_loop(tok, ids[:j]) for j in range(k))
        for _ in range(20):  # whatever the model writes next, the turn is a repetition
            more = [rng.choice(vocab) for _ in range(rng.randint(0, 40))]
            assert parse_turn(tok.decode(ids[:k] + more)).code == "repetition"


def test_a_character_still_being_written_is_not_part_of_a_loop(tiny):
    """50 bytes that open a 3-byte character decode to 50 U+FFFD, which looks like a character
    loop; the next two bytes make them 49 U+FFFD and one character, which is not one."""
    tok = tiny[1].tokenizer
    zh = tok("中", add_special_tokens=False)["input_ids"]
    assert len(zh) == 3  # byte by byte
    heads = (
        tok("<think>Look" + " at it" * j + ". ", add_special_tokens=False)["input_ids"] for j in range(20)
    )
    head = next(h for h in heads if len(h) >= 14)[:14]  # 14 tokens + 50 bytes: a check at 64
    ids = head + zh[:1] * 50
    assert tok.decode(ids).endswith("\ufffd" * 50) and not in_a_loop(tok, ids)
    assert parse_turn(tok.decode(ids + zh[1:])).code != "repetition"


def test_tokens_that_repeat_are_cut_only_if_the_text_is_a_loop(tiny):
    tok = tiny[1].tokenizer  # a 36-character unit without spaces: periodic tokens, no loop by the rule
    ids = tok("<think>Let me look. " + "abcdefghijklmnopqrstuvwxyz0123456789" * 12, add_special_tokens=False)
    ids = ids["input_ids"]
    assert find_repetition(tok.decode(ids)) is None
    assert not any(in_a_loop(tok, ids[:k]) for k in range(1, len(ids) + 1))


def test_varied_text_is_never_cut(tiny):
    tok = tiny[1].tokenizer
    ids = tok("<think>" + VARIED + "</think><answer>1830</answer>", add_special_tokens=False)["input_ids"]
    assert find_repetition(tok.decode(ids)) is None
    assert not any(in_a_loop(tok, ids[:k]) for k in range(1, len(ids) + 1))


def test_the_engine_cuts_a_looping_greedy_turn_to_a_prefix_with_the_same_verdict(tiny):
    model, processor = tiny
    prompts = [build_prompt(solid(56 + 28 * i, 84), f"How many shapes in {i}?") for i in range(3)]
    runs = {}
    for cut in (False, True):  # the random tiny model's greedy turns loop until their limit
        cfg = EngineConfig(
            max_turns=2, max_turn_tokens=512, max_resamples=0, generator="cached", cut_loops=cut
        )
        engine = ToolEngine(model, processor, config=cfg)
        convs = engine.start(prompts)
        while engine.step(convs):
            pass
        runs[cut] = [engine.trajectory(c) for c in convs]
    cuts = 0
    for whole, short in zip(runs[False], runs[True]):
        a, b = whole.turns[0], short.turns[0]
        ids_a = whole.input_ids[a.span[0] : a.span[1]].tolist()
        ids_b = short.input_ids[b.span[0] : b.span[1]].tolist()
        assert ids_a[: len(ids_b)] == ids_b and getattr(a.parsed, "code", "ok") == getattr(
            b.parsed, "code", "ok"
        )
        cuts += len(ids_b) < len(ids_a)
        if len(ids_b) < len(ids_a):
            assert a.parsed.code == "repetition" and len(ids_a) == 512
    assert cuts >= 2
    gen_a = sum(t.generated_tokens for t in runs[False])
    gen_b = sum(t.generated_tokens for t in runs[True])
    assert gen_b < gen_a / 2


def test_rounds_of_tokens_cut_where_whole_turns_do(tiny):
    model, processor = tiny
    prompts = [build_prompt(solid(56 + 28 * i, 84), f"How many shapes in {i}?") for i in range(3)]
    out = {}
    for steps in (None, 24):  # greedy: the server's rounds of tokens end each turn where a whole turn ends
        cfg = EngineConfig(
            max_turns=3, max_turn_tokens=512, max_resamples=0, generator="cached", cut_loops=True
        )
        engine = ToolEngine(model, processor, config=cfg)
        convs = engine.start(prompts)
        while engine.step(convs) if steps is None else engine.advance(convs, steps):
            pass
        trajs = [engine.trajectory(c) for c in convs]
        turns = [(t.span[1] - t.span[0], getattr(t.parsed, "code", "ok")) for tr in trajs for t in tr.turns]
        out[steps] = [tr.input_ids.tolist() for tr in trajs], turns
    assert out[None] == out[24]
    assert any(n < 512 and code == "repetition" for n, code in out[24][1])


def test_the_server_cuts_loops_and_training_rollouts_do_not():
    assert ServeConfig().engine.cut_loops and ServeConfig().base_engine().cut_loops
    assert not EngineConfig().cut_loops
