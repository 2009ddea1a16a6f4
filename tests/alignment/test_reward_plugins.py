"""Rewards from the user's own files (``file.py:function``): loaded and checked when the config loads."""

import os

import pytest

from alignment.rewards import combine
from alignment.train import build_config
from mm.config import ConfigError
from tests.alignment.conftest import ROOT

GRPO = os.path.join(ROOT, "configs", "quickstart", "grpo.yaml")


def write(tmp_path, body: str) -> str:
    path = tmp_path / "my_rewards.py"
    path.write_text(body)
    return str(path)


def test_a_users_reward_is_weighted_with_the_built_ins(tmp_path):
    path = write(
        tmp_path,
        "def length(completions, answer=None, **sample):\n    return [len(c) for c in completions]\n",
    )
    cfg = build_config(GRPO, [f'rewards={{"{path}:length": 0.5, contains_answer: 1.0}}'])
    total, parts = combine(cfg.rewards, ["xx", "abc"], answer="x")
    assert parts[f"{path}:length"] == [2, 3]
    assert total == [0.5 * 2 + 1.0, 0.5 * 3 + 0.0]


@pytest.mark.parametrize(
    "body, name, message",
    [
        ("def length(completions, **sample):\n    return []\n", "nope.py:length", "not found"),
        ("def length(completions, **sample):\n    return []\n", "{path}:lenght", "has no function 'lenght'"),
        (
            "def length(completions):\n    return []\n",
            "{path}:length",
            "a reward must take the completions first",
        ),
    ],
)
def test_bad_plugins_fail_when_the_config_loads(tmp_path, body, name, message):
    path = write(tmp_path, body)
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
    ):
        build_config(GRPO, [f'rewards={{"{name.format(path=path)}": 1.0}}'])
