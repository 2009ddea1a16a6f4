"""Every ``mmpost`` command that reads parquet, each in a fresh process (``python -m mmpost``).

A test in this process would pass on the modules earlier tests imported: ``import pyarrow`` does
not import ``pyarrow.parquet``, so code that reaches for ``pyarrow.parquet`` without importing it
works only after something else has (it failed so for ``mmpost eval --benchmark`` in a fresh
process). Each command here runs alone, from the repository root, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import subprocess_env
from tests.format_rows import easyr1_rows, write_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTH = os.path.join(ROOT, "data", "synth")
pytest.importorskip("datasets")
pytest.importorskip("pyarrow")


def mmpost(tmp_path, *args: str, timeout: int = 600) -> str:
    """Run ``python -m mmpost ARGS`` in a fresh process; its stdout (fails with its stderr)."""
    env = subprocess_env(HF_DATASETS_CACHE=str(tmp_path / "hf_cache"), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "mmpost", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"mmpost {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    return r.stdout


def mathvista_parquet(folder) -> str:
    """The MathVista fixture in Hugging Face's layout: data/testmini-*.parquet, images as bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evaluation.benchmarks.fixtures import write_fixture

    testmini = write_fixture("mathvista", str(folder / "gh"))  # the GitHub layout: testmini.json
    gh = os.path.dirname(testmini)
    rows = json.load(open(testmini)).values()
    rows = [
        {**r, "decoded_image": {"bytes": open(os.path.join(gh, r["image"]), "rb").read(), "path": r["image"]}}
        for r in rows
    ]
    out = folder / "hf" / "data" / "testmini-00000-of-00001.parquet"
    out.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    return str(out)


SHIPPED = os.path.join(SYNTH, "train.parquet")  # ShareGPT rows, images embedded


def test_data_validate_stats_and_convert_read_parquet(tmp_path):
    assert "200 record(s), 200 ok" in mmpost(tmp_path, "data", "validate", SHIPPED)
    assert "200 record(s) (sft: 200)" in mmpost(tmp_path, "data", "stats", SHIPPED)
    out = tmp_path / "train.jsonl"
    assert "200 record(s) written, 0 row(s)" in mmpost(tmp_path, "data", "convert", SHIPPED, str(out))


@pytest.mark.slow
def test_train_reads_a_parquet_data_train(tmp_path):
    out = mmpost(
        tmp_path,
        "train",
        os.path.join(ROOT, "configs", "quickstart", "sft.yaml"),
        f"data.train={SHIPPED}",
        "data.eval=null",
        "train.max_steps=1",
        "train.export=false",
        "train.save_every=0",
        "--output-dir",
        str(tmp_path / "run"),
    )
    assert "sft done: 1 steps" in out, out[-2000:]


@pytest.mark.slow
def test_eval_reads_parquet_prompts(tmp_path):
    from tests.alignment.test_grpo import image_letter_task

    rl = write_parquet(easyr1_rows(image_letter_task(tmp_path), embed=True), str(tmp_path / "rl.parquet"))
    res = tmp_path / "eval.jsonl"
    mmpost(tmp_path, "eval", "tiny", "--data", rl, "--max-new-tokens", "2", "--limit", "2", "--out", str(res))
    assert len(open(res).readlines()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mathvista", "mmmu"])
def test_eval_benchmark_reads_parquet(tmp_path, name):
    from evaluation.benchmarks.fixtures import write_fixture

    data = mathvista_parquet(tmp_path) if name == "mathvista" else write_fixture("mmmu", str(tmp_path / "m"))
    out = tmp_path / "bench"
    args = (
        "eval",
        "tiny",
        "--benchmark",
        name,
        "--data",
        data,
        "--max-new-tokens",
        "2",
        "--out",
        str(out),
    )
    assert "| overall |" in mmpost(tmp_path, *args)
    assert json.load(open(out / "scores.json"))["overall"]["total"] > 0


def test_data_validate_and_stats_read_a_lerobot_folder(tmp_path):
    pytest.importorskip("av")
    import numpy as np

    from vla.lerobot_write import Episode, write_lerobot

    rng = np.random.default_rng(0)
    episodes = [
        Episode(
            "push", {"front": rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)}, rng.normal(size=(4, 3))
        )
        for _ in range(2)
    ]
    root = write_lerobot(str(tmp_path / "robot"), episodes, fps=10)
    assert "2 episode(s), 8 frame(s), 0 with problems" in mmpost(tmp_path, "data", "validate", root)
    assert "2 episode(s), 8 frame(s) at 10 fps" in mmpost(tmp_path, "data", "stats", root)
