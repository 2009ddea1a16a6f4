"""The mmpost command: help, info, quickstart and stats run and print what they promise; every
command's --help shows its config dataclasses' help texts; flags round-trip to the dataclasses;
user errors are one line, anything else shows its traceback."""

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import typing

import pytest

from mm.synthetic import sample_data_path
from mmpost import COMMANDS, build_parser, main
from mmpost.data import COMMANDS as DATA_COMMANDS
from mmpost.flags import add_config_flags, config_from_args
from tests.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "mmpost", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("info", "quickstart", "data"):
        assert cmd in out


def test_building_the_parser_imports_no_torch():
    code = textwrap.dedent(
        """
        import sys
        import mmpost
        for argv in ([], ["--help"], ["data"], ["data", "--help"]):
            mmpost.build_parser(argv).format_help()
        heavy = sorted(m for m in ("torch", "transformers", "numpy", "PIL") if m in sys.modules)
        print("imported:", heavy)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert "imported: []" in r.stdout


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


# ----------------------------------------------------------------------------- --help from the configs


def leaves(cls, prefix=""):
    """(dotted key, help) of every field, nested dataclasses flattened: read straight from the
    dataclass metadata, independently of mm.config.describe and mmpost.flags."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f.metadata.get("help", "")


def help_text(argv, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per help text, so texts are found whole
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def every_command():
    return [[c] for c in COMMANDS if c != "data"] + [["data", c] for c in DATA_COMMANDS]


@pytest.mark.parametrize("argv", every_command(), ids=" ".join)
def test_every_command_has_help(argv, capsys, monkeypatch):
    out = help_text(argv, capsys, monkeypatch)
    assert out.startswith(f"usage: mmpost {' '.join(argv)}")


def _configs():
    from alignment.builders.specs_pairs import PairsConfig
    from alignment.train import ALGORITHMS, Pipeline, Stage
    from mm.plugins import import_ref as resolve
    from mm.visual import VisualConfig
    from streaming.engine import StreamConfig
    from vision_tools.server import ServeConfig

    # engine.logprobs: asked for per request, not a server flag
    serve_exclude = {
        "max_body_bytes",
        "max_image_bytes",
        "engine.max_turns",
        "engine.max_turn_tokens",
        "engine.logprobs",
    }
    # argv -> [(config class, how its keys show: "--flag", "KEY = DEFAULT" or only the help text, left out)]
    return {
        ("stream",): [(StreamConfig, "flag", set())],
        ("serve",): [(ServeConfig, "flag", serve_exclude)],
        ("data", "validate"): [(VisualConfig, "flag", set())],
        ("data", "stats"): [(VisualConfig, "flag", set())],
        ("data", "specs-pairs"): [(PairsConfig, "flag", set())],
        ("train",): [(resolve(cfg), "key", set()) for cfg, _ in ALGORITHMS.values()],
        ("pipeline",): [(Stage, "key", set()), (Pipeline, "text", {"stages"})],
    }


@pytest.mark.parametrize("argv", list(_configs()), ids=" ".join)
def test_help_shows_the_dataclass_help(argv, capsys, monkeypatch):
    out = help_text(list(argv), capsys, monkeypatch)
    for cls, shown, exclude in _configs()[argv]:
        for key, text in leaves(cls):
            if key in exclude:
                continue
            if shown == "flag":
                assert f"--{key.replace('_', '-')} " in out, key
            if shown == "key":
                assert f"  {key} = " in out, key
            assert text in out, (cls.__name__, key, text)


def test_model_config_help_in_train_help(capsys, monkeypatch):
    from mm.loading import ModelConfig

    out = help_text(["train"], capsys, monkeypatch)
    defaults = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        assert f.metadata["help"], f.name  # every ModelConfig field has a help text
        assert f"model.{f.name} = {getattr(defaults, f.name)!r}  {f.metadata['help']}" in out


# ----------------------------------------------------------------------------- flags <-> dataclasses


def _parse(cls, argv, **kw):
    p = argparse.ArgumentParser()
    add_config_flags(p, cls, **kw)
    return config_from_args(cls, p.parse_args(argv))


def test_flags_round_trip_to_the_dataclass():
    from streaming.cache import CacheConfig
    from streaming.engine import StreamConfig

    assert _parse(StreamConfig, []) == StreamConfig()
    got = _parse(
        StreamConfig,
        ["--no-do-sample", "--seed", "3", "--fps", "1", "--cache.mode", "native", "--cache.sink-text", "64"],
    )
    assert got == StreamConfig(
        do_sample=False, seed=3, fps=1.0, cache=CacheConfig(mode="native", sink_text=64)
    )
    with pytest.raises(SystemExit):
        _parse(StreamConfig, ["--cache.mode", "sideways"])  # Literal -> choices


def test_list_flags_replace_the_default_then_add():
    @dataclasses.dataclass
    class C:
        dirs: list[str] = dataclasses.field(default_factory=lambda: ["default"])
        betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])

    assert _parse(C, []) == C()
    assert _parse(C, ["--dirs", "a", "--dir", "b", "c"], aliases={"dirs": ("--dir",)}).dirs == ["a", "b", "c"]
    assert _parse(C, ["--betas", "0.5", "0.6"]).betas == [0.5, 0.6]


