"""``mmpost data`` commands that build each method's data: the synthetic visual-reasoning set,
CRU trajectories, ViRC Strategic-RL cuts, CLS-RL few-shot sets, SPECS pairs, streaming chunks."""

from __future__ import annotations

import os

from mmpost.data.files import load_processor


def add_synth(p) -> None:
    p.add_argument("out", help="output folder, e.g. data/synth")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from alignment.builders.virc_turns import write_next_turn_records
    from vision_tools.crux import write_synth

    paths = write_synth(args.out, args.n_train, args.n_test, args.seed)
    rl = os.path.join(args.out, "train_rl.jsonl")
    n = write_next_turn_records(paths["train"], rl)
    print(
        f"wrote {paths['train']} ({args.n_train} SFT trajectories), {paths['stage1']} (the same, tool-result "
        f"images dropped), {rl} ({n} next-turn RL records) and {paths['test']} ({args.n_test} RL prompts)"
    )
    return 0


def add_crux(p) -> None:
    p.add_argument(
        "problems", help="problems JSONL: image, question, answer, optional regions (docs/data.md)"
    )
    p.add_argument("out", help="output folder (stage1.jsonl, stage2.jsonl, images/)")
    p.add_argument("--stage", choices=("1", "2", "both"), default="both", help="which SFT stage variant(s)")
    p.add_argument(
        "--coords", choices=("dynamic", "fixed"), default="dynamic", help="coordinate mode of the calls"
    )
    p.set_defaults(func=cmd_crux)


def cmd_crux(args) -> int:
    from vision_tools.crux import build_crux

    counts = build_crux(args.problems, args.out, stages=args.stage, coords=args.coords)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def add_virc_rl(p) -> None:
    p.add_argument("trajectories", help="CRU SFT trajectories (e.g. data/synth/train.jsonl)")
    p.add_argument("out", help="output JSONL of RL records")
    p.add_argument("--cuts", choices=("all", "hard"), default="all", help="every turn, or ViRC's hard cases")
    p.add_argument("--min-turns", type=int, default=15, help="hard: answer turns after more turns than this")
    p.set_defaults(func=cmd_virc_rl)


def cmd_virc_rl(args) -> int:
    from alignment.builders.virc_turns import write_next_turn_records

    n = write_next_turn_records(args.trajectories, args.out, args.cuts, args.min_turns)
    print(f"wrote {n} next-turn RL record(s) to {args.out}")
    return 0


def add_cls_fewshot(p) -> None:
    p.add_argument("root", help="image-folder data set: ROOT/<class>/*.png")
    p.add_argument("out", help="output folder (train.jsonl, test.jsonl or test_base/test_new.jsonl)")
    p.add_argument(
        "--shots", type=int, default=4, help="images per class in train.jsonl (default %(default)s)"
    )
    p.add_argument("--variant", choices=("cls_rl", "no_think"), default="cls_rl", help="prompt suffix")
    p.add_argument("--question", default="What is in this image?")
    p.add_argument("--base-to-new", action="store_true", help="train on the first half of the classes only")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cls_fewshot)


def cmd_cls_fewshot(args) -> int:
    from alignment.builders.cls_fewshot import build_fewshot

    counts = build_fewshot(
        args.root, args.out, args.shots, args.variant, args.question, args.base_to_new, args.seed
    )
    print(", ".join(f"{k}.jsonl: {v}" for k, v in counts.items()) + f" (in {args.out})")
    return 0


def add_cls_synth(p) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=10)
    p.set_defaults(func=cmd_cls_synth)


def cmd_cls_synth(args) -> int:
    from alignment.builders.cls_fewshot import write_shape_classes

    print(f"wrote six shape classes to {write_shape_classes(args.out, args.per_class)}")
    return 0


def add_stream_chunks(p) -> None:
    p.add_argument("video", help="the video file")
    p.add_argument("transcript", help='word timestamps: {"words": [{"word", "start", "end"}, ...]}')
    p.add_argument("out", help="output JSONL")
    p.add_argument("--chunk", type=int, default=24, help="W: seconds per chunk (default %(default)s)")
    p.add_argument(
        "--overlap", type=int, default=12, help="O: seconds shared by neighbours (default %(default)s)"
    )
    p.add_argument("--query", default="Commentate on this match")
    p.add_argument(
        "--model",
        default="tiny",
        help="tokenizer (previous-text cut) and chat template (previous-text role): a preset or a checkpoint",
    )
    p.set_defaults(func=cmd_stream_chunks)


def cmd_stream_chunks(args) -> int:
    from streaming.chunks import write_chunks

    n = write_chunks(
        args.video,
        args.transcript,
        args.out,
        processor=load_processor(args.model),
        chunk=args.chunk,
        overlap=args.overlap,
        query=args.query,
    )
    print(f"wrote {n} chunk record(s) to {args.out}")
    return 0


def add_stream_synth(p) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--seconds", type=int, default=120)
    p.set_defaults(func=cmd_stream_synth)


def cmd_stream_synth(args) -> int:
    from streaming.chunks import write_stream_synth

    paths = write_stream_synth(args.out, seconds=args.seconds)
    print(f"wrote {paths['video']}, {paths['transcript']} and {paths['chunks']}")
    return 0


def add_specs_pairs(p) -> None:
    from alignment.builders.specs_pairs import PairsConfig
    from mmpost.flags import add_config_flags

    add_config_flags(p, PairsConfig, title="pairs (PairsConfig)")
    p.add_argument("--out", required=True, help="output preference JSONL (counts in OUT.counts.json)")
    p.add_argument(
        "--judge-url",
        help="OpenAI-compatible endpoint scoring reasoning-answer consistency (key: MMPOST_JUDGE_KEY); "
        "responses it fails on are counted (zero_judge_failed), not kept",
    )
    p.add_argument("--judge-model", default="judge", help="model name sent to the judge")
    p.set_defaults(func=cmd_specs_pairs)


def cmd_specs_pairs(args) -> int:
    from alignment.builders.specs_pairs import PairsConfig, build_pairs, http_judge
    from mm.config import ConfigError
    from mmpost.flags import config_from_args

    cfg = config_from_args(PairsConfig, args)
    missing = [f"--{k}" for k in ("zero", "base", "prompts") if not getattr(cfg, k)]
    if missing:
        raise ConfigError(f"specs-pairs needs {', '.join(missing)}")
    judge = None
    if args.judge_url:
        judge = http_judge(args.judge_url, args.judge_model, os.environ.get("MMPOST_JUDGE_KEY", ""))
    counts = build_pairs(cfg, args.out, judge)
    return 0 if counts["pairs"] else 1


def add_specs_toy(p) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_specs_toy)


def cmd_specs_toy(args) -> int:
    from alignment.builders.specs_toy import write_toy

    counts = write_toy(args.out, args.seed)
    print(", ".join(f"{k}.jsonl: {v}" for k, v in counts.items()) + f" (in {args.out})")
    return 0
