"""Rewards and tools from the user's own files (``file.py:function`` in the YAML)."""

import json
import os
import textwrap

import pytest
from PIL import Image

from alignment.grpo import GRPOTrainer
from alignment.infra.metrics import read_metrics
from alignment.train import build_config, train
from mm.config import ConfigError
from tests.alignment.conftest import ROOT
from tests.conftest import solid
from vision_tools.generation import ScriptedGenerator

QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "grpo.yaml")


def config_file(tmp_path, extra: str, files: dict[str, str]) -> str:
    """The quickstart GRPO config plus ``extra`` YAML, beside the users' ``files``."""
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    with open(QUICKSTART) as f:
        base = f.read().replace("data/letters/", os.path.join(ROOT, "data", "letters") + "/")
    base = base.replace("rewards:\n  contains_answer: 1.0\n", "")
    path = tmp_path / "grpo.yaml"
    path.write_text(base + textwrap.dedent(extra))
    return str(path)


def test_user_reward_sets_the_rewards_of_a_run(tmp_path, monkeypatch):
    """A 2-step GRPO run rewarded by contains_answer (1.0) + a user's length reward (0.5): the
    logged reward means equal those recomputed by hand from the completions the reward saw."""
    log = tmp_path / "seen.jsonl"
    cfg = config_file(
        tmp_path,
        "rewards:\n  - {name: contains_answer, weight: 1.0}\n  - {name: my_rewards.py:length, weight: 0.5}\n",
        {
            "my_rewards.py": f"""
            import json

            def length(completions, answer=None, **sample):
                with open({str(log)!r}, "a") as f:
                    f.write(json.dumps({{"completions": completions, "answer": answer}}) + "\\n")
                return [len(c) / 10 for c in completions]
            """
        },
    )
    out = str(tmp_path / "run")
    monkeypatch.chdir(tmp_path.parent)  # the file is found next to the config, not in the working directory
    train(cfg, ["train.export=false", "train.max_steps=2"], output_dir=out)
    rows = read_metrics(out)
    groups = [json.loads(line) for line in log.read_text().splitlines()]
    groups = [g for g in groups if g["completions"]]  # setup's check calls every reward once, on []
    assert len(groups) == 2 * 4 and all(len(g["completions"]) == 8 for g in groups)
    for step, row in enumerate(rows):
        seen = [(c, g["answer"]) for g in groups[4 * step : 4 * step + 4] for c in g["completions"]]
        contains = [float(a in c.lower()) for c, a in seen]
        length = [len(c) / 10 for c, _ in seen]
        total = [x + 0.5 * y for x, y in zip(contains, length)]
        assert row["reward_mean"] == pytest.approx(sum(total) / len(total), abs=1e-5)
        assert row["reward/my_rewards.py:length"] == pytest.approx(sum(length) / len(length), abs=1e-6)
        assert row["reward/contains_answer"] == pytest.approx(sum(contains) / len(contains), abs=1e-6)
    assert len({len(c) for g in groups for c in g["completions"]}) > 1  # the lengths did differ


TOOL = '''
from PIL import Image

from vision_tools.tools import ToolContext


def flip_image(ctx: ToolContext, image_index: int) -> Image.Image:
    """Mirror an image left to right.

    Args:
        image_index: which image to mirror (0 is the question image).
    """
    return ctx.image(image_index).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
'''


def test_user_tool_is_declared_and_executed(tmp_path):
    """rollout.tools [crop_image, my_tools.py:flip_image]: the prompts' system turn declares both
    schemas, and a scripted call of the user's tool inserts the mirrored image as image 1."""
    img = solid(112, 84)
    img.save(tmp_path / "q.png")
    prompt = [
        {"role": "user", "content": [{"type": "image", "image": "q.png"}, {"type": "text", "text": "Q?"}]}
    ]
    (tmp_path / "rl.jsonl").write_text(json.dumps({"prompt": prompt, "answer": "3"}) + "\n")
    cfg = build_config(
        config_file(
            tmp_path, "rollout:\n  tools: [crop_image, my_tools.py:flip_image]\n", {"my_tools.py": TOOL}
        ),
        [f"data.train={tmp_path / 'rl.jsonl'}", "data.prompts_per_step=1", "rollout.num_generations=2"]
        + ["rollout.max_turns=2", "rollout.max_completion_length=64", "rollout.image_cache=false"],
    )
    trainer = GRPOTrainer(cfg)
    trainer.state = trainer.setup("cpu")
    call = (
        '<think>mirror</think><tool_call>{"name": "flip_image", "arguments": {"image_index": 0}}</tool_call>'
    )
    turns = [[call, "<think>ok</think><answer>3</answer>"], ["<think>ok</think><answer>4</answer>"]]
    trainer.state.engine.generator = ScriptedGenerator(trainer.processor, turns)
    (group,) = trainer.state.rollouts.roll([0])
    trajs = group.trajectories
    system = trajs[0].messages[0]
    assert system["role"] == "system"
    declared = [
        json.loads(line)["function"]
        for line in system["content"].split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    ]
    assert [d["name"] for d in declared] == ["crop_image", "flip_image"]
    assert declared[1]["description"] == "Mirror an image left to right."
    assert declared[1]["parameters"]["required"] == ["image_index"]
    first, second = trajs
    assert first.turns[0].parsed.ok and first.turns[0].image_index == 1 and first.answer == "3"
    shown = first.images[0]
    assert first.images[1].tobytes() == shown.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes()
    assert len(second.images) == 1 and second.answer == "4"


