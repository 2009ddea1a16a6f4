"""The DPO trainer on tiny: one forward per pair batch, exact packing, the reference, bad input,
and the effect of the SFT term. Exactness runs once per model family (``family_model``: also
Qwen3-VL, whose pairs share DeepStack features), and a Qwen3-VL run trains packed."""

import json
import math
import os

import pytest
import torch

from alignment.dpo import DPOModule, DPOTrainer, policy_logps
from alignment.dpo_config import DPOConfig
from alignment.dpo_data import PairDataset, collate_pairs
from alignment.infra.metrics import read_metrics
from alignment.train import build_config, train
from mm.dataset import DataError
from mm.loading import load_model
from tests.alignment.conftest import ROOT
from tests.conftest import solid
from tests.testing_utils import require_deepspeed

DPO_CONFIG = os.path.join(ROOT, "configs", "specs", "dpo_cold_start.yaml")


def write_pairs(folder, n=4, bad=None) -> str:
    solid(56, 84).save(os.path.join(folder, "a.png"))
    solid(84, 56, (20, 90, 200)).save(os.path.join(folder, "b.png"))
    rows = []
    for i in range(n):
        text = {"type": "text", "text": f"Which letter is shown in picture {i}?"}
        prompt = (
            [{"role": "user", "content": [{"type": "image", "image": "ab"[i % 2] + ".png"}, text]}]
            if i % 3 != 2
            else [{"role": "user", "content": f"Write x {i}."}]
        )
        rows.append(
            {
                "id": f"p{i}",
                "prompt": prompt,
                "chosen": [
                    {"role": "assistant", "content": f"<think>It is x {i}.</think><answer>x</answer>"}
                ],
                "rejected": [{"role": "assistant", "content": "It is x. Answer: x"}],
            }
        )
    if bad:
        rows.append(bad)
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def one_by_one(model, sample) -> float:
    """The summed log-prob of a sample's labelled tokens by a plain forward (full log-softmax)."""
    with torch.no_grad():
        logits = model(**sample.model_inputs()).logits[0, :-1].float()
    tgt = sample.labels[1:]
    ok = tgt != -100
    return torch.log_softmax(logits, -1)[ok].gather(-1, tgt[ok][:, None]).sum().item()


def test_packed_padded_and_one_by_one_agree(family_model, family_encoder, tmp_path):
    model, processor = family_model
    ds = PairDataset(write_pairs(str(tmp_path)), family_encoder)
    pairs = [ds[i] for i in range(len(ds))]
    pad_id = processor.tokenizer.pad_token_id
    want = torch.tensor([one_by_one(model, s) for p in pairs for s in p])
    with torch.no_grad():
        packed, n_packed = policy_logps(model, collate_pairs([pairs[:3], pairs[3:]], "pack", pad_id))
        padded, n_padded = policy_logps(model, collate_pairs([pairs], "pad", pad_id))
    assert torch.allclose(packed, want, atol=1e-4, rtol=1e-6), (packed - want).abs().max()
    assert torch.allclose(padded, want, atol=1e-4, rtol=1e-6), (padded - want).abs().max()
    assert torch.equal(n_packed, n_padded)
    assert n_packed.tolist() == [float(s.trained_tokens) for p in pairs for s in p]
    # and the module's loss: equal for both layouts (reference = the policy: DPO loss = log 2)
    cfg = DPOConfig()
    module = DPOModule(model, cfg)
    losses = []
    for batch in (
        collate_pairs([pairs[:3], pairs[3:]], "pack", pad_id),
        collate_pairs([pairs], "pad", pad_id),
    ):
        batch["ref_logps"] = want
        batch["pair_index"] = torch.arange(len(pairs))
        with torch.no_grad():
            total, n, stats = module(**batch)
        assert int(n) == len(pairs)
        assert abs(stats["dpo_loss"] / len(pairs) - 0.693147) < 1e-4
        losses.append(float(total))
    nll = sum(-want[2 * i].item() / pairs[i][0].trained_tokens for i in range(len(pairs)))
    assert abs(losses[0] - losses[1]) < 1e-4
    assert abs(losses[0] - (len(pairs) * 0.6931472 + nll)) < 1e-3


