"""Evaluation during training (alignment.evaluator): held-out metrics every N
steps, checked against independent computations with the saved weights, and the best model."""

import json
import os
import subprocess

import pytest
import torch

from alignment.evaluator import BestCheckpoint, best_mode
from alignment.infra.metrics import read_metrics
from mm.collate import pad_batch, per_sample_nll
from mm.dataset import RecordDataset
from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.rope import RopeSpec
from tests.alignment.conftest import QUICKSTART, ROOT, base_overrides, run_sft
from tests.conftest import subprocess_env, torchrun


@pytest.fixture(scope="module")
def split(synth):
    """The first 18 trajectories to train on, the last 6 held out (same folder: same images)."""
    folder = os.path.dirname(synth["train"])
    with open(synth["train"]) as f:
        lines = f.readlines()
    paths = {
        "train": os.path.join(folder, "split_train.jsonl"),
        "eval": os.path.join(folder, "split_eval.jsonl"),
    }
    for key, part in (("train", lines[:18]), ("eval", lines[18:])):
        with open(paths[key], "w") as f:
            f.writelines(part)
    return {**synth, **paths}


def heldout_loss(model_dir: str, path: str) -> float:
    """The mean NLL per supervised token of ``path`` under the model in ``model_dir``, record by record."""
    model, processor = load_model(model_dir)
    model.eval()
    ds = RecordDataset(path, ConversationEncoder(processor, rope=RopeSpec.from_config(model.config)))
    total = count = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            b = pad_batch([s], processor.tokenizer.pad_token_id)
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            n = int((b["labels"][:, 1:] != -100).sum())
            total += float(per_sample_nll(logits, b["labels"])[0]) * n
            count += n
    return total / count


