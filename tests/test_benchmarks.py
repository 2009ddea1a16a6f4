"""The benchmark scripts run (quick settings) and print their ratios; the numbers themselves are
measured by running them in full (see each script's docstring), never asserted here."""

import subprocess
import sys
from pathlib import Path

import pytest

from mm.imports import is_available
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]

QUICK = [
    (
        "rollout.py",
        ["--preset", "tiny", "--prompts", "1", "--G", "2", "--turns", "2", "--tokens", "4", "--rounds", "1"],
        "x vs hf",
    ),
    ("streaming.py", ["--checkpoints", "3,6", "--tokens", "2"], "latency per second vs ours"),
    ("spatial_forcing.py", ["--quick"], "live / precomputed"),
    ("dpo_step.py", ["--no-trl", "--rounds", "1", "--pairs", "4", "--batch-size", "2"], "median s/step"),
    ("data_formats.py", ["--rows", "200", "--image-kb", "2"], "eager / lazy"),
    ("packed_attention.py", ["--lengths", "100,50,80", "--rounds", "1"], "x dense"),
    (
        "sft_throughput.py",
        [
            "--preset",
            "tiny",
            "--n",
            "4",
            "--median-words",
            "20",
            "--rounds",
            "1",
            "--arms",
            "padded",
            "packed_flex",
        ],
        "x padded",
    ),
    (
        "decode_cache.py",
        ["--preset", "tiny", "--rows", "2", "--tokens", "4", "--rounds", "1"],
        "concatenate / in_place",
    ),
    (
        "serve.py",
        [
            "--levels",
            "1",
            "2",
            "--max-tokens",
            "2",
            "--max-turns",
            "1",
            "--servers",
            "continuous",
            "hf_generate",
        ],
        "p50 hf_generate / continuous at 2 concurrent",
    ),
]


@pytest.mark.parametrize("script, args, expect", QUICK, ids=[q[0] for q in QUICK])
def test_benchmark_runs(script, args, expect):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert expect in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    not is_available("metaworld"), reason="metaworld is not installed (pip install 'mmpost[sim]')"
)
def test_spatial_forcing_closed_loop_arm_runs(tmp_path):
    """The MetaWorld arm of benchmarks/spatial_forcing.py in small: its three arms and the table."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "spatial_forcing.py"), "--quick", "--sim-only"]
    r = subprocess.run(
        [*cmd, "--sim-dir", str(tmp_path)], capture_output=True, text=True, timeout=600, env=subprocess_env()
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| task | arm | success (pooled, 95% Wilson)" in r.stdout
    for arm in (
        "| reach-v3 | alpha0 |",
        "| reach-v3 | geometry (alpha 0.5) |",
        "| reach-v3 | random (alpha 0.5) |",
    ):
        assert arm in r.stdout
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
