"""GRPO end to end on the tiny model: log-probs, rollout masks, and learning a verifiable task.
Log-probs and masks run once per model family (``family_model``), and GRPO with the tool loop
(rollout.tools, two turns, the cached generator) trains on tiny and tiny-qwen3vl, its scored
log-probs equal to a forward of each trajectory alone."""

import os

import pytest
import torch

from alignment.grpo import GRPOModule
from alignment.grpo.config import GRPOConfig
from alignment.infra.metrics import read_metrics
from alignment.train import train
from mm.collate import pad_batch
from mm.encode import IGNORE
from mm.logprobs import labelled_logprobs
from mm.models import family_of
from tests.alignment.conftest import ROOT
from tests.conftest import solid
from tests.testing_utils import require_deepspeed
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import ScriptedGenerator

CROP = '<think>look</think><tool_call>{{"name": "crop_image", "arguments": {{"bbox_2d": [0, 0, {s}, {s}], "image_index": 0}}}}</tool_call>'


def scripted_trajectory(tiny):
    """A crop of 2 x 2 tokens (56 px for Qwen2.5-VL, 64 for Qwen3-VL) of a 4 x 4-token image."""
    model, processor = tiny
    f = family_of(model.config).factor
    turns = [CROP.format(s=2 * f), "<think>three</think><answer>3</answer>"]
    engine = ToolEngine(
        model, processor, config=EngineConfig(), generator=ScriptedGenerator(processor, [turns])
    )
    return engine.run([build_prompt(solid(4 * f, 4 * f), "How many?")])[0]


def test_rollout_labels_cover_generated_tokens_only(family_model):
    traj = scripted_trajectory(family_model)
    enc = traj.encoded()
    trained = enc.labels != IGNORE
    assert torch.equal(trained, traj.generated)
    tok = family_model[1].tokenizer
    # the tool-result turn (its image pads and "Image 1: ..." text) is never trained
    result_start = traj.turns[0].span[1]
    result_end = traj.turns[1].span[0]
    assert not trained[result_start:result_end].any()
    assert "Image 1:" in tok.decode(enc.input_ids[result_start:result_end])
    assert (enc.mm_token_type_ids[result_start:result_end] == 1).sum() == 4  # the 2 x 2-token crop


def test_token_logprobs_match_a_full_log_softmax(family_model):
    model, processor = family_model
    traj = scripted_trajectory(family_model)
    batch = pad_batch([traj.encoded(), traj.encoded()], processor.tokenizer.pad_token_id)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "mm_token_type_ids")}
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
        lp = labelled_logprobs(hidden, model.lm_head, batch["labels"], entropy=True)
        logp, entropy = lp.dense(), lp.mean_entropy()
        full = torch.log_softmax(model(**inputs).logits[:, :-1].float(), -1)  # the slow way
    tgt = batch["labels"][:, 1:]
    valid = tgt != IGNORE
    want = full.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(logp[valid], want[valid], atol=1e-5) and (logp[~valid] == 0).all()
    ent = -(full.exp() * full).sum(-1)[valid].mean()
    torch.testing.assert_close(entropy, ent, atol=1e-4, rtol=1e-4)


def test_module_returns_the_loss_times_its_denominator(family_model):
    model, processor = family_model
    traj = scripted_trajectory(family_model)
    batch = pad_batch([traj.encoded()] * 2, processor.tokenizer.pad_token_id)
    batch["advantages"] = torch.tensor([1.0, -0.5])
    for aggregation in ("token_mean", "sequence_mean"):
        cfg = GRPOConfig()
        cfg.loss.aggregation = aggregation
        total, units, stats = GRPOModule(model, cfg)(**batch)
        n_tok = int((batch["labels"][:, 1:] != IGNORE).sum())
        assert int(units) == (n_tok if aggregation == "token_mean" else 2)
        # ratio 1 (mu = 1): per-token loss is -A, so the sum is -(sum of A over units)
        per_seq = n_tok // 2
        want = -(1.0 - 0.5) * (per_seq if aggregation == "token_mean" else 1)
        assert abs(total.item() - want) < 1e-5
        assert stats["clip_fraction"] == 0.0


@require_deepspeed
def test_quickstart_grpo_raises_the_reward(tmp_path):
    """The letter-spotting task: a random tiny model writes an x ~20% of the time. Seeded, the
    mean reward of the last 5 of 32 steps was 0.99 against 0.19 for the first 5 (measured);
    asking for +0.3 leaves room for platform noise while no-learning could not pass."""
    out = str(tmp_path / "grpo")
    summary = train(
        os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"), ["train.export=false"], output_dir=out
    )
    rows = read_metrics(out)
    assert summary["steps"] == len(rows) == 32
    first = sum(r["reward_mean"] for r in rows[:5]) / 5
    last = sum(r["reward_mean"] for r in rows[-5:]) / 5
    assert last >= first + 0.3, (first, last)
    assert {"reward_std", "reward/contains_answer", "response_length", "generation_s", "m_entropy"} <= set(
        rows[-1]
    )


