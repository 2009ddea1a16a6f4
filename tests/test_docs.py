"""The Python examples in README.md and docs/ run as written (from the repository root)."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path, monkeypatch, capsys):
    from alignment.losses import RL_LOSSES
    from alignment.rewards import REWARDS
    from evaluation.benchmarks import BENCHMARKS
    from vision_tools.generation import GENERATORS

    monkeypatch.chdir(ROOT)
    registries = (GENERATORS, RL_LOSSES, REWARDS, BENCHMARKS)  # docs/extending.md registers its own
    saved = [dict(r) for r in registries]
    try:
        for block in python_blocks(path):
            exec(compile(block, str(path), "exec"), {"__name__": "__doc_example__"})
    finally:
        for registry, entries in zip(registries, saved):
            registry.clear()
            registry.update(entries)
    assert os.getcwd() == str(ROOT)