def bad(tmp_path, extra: str, files: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        build_config(config_file(tmp_path, extra, files or {}))
    return str(e.value)


def test_bad_references_name_the_key_and_the_fix(tmp_path):
    msg = bad(tmp_path, "rewards:\n  - {name: nowhere.py:score, weight: 1.0}\n")
    assert "rewards[0].name" in msg and "'nowhere.py' not found" in msg and "relative to the config" in msg
    msg = bad(
        tmp_path,
        "rewards:\n  r.py:scor: 1.0\n",
        {"r.py": "def score(completions, **sample):\n    return []\n"},
    )
    assert "rewards.r.py:scor" in msg and "no function 'scor'" in msg and "score" in msg
    msg = bad(
        tmp_path,
        "rewards:\n  - {name: s.py:score}\n",
        {"s.py": "def score(completions, answer):\n    return []\n"},
    )
    assert "rewards[0].name" in msg and "**sample" in msg
    msg = bad(tmp_path, "rewards:\n  - {name: accuracyy}\n")
    assert "unknown reward 'accuracyy'" in msg and "accuracy" in msg and "file.py:function" in msg
    msg = bad(tmp_path, "rewards:\n  - {name: accuracy}\n  - {name: accuracy}\n")
    assert "rewards[1].name" in msg and "twice" in msg
    msg = bad(
        tmp_path,
        "rollout:\n  tools: [t.py:probe]\n",
        {"t.py": "def probe(image_index: int):\n    return None\n"},
    )
    assert "rollout.tools[0]" in msg and "docstring" in msg
    msg = bad(
        tmp_path, "rollout:\n  tools: [u.py:probe]\n", {"u.py": 'def probe(image_index):\n    """P."""\n'}
    )
    assert "rollout.tools[0]" in msg and "type annotation" in msg
    msg = bad(tmp_path, "rollout:\n  tools: [crop]\n")
    assert "rollout.tools[0]" in msg and "unknown tool 'crop'" in msg and "crop_image" in msg
    msg = bad(tmp_path, "rollout:\n  tools: [v.py:x]\n", {"v.py": "raise RuntimeError('boom')\n"})
    assert "rollout.tools[0]" in msg and "boom" in msg


def test_both_reward_forms_and_tool_switches_load(tmp_path):
    files = {"r.py": "def score(completions, **sample):\n    return [1.0] * len(completions)\n"}
    a = build_config(config_file(tmp_path, "rewards:\n  accuracy: 1.0\n  r.py:score: 0.5\n", files))
    b = build_config(
        config_file(tmp_path, "rewards:\n  - {name: accuracy}\n  - {name: r.py:score, weight: 0.5}\n", files)
    )
    assert a.rewards == b.rewards == {"accuracy": 1.0, "r.py:score": 0.5}
    assert build_config(QUICKSTART).rollout.toolset() is None  # false: as before
    on = build_config(QUICKSTART, ["rollout.tools=true"]).rollout.toolset()
    assert [t.name for t in on] == ["crop_image", "scale_image", "display_image"]


def test_declared_tools_replace_the_system_turns_tools_section():
    """rollout.tools true on data that already declares the ViRC tools changes nothing; other system
    text is kept before the declaration; a prompt without a system turn gets one."""
    from vision_tools.api import build_prompt
    from vision_tools.protocol import declare_tools, system_prompt
    from vision_tools.tools import VIRC_TOOLS, crop_image

    virc = build_prompt(solid(56, 56), "Q?")
    assert declare_tools(virc, list(VIRC_TOOLS)) == virc
    mine = [{"role": "system", "content": system_prompt(preamble="Be brief.")}, virc[1]]
    assert declare_tools(mine, [crop_image])[0]["content"] == system_prompt(
        [crop_image], preamble="Be brief."
    )
    bare = declare_tools(virc[1:], [crop_image])
    assert bare[0] == {"role": "system", "content": system_prompt([crop_image])} and bare[1:] == virc[1:]
