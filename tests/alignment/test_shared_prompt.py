"""Shared-prompt rows: the log-probs of G rollouts scored with their prompt once equal the
padded rows' (the model run on each trajectory in its own row)."""

import os

import torch

from alignment.grpo import sequence_logprobs
from alignment.metrics import read_metrics
from alignment.shared_prompt import group_rows, shared_prompt_batch
from alignment.train import train
from mm.collate import pad_batch
from tests.alignment.conftest import ROOT
from tests.conftest import solid
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import ScriptedGenerator

CROP = '<think>look</think><tool_call>{{"name": "crop_image", "arguments": {{"bbox_2d": [0, 0, {s}, {s}], "image_index": 0}}}}</tool_call>'


def rollouts(tiny):
    """Two prompts (images of different sizes), three rollouts each: a plain answer, one crop
    then an answer, two crops then an answer (tool-result images inside the completions)."""
    model, processor = tiny
    turns = []
    for _ in range(2):
        turns += [
            ["<think>a</think><answer>1</answer>"],
            [CROP.format(s=56), "<think>b</think><answer>22</answer>"],
            [CROP.format(s=84), CROP.format(s=28), "<answer>333</answer>"],
        ]
    engine = ToolEngine(
        model, processor, config=EngineConfig(), generator=ScriptedGenerator(processor, turns)
    )
    prompts = [build_prompt(solid(112, 112), "How many?")] * 3 + [build_prompt(solid(168, 140), "Which?")] * 3
    trajs = engine.run(prompts)
    assert [len(t.turns) for t in trajs] == [1, 2, 3] * 2
    return [t.encoded(engine.encoder.rope) for t in trajs], [t.prompt_length for t in trajs]


def test_shared_rows_give_the_padded_log_probs(tiny):
    model, processor = tiny
    samples, plens = rollouts(tiny)
    pad = processor.tokenizer.pad_token_id
    padded = pad_batch(samples, pad)
    shared = shared_prompt_batch(samples, plens, pad)
    assert shared["input_ids"].shape[0] == 2  # one row per prompt
    # each prompt and its image once: fewer tokens and patches than the padded rows
    n_tokens = sum(len(s) for s in samples)
    assert shared["input_ids"].shape[1] < n_tokens / 2 - plens[0]
    assert shared["pixel_values"].shape[0] < padded["pixel_values"].shape[0]
    with torch.no_grad():
        labels = padded.pop("labels")
        padded.pop("mm_token_type_ids")
        want, ent_want = sequence_logprobs(model, labels, padded)
        inputs = {k: v for k, v in shared.items() if k not in ("labels", "mm_token_type_ids")}
        got, ent_got = sequence_logprobs(model, shared["labels"], inputs)
    mask = labels[:, 1:] != -100
    assert got.shape == want.shape and bool((got[~mask] == 0).all())
    assert (got - want).abs().max() < 2e-5, (got - want).abs().max()
    assert abs(float(ent_got) - float(ent_want)) < 1e-4
    assert int(mask.sum()) == shared["tree_tgt"].numel()


def test_rows_share_only_identical_prompts(tiny):
    samples, plens = rollouts(tiny)
    assert group_rows(samples, plens) == [[0, 1, 2], [3, 4, 5]]
    # the same prompts interleaved: no two neighbours share, so one row each
    order = [0, 3, 1, 4]
    assert group_rows([samples[i] for i in order], [plens[i] for i in order]) == [[0], [1], [2], [3]]


def test_grpo_with_shared_prompts_runs_like_padded_rows(tmp_path):
    """The quickstart task (8 rollouts per prompt), mu = 2 so the stored old log-probs and the
    ratio come from the same layout: identical rewards, and losses / ratios / entropies equal."""
    cfg = os.path.join(ROOT, "configs", "quickstart", "grpo.yaml")
    base = ["train.export=false", "train.max_steps=4", "loss.mu=2"]
    runs = {}
    for share in (True, False):
        out = str(tmp_path / f"share{share}")
        train(cfg, [*base, f"data.share_prompt={str(share).lower()}"], output_dir=out)
        runs[share] = read_metrics(out)
    assert any(abs(r["m_ratio"] - 1) > 1e-4 for r in runs[False])
    for a, b in zip(runs[True], runs[False]):
        assert a["reward_mean"] == b["reward_mean"]
        for k in ("loss", "m_ratio", "m_entropy", "m_clip_fraction"):
            assert abs(a[k] - b[k]) < 1e-5, (k, a[k], b[k])