def test_stream_and_serve_keep_their_old_flag_names():
    args = build_parser(["stream"]).parse_args(["stream", "clip.mp4", "--greedy", "--positions", "native"])
    assert (args.do_sample, args.__dict__["cache.mode"]) == (False, "native")
    argv = ["serve", "--image-dir", "a", "--image-dir", "b", "--max-turns", "4", "--max-image-mb", "0.25"]
    args = build_parser(["serve"]).parse_args(argv)
    assert (args.image_dirs, args.max_turns, args.max_image_mb) == (["a", "b"], 4, 0.25)


def test_serve_and_stream_build_the_configs_the_hand_written_flags_built(monkeypatch, tmp_path):
    """The configs the commands pass on equal the ones the hand-written flags built (old mm/cli.py)."""
    import streaming.demo
    import vision_tools.server
    from streaming.cache import CacheConfig
    from streaming.engine import StreamConfig
    from vision_tools.engine import EngineConfig
    from vision_tools.server import ServeConfig

    seen = {}
    monkeypatch.setattr(vision_tools.server, "serve", lambda model, host, port, cfg: seen.update(serve=cfg))
    argv = ["serve", "--image-dir", str(tmp_path), "--max-turns", "4", "--max-turn-tokens", "64"]
    assert main([*argv, "--max-image-mb", "0.25", "--batch-wait-ms", "50"]) == 0
    assert seen["serve"] == ServeConfig(
        image_dirs=[str(tmp_path)],
        max_body_bytes=32 * 2**20,
        max_image_bytes=2**18,
        max_turns=4,
        max_turn_tokens=64,
        batch_wait_ms=50.0,
        engine=EngineConfig(
            max_turns=4, max_turn_tokens=64, generator="cached", cut_loops=True
        ),  # the bounds: requests' defaults
    )
    monkeypatch.setattr(streaming.demo, "run_stream", lambda src, model, cfg, **kw: seen.update(stream=cfg))
    assert (
        main(["stream", "clip.mp4", "--greedy", "--positions", "native", "--sink-text", "64", "--seed", "1"])
        == 0
    )
    want = StreamConfig(do_sample=False, seed=1, cache=CacheConfig(sink_text=64, mode="native"))
    assert seen["stream"] == want


def test_pipeline_takes_output_dir_like_train():
    for flag in ("--output-dir", "--output-root"):
        args = build_parser(["pipeline"]).parse_args(["pipeline", "p.yaml", flag, "runs/x"])
        assert args.output_root == "runs/x"
    assert (
        build_parser(["train"]).parse_args(["train", "t.yaml", "--output-dir", "runs/y"]).output_dir
        == "runs/y"
    )


# ----------------------------------------------------------------------------- errors


def test_config_error_from_a_flag_is_one_line(capsys):
    assert main(["data", "validate", sample_data_path(), "--min-pixels", "100000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "min_pixels must not exceed max_pixels" in err
    assert err.startswith("mmpost data validate: error:") and "Traceback" not in err


def test_unknown_override_names_the_nearest_key(capsys):
    cfg = os.path.join(ROOT, "configs", "quickstart", "sft.yaml")
    assert main(["train", cfg, "model.lora_rr=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'model.lora_r'?" in err


@pytest.mark.slow
def test_unexpected_error_in_a_training_step_shows_its_traceback(tmp_path):
    """A RuntimeError (an OOM, a shape mismatch) inside the SFT loss: exit 1 with the full stack."""
    code = textwrap.dedent(
        f"""
        import sys
        from alignment.sft import CausalLMLoss
        from mmpost import main
        from vision_tools.crux import write_synth

        def forward(self, *args, **kwargs):
            raise RuntimeError("shapes [2, 3] and [4, 5] do not match")

        CausalLMLoss.forward = forward
        data = write_synth({str(tmp_path / "synth")!r}, n_train=2, n_test=1, seed=0)
        sys.exit(main(["train", {os.path.join(ROOT, "configs", "quickstart", "sft.yaml")!r},
                       "data.train=" + data["train"], "train.max_steps=1", "train.export=false",
                       "--output-dir", {str(tmp_path / "run")!r}]))
        """
    )
    script = tmp_path / "boom.py"
    script.write_text(code)
    env = subprocess_env(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    err = r.stderr
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: shapes [2, 3] and [4, 5] do not match" in err
    assert re.search(rf'{re.escape(str(script))}", line \d+, in forward', err)  # the frame that raised ...
    assert os.path.join("alignment", "loop.py") in err  # ... and the frames of the loop above it
    assert "mmpost train: error" not in err


def test_stream_and_train_refuse_a_qwen3_5_checkpoint_in_one_line(tmp_path, capsys):
    """What a model family cannot do is a one-line error naming the reason, no traceback: Qwen3.5
    (Gated DeltaNet layers) cannot keep the bounded streaming cache, nor train packed."""
    from tests.conftest import qwen3_5_model

    model, processor = qwen3_5_model()
    model.save_pretrained(tmp_path / "q35")
    processor.save_pretrained(tmp_path / "q35")
    assert main(["stream", "synthetic:2", "--model", str(tmp_path / "q35"), "--jsonl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "mmpost stream: error: the streaming KV cache: streaming is refused for qwen3_5 models: "
        "a Gated DeltaNet state"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sft = os.path.join(root, "configs", "quickstart", "sft.yaml")
    argv = ["train", sft, f"model.name_or_path={tmp_path / 'q35'}", "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "data.layout=pack: packing is refused for qwen3_5 models" in capsys.readouterr().err
