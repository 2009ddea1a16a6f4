"""``mmpost train`` and ``mmpost pipeline``.

Training options live in the YAML and its dotted overrides (``optim.lr=1e-5``); ``train --help``
lists every key with its default and help text, read from the trainers' config dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses

from mm.plugins import import_ref


def field_help(cls, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def config_keys() -> str:
    """Every trainer's config keys with default and help: the ones all trainers share once, then
    each algorithm's own (``mm.config.describe`` of the classes in ``alignment.train.ALGORITHMS``)."""
    from alignment.train import ALGORITHMS
    from mm.config import describe

    tables = {algo: describe(import_ref(cfg)) for algo, (cfg, _) in ALGORITHMS.items()}
    shared = set.intersection(*(set(rows) for rows in tables.values()))

    def lines(rows):
        return [f"  {key} = {default}  {text}" for key, default, text in rows]

    out = ["config keys (set in the YAML or as KEY=VALUE overrides), shared by every algorithm:"]
    out += lines([r for r in tables["sft"] if r in shared])
    for algo, rows in tables.items():
        out += [f"algorithm: {algo}", *lines([r for r in rows if r not in shared])]
    return "\n".join(out)


def add_train(p: argparse.ArgumentParser, words) -> None:
    from alignment.loop_config import TrainConfig

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = config_keys()
    p.add_argument("config", help="YAML config, e.g. configs/quickstart/sft.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 data.max_tokens=4096")
    p.add_argument(
        "--output-dir", metavar="DIR", help=f"train.output_dir: {field_help(TrainConfig, 'output_dir')}"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint (also the default)"
    )
    p.set_defaults(func=cmd_train)


def add_pipeline(p: argparse.ArgumentParser, words) -> None:
    from alignment.train import Pipeline, Stage
    from mm.config import describe

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "keys of each stage:\n" + "\n".join(
        f"  {key} = {default}  {text}" for key, default, text in describe(Stage)
    )
    p.add_argument("config", help="pipeline YAML, e.g. configs/virc/pipeline.yaml")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides for every stage, or STAGE:key=value for one stage"
    )
    p.add_argument(
        "--output-dir",
        "--output-root",
        dest="output_root",
        metavar="DIR",
        help=f"output_root: {field_help(Pipeline, 'output_root')}",
    )
    p.set_defaults(func=cmd_pipeline)


def cmd_train(args) -> int:
    from alignment.train import train

    train(args.config, args.overrides, output_dir=args.output_dir, resume="auto" if args.resume else None)
    return 0


def cmd_pipeline(args) -> int:
    from alignment.train import run_pipeline

    run_pipeline(args.config, args.overrides, output_root=args.output_root)
    return 0