def test_images_go_through_the_vision_tower_once_per_pair(family_model, family_encoder, tmp_path):
    model, processor = family_model
    ds = PairDataset(write_pairs(str(tmp_path)), family_encoder)
    pairs = [ds[i] for i in range(len(ds))]
    seen = []
    hook = model.model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        batch = collate_pairs([pairs], "pad", processor.tokenizer.pad_token_id)
        with torch.no_grad():
            policy_logps(model, batch)
    finally:
        hook.remove()
    once = sum(c.pixel_values.shape[0] for c, _ in pairs if c.pixel_values is not None)
    assert seen == [once]  # one call, each prompt's patches once (not twice)
    assert batch["image_order"].tolist() == [0, 0, 1, 1, 2, 2]  # pairs 0, 1, 3 carry an image


def test_bad_pair_records_name_the_line_and_the_fix(encoder, tmp_path):
    bad = {
        "id": "bad",
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": [{"type": "image", "image": "a.png"}]}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    path = write_pairs(str(tmp_path), n=2, bad=bad)
    with pytest.raises(
        DataError,
        match=r"(?s)pairs.jsonl:3: \[visual_in_response\] 'chosen' holds an image.*fix: move the image into the prompt",
    ):
        PairDataset(path, encoder)
    assert len(PairDataset(path, encoder, on_error="skip")) == 2
    sft = os.path.join(str(tmp_path), "sft.jsonl")
    with open(sft, "w") as f:
        f.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
            )
        )
    with pytest.raises(DataError, match=r"(?s)sft.jsonl:1: \[not_preference\].*specs-pairs"):
        PairDataset(sft, encoder)


def run_dpo(out, *overrides, data=None):
    data = data or write_pairs(os.path.dirname(out), n=8)
    summary = train(
        DPO_CONFIG,
        [
            f"data.train={data}",
            "train.export=false",
            "train.save_every=0",
            "optim.schedule=constant",
            "optim.warmup_ratio=0",
            "data.max_tokens=512",  # per sequence: a packed row of pairs holds up to 1024 tokens
            "data.layout=pack",  # one packed row of 5 pairs per step (the measurements below)
            "data.micro_batch_size=5",
            "train.gradient_accumulation_steps=1",
            *overrides,
        ],
        output_dir=out,
    )
    return summary, read_metrics(out)


@pytest.mark.parametrize(
    "lora,layout,model_name",
    [(0, "pad", "tiny"), (0, "pack", "tiny"), (4, "pad", "tiny"), (4, "pack", "tiny")]
    + [(0, "pack", "tiny-qwen3vl")],
    ids=["full-pad", "full-pack", "lora-pad", "lora-pack", "qwen3vl-full-pack"],
)
@require_deepspeed
def test_reference_precomputed_equals_frozen_copy(tmp_path, lora, layout, model_name):
    """Two steps with a precomputed reference and with a reference scoring every micro-batch (a
    frozen copy; under LoRA the policy with adapters disabled): the same losses and rewards.

    Step 1's policy is the reference: with one pair per padded micro-batch (the precompute's own
    batches) its margin is exactly 0; packed (all 8 pairs in one row) the policy's log-probs come
    from another layout, equal to the padded ones up to float rounding (invariant 1: <= 1e-5)."""
    mb = 1 if layout == "pad" else 8
    common = ("train.max_steps=2", "optim.lr=1e-3", f"model.lora_r={lora}", f"data.layout={layout}")
    common += (f"data.micro_batch_size={mb}", f"model.name_or_path={model_name}")
    data = write_pairs(str(tmp_path), n=8)
    _, pre = run_dpo(str(tmp_path / "pre"), *common, data=data)
    _, live = run_dpo(str(tmp_path / "live"), *common, "loss.precompute_ref=false", data=data)
    assert os.path.isfile(tmp_path / "pre" / "ref_logps.pt")
    for a, b in zip(pre, live):
        for k in ("loss", "m_dpo_loss", "m_chosen_reward", "m_rejected_reward", "m_sft_loss"):
            assert abs(a[k] - b[k]) < 1e-4, (k, a[k], b[k])
    assert abs(pre[0]["m_dpo_loss"] - 0.693147) < 1e-5  # step 1: the policy is the reference
    if layout == "pad":
        assert pre[0]["m_margin"] == 0.0
    else:
        assert abs(pre[0]["m_margin"]) < 1e-5
    assert pre[1]["m_chosen_reward"] != 0.0  # step 2: the update moved the policy away from it


