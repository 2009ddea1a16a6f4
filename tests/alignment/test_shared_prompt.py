"""Shared-prompt rows: the log-probs of G rollouts scored with their prompt once equal the
padded rows' (the model run on each trajectory in its own row), for both model families."""

import os

import pytest
import torch

from alignment.grpo import GRPOBatch, sequence_logprobs
from alignment.grpo.shared_prompt import group_rows, shared_prompt_batch, worth_sharing
from alignment.infra.metrics import read_metrics
from alignment.train import train
from mm.collate import pad_batch
from mm.models import family_of
from tests.alignment.conftest import ROOT
from tests.conftest import solid
from tests.testing_utils import require_deepspeed
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import ScriptedGenerator

CROP = '<think>look</think><tool_call>{{"name": "crop_image", "arguments": {{"bbox_2d": [0, 0, {s}, {s}], "image_index": 0}}}}</tool_call>'


def rollouts(tiny):
    """Two prompts with the same text and image size but different images (so the same token
    ids), three rollouts each: a plain answer, one crop then an answer, two crops then an answer
    (tool-result images inside the completions; sizes in the family's tokens: 28 or 32 px)."""
    model, processor = tiny
    f = family_of(model.config).factor
    turns = []
    for _ in range(2):
        turns += [
            ["<think>a</think><answer>1</answer>"],
            [CROP.format(s=2 * f), "<think>b</think><answer>22</answer>"],
            [CROP.format(s=3 * f), CROP.format(s=f), "<answer>333</answer>"],
        ]
    engine = ToolEngine(
        model, processor, config=EngineConfig(), generator=ScriptedGenerator(processor, turns)
    )
    prompts = [build_prompt(solid(4 * f, 4 * f), "How many?")] * 3
    prompts += [build_prompt(solid(4 * f, 4 * f, (20, 60, 220)), "How many?")] * 3
    trajs = engine.run(prompts)
    assert [len(t.turns) for t in trajs] == [1, 2, 3] * 2
    P = trajs[0].prompt_length
    assert torch.equal(trajs[0].input_ids[:P], trajs[3].input_ids[:P])  # only the pixels differ
    return [t.encoded(engine.encoder.rope) for t in trajs], [t.prompt_length for t in trajs]


GROUPS = [0, 0, 0, 1, 1, 1]


def test_shared_rows_give_the_padded_log_probs(family_model):
    model, processor = family_model
    samples, plens = rollouts(family_model)
    pad = processor.tokenizer.pad_token_id
    padded = pad_batch(samples, pad)
    shared = shared_prompt_batch(samples, plens, GROUPS, pad)
    assert shared["input_ids"].shape[0] == 2  # one row per group
    assert int(shared["seq_ids"].max()) + 1 == 6 and int((shared["seq_ids"] >= 0).sum()) < n_tokens(samples)
    # each prompt and its image once: fewer tokens and patches than the padded rows
    assert shared["input_ids"].shape[1] < n_tokens(samples) / 2 - plens[0]
    assert shared["pixel_values"].shape[0] < padded["pixel_values"].shape[0]
    with torch.no_grad():
        labels = padded["labels"]
        no_advantages = torch.zeros(len(samples))
        want, ent_want = sequence_logprobs(model, GRPOBatch(**padded, advantages=no_advantages))
        got, ent_got = sequence_logprobs(model, GRPOBatch(**shared, advantages=no_advantages))
    mask = labels[:, 1:] != -100
    assert got.shape == want.shape and bool((got[~mask] == 0).all())
    assert (got - want).abs().max() < 2e-5, (got - want).abs().max()
    assert abs(float(ent_got) - float(ent_want)) < 1e-4
    assert int(mask.sum()) == shared["tree_tgt"].numel()


def n_tokens(samples):
    return sum(len(s) for s in samples)


def test_rows_follow_the_rollout_groups(tiny):
    assert group_rows(GROUPS) == [[0, 1, 2], [3, 4, 5]]
    assert group_rows([0, 1, 0, 1]) == [[0], [1], [2], [3]]  # a group's samples must be neighbours
    samples, plens = rollouts(tiny)
    with pytest.raises(ValueError, match="its prompt differs"):  # ids of another prompt in a group
        other = [samples[0], samples[1]]
        other[1] = type(other[1])(**{**vars(other[1]), "input_ids": other[1].input_ids.flip(0)})
        shared_prompt_batch(other, plens[:2], [0, 0], 0)


def test_worth_sharing_compares_the_two_layouts_costs():
    # 8 completions of 10 tokens after a 90-token prompt: padded 8 rows x 100, shared 1 row x 170
    lengths, plens, groups = [100] * 8, [90] * 8, [0] * 8
    assert worth_sharing(lengths, plens, groups, pair_cost=0.0)  # tokens only: 170 < 800
    # cost per pair 0.01: padded 8 * (100 + 100) = 1600, shared 170 + 289 = 459
    assert worth_sharing(lengths, plens, groups, pair_cost=0.01)
    # long completions, a short prompt: padded 8 * (1010 + 0.01 * 1010^2), shared 8010 + 0.01 * 8010^2
    assert not worth_sharing([1010] * 8, [10] * 8, groups, pair_cost=0.01)


@require_deepspeed
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
