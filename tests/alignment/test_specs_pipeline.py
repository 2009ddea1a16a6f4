"""The SPECS pipeline end to end on tiny: base -> GRPO-zero -> pairs -> DPO cold start -> GRPO,
pair invariants, stage wiring, re-runs skipping finished stages."""

import dataclasses
import json
import os

import pytest
import torch
import yaml

from alignment.builders.specs_pairs import CORRUPTIONS, PairsConfig, well_formed
from alignment.infra.metrics import read_metrics
from alignment.rewards.builtin import accuracy
from alignment.train import run_pipeline
from mm.config import ConfigError
from mm.records import parse_record
from tests.alignment.conftest import ROOT
from tests.alignment.test_dpo import perturbed_tiny, write_pairs
from tests.testing_utils import require_deepspeed

STAGES = ["base", "grpo_zero", "pairs", "dpo_cold_start", "grpo_final"]


@pytest.mark.slow  # five stages, ~50 s on 2 idle cores
@require_deepspeed
def test_specs_pipeline_end_to_end(tmp_path):
    pipe = os.path.join(ROOT, "configs", "specs", "pipeline.yaml")
    out = str(tmp_path / "specs")
    results = run_pipeline(pipe, ["train.export=true"], output_root=out)
    assert [r["stage"] for r in results] == STAGES
    d = {n: os.path.join(out, n) for n in STAGES}

    # pairs: decoupled (both answers correct, only the format differs), with their provenance
    pairs = [json.loads(ln) for ln in open(os.path.join(d["pairs"], "pairs.jsonl"))]
    counts = json.load(open(os.path.join(d["pairs"], "pairs.jsonl.counts.json")))
    assert len(pairs) == counts["pairs"] == results[2]["pairs"] > 0
    assert counts["prompts"] == 16
    for p in pairs:
        assert parse_record(p).kind == "preference"
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert well_formed(chosen) and accuracy([chosen], answer="x") == [1.0]
        assert not well_formed(rejected) and p["meta"]["rejected_answer"] == "x"
        assert p["meta"]["corruption"] in CORRUPTIONS
        assert p["meta"]["zero_model"] == os.path.join(d["grpo_zero"], "final")
        assert p["meta"]["base_model"] == os.path.join(d["base"], "final")

    # DPO: from the base model, on those pairs, with the SFT term (lambda = 1)
    state = json.load(open(os.path.join(d["dpo_cold_start"], "checkpoint-000004", "trainer_state.json")))
    assert state["config"]["init_from"] == d["base"]
    assert state["config"]["data"]["train"] == os.path.join(d["pairs"], "pairs.jsonl")
    assert state["config"]["loss"]["sft_weight"] == 1.0
    dpo = read_metrics(d["dpo_cold_start"])
    assert len(dpo) == 4 and abs(dpo[0]["m_dpo_loss"] - 0.693147) < 1e-4
    assert {"m_sft_loss", "m_chosen_reward", "m_rejected_reward", "m_margin", "m_accuracy"} <= set(dpo[0])

    # final GRPO: from the DPO model, format 0.5 + accuracy 1, no KL
    final = json.load(open(os.path.join(d["grpo_final"], "checkpoint-000002", "trainer_state.json")))
    assert final["config"]["init_from"] == d["dpo_cold_start"]
    assert final["config"]["rewards"] == {"format_think_answer": 0.5, "accuracy": 1.0}
    assert final["config"]["loss"]["beta"] == 0.0 and final["config"]["loss"]["clip_high"] == 0.28
    assert "reward/format_think_answer" in read_metrics(d["grpo_final"])[0]

    # a second run skips every stage; a stage can stand for an existing model instead of training
    again = run_pipeline(pipe, [f"base:model={d['base']}/final"], output_root=out)
    assert all(r.get("skipped") for r in again) and again[0]["model"] == f"{d['base']}/final"


@require_deepspeed
def test_pipeline_wiring_model_stage_user_overrides_and_pairs_args(tmp_path):
    """A `model:` stage feeds model.name_or_path of a stage that trains; the user's
    `STAGE:data.train=` wins over data_from; a pairs stage built with other args is refused."""
    model_dir = perturbed_tiny(str(tmp_path / "model"))
    data = write_pairs(str(tmp_path), n=4)
    prompts = os.path.join(ROOT, "data", "specs", "prompts.jsonl")
    out = str(tmp_path / "runs")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "stages": [
                    {"name": "base", "model": model_dir},
                    {
                        "name": "pairs",
                        "run": "specs-pairs",
                        "args": {"zero": "base", "base": "base", "prompts": prompts, "n": 2},
                    },
                    {
                        "name": "dpo",
                        "config": os.path.join(ROOT, "configs", "specs", "dpo_cold_start.yaml"),
                        "init_from": "base",
                        "data_from": "pairs",
                        "overrides": [
                            "train.max_steps=1",
                            "train.gradient_accumulation_steps=1",
                            "train.export=false",
                        ],
                    },
                ]
            }
        )
    )
    # pairs already built with these args (as the pipeline records them): skipped
    os.makedirs(os.path.join(out, "pairs"))
    target = os.path.join(out, "pairs", "pairs.jsonl")
    open(target, "w").write("not read: the user's data.train replaces it\n")
    args = dataclasses.asdict(PairsConfig(zero=model_dir, base=model_dir, prompts=prompts, n=2))
    json.dump({"pairs": 1, "args": args}, open(target + ".counts.json", "w"))
    results = run_pipeline(str(pipe), [f"dpo:data.train={data}"], output_root=out)
    assert [r.get("skipped", False) for r in results] == [True, True, False]
    state = json.load(open(os.path.join(out, "dpo", "checkpoint-000001", "trainer_state.json")))
    assert state["config"]["model"]["name_or_path"] == model_dir and state["config"]["init_from"] is None
    assert state["config"]["data"]["train"] == data
    assert torch.load(os.path.join(out, "dpo", "ref_logps.pt"))["key"]["model"] == model_dir
    # other args for the pairs stage: a clear error, not a silent reuse of the old pairs
    with pytest.raises(ConfigError, match=r"built with other args \(differing: n;.*delete"):
        run_pipeline(str(pipe), ["pairs:n=3"], output_root=out)
