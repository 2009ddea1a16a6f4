"""CLS-RL data (candidate lists, few-shot and base-to-new splits) and both configs end to end."""

import json
import os
import random

import pytest

import evaluation.evaluate as ev
from alignment.builders.cls_fewshot import build_fewshot, candidates, write_shape_classes
from alignment.infra.metrics import read_metrics
from alignment.train import train
from evaluation.answers import class_answer, class_matches
from tests.alignment.conftest import ROOT
from tests.testing_utils import require_deepspeed


def test_candidate_list_rules():
    rng = random.Random(0)
    few = [f"c{i}" for i in range(60)]  # int(0.4 * 60) = 24 < 30: every class
    got = candidates("c7", few, rng)
    assert sorted(got) == sorted(few) and got != few  # shuffled
    many = [f"c{i}" for i in range(100)]  # 40 candidates, the true class always among them
    for label in ("c0", "c99", "c50"):
        got = candidates(label, many, rng)
        assert len(got) == 40 and label in got and len(set(got)) == 40
    huge = [f"c{i}" for i in range(1000)]  # 400 -> capped at 100
    assert len(candidates("c5", huge, rng)) == 100


def test_fewshot_and_base_to_new(tmp_path):
    root = write_shape_classes(str(tmp_path / "imgs"), per_class=6)
    counts = build_fewshot(root, str(tmp_path / "a"), shots=4, variant="no_think")
    assert counts == {"train": 24, "test": 12}
    rec = json.loads(open(tmp_path / "a" / "train.jsonl").readline())
    text = rec["prompt"][0]["content"][1]["text"]
    assert text.startswith("What is in this image?\nPlease choose one from list [ ")
    assert text.endswith("]. Please directly output the answer.") and rec["answer"] in text
    assert os.path.exists(tmp_path / "a" / rec["prompt"][0]["content"][0]["image"])
    counts = build_fewshot(root, str(tmp_path / "b"), shots=2, base_to_new=True)
    assert counts == {"train": 6, "test_base": 12, "test_new": 18}  # 3 base classes x 2 shots
    new = [json.loads(ln) for ln in open(tmp_path / "b" / "test_new.jsonl")]
    base_names = {json.loads(ln)["answer"] for ln in open(tmp_path / "b" / "train.jsonl")}
    for r in new:  # new classes are never trained on and are asked among new classes only
        assert r["answer"] not in base_names
        assert not any(b in r["prompt"][0]["content"][1]["text"] for b in base_names)
    with pytest.raises(ValueError, match="at least 2"):
        build_fewshot(str(tmp_path / "a"), str(tmp_path / "c"))


@pytest.mark.parametrize("config", ["grpo.yaml", "no_think.yaml"])
@require_deepspeed
def test_cls_configs_run_end_to_end(config, tmp_path):
    over = [
        "train.max_steps=2",
        "rollout.max_completion_length=8",
        "train.export=false",
        "train.deepspeed=zero0",
    ]
    out = str(tmp_path / "run")
    summary = train(os.path.join(ROOT, "configs", "cls_rl", config), over, output_dir=out)
    rows = read_metrics(out)
    assert summary["steps"] == 2 and len(rows) == 2
    reward = "reward/cls_equality" if config == "no_think.yaml" else "reward/cls_accuracy"
    assert reward in rows[0] and rows[0]["m_kl"] >= 0 and rows[0]["visual_tokens"] > 0


def test_class_answer_and_match_as_released():
    assert class_answer("<think>x</think><answer> Tabby cat </answer>") == "Tabby cat"
    assert class_answer("  tabby cat\n") == "tabby cat"  # no block: the whole completion
    assert class_answer("<answer>a</answer><answer>b</answer>") == "a"  # the first block
    assert class_matches("It is a Tabby Cat.", " tabby cat")  # the label as a substring
    assert class_matches("sea lion", "sea_lion")  # "_" read as a space
    assert not class_matches("cat", "tabby cat") and not class_matches("", "cat")
    assert not class_matches("anything", "")  # an empty label matches nothing


def test_eval_grades_untagged_class_answers(tmp_path, monkeypatch, capsys):
    """No-Thinking-CLS-RL answers without tags: today's protocol found no answer and scored 0."""
    root = write_shape_classes(str(tmp_path / "imgs"), per_class=5)
    build_fewshot(root, str(tmp_path / "d"), shots=4, variant="no_think")
    data = str(tmp_path / "d" / "test.jsonl")
    gold = [json.loads(ln)["answer"] for ln in open(data)]  # 6 classes x 1 held-out image
    # the model's completions, scripted: 4 right (untagged, tagged, with words around), 2 wrong
    said = [
        gold[0],
        f"<answer>{gold[1]}</answer>",
        f"It is a {gold[2].upper()}.",
        f" {gold[3]}\n",
        "no idea",
        "",
    ]
    monkeypatch.setattr(ev, "generate", lambda model, proc, enc, prompts, *a: said[: len(prompts)])
    acc = ev.evaluate("tiny", data, str(tmp_path / "res.jsonl"), batch_size=8)
    assert acc == pytest.approx(4 / 6)
    rows = [json.loads(ln) for ln in open(tmp_path / "res.jsonl")]
    assert [r["correct"] for r in rows] == [True] * 4 + [False] * 2
    assert rows[0]["answer"] == gold[0] and "answer block in 1/6" in capsys.readouterr().out
