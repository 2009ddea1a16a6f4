"""``mmpost train`` and ``mmpost pipeline``: config file -> the algorithm's trainer.

The YAML's ``algorithm`` key picks the trainer (default ``sft``). A pipeline file runs stages
in order; each stage writes to ``OUTPUT_ROOT/<name>`` and may start from an earlier stage's
output (``init_from: <stage name>``). A stage whose ``final/`` model exists is skipped, so a
pipeline can be re-run after an interruption.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from mm.config import ConfigError, apply_overrides, from_dict, load_yaml, opt

# algorithm -> (config class, trainer class)
ALGORITHMS = {
    "sft": ("alignment.sft_config:SFTConfig", "alignment.sft:SFTTrainer"),
    "grpo": ("alignment.grpo_config:GRPOConfig", "alignment.grpo:GRPOTrainer"),
    "dpo": ("alignment.dpo_config:DPOConfig", "alignment.dpo:DPOTrainer"),
}


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def build_config(
    path: str | None,
    overrides: list[str] | None = None,
    output_dir: str | None = None,
    resume: str | None = None,
):
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    if output_dir:
        data.setdefault("train", {})["output_dir"] = output_dir
    if resume:
        data.setdefault("train", {})["resume"] = resume
    algo = data.get("algorithm", "sft")
    if algo not in ALGORITHMS:
        raise ConfigError(f"algorithm {algo!r} is not known; choose from {', '.join(sorted(ALGORITHMS))}")
    return from_dict(_load(ALGORITHMS[algo][0]), data)


def train(
    path: str | None,
    overrides: list[str] | None = None,
    output_dir: str | None = None,
    resume: str | None = None,
) -> dict:
    cfg = build_config(path, overrides, output_dir, resume)
    return _load(ALGORITHMS[cfg.algorithm][1])(cfg).run()


@dataclass
class Stage:
    name: str = opt("", "stage name; its output goes to OUTPUT_ROOT/<name>")
    config: str = opt("", "the stage's training YAML (relative to the pipeline file)")
    init_from: str | None = opt(None, "name of an earlier stage whose final model this stage starts from")
    overrides: list[str] = opt(factory=list, help="dotted overrides for this stage only")


@dataclass
class Pipeline:
    output_root: str = opt("runs/pipeline", "folder holding one output folder per stage")
    stages: list[Stage] = opt(factory=list, help="stages, run in order")


def run_pipeline(path: str, overrides: list[str] | None = None, output_root: str | None = None) -> list[dict]:
    """Run every stage of a pipeline file; ``overrides`` apply to every stage, or to one stage
    when written ``STAGE:key=value``."""
    raw = load_yaml(path)
    pipe = from_dict(Pipeline, raw)
    if output_root:
        pipe.output_root = output_root
    if not pipe.stages:
        raise ConfigError(f"{path}: 'stages' is empty")
    base = os.path.dirname(os.path.abspath(path))
    done: dict[str, str] = {}
    results = []
    for i, st in enumerate(pipe.stages):
        if not st.name or not st.config:
            raise ConfigError(f"{path}: stages[{i}] needs a name and a config")
        if st.init_from and st.init_from not in done:
            raise ConfigError(
                f"{path}: stage {st.name!r} starts from {st.init_from!r}, which is not an earlier stage"
            )
        out = os.path.join(pipe.output_root, st.name)
        cfg_path = st.config if os.path.isabs(st.config) else os.path.join(base, st.config)
        extra = list(st.overrides) + [o for o in overrides or [] if ":" not in o.split("=")[0]]
        extra += [o.split(":", 1)[1] for o in overrides or [] if o.split("=")[0].startswith(f"{st.name}:")]
        if st.init_from:
            extra.append(f"init_from={done[st.init_from]}")
        done[st.name] = out
        if os.path.isdir(os.path.join(out, "final")):
            print(f"[pipeline] {st.name}: {out}/final exists, skipping", flush=True)
            results.append({"stage": st.name, "skipped": True, "model": os.path.join(out, "final")})
            continue
        print(f"[pipeline] stage {i + 1}/{len(pipe.stages)}: {st.name} ({cfg_path})", flush=True)
        results.append({"stage": st.name, **train(cfg_path, extra, output_dir=out)})
    return results
