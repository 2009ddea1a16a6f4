"""The mmpost command: help, info, quickstart and stats run and print what they promise."""

import subprocess
import sys

from mm.cli import main
from mm.synthetic import sample_data_path


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "mm.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("info", "quickstart", "data"):
        assert cmd in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "transformers", "flash-attn", "deepspeed", "decord", "CUDA", "attention"):
        assert key in out


def test_quickstart(capsys):
    assert main(["quickstart"]) == 0
    out = capsys.readouterr().out
    assert "[4/4] forward pass" in out and "loss" in out
    loss = float(out.split("loss ")[1].split()[0])
    assert 0 < loss < 20


def test_stats(capsys):
    assert main(["data", "stats", sample_data_path()]) == 0
    out = capsys.readouterr().out
    assert "visual tokens" in out and "total tokens" in out
    assert "sft: 4" in out and "rl: 1" in out and "preference: 1" in out


def test_bad_usage_exits_2(capsys):
    assert main(["data"]) == 2
