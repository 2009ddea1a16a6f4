"""``mmpost eval --benchmark`` end to end on tiny (table, scores.json, predictions), the tool loop
for tool-trained models, and the Generalization Factor over several OOD sets."""

import json
import os

import pytest

from evaluation import evaluate as ev
from evaluation.benchmarks import get_benchmark
from evaluation.benchmarks.fixtures import write_fixture
from evaluation.benchmarks.run import evaluate_benchmark
from evaluation.gf import generalization_factor, ood_accuracy
from mmpost import main


def test_cli_prints_a_per_category_table_and_writes_scores(tmp_path, capsys):
    data = write_fixture("mathvista", str(tmp_path / "mathvista"))
    out = tmp_path / "out"
    args = [
        "eval",
        "tiny",
        "--benchmark",
        "mathvista",
        "--data",
        data,
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| overall | |" in text and "| task | figure question answering |" in text
    assert "| skills | geometry reasoning |" in text
    scores = json.load(open(out / "scores.json"))
    rows = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert scores["overall"]["total"] == 3 and len(rows) == 3
    assert scores["categories"]["question_type"]["free_form"]["total"] == 2
    # the saved scores are the benchmark's rules applied to the saved completions
    bench = get_benchmark("mathvista")
    samples = {s.id: s for s in bench.load(data)}
    for r in rows:
        s = samples[r["id"]]
        assert r["score"] == bench.score(s, bench.extract(s, r["completion"]))
    assert scores["overall"]["correct"] == sum(r["score"] for r in rows)
    assert main(args + ["--base", "tiny", "--ood", data]) == 2  # the GF takes JSONL files, not a benchmark
    assert "--benchmark scores one benchmark" in capsys.readouterr().err
    assert main(["eval", "tiny", "--benchmark", "chartqa", "--data", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_several_models_get_one_folder_each(tmp_path, capsys):
    data = write_fixture("cls_rl", str(tmp_path / "cls"))
    out = tmp_path / "out"
    args = ["eval", "tiny", "tiny", "--benchmark", "cls_rl", "--data", data, "--max-new-tokens", "2"]
    assert main(args + ["--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["0_tiny", "1_tiny"]
    assert capsys.readouterr().out.count("| dataset | flowers102_test |") == 2


def test_tools_flag_runs_the_tool_loop(tmp_path, monkeypatch, capsys):
    calls = []
    original = ev.tool_rollouts

    def counting(model, processor, prompts, *a):
        calls.append(len(prompts))
        assert "<tools>" in prompts[0][0].text() and prompts[0][1].text().startswith("Image 0: 56 x 56.")
        return original(model, processor, prompts, *a)

    monkeypatch.setattr(ev, "tool_rollouts", counting)
    data = write_fixture("chartqa", str(tmp_path / "chartqa"))
    scores = evaluate_benchmark(
        "tiny", "chartqa", data, str(tmp_path / "out"), max_new_tokens=4, tools=True, max_turns=1
    )
    assert calls == [3] and scores["overall"]["total"] == 3


def test_gf_over_several_ood_sets(tmp_path, monkeypatch, capsys):
    acc = {  # (model, file) -> accuracy 0-1
        ("base", "id"): 0.50,
        ("base", "o1"): 0.40,
        ("base", "o2"): 0.20,
        ("dpo", "id"): 0.54,
        ("dpo", "o1"): 0.46,
        ("dpo", "o2"): 0.20,
    }
    monkeypatch.setattr(ev, "evaluate", lambda model, path, out, **kw: acc[(model, path)])
    rows = ev.run_gf(["dpo"], "base", "id", ["o1", "o2"])
    # equal weights: G_OOD = mean(+6, 0) = 3 points; G_ID = 4
    assert rows[1]["g_ood"] == pytest.approx(3.0) and rows[1]["acc_ood_sets"] == pytest.approx([46.0, 20.0])
    assert rows[1]["gf"] == pytest.approx(5 * 4 * 3 / (4 * 4 + 3))
    rows = ev.run_gf(["dpo"], "base", "id", ["o1", "o2"], ood_weights=[3, 1])
    assert rows[1]["g_ood"] == pytest.approx(4.5)  # (3 x 6 + 0) / 4
    assert rows[1]["gf"] == pytest.approx(generalization_factor(4.0, 4.5))
    assert "weights 3, 1" in capsys.readouterr().out
    assert ood_accuracy([40.0]) == 40.0
    with pytest.raises(ValueError, match="one non-negative weight per OOD set"):
        ood_accuracy([1.0, 2.0], [1.0])
