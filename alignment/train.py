"""``mmpost train`` and ``mmpost pipeline``: config file -> the algorithm's trainer.

The YAML's ``algorithm`` key picks the trainer (default ``sft``). A pipeline file runs stages
in order; each stage writes to ``OUTPUT_ROOT/<name>`` and may start from an earlier stage's
output (``init_from: <stage name>``). A stage whose ``final/`` model exists is skipped, so a
pipeline can be re-run after an interruption; a specs-pairs stage is skipped when its pairs exist
and were built with the same args (recorded in ``pairs.jsonl.counts.json``), and refuses to go on
when they were not. Overrides given on the command line win over the pipeline's wiring
(``STAGE:data.train=...`` replaces the pairs of ``data_from``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from mm.config import ConfigError, apply_overrides, config_dir, from_dict, load_yaml, opt
from mm.plugins import import_ref

# algorithm -> (config class, trainer class)
ALGORITHMS = {
    "sft": ("alignment.sft_config:SFTConfig", "alignment.sft:SFTTrainer"),
    "grpo": ("alignment.grpo.config:GRPOConfig", "alignment.grpo.trainer:GRPOTrainer"),
    "vla": ("alignment.vla_config:VLAConfig", "alignment.vla:VLATrainer"),
    "dpo": ("alignment.dpo_config:DPOConfig", "alignment.dpo:DPOTrainer"),
}


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
    with config_dir(path):  # users' plug-in files (rewards, tools) are found next to the config
        return from_dict(import_ref(ALGORITHMS[algo][0]), data)


def train(
    path: str | None,
    overrides: list[str] | None = None,
    output_dir: str | None = None,
    resume: str | None = None,
) -> dict:
    cfg = build_config(path, overrides, output_dir, resume)
    return import_ref(ALGORITHMS[cfg.algorithm][1])(cfg).run()


@dataclass
class Stage:
    name: str = opt("", "stage name; its output goes to OUTPUT_ROOT/<name>")
    config: str = opt("", "the stage's training YAML (relative to the pipeline file)")
    init_from: str | None = opt(None, "name of an earlier stage whose final model this stage starts from")
    overrides: list[str] = opt(
        factory=list, help="dotted overrides for this stage only (on a specs-pairs stage: of its args)"
    )
    run: Literal["train", "specs-pairs"] = opt(
        "train", "train: train `config`; specs-pairs: build SPECS preference pairs from `args`"
    )
    args: dict[str, Any] = opt(
        factory=dict,
        help="specs-pairs: alignment.builders.specs_pairs.PairsConfig fields; zero/base may name earlier stages",
    )
    data_from: str | None = opt(None, "name of an earlier specs-pairs stage whose pairs become data.train")
    model: str | None = opt(
        None, "train nothing: the stage stands for this model (folder or 'tiny'); later stages start from it"
    )


@dataclass
class Pipeline:
    output_root: str = opt("runs/pipeline", "folder holding one output folder per stage")
    stages: list[Stage] = opt(factory=list, help="stages, run in order")


def _stage_overrides(name: str, overrides: list[str]) -> list[str]:
    return [o.split(":", 1)[1] for o in overrides if o.split("=")[0].startswith(f"{name}:")]


def run_pipeline(path: str, overrides: list[str] | None = None, output_root: str | None = None) -> list[dict]:
    """Run every stage of a pipeline file; ``overrides`` apply to every training stage, or to one
    stage when written ``STAGE:key=value`` (``STAGE:model=PATH`` turns a stage into a named model;
    on a specs-pairs stage, ``STAGE:n=4`` sets one of its args)."""
    raw = load_yaml(path)
    pipe = from_dict(Pipeline, raw)
    if output_root:
        pipe.output_root = output_root
    if not pipe.stages:
        raise ConfigError(f"{path}: 'stages' is empty")
    overrides = overrides or []
    base = os.path.dirname(os.path.abspath(path))
    done: dict[str, tuple[str, str]] = {}  # stage -> (kind, output folder or model)
    results = []
    for i, st in enumerate(pipe.stages):
        mine = _stage_overrides(st.name, overrides)
        for o in [o for o in mine if o.startswith("model=")]:
            st.model = o.split("=", 1)[1]
        mine = [o for o in mine if not o.startswith("model=")]
        if not st.name or not (st.config or st.run != "train" or st.model):
            raise ConfigError(
                f"{path}: stages[{i}] needs a name and a config (or run: specs-pairs, or model)"
            )
        for ref in (st.init_from, st.data_from):
            if ref and ref not in done:
                raise ConfigError(
                    f"{path}: stage {st.name!r} refers to {ref!r}, which is not an earlier stage"
                )
        out = os.path.join(pipe.output_root, st.name)
        if st.model:
            print(f"[pipeline] {st.name}: the model {st.model}", flush=True)
            done[st.name] = ("model", st.model)
            results.append({"stage": st.name, "skipped": True, "model": st.model})
            continue
        if st.run == "specs-pairs":
            done[st.name] = ("pairs", out)
            results.append({"stage": st.name, **_run_pairs(st, list(st.overrides) + mine, out, done)})
            continue
        cfg_path = st.config if os.path.isabs(st.config) else os.path.join(base, st.config)
        # the stage's overrides, then the wiring to earlier stages, then the user's (they win)
        extra = list(st.overrides)
        if st.init_from:
            kind, where = done[st.init_from]
            extra.append(f"model.name_or_path={where}" if kind == "model" else f"init_from={where}")
        if st.data_from:
            kind, where = done[st.data_from]
            if kind != "pairs":
                raise ConfigError(
                    f"{path}: stage {st.name!r} takes data from {st.data_from!r}, not a specs-pairs stage"
                )
            extra.append(f"data.train={os.path.join(where, PAIRS_FILE)}")
        extra += [o for o in overrides if ":" not in o.split("=")[0]] + mine
        done[st.name] = ("train", out)
        if os.path.isdir(os.path.join(out, "final")):
            print(f"[pipeline] {st.name}: {out}/final exists, skipping", flush=True)
            results.append({"stage": st.name, "skipped": True, "model": os.path.join(out, "final")})
            continue
        print(f"[pipeline] stage {i + 1}/{len(pipe.stages)}: {st.name} ({cfg_path})", flush=True)
        results.append({"stage": st.name, **train(cfg_path, extra, output_dir=out)})
    return results


PAIRS_FILE = "pairs.jsonl"


def _run_pairs(st: Stage, overrides: list[str], out: str, done: dict) -> dict:
    """A specs-pairs stage: zero/base name earlier stages (their final models) or models."""
    from alignment.builders.specs_pairs import PairsConfig, build_pairs

    cfg = from_dict(PairsConfig, apply_overrides(dict(st.args), overrides), f"{st.name}.args")
    for side in ("zero", "base"):
        ref = getattr(cfg, side)
        if ref in done:
            kind, where = done[ref]
            setattr(cfg, side, where if kind == "model" else os.path.join(where, "final"))
    target = os.path.join(out, PAIRS_FILE)
    args = dataclasses.asdict(cfg)
    if os.path.isfile(target):
        try:
            with open(target + ".counts.json") as f:
                made_with = json.load(f).get("args")
        except (OSError, ValueError):
            made_with = None
        if made_with != args:
            diff = sorted(k for k in args if (made_with or {}).get(k, object()) != args[k])
            raise ConfigError(
                f"{st.name}: {target} was built with other args (differing: {', '.join(diff)}; "
                f"recorded in {target}.counts.json); delete {out} to rebuild the pairs, or use "
                "another --output-dir"
            )
        print(f"[pipeline] {st.name}: {target} exists (same args), skipping", flush=True)
        return {"skipped": True, "data": target}
    print(f"[pipeline] {st.name}: SPECS pairs from {cfg.zero} (zero) and {cfg.base} (base)", flush=True)
    counts = build_pairs(cfg, target + ".partial")
    if not counts["pairs"]:
        raise RuntimeError(
            f"{st.name}: no pair was kept (counts in {target}.partial.counts.json); sample more (n), "
            "train the zero model longer, or check the prompts' answers"
        )
    with open(target + ".counts.json", "w") as f:  # the counts and the args that made the pairs
        json.dump({**counts, "args": args}, f, indent=1)
    os.remove(target + ".partial.counts.json")
    os.replace(target + ".partial", target)
    return {"pairs": counts["pairs"], "data": target, "counts": dict(counts)}