@require_deepspeed
def test_mu_reuses_rollouts_with_stored_old_logprobs(tmp_path):
    """mu = 2: each rollout batch serves two steps; the first sees ratio 1 (old == current policy),
    the second the ratio after one update."""
    out = str(tmp_path / "mu")
    over = ["train.export=false", "train.max_steps=4", "loss.mu=2"]
    train(os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"), over, output_dir=out)
    rows = read_metrics(out)
    assert [round(r["m_ratio"], 6) for r in rows[0::2]] == [1.0, 1.0]
    assert all(abs(r["m_ratio"] - 1) > 1e-4 for r in rows[1::2])
    assert rows[0]["reward_mean"] == rows[1]["reward_mean"]  # the same rollouts, twice


@require_deepspeed
def test_resume_continues_the_same_run(tmp_path):
    """4 steps straight == 2 steps, stop, resume to 4: optimizer, schedule and sampling RNG restored."""
    cfg = os.path.join(ROOT, "configs", "quickstart", "grpo.yaml")
    base = ["train.export=false", "train.save_every=2"]
    straight = str(tmp_path / "straight")
    train(cfg, [*base, "train.max_steps=4"], output_dir=straight)
    split = str(tmp_path / "split")
    train(cfg, [*base, "train.max_steps=2"], output_dir=split)
    train(cfg, [*base, "train.max_steps=4"], output_dir=split)  # resume="auto" picks up step 2
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x["reward_mean"] == y["reward_mean"]
        # entropy of the policy at each step: equal only if the parameters (so the optimizer) match
        assert abs(x["loss"] - y["loss"]) < 1e-6 and abs(x["m_entropy"] - y["m_entropy"]) < 1e-5


@pytest.mark.slow
@require_deepspeed
def test_two_process_zero3_rollouts_do_not_hang(tmp_path):
    """ZeRO-3 on 2 ranks (gloo): parameters are gathered in every forward, so generation runs with
    synced steps; the run must finish and both ranks' rollouts count."""
    import subprocess

    from tests.conftest import subprocess_env, torchrun

    out = str(tmp_path / "z3")
    cmd = [
        *torchrun(),
        "-m",
        "mmpost",
        "train",
        os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"),
        "train.deepspeed=zero3",
        "train.max_steps=2",
        "train.export=false",
        "--output-dir",
        out,
    ]
    env = subprocess_env(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(out)
    assert len(rows) == 2 and 0 <= rows[0]["reward_mean"] <= 1


@require_deepspeed
def test_dynamic_sampling_refills_uninformative_groups(tmp_path):
    """About 1 in 6 groups of 8 gets no x at all (0.8^8); those are replaced by fresh prompts, so
    every group the update sees has a reward spread, and the batch keeps its size."""
    out = str(tmp_path / "dyn")
    over = ["train.export=false", "train.max_steps=6", "loss.dynamic_sampling=true"]
    train(os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"), over, output_dir=out)
    rows = read_metrics(out)
    assert sum(r["refills"] for r in rows) >= 1
    assert all(r["informative_groups"] == 1.0 for r in rows)


def image_letter_task(tmp_path) -> str:
    """The bundled CLS-RL images with the letter-spotting reward (1 when the completion holds an
    x: about 1 in 5 tiny-model samples), so groups have a reward spread and the update acts."""
    import json

    src = os.path.join(ROOT, "data", "cls", "cls_rl")
    data = tmp_path / "x.jsonl"
    with open(os.path.join(src, "train.jsonl")) as f, open(data, "w") as out:
        for line in f:
            rec = json.loads(line)
            for item in rec["prompt"][0]["content"]:
                if item["type"] == "image":
                    item["image"] = os.path.normpath(os.path.join(src, item["image"]))
            out.write(json.dumps({**rec, "answer": "x"}) + "\n")
    return str(data)


@pytest.mark.parametrize("freeze", ["[vision_tower,merger]", "[]"])
@require_deepspeed
def test_cached_image_features_give_the_same_run(tmp_path, freeze):
    """GRPO on image prompts with the cache on and off: the same rewards, losses, ratios and KL
    (the old log-probs of mu = 2 and the reference pass use the rollout's features; the training
    pass uses them only when the vision tower and merger are frozen), while each distinct image is
    encoded once per rollout."""
    cfg = os.path.join(ROOT, "configs", "cls_rl", "grpo.yaml")
    base = [
        f"data.train={image_letter_task(tmp_path)}",
        "rewards={contains_answer: 1.0}",
        "data.prompts_per_step=2",
        "train.export=false",
        "train.max_steps=4",
        "loss.mu=2",
        "optim.lr=3e-3",
        "rollout.max_completion_length=12",
        f"model.freeze={freeze}",
    ]
    runs = {}
    for cache in (True, False):
        out = str(tmp_path / f"cache{cache}")
        train(cfg, [*base, f"rollout.image_cache={str(cache).lower()}"], output_dir=out)
        runs[cache] = read_metrics(out)
    assert any(r["loss"] != 0 for r in runs[False]) and any(r["m_kl"] > 0 for r in runs[False])
    assert any(abs(r["m_ratio"] - 1) > 1e-4 for r in runs[False])  # the mu = 2 updates moved the policy
    for a, b in zip(runs[True], runs[False]):
        assert a["reward_mean"] == b["reward_mean"]
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["m_kl"] - b["m_kl"]) < 1e-6
        assert abs(a["m_ratio"] - b["m_ratio"]) < 1e-6
    # 2 prompts x G = 4 rollouts: 2 distinct images encoded, every other use a lookup
    assert all(r["images_encoded"] == 2 and r["images_reused"] > 0 for r in runs[True])
    assert "images_encoded" not in runs[False][0]


def tool_loop_overrides(tmp_path, model_name: str) -> list[str]:
    """The quickstart GRPO recipe on image prompts with the tool loop: the ViRC tools declared and
    executed, two turns per rollout, the cached generator and the image-feature cache."""
    return [
        f"data.train={image_letter_task(tmp_path)}",
        f"model.name_or_path={model_name}",
        "rollout.tools=true",
        "rollout.max_turns=2",
        "rollout.generator=cached",
        "rollout.image_cache=true",
        "rollout.num_generations=3",
        "rollout.max_completion_length=12",
        "data.prompts_per_step=2",
        "data.micro_batch_size=6",
    ]


def alone_logprobs(model, sample) -> torch.Tensor:
    """[L - 1] log-probs of a sample's labelled tokens from one forward of it alone (0 elsewhere)."""
    with torch.no_grad():
        full = torch.log_softmax(model(**sample.model_inputs()).logits[0, :-1].float(), -1)
    tgt = sample.labels[1:]
    return torch.where(tgt != IGNORE, full.gather(-1, tgt.clamp(min=0)[:, None])[:, 0], 0.0)


@pytest.mark.parametrize("model_name", ["tiny", "tiny-qwen3vl"])
def test_tool_loop_rollouts_are_scored_as_a_forward_of_each_trajectory(tmp_path, model_name):
    """The trainer's rollouts through the tool loop (sampled by the cached generator, then a
    scripted crop_image call whose result image lies inside the completion), collated padded and
    as shared-prompt rows: the log-probs it scores them with equal one forward of each trajectory."""
    from alignment.grpo import sequence_logprobs
    from alignment.grpo.batch import collate
    from alignment.grpo.trainer import GRPOTrainer
    from alignment.train import build_config

    cfg = build_config(
        os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"), tool_loop_overrides(tmp_path, model_name)
    )
    trainer = GRPOTrainer(cfg)
    st = trainer.state = trainer.setup("cpu")
    model, pad = st.model.eval(), trainer.processor.tokenizer.pad_token_id
    assert type(st.engine.generator).__name__ == "CachedGenerator" and st.features is not None
    f = family_of(model.config).factor
    scripted = ScriptedGenerator(
        trainer.processor, [[CROP.format(s=2 * f), "<think>x</think><answer>x</answer>"]] * 6
    )
    for generator in (st.engine.generator, scripted):
        st.engine.generator = generator
        st.engine.cfg.max_turn_tokens = 12 if generator is not scripted else 64  # the call whole
        seqs = trainer.rollout([0, 1])
        assert len(seqs) == 6
        samples = [q.sample for q in seqs]
        spans = [int(((s.labels[1:] != IGNORE) & (s.labels[:-1] == IGNORE)).sum()) for s in samples]
        assert max(spans) == 2  # two generated turns, a user turn (tool result or error) between
        if generator is scripted:  # the crop's image (2 x 2 tokens) is every trajectory's second image
            assert all(s.image_grid_thw[1].prod() // 4 == 4 for s in samples)
        want = [alone_logprobs(model, s) for s in samples]
        for share in (False, True):
            batch = collate(seqs, pad, share, 0.0, st.engine.merge)
            assert (batch.tree is not None) == share
            with torch.no_grad():
                got, _ = sequence_logprobs(model, batch)
            for i, w in enumerate(want):
                assert (got[i, : len(w)] - w).abs().max() < 2e-5, (share, i)


@pytest.mark.parametrize("model_name", ["tiny", "tiny-qwen3vl"])
@require_deepspeed
def test_tool_loop_grpo_trains_a_few_steps(tmp_path, model_name):
    """GRPO with the tool loop runs on both families: finite losses, the first of mu = 2 updates
    at ratio 1 (old == current policy), two-turn rollouts."""
    import math

    out = str(tmp_path / "run")
    over = [
        *tool_loop_overrides(tmp_path, model_name),
        "train.max_steps=2",
        "loss.mu=2",
        "train.export=false",
    ]
    train(os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"), over, output_dir=out)
    rows = read_metrics(out)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["m_entropy"]) for r in rows)
    assert round(rows[0]["m_ratio"], 6) == 1.0 and rows[0]["response_length"] > 12  # more than one turn
