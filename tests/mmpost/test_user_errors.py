"""A mistake in the user's data or config is one line from the command (``mmpost CMD: error: ...``)
and exit status 2, never a traceback: trainers, builders and evaluation raise DataError /
ConfigError (each case below used to end in a ValueError's traceback)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import solid, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}


def write(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def case(name: str, tmp) -> tuple[list[str], str]:
    """(the command's arguments, what its one line says)."""
    sft = write(tmp / "sft.jsonl", [SFT])
    if name == "train_without_data":
        return ["train", "configs/quickstart/sft.yaml", "data.train="], "data.train is empty"
    if name == "dpo_without_pairs":
        args = ["train", "configs/specs/dpo_cold_start.yaml", f"data.train={sft}", "data.on_error=skip"]
        return args, f"{sft}: no preference records"
    if name == "virc_rl_without_trajectories":
        return [
            "data",
            "virc-rl",
            sft,
            str(tmp / "out.jsonl"),
        ], f"{sft}: no trajectories with assistant turns"
    if name == "cls_fewshot_with_one_class":
        (tmp / "cls" / "cat").mkdir(parents=True)
        solid(28, 28).save(tmp / "cls" / "cat" / "a.png")
        return [
            "data",
            "cls-fewshot",
            str(tmp / "cls"),
            str(tmp / "few"),
        ], "found 1 class folder(s) with images"
    if name == "eval_without_answers":
        return ["eval", "tiny", "--data", sft], f"{sft}: no records with a prompt and an answer"
    if name == "crux_problem_without_answer":
        problems = write(tmp / "p.jsonl", [{"image": "x.png", "question": "Q?"}])
        return ["data", "crux", problems, str(tmp / "crux")], f"{problems}:1: a problem needs 'image'"
    raise KeyError(name)


CASES = [
    "train_without_data",
    "dpo_without_pairs",
    "virc_rl_without_trajectories",
    "cls_fewshot_with_one_class",
    "eval_without_answers",
    "crux_problem_without_answer",
]


@pytest.mark.parametrize("name", CASES)
def test_a_user_mistake_is_one_line_and_exit_2(name, tmp_path):
    args, says = case(name, tmp_path)
    env = subprocess_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, "-m", "mmpost", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    command = " ".join(args[:2]) if args[0] == "data" else args[0]
    assert lines[-1].startswith(f"mmpost {command}: error: ") and says in lines[-1], r.stderr[-3000:]
    assert sum("error:" in line for line in lines) == 1  # the message is that one line