@require_deepspeed
def test_sft_term_keeps_the_chosen_reward_up(tmp_path):
    """SPECS: without the SFT term the chosen reward drifts negative (DPO lowers both sides and
    the rejected one faster); with lambda = 1 it stays up. Measured on tiny from a base model that
    already likes the chosen responses (40 SFT steps on the toy task), 16 DPO steps at lr 3e-3 on
    the toy pairs: lambda = 1 ends near +0.5, lambda = 0 near -2.3 (rejected: -1.9 vs -5.8)."""
    data = os.path.join(ROOT, "data", "specs")
    base = str(tmp_path / "base")
    train(
        os.path.join(ROOT, "configs", "specs", "tiny_base_sft.yaml"),
        [f"data.train={data}/base_sft.jsonl", "train.max_steps=40", "train.save_every=0"],
        output_dir=base,
    )
    end = {}
    for lam in (1, 0):
        _, m = run_dpo(
            str(tmp_path / f"lambda{lam}"),
            f"init_from={base}",
            f"loss.sft_weight={lam}",
            "optim.lr=3e-3",
            "train.max_steps=16",
            "train.epochs=10",
            data=f"{data}/pairs.jsonl",
        )
        end[lam] = sum(r["m_chosen_reward"] for r in m[-3:]) / 3
        assert sum(r["m_margin"] for r in m[-3:]) / 3 > 1.0  # both learn the preference
    assert end[1] > 0 > -0.5 > end[0], end


def reference_of(out, *overrides, data):
    """The trainer's setup only (no DeepSpeed): its reference log-probs [n_pairs, 2]."""
    over = [f"data.train={data}", "train.gradient_accumulation_steps=1", *overrides]
    cfg = build_config(DPO_CONFIG, over, output_dir=out)
    trainer = DPOTrainer(cfg)
    trainer.state = trainer.setup("cpu")
    return trainer.state.ref_logps, trainer


def perturbed_tiny(folder: str) -> str:
    """A tiny model folder whose weights differ from load_model('tiny')."""
    model, processor = load_model("tiny", attn="sdpa")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_reference_cache_is_keyed_by_the_starting_model(tiny, encoder, tmp_path):
    """Reused for the same run (a resume), recomputed when the starting model changes."""
    data = write_pairs(str(tmp_path), n=4)
    out = str(tmp_path / "run")
    ds = PairDataset(data, encoder)
    ref, _ = reference_of(out, data=data)
    want = torch.tensor([[one_by_one(tiny[0], s) for s in ds[i]] for i in range(len(ds))])
    assert torch.allclose(ref, want, atol=1e-4), (ref - want).abs().max()
    # same run again: the cache is read back (a marked copy proves no recomputation)
    path = os.path.join(out, "ref_logps.pt")
    saved = torch.load(path)
    torch.save({"key": saved["key"], "ref": saved["ref"] + 1.0}, path)
    again, _ = reference_of(out, data=data)
    assert torch.equal(again, ref + 1.0)
    # another starting model into the same output dir: recomputed with that model
    other = perturbed_tiny(str(tmp_path / "other"))
    ref2, trainer = reference_of(out, f"model.name_or_path={other}", data=data)
    model2, _ = load_model(other, attn="sdpa")
    want2 = torch.tensor([[one_by_one(model2.eval(), s) for s in ds[i]] for i in range(len(ds))])
    assert torch.allclose(ref2, want2, atol=1e-4), (ref2 - want2).abs().max()
    assert (ref2 - want).abs().max() > 0.1
    assert torch.load(path)["key"]["model"] == other