def test_sft_eval_loss_equals_the_saved_models_loss(split, tmp_path):
    out = str(tmp_path / "run")
    _, m = run_sft(
        split,
        out,
        f"data.train={split['train']}",
        f"data.eval={split['eval']}",
        "train.max_steps=3",
        "train.eval_every=3",
        "optim.lr=2e-3",
    )
    evals = [x for x in m if "eval_loss" in x]
    assert [x["step"] for x in evals] == [3]
    expected = heldout_loss(os.path.join(out, "final"), split["eval"])  # the weights of step 3
    assert evals[0]["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert 0 < expected < 7.5
    # evaluating leaves training alone: the same losses as a run without it
    common = (f"data.train={split['train']}", "train.max_steps=3", "optim.lr=2e-3", "train.export=false")
    _, plain = run_sft(split, str(tmp_path / "plain"), *common)
    assert [x["loss"] for x in plain] == [x["loss"] for x in m if "loss" in x]


def test_best_mode_and_keeper(tmp_path):
    assert best_mode("eval_loss") == "min" and best_mode("eval_accuracy") == "max"
    assert best_mode("eval_margin") == "max" and best_mode("eval_accuracy", "min") == "min"
    saved = []
    keep = BestCheckpoint(str(tmp_path), "eval_loss")
    for step, value in ((1, 3.0), (2, 2.0), (3, 2.5), (4, float("nan"))):
        keep.update(
            {"step": step, "eval_loss": value},
            lambda folder, s=step: (os.makedirs(folder, exist_ok=True), saved.append(s)),
        )
    assert saved == [1, 2]
    with open(tmp_path / "best" / "best.json") as f:
        assert json.load(f) == {"metric": "eval_loss", "value": 2.0, "mode": "min", "step": 2}
    again = BestCheckpoint(str(tmp_path), "eval_loss")  # a resumed run competes with the recorded best
    assert (again.value, again.step) == (2.0, 2) and not again.better(2.1) and again.better(1.9)


def test_save_best_keeps_the_best_step_not_the_last(split, tmp_path):
    """mode max on a falling loss: the best is the first evaluation, and OUTPUT/best holds its weights."""
    out = str(tmp_path / "run")
    _, m = run_sft(
        split,
        out,
        f"data.train={split['train']}",
        f"data.eval={split['eval']}",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.save_best=eval_loss",
        "train.save_best_mode=max",
        "optim.lr=3e-3",
        "train.export=false",
    )
    evals = {x["step"]: x["eval_loss"] for x in m if "eval_loss" in x}
    assert list(evals) == [2, 4] and evals[4] < evals[2]
    with open(os.path.join(out, "best", "best.json")) as f:
        record = json.load(f)
    assert record["step"] == 2 and record["value"] == pytest.approx(evals[2])
    assert heldout_loss(os.path.join(out, "best"), split["eval"]) == pytest.approx(evals[2], rel=1e-5)


@pytest.mark.slow
def test_two_ranks_evaluate_like_one(split, tmp_path):
    """2 ranks (gloo) x 1 micro-batch == 1 rank x 2 accumulated: the same weights, so the same
    held-out metrics; 5 held-out records split 3 + 2 (rank 1 repeats one with weight 0)."""
    common = [
        f"data.train={split['train']}",
        f"data.eval={split['eval']}",
        "train.max_steps=2",
        "train.eval_every=1",
        "train.eval_max_samples=5",
        "optim.lr=2e-3",
        "train.export=false",
        "data.max_tokens=2000",
    ]
    _, single = run_sft(split, str(tmp_path / "one"), *common, "train.gradient_accumulation_steps=2")
    out = str(tmp_path / "two")
    overrides = base_overrides(split) + common + ["train.gradient_accumulation_steps=1"]
    cmd = [*torchrun(), "-m", "mmpost", "train", QUICKSTART, *overrides, "--output-dir", out]
    env = subprocess_env(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    one = [x for x in single if "eval_loss" in x]
    two = [x for x in read_metrics(out) if "eval_loss" in x]
    assert [x["step"] for x in one] == [x["step"] for x in two] == [1, 2]
    for a, b in zip(one, two):
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-4)
    assert one[1]["eval_loss"] < one[0]["eval_loss"]


def test_dpo_eval_margin_and_accuracy_by_hand(tmp_path):
    """Held-out pairs: the logged margin, accuracy and loss equal DPO's formulas on log-probs from
    plain forwards of the exported policy (step 2) and of the starting model (the reference)."""
    import torch.nn.functional as F

    from alignment.dpo_data import PairDataset
    from tests.alignment.test_dpo import run_dpo, write_pairs

    os.makedirs(tmp_path / "held")
    held = write_pairs(str(tmp_path / "held"), n=5)
    out = str(tmp_path / "run")
    _, m = run_dpo(
        out,
        "train.max_steps=2",
        "train.eval_every=2",
        f"data.eval={held}",
        "optim.lr=1e-3",
        "train.export=true",
    )
    got = [x for x in m if "eval_margin" in x]
    assert [x["step"] for x in got] == [2]

    def logps(model_dir):
        model, processor = load_model(model_dir)
        model.eval()
        enc = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
        pairs = [PairDataset(held, enc)[i] for i in range(5)]
        with torch.no_grad():
            out = []
            for pair in pairs:
                row = []
                for s in pair:
                    logits = model(**s.model_inputs()).logits[0, :-1].float()
                    tgt, ok = s.labels[1:], s.labels[1:] != -100
                    lp = torch.log_softmax(logits, -1)[ok].gather(-1, tgt[ok][:, None])
                    row.append((lp.sum().item(), int(ok.sum())))
                out.append(row)
        return out

    pol, ref = logps(os.path.join(out, "final")), logps("tiny")
    beta = 0.1
    h = torch.tensor(
        [(p[0][0] - r[0][0]) - (p[1][0] - r[1][0]) for p, r in zip(pol, ref)], dtype=torch.float64
    )
    nll = torch.tensor([-p[0][0] / p[0][1] for p in pol], dtype=torch.float64)
    assert (h != 0).all()
    assert got[0]["eval_margin"] == pytest.approx(float((beta * h).mean()), rel=1e-4, abs=1e-6)
    assert got[0]["eval_accuracy"] == pytest.approx(float((h > 0).double().mean()))
    loss = (-F.logsigmoid(beta * h) + nll).mean()
    assert got[0]["eval_loss"] == pytest.approx(float(loss), rel=1e-5)


def test_vla_eval_action_l1_equals_the_policy_on_each_record(tmp_path):
    """Held-out VLA records: the logged action L1 is the mean |predicted - true| normalised action of
    the trained module's predict(), record by record."""
    import numpy as np

    from alignment.train import build_config
    from alignment.vla import VLATrainer
    from vla.data import VLASample, collate
    from vla.policy import PREDICT_INPUTS
    from vla.synth import write_vla_synth

    data = write_vla_synth(str(tmp_path / "vla"), n=16, n_test=5, seed=0)
    out = str(tmp_path / "run")
    yaml = os.path.join(ROOT, "configs", "spatial_forcing", "vla.yaml")
    over = [
        f"data.train={data['train']}",
        f"data.eval={data['test']}",
        "train.max_steps=2",
        "train.eval_every=2",
    ]
    trainer = VLATrainer(
        build_config(yaml, over + ["train.export=false", "data.micro_batch_size=2"], output_dir=out)
    )
    trainer.run()
    got = [x for x in read_metrics(out) if "eval_action_l1" in x]
    assert [x["step"] for x in got] == [2]
    ds, errors = trainer.dataset, []
    with open(data["test"]) as f:
        records = [json.loads(x) for x in f]
    base = os.path.dirname(data["test"])
    trainer.vla.eval()
    for rec in records:
        sample = ds.vla.encode(rec["messages"], base, ds.stats.normalize_proprio(np.asarray(rec["proprio"])))
        batch = collate([VLASample(*sample)], trainer.processor.tokenizer.pad_token_id, 2)
        with torch.no_grad():
            y = trainer.vla.predict(**{k: batch[k] for k in PREDICT_INPUTS})[0].numpy()
        errors.append(np.abs(y - ds.stats.normalize_actions(np.asarray(rec["actions"]))).mean())
    assert got[0]["eval_action_l1"] == pytest.approx(float(np.mean(errors)), rel=1e-4)


def test_grpo_eval_greedy_rewards_equal_generation_with_the_saved_model(tmp_path):
    """Held-out prompts: the logged mean rewards equal one greedy generation per prompt by the
    exported model (step 2), scored by each reward function on its own."""
    from alignment.rewards import get_reward
    from alignment.train import train
    from evaluation.evaluate import generate
    from mm.dataset import iter_jsonl

    prompts = str(tmp_path / "held.jsonl")  # answers that random text holds or lacks: mixed rewards
    with open(os.path.join(ROOT, "data", "letters", "train.jsonl")) as f, open(prompts, "w") as g:
        for line, answer in zip(f, ["a", "e", "zq", "o", "x", " ", "t", "qz"]):
            g.write(json.dumps({**json.loads(line), "answer": answer}) + "\n")
    out = str(tmp_path / "run")
    over = [f"data.eval={prompts}", "train.max_steps=2", "train.eval_every=2", "train.eval_max_samples=6"]
    over += ["rewards.accuracy=0.5", "data.micro_batch_size=4"]
    train(os.path.join(ROOT, "configs", "quickstart", "grpo.yaml"), over, output_dir=out)
    got = [x for x in read_metrics(out) if "eval_reward" in x]
    assert [x["step"] for x in got] == [2]

    model, processor = load_model(os.path.join(out, "final"))
    model.eval()
    recs = [rec for _, rec in iter_jsonl(prompts)][:6]
    enc = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
    texts = generate(model, processor, enc, [r.prompt for r in recs], os.path.dirname(prompts), 12)
    per = {
        name: [get_reward(name)([t], answer=r.answer, meta={})[0] for t, r in zip(texts, recs)]
        for name in ("contains_answer", "accuracy")
    }
    mean = {k: sum(v) / len(v) for k, v in per.items()}
    assert 0 < mean["contains_answer"] < 1, texts
    assert got[0]["eval_reward/contains_answer"] == pytest.approx(mean["contains_answer"])
    assert got[0]["eval_accuracy"] == pytest.approx(mean["accuracy"])
    assert got[0]["eval_reward"] == pytest.approx(mean["contains_answer"] + 0.5 * mean["accuracy"])


def test_sft_eval_generate_accuracy_equals_mmpost_eval(tmp_path):
    """train.eval_generate: the logged accuracy equals ``mmpost eval`` (evaluation.evaluate)
    on the exported model; the model learns to answer x, so the y-records are wrong (0 < acc < 1)."""
    from alignment.train import train
    from evaluation.evaluate import evaluate

    def rec(i, answer):
        msgs = [
            {"role": "user", "content": f"Say the letter {i}."},
            {"role": "assistant", "content": "<answer>x</answer>"},
        ]
        return json.dumps({"id": f"r{i}", "messages": msgs, "answer": answer}) + "\n"

    data, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    data.write_text("".join(rec(i, "x") for i in range(16)))
    held.write_text("".join(rec(100 + i, "x" if i < 4 else "y") for i in range(6)))
    out = str(tmp_path / "run")
    over = [f"data.train={data}", f"data.eval={held}", "data.layout=pad", "data.micro_batch_size=4"]
    over += ["train.max_steps=40", "train.eval_every=40", "train.eval_generate=true"]
    over += [
        "train.eval_max_new_tokens=8",
        "optim.lr=5e-3",
        "optim.schedule=constant",
        "train.save_every=0",
        "optim.warmup_ratio=0",
    ]
    train(QUICKSTART, over, output_dir=out)
    got = [x for x in read_metrics(out) if "eval_accuracy" in x]
    assert [x["step"] for x in got] == [40]
    want = evaluate(os.path.join(out, "final"), str(held), str(tmp_path / "eval.jsonl"), max_new_tokens=8)
    assert got[0]["eval_accuracy"] == pytest.approx(want)
    assert 0 < want < 1


def test_eval_lines_reach_the_trackers_and_leave_the_training_bar(tmp_path, monkeypatch):
    """An eval line (no loss) goes to metrics.jsonl and every tracker; the bar keeps the training
    step; TensorBoard files it under eval/ (a recording writer stands in for SummaryWriter)."""
    from alignment.infra.metrics import MetricsLogger
    from alignment.infra.trackers import TensorBoard

    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def close(self):
            pass

    monkeypatch.setenv("MMPOST_PROGRESS", "1")
    log = MetricsLogger(str(tmp_path), total_steps=10, report_to=[])
    tb = TensorBoard.__new__(TensorBoard)
    tb.writer = Writer()
    log.trackers = [tb]
    log.log({"step": 4, "loss": 1.5, "lr": 0.01})
    log.log({"step": 5, "eval_loss": 2.25, "eval_accuracy": 0.5})
    assert log.bar.n == 4
    log.close()
    assert read_metrics(str(tmp_path))[1] == {"step": 5, "eval_loss": 2.25, "eval_accuracy": 0.5}
    assert tb.writer.scalars == [
        ("train/loss", 1.5, 4),
        ("train/lr", 0.01, 4),
        ("eval/loss", 2.25, 5),
        ("eval/accuracy", 0.5, 5),
    ]


def test_data_eval_null_switches_evaluation_off(synth, tmp_path, capsys):
    """The quickstart YAML sets eval_every and save_best; data.eval=null alone turns both off,
    said once in the log (it used to stop at two errors, one per key)."""
    from alignment.train import train

    out = str(tmp_path / "run")
    over = [f"data.train={synth['train']}", "data.eval=null", "train.max_steps=2", "train.save_every=0"]
    train(QUICKSTART, [*over, "train.export=false", "train.log_every=1"], output_dir=out)
    log = capsys.readouterr().out
    said = "data.eval is not set: no evaluation during training (train.eval_every=100 and train.save_best=eval_loss ignored)"
    assert log.count(said) == 1, log[-2000:]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    assert not any(k.startswith("eval_") for m in metrics for k in m)
    assert not os.path.exists(os.path.join(out, "best"))
