"""``mmpost eval``: accuracy on a data file, SPECS' Generalization Factor (``--base``/``--ood``),
or a standard benchmark with its own protocol (``--benchmark``). A model is a folder, a preset,
or a training YAML (its ``train.output_dir``/final)."""

from __future__ import annotations

import argparse
import os

from vision_tools.generation import DEFAULT, GENERATORS


def resolve_model(name: str) -> str:
    """A model folder or preset as given; a training YAML -> its output_dir/final."""
    if name.endswith((".yaml", ".yml")):
        from alignment.train import build_config

        return os.path.join(build_config(name).train.output_dir, "final")
    return name


def add_eval(p: argparse.ArgumentParser, words) -> None:
    from evaluation.benchmarks import BENCHMARKS

    p.add_argument(
        "model", nargs="+", help="model folder(s) (e.g. runs/quickstart/final), 'tiny', or training YAML(s)"
    )
    p.add_argument(
        "--data",
        required=True,
        help="JSONL with prompts and answers (RL or SFT records; the ID set with --ood), or with "
        "--benchmark the benchmark's released files (docs/evaluation.md)",
    )
    p.add_argument(
        "--benchmark",
        choices=list(BENCHMARKS),
        help="score with this benchmark's own prompt, answer extraction and metric; prints overall and "
        "per-category scores",
    )
    p.add_argument(
        "--out",
        help="per-sample results JSONL (default: next to the model, eval_<data>.jsonl); a folder with "
        "--base or --benchmark (default for a benchmark: <model>/bench_<name>)",
    )
    p.add_argument(
        "--ood",
        nargs="+",
        help="out-of-distribution JSONL file(s): with --base, report G_ID, G_OOD and GF (SPECS); with "
        "several, G_OOD is their (weighted) mean gain",
    )
    p.add_argument("--ood-weights", nargs="+", type=float, help="one weight per --ood file (default: equal)")
    p.add_argument("--base", help="the base model the gains are measured against (with --ood)")
    p.add_argument("--beta", type=float, default=2.0, help="GF's beta (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256, help="per turn (default %(default)s)")
    p.add_argument(
        "--max-turns", type=int, default=8, help="turn limit of tool-using prompts (default %(default)s)"
    )
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N records")
    p.add_argument(
        "--tools",
        action="store_true",
        help="with --benchmark: ask single-image questions with the ViRC tools and run the tool loop "
        "(for models trained with tools)",
    )
    p.add_argument(
        "--judge-url",
        help="OpenAI-compatible endpoint (e.g. http://127.0.0.1:8001/v1) that extracts answers where the "
        "benchmark uses a model for it (MathVista, MathVerse); key from $MMPOST_JUDGE_KEY; without it, "
        "or when it fails, the benchmark's rule extractor",
    )
    p.add_argument("--judge-model", default="judge", help="model name sent to the judge")
    p.add_argument(
        "--generator",
        default=DEFAULT,
        choices=list(GENERATORS),
        help="decoding backend, as rollouts and the server decode (default %(default)s)",
    )
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from evaluation.evaluate import run_eval, run_gf
    from mm.config import ConfigError

    kw = dict(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        max_turns=args.max_turns,
        generator=args.generator,
    )
    args.model = [resolve_model(m) for m in args.model]
    args.base = resolve_model(args.base) if args.base else None
    if args.benchmark:
        return cmd_benchmark(args, kw)
    if args.tools or args.judge_url:
        raise ConfigError("--tools and --judge-url go with --benchmark NAME")
    if args.ood or args.base:
        if not (args.ood and args.base):
            raise ConfigError(
                "the Generalization Factor needs both --base MODEL and --ood FILE (plus --data)"
            )
        run_gf(
            args.model,
            args.base,
            args.data,
            args.ood,
            args.beta,
            out_dir=args.out,
            ood_weights=args.ood_weights,
            **kw,
        )
        return 0
    if len(args.model) > 1 and args.out:
        raise ConfigError(
            "--out names one results file; give one model, or use --base/--ood (then --out is a folder)"
        )
    for m in args.model:
        run_eval(m, args.data, out=args.out, **kw)
    return 0


def cmd_benchmark(args, kw: dict) -> int:
    from evaluation.benchmarks.run import evaluate_benchmark
    from evaluation.evaluate import model_label
    from mm.config import ConfigError

    if args.ood or args.base:
        raise ConfigError("--benchmark scores one benchmark; --base/--ood (the GF) take JSONL files")
    judge = None
    if args.judge_url:
        from evaluation.judge import HTTPJudge

        judge = HTTPJudge(args.judge_url, args.judge_model, os.environ.get("MMPOST_JUDGE_KEY", ""))
    for i, m in enumerate(args.model):  # several models with --out: one sub-folder each
        out = (
            os.path.join(args.out, f"{i}_{model_label(m)}") if args.out and len(args.model) > 1 else args.out
        )
        evaluate_benchmark(m, args.benchmark, args.data, out_dir=out, tools=args.tools, judge=judge, **kw)
    return 0
