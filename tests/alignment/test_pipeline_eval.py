"""The ViRC SFT pipeline end to end on tiny; batched evaluation equals one-by-one generation."""

import json
import os

import torch

from alignment.infra.metrics import read_metrics
from alignment.train import run_pipeline
from evaluation.evaluate import generate, prompts_of, run_eval
from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.rope import RopeSpec
from tests.alignment.conftest import ROOT
from tests.testing_utils import require_deepspeed


@require_deepspeed
def test_virc_pipeline_runs_both_stages_and_resumes(synth, tmp_path, capsys):
    pipe = os.path.join(ROOT, "configs", "virc", "pipeline.yaml")
    from alignment.builders.virc_turns import write_next_turn_records

    rl = str(tmp_path / "train_rl.jsonl")
    write_next_turn_records(synth["train"], rl)
    sft = ["stage1_instructional", "stage2_practice"]
    over = [
        "train.max_steps=2",
        "optim.lr=1e-3",
        *[
            f"{st}:{kv}"
            for st in sft
            for kv in (
                f"data.train={synth['train']}",
                f"data.eval={synth['test']}",
                "train.gradient_accumulation_steps=2",
                "data.layout=pad",  # the same samples in step 1 of both stages (packing would fit more of stage 1's)
                "data.micro_batch_size=2",
            )
        ],
        f"stage3_strategic_rl:data.train={rl}",
        "stage3_strategic_rl:data.prompts_per_step=2",
        "stage3_strategic_rl:rollout.num_generations=4",
        "stage3_strategic_rl:rollout.max_completion_length=16",
    ]
    out = str(tmp_path / "virc")
    results = run_pipeline(pipe, over, output_root=out)
    assert [r["stage"] for r in results] == [*sft, "stage3_strategic_rl"]
    s1, s2, s3 = (os.path.join(out, n) for n in (*sft, "stage3_strategic_rl"))
    assert len(read_metrics(s1)) == 2 and len(read_metrics(s2)) == 2
    # stage 1 drops tool-result images, stage 2 keeps them: stage 2 sees more visual tokens per step
    assert read_metrics(s2)[0]["visual_tokens"] > read_metrics(s1)[0]["visual_tokens"]
    # stage 3: GRPO on next turns from stage 2's model, scored by virc_turn (in [-1, 1])
    rl_rows = read_metrics(s3)
    assert len(rl_rows) == 2 and -1.0 <= rl_rows[0]["reward_mean"] <= 1.0 and "reward/virc_turn" in rl_rows[0]
    rl_state = json.load(open(os.path.join(s3, "checkpoint-000002", "trainer_state.json")))
    assert rl_state["config"]["init_from"] == s2
    # stage 2 started from stage 1's model
    state = json.load(open(os.path.join(s2, "checkpoint-000002", "trainer_state.json")))
    assert state["config"]["init_from"] == s1
    # a second run skips finished stages
    again = run_pipeline(pipe, over, output_root=out)
    assert all(r.get("skipped") for r in again)


def test_batched_generation_equals_one_by_one(synth):
    model, processor = load_model("tiny")
    enc = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
    items, _ = prompts_of(synth["test"])
    base = os.path.dirname(synth["test"])
    prompts = [m for _, m, _, _ in items[:3]]
    batched = generate(model, processor, enc, prompts, base, max_new_tokens=8)
    single = [generate(model, processor, enc, [p], base, max_new_tokens=8)[0] for p in prompts]
    assert batched == single


def test_eval_writes_results(synth, tmp_path, capsys):
    out = str(tmp_path / "res.jsonl")
    assert run_eval("tiny", synth["test"], out=out, batch_size=4, max_new_tokens=4) == 0
    rows = [json.loads(ln) for ln in open(out)]
    assert len(rows) == 6 and {"id", "completion", "answer", "reference", "correct"} <= set(rows[0])
    assert "accuracy 0.000" in capsys.readouterr().out  # an untrained model does not answer
    assert torch.is_grad_enabled()
