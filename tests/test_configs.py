"""Every YAML under configs/ loads and validates; DeepSpeed JSONs equal the built-in ones; config errors are clear."""

import glob
import json
import os

import pytest
import yaml

from alignment.infra.deepspeed_setup import BUILTIN
from alignment.train import Pipeline, build_config
from mm.config import ConfigError, from_dict
from mmpost import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_there_are_configs():
    names = {os.path.relpath(p, ROOT) for p in YAMLS}
    assert {
        "configs/quickstart/sft.yaml",
        "configs/virc/stage1_instructional_sft.yaml",
        "configs/virc/stage2_practice_sft.yaml",
        "configs/virc/pipeline.yaml",
    } <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: os.path.relpath(p, ROOT))
def test_yaml_loads_and_documents_itself(path):
    text = open(path).read()
    assert text.startswith("#"), "every config opens with a comment block"
    header = "".join(ln for ln in text.splitlines(True) if ln.startswith("#"))
    assert "mmpost " in header and "launch" in header and "override" in header
    data = yaml.safe_load(text)
    if "stages" in data:
        pipe = from_dict(Pipeline, data)
        for st in pipe.stages:
            assert os.path.exists(os.path.join(os.path.dirname(path), st.config))
    else:
        cfg = build_config(path)
        assert cfg.optim.lr > 0


def test_virc_hyperparameters():
    s1 = build_config(os.path.join(ROOT, "configs/virc/stage1_instructional_sft.yaml"))
    s2 = build_config(os.path.join(ROOT, "configs/virc/stage2_practice_sft.yaml"))
    assert (s1.optim.lr, s1.train.epochs, s1.optim.warmup_ratio, s1.optim.schedule) == (
        5e-6,
        3,
        0.03,
        "cosine",
    )
    assert (s2.optim.lr, s2.train.epochs, s2.optim.warmup_ratio) == (1e-6, 6, 0.1)
    for s in (s1, s2):
        assert set(s.model.freeze) == {"vision_tower", "merger"}
    assert s1.data.drop_tool_images and not s2.data.drop_tool_images


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_json_matches_builtin(name):
    assert json.load(open(os.path.join(ROOT, "configs", "deepspeed", f"{name}.json"))) == BUILTIN[name]


def test_unknown_key_names_the_nearest(capsys):
    cfg = os.path.join(ROOT, "configs/quickstart/sft.yaml")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'\?"):
        build_config(cfg, ["optim.lrr=1e-5"])
    assert main(["train", cfg, "optim.lrr=1e-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.lrr" in err and "optim.lr" in err


def test_wrong_type_names_the_key(capsys):
    cfg = os.path.join(ROOT, "configs/quickstart/sft.yaml")
    assert main(["train", cfg, "train.epochs=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.epochs: expected int, got 'many'" in err
    with pytest.raises(ConfigError, match="data.layout: 'packed' is not one of 'pack', 'pad'"):
        build_config(cfg, ["data.layout=packed"])


def test_numeric_strings_and_nested_overrides():
    cfg = build_config(
        os.path.join(ROOT, "configs/quickstart/sft.yaml"),
        ["optim.lr=1e-5", "data.visual.max_visual_tokens=512", "model.freeze=[merger]"],
    )
    assert (
        cfg.optim.lr == 1e-5 and cfg.data.visual.max_visual_tokens == 512 and cfg.model.freeze == ["merger"]
    )
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        build_config(None, ["optim.lr"])


def test_streaming_hyperparameters():
    cfg = build_config(os.path.join(ROOT, "configs/streaming/sft.yaml"))
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_ratio, cfg.train.epochs) == (
        1e-5,
        "cosine",
        0.03,
        1,
    )
    assert set(cfg.model.freeze) == {"vision_tower", "merger"} and cfg.train.deepspeed == "zero3"