def test_reference_scores_only_the_pairs_the_planner_uses(encoder, tmp_path, monkeypatch):
    """on_error=skip with a pair over max_tokens: that pair is never scored (its row stays 0)."""
    import alignment.dpo as dpo

    long_pair = {
        "id": "long",
        "prompt": [{"role": "user", "content": "Say x. " * 200}],
        "chosen": [{"role": "assistant", "content": "<think>x</think><answer>x</answer>"}],
        "rejected": [{"role": "assistant", "content": "x"}],
    }
    data = write_pairs(str(tmp_path), n=4, bad=long_pair)  # the long pair is index 4
    ds = PairDataset(data, encoder)
    assert sum(ds.lengths()[:4]) < 4 * 300 < ds.lengths()[4]
    scored = []
    real = dpo.policy_logps
    monkeypatch.setattr(
        dpo, "policy_logps", lambda m, b: (scored.extend(b["pair_index"].tolist()), real(m, b))[1]
    )
    ref, _ = reference_of(
        str(tmp_path / "run"), "data.max_tokens=300", "data.on_error=skip", "data.layout=pad", data=data
    )
    assert sorted(scored) == [0, 1, 2, 3]
    assert ref[4].tolist() == [0.0, 0.0] and (ref[:4] != 0).all()


@require_deepspeed
def test_bf16_reference_matches_the_bf16_policy_at_step_0(tmp_path):
    """precision=bf16 (as auto on GPU): the reference is the bf16 starting model, so the first
    step's margin is exactly 0 and the DPO loss log 2, precomputed or live (one pair per padded
    micro-batch, as the precompute batches them: bf16 sums depend on the batch shapes)."""
    data = write_pairs(str(tmp_path), n=8)
    common = ("train.max_steps=1", "train.precision=bf16", "optim.lr=1e-2", "data.layout=pad")
    for name, extra in (("pre", ()), ("live", ("loss.precompute_ref=false",))):
        _, m = run_dpo(str(tmp_path / name), *common, *extra, data=data)
        assert m[0]["m_margin"] == 0.0, (name, m[0])
        assert abs(m[0]["m_dpo_loss"] - math.log(2)) < 1e-6, (name, m[0])


def test_ipo_compares_mean_log_probs_by_default(tiny, encoder, tmp_path):
    """IPO is length-normalised by default (as TRL): fed the reference's per-token means, a
    policy equal to the reference has h = 0, so the IPO loss is (1 / (2 beta))^2 = 25 per pair."""
    model, processor = tiny
    ds = PairDataset(write_pairs(str(tmp_path)), encoder)
    pairs = [ds[i] for i in range(len(ds))]
    means = torch.tensor([one_by_one(model, s) / s.trained_tokens for p in pairs for s in p])
    cfg = build_config(DPO_CONFIG, ["loss.kind=ipo", "loss.sft_weight=0"])
    assert cfg.loss.normalized() and not build_config(DPO_CONFIG).loss.normalized()
    assert not build_config(DPO_CONFIG, ["loss.kind=ipo", "loss.length_normalize=false"]).loss.normalized()
    batch = collate_pairs([pairs], "pad", processor.tokenizer.pad_token_id)
    with torch.no_grad():
        total, n, stats = DPOModule(model, cfg)(ref_logps=means, **batch)
    assert abs(float(total) / int(n) - 25.0) < 1e-2, float(total)


def test_max_tokens_bounds_a_sequence_not_a_pair(encoder, tmp_path):
    """SPECS' max length (16,384) is per sequence: a pair whose two sequences each fit is trained
    even when together they do not (it used to be rejected as a pair over max_tokens); a
    sequence over the limit names itself in the error."""
    from mm.dataset import DataError

    data = write_pairs(str(tmp_path), n=4)
    ds = PairDataset(data, encoder)
    sides = [[encoder.count_tokens(c, ds.base_dir)[0] for c in ds.conversations(i)] for i in range(len(ds))]
    longest = max(max(s) for s in sides)
    assert longest < min(sum(s) for s in sides)  # every pair is longer than its longer side
    _, trainer = reference_of(str(tmp_path / "fits"), f"data.max_tokens={longest}", data=data)
    assert trainer.state.planner.usable == [0, 1, 2, 3]
    with pytest.raises(DataError, match=rf"longer sequence \(prompt \+ one response\) has {longest} tokens"):
        reference_of(str(tmp_path / "over"), f"data.max_tokens={longest - 1}", data=data)
