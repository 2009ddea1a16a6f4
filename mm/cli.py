"""The ``mmpost`` command: the top floor that dispatches each subcommand lazily.

    mmpost info                       versions and available backends
    mmpost quickstart                 tiny model + bundled sample: validate, encode, forward, loss
    mmpost data validate FILE.jsonl   every problem with its line number and a fix hint
    mmpost data stats FILE.jsonl      counts, token lengths, visual tokens
    mmpost data synth DIR             the generated visual-reasoning set
    mmpost data crux PROBLEMS OUT     CRU trajectories (ViRC stage 1 + 2) from problems
    mmpost data stream-chunks V T OUT streaming SFT chunks from a video and word timestamps
    mmpost data vla-synth OUT         the synthetic two-view reaching task (VLA / Spatial Forcing)
    mmpost data teacher-features D O  precomputed Spatial Forcing teacher features
    mmpost data specs-pairs ...       SPECS preference pairs (zero vs corrupted base responses)
    mmpost train CONFIG [k=v ...]     train (SFT, ...) from a YAML config
    mmpost pipeline PIPELINE.yaml     run training stages in order
    mmpost eval MODEL --data FILE     greedy generation + accuracy (+ --base B --ood F: SPECS GF)
    mmpost serve --model tiny         the HTTP tool-call API on 127.0.0.1:8000
    mmpost stream VIDEO               live commentary (StreamingVLM), terminal / --jsonl / --vtt / --web

Heavy imports (torch, transformers) happen inside the handlers, so ``--help`` is instant.
Errors the user can fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def _add_visual_args(p: argparse.ArgumentParser) -> None:
    from mm.visual import VisualConfig

    d = VisualConfig()
    g = p.add_argument_group("visual limits")
    g.add_argument(
        "--min-pixels", type=int, default=d.min_pixels, help="per-image minimum pixels (default %(default)s)"
    )
    g.add_argument(
        "--max-pixels", type=int, default=d.max_pixels, help="per-image maximum pixels (default %(default)s)"
    )
    g.add_argument(
        "--max-visual-tokens",
        type=int,
        default=d.max_visual_tokens,
        help="total visual tokens per sample (default %(default)s)",
    )
    g.add_argument(
        "--budget-policy",
        choices=("shrink", "reject"),
        default=d.budget_policy,
        help="over budget: shrink images proportionally, or reject the record (default %(default)s)",
    )


def _visual_config(args):
    from mm.visual import VisualConfig

    return VisualConfig(
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_visual_tokens=args.max_visual_tokens,
        budget_policy=args.budget_policy,
    )


def cmd_info(args) -> int:
    import platform

    import torch

    from mm.attention import choose_backend, flash_attn_usable
    from mm.imports import is_available, version_of

    rows = [
        ("python", platform.python_version()),
        ("mmpost", version_of("mmpost") or "(not installed)"),
        ("torch", torch.__version__),
        ("transformers", version_of("transformers")),
        ("qwen-vl-utils", version_of("qwen-vl-utils")),
        ("tokenizers", version_of("tokenizers")),
    ]
    cuda = torch.cuda.is_available()
    gpus = (
        ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none"
    )
    backends = [
        ("CUDA", f"yes ({gpus})" if cuda else "no"),
        ("flash-attn", _avail(is_available("flash_attn"), version_of("flash-attn"), "mmpost[cuda]")),
        ("deepspeed", _avail(is_available("deepspeed"), version_of("deepspeed"), "mmpost[deepspeed]")),
        ("peft (LoRA)", _avail(is_available("peft"), version_of("peft"), "mmpost[lora]")),
        ("decord", _avail(is_available("decord"), version_of("decord"), "mmpost[video]")),
        ("opencv", _avail(is_available("cv2"), version_of("opencv-python-headless"), "mmpost[video]")),
        (
            "attention",
            f"{choose_backend('auto')} (flash-attn usable: {'yes' if flash_attn_usable() else 'no'})",
        ),
    ]
    width = max(len(k) for k, _ in rows + backends)
    print("versions")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    print("backends")
    for k, v in backends:
        print(f"  {k.ljust(width)}  {v}")
    return 0


def _avail(ok: bool, version: str | None, extra: str) -> str:
    return f"yes ({version})" if ok else f"no (pip install '{extra}')"


def cmd_validate(args) -> int:
    from mm.data_cli import run_validate

    return run_validate(args.file, _visual_config(args))


def cmd_stats(args) -> int:
    from mm.data_cli import run_stats

    return run_stats(args.file, _load_processor(args.model), _visual_config(args))


def _load_processor(name: str):
    from mm.tiny import PRESETS, tiny_processor

    if name in PRESETS:
        return tiny_processor()
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name, local_files_only=True)


def cmd_quickstart(args) -> int:
    from mm.quickstart import quickstart

    return quickstart(args.model, args.record)


def cmd_train(args) -> int:
    from alignment.train import train

    train(args.config, args.overrides, output_dir=args.output_dir, resume="auto" if args.resume else None)
    return 0


def cmd_pipeline(args) -> int:
    from alignment.train import run_pipeline

    run_pipeline(args.config, args.overrides, output_root=args.output_root)
    return 0


def cmd_eval(args) -> int:
    from alignment.evaluate import run_eval, run_gf

    kw = dict(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        max_turns=args.max_turns,
    )
    if args.ood or args.base:
        if not (args.ood and args.base):
            raise ValueError("the Generalization Factor needs both --base MODEL and --ood FILE (plus --data)")
        run_gf(args.model, args.base, args.data, args.ood, args.beta, out_dir=args.out, **kw)
        return 0
    if len(args.model) > 1 and args.out:
        raise ValueError(
            "--out names one results file; give one model, or use --base/--ood (then --out is a folder)"
        )
    for m in args.model:
        run_eval(m, args.data, out=args.out, **kw)
    return 0


def cmd_specs_toy(args) -> int:
    from alignment.specs_toy import write_toy

    counts = write_toy(args.out, args.seed)
    print(", ".join(f"{k}.jsonl: {v}" for k, v in counts.items()) + f" (in {args.out})")
    return 0


def cmd_specs_pairs(args) -> int:
    from alignment.specs_pairs import PairsConfig, build_pairs

    judge = None
    if args.judge_url:
        from alignment.specs_pairs import http_judge

        judge = http_judge(args.judge_url, args.judge_model, os.environ.get("MMPOST_JUDGE_KEY", ""))
    cfg = PairsConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PairsConfig)})
    counts = build_pairs(cfg, args.out, judge)
    return 0 if counts["pairs"] else 1


def cmd_synth(args) -> int:
    from alignment.virc_rl import write_next_turn_records
    from vision_tools.crux import write_synth

    paths = write_synth(args.out, args.n_train, args.n_test, args.seed)
    rl = os.path.join(args.out, "train_rl.jsonl")
    n = write_next_turn_records(paths["train"], rl)
    print(
        f"wrote {paths['train']} ({args.n_train} SFT trajectories), {paths['stage1']} (the same, tool-result "
        f"images dropped), {rl} ({n} next-turn RL records) and {paths['test']} ({args.n_test} RL prompts)"
    )
    return 0


def cmd_crux(args) -> int:
    from vision_tools.crux import build_crux

    counts = build_crux(args.problems, args.out, stages=args.stage, coords=args.coords)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def cmd_stream(args) -> int:
    from streaming.cache import CacheConfig
    from streaming.engine import StreamConfig

    cfg = StreamConfig(
        query=args.query,
        system=args.system,
        fps=args.fps,
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
        realtime=args.realtime,
        seed=args.seed,
        cache=CacheConfig(
            sink_text=args.sink_text,
            window_text=args.window_text,
            recent_rounds=args.recent_rounds,
            vision_seconds=args.vision_seconds,
            mode=args.positions,
        ),
    )
    if args.web:
        from streaming.web import serve_demo

        serve_demo(args.source, args.model, cfg, host=args.host, port=args.port)
        return 0
    from streaming.demo import run_stream

    run_stream(args.source, args.model, cfg, jsonl=args.jsonl, vtt=args.vtt, max_seconds=args.max_seconds)
    return 0


def cmd_stream_chunks(args) -> int:
    from streaming.chunks import write_chunks

    n = write_chunks(
        args.video,
        args.transcript,
        args.out,
        tokenizer=_load_processor(args.model).tokenizer,
        chunk=args.chunk,
        overlap=args.overlap,
        query=args.query,
    )
    print(f"wrote {n} chunk record(s) to {args.out}")
    return 0


def cmd_stream_synth(args) -> int:
    from streaming.chunks import write_stream_synth

    paths = write_stream_synth(args.out, seconds=args.seconds)
    print(f"wrote {paths['video']}, {paths['transcript']} and {paths['chunks']}")
    return 0


def cmd_cls_fewshot(args) -> int:
    from alignment.cls_data import build_fewshot

    counts = build_fewshot(
        args.root, args.out, args.shots, args.variant, args.question, args.base_to_new, args.seed
    )
    print(", ".join(f"{k}.jsonl: {v}" for k, v in counts.items()) + f" (in {args.out})")
    return 0


def cmd_cls_synth(args) -> int:
    from alignment.cls_data import write_shape_classes

    print(f"wrote six shape classes to {write_shape_classes(args.out, args.per_class)}")
    return 0


def cmd_vla_synth(args) -> int:
    from alignment.vla.synth import write_vla_synth

    paths = write_vla_synth(
        args.out, args.n, args.n_test, args.seed, args.size, args.chunk, args.dims, args.distractors
    )
    print(f"wrote {paths['train']} ({args.n} VLA records, 2 views each) and {paths['test']} ({args.n_test})")
    return 0


def cmd_teacher_features(args) -> int:
    import torch

    from alignment.spatial.features import write_features
    from alignment.spatial.teacher import build_teacher

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = build_teacher(args.teacher, args.teacher_weights, args.image_size).to(device)
    meta = write_features(args.data, args.out, teacher, args.batch_size)
    print(
        f"wrote {len(meta['ids'])} feature grids {meta['grid']} x {meta['dim']} of teacher {meta['teacher']} "
        f"to {args.out}; train with align.features={args.out}"
    )
    return 0


def cmd_virc_rl(args) -> int:
    from alignment.virc_rl import write_next_turn_records

    n = write_next_turn_records(args.trajectories, args.out, args.cuts, args.min_turns)
    print(f"wrote {n} next-turn RL record(s) to {args.out}")
    return 0


def cmd_serve(args) -> int:
    from vision_tools.server import ServeConfig, serve

    for d in args.image_dir:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"--image-dir {d}: no such folder")
    names = ("max_turns", "max_turn_tokens", "max_batch", "batch_wait_ms", "max_queue", "request_timeout")
    cfg = ServeConfig(
        image_dirs=args.image_dir,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_image_bytes=int(args.max_image_mb * 2**20),
        **{k: getattr(args, k) for k in names},
    )
    serve(args.model, args.host, args.port, cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmpost", description="Post-training for Qwen2.5-VL vision-language(-action) models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions and available backends (flash-attn, deepspeed, decord, CUDA)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "quickstart", help="tiny model + bundled sample record: validate, encode, forward pass, loss"
    )
    p.add_argument(
        "--model", default="tiny", help="'tiny', 'small' or a local checkpoint folder (default %(default)s)"
    )
    p.add_argument("--record", type=int, default=0, help="which sample record to run (default %(default)s)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "train", help="train from a YAML config (SFT, GRPO, DPO; spatial alignment as it lands)"
    )
    p.add_argument("config", help="YAML config, e.g. configs/quickstart/sft.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 data.max_tokens=4096")
    p.add_argument("--output-dir", help="overrides train.output_dir")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint (also the default)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "pipeline", help="run the stages of a pipeline YAML in order (e.g. ViRC SFT -> SFT -> RL)"
    )
    p.add_argument("config", help="pipeline YAML, e.g. configs/virc/pipeline.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every stage")
    p.add_argument("--output-root", help="overrides the pipeline's output_root")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser(
        "eval",
        help="generate answers (greedy, batched; the tool loop for prompts with tools) and report accuracy",
    )
    p.add_argument(
        "model", nargs="+", help="model folder(s) (e.g. runs/quickstart/final), 'tiny', or training YAML(s)"
    )
    p.add_argument("--data", required=True, help="JSONL with prompts and answers (RL or SFT records); ID set")
    p.add_argument(
        "--out",
        help="per-sample results JSONL (default: next to the model, eval_<data>.jsonl); a folder with --base",
    )
    p.add_argument("--ood", help="out-of-distribution JSONL: with --base, report G_ID, G_OOD and GF (SPECS)")
    p.add_argument("--base", help="the base model the gains are measured against (with --ood)")
    p.add_argument("--beta", type=float, default=2.0, help="GF's beta (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256, help="per turn (default %(default)s)")
    p.add_argument(
        "--max-turns", type=int, default=8, help="turn limit of tool-using prompts (default %(default)s)"
    )
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N records")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="the HTTP tool-call API (chat completions with server-side tool loop)")
    p.add_argument(
        "--model", default="tiny", help="'tiny' or a local checkpoint folder (default %(default)s)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--image-dir", action="append", default=[], help="folder requests may name images in (repeatable)"
    )
    p.add_argument(
        "--max-turns",
        type=int,
        default=16,
        help="turns per conversation: the default and the most a request may ask (%(default)s)",
    )
    p.add_argument(
        "--max-turn-tokens",
        type=int,
        default=1024,
        help="new tokens per turn: the default and the most a request may ask (%(default)s)",
    )
    p.add_argument(
        "--max-batch", type=int, default=16, help="conversations per engine batch (default %(default)s)"
    )
    p.add_argument("--batch-wait-ms", type=float, default=20.0, help="wait for more requests to batch (ms)")
    p.add_argument(
        "--max-body-mb", type=float, default=32.0, help="largest request body (default %(default)s MiB)"
    )
    p.add_argument(
        "--max-image-mb", type=float, default=16.0, help="largest image file (default %(default)s MiB)"
    )
    p.add_argument(
        "--max-queue", type=int, default=256, help="waiting conversations; more get 429 (%(default)s)"
    )
    p.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds per request, then 504 (0: none)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stream", help="live commentary on a video, camera or stream (StreamingVLM)")
    p.add_argument("source", help="video file, folder of frames, camera:N, rtsp://..., or synthetic:SECONDS")
    p.add_argument(
        "--model", default="tiny", help="'tiny' or a local checkpoint folder (default %(default)s)"
    )
    p.add_argument("--query", default="Commentate on this match", help="what the model is asked (pinned)")
    p.add_argument(
        "--jsonl", action="store_true", help="one JSON segment per second on stdout, then a summary"
    )
    p.add_argument("--vtt", help="also write WebVTT captions to this file")
    p.add_argument("--realtime", action="store_true", help="play a file at wall-clock speed")
    p.add_argument("--max-seconds", type=int, default=0, help="stop after N seconds (0: the whole source)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="commentary tokens per second")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.05)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--system", default="You are a helpful assistant.", help="system prompt (pinned)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second read (default %(default)s)")
    g = p.add_argument_group("cache windows")
    g.add_argument("--sink-text", type=int, default=512, help="first tokens of earlier commentary kept")
    g.add_argument("--window-text", type=int, default=512, help="last tokens of earlier commentary kept")
    g.add_argument("--recent-rounds", type=int, default=16, help="seconds whose replies stay as recent text")
    g.add_argument("--vision-seconds", type=int, default=16, help="seconds whose frames stay")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--positions",
        choices=("contiguous", "native"),
        default="contiguous",
        help="RoPE positions after eviction",
    )
    p.add_argument("--web", action="store_true", help="serve the browser demo instead of printing")
    p.add_argument("--host", default="127.0.0.1", help="--web: bind address (default %(default)s)")
    p.add_argument("--port", type=int, default=8010, help="--web: port (default %(default)s)")
    p.set_defaults(func=cmd_stream)

    data = sub.add_parser("data", help="check, describe and generate data files")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser(
        "validate", help="check every line; print each problem with its line number and a fix"
    )
    p.add_argument("file", help="JSONL file in the mmpost data format")
    _add_visual_args(p)
    p.set_defaults(func=cmd_validate)
    p = dsub.add_parser("stats", help="counts, token lengths and visual tokens as a table")
    p.add_argument("file", help="JSONL file in the mmpost data format")
    p.add_argument(
        "--model", default="tiny", help="processor to count tokens with: 'tiny' or a local checkpoint folder"
    )
    _add_visual_args(p)
    p.set_defaults(func=cmd_stats)
    p = dsub.add_parser("synth", help="write the procedurally generated visual-reasoning set (train + test)")
    p.add_argument("out", help="output folder, e.g. data/synth")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)
    p = dsub.add_parser("crux", help="CRU trajectories (planning, guiding question, crop, steps, answer)")
    p.add_argument(
        "problems", help="problems JSONL: image, question, answer, optional regions (docs/data.md)"
    )
    p.add_argument("out", help="output folder (stage1.jsonl, stage2.jsonl, images/)")
    p.add_argument("--stage", choices=("1", "2", "both"), default="both", help="which SFT stage variant(s)")
    p.add_argument(
        "--coords", choices=("dynamic", "fixed"), default="dynamic", help="coordinate mode of the calls"
    )
    p.set_defaults(func=cmd_crux)
    p = dsub.add_parser("stream-chunks", help="streaming SFT records: overlapped chunks of a commented video")
    p.add_argument("video", help="the video file")
    p.add_argument("transcript", help='word timestamps: {"words": [{"word", "start", "end"}, ...]}')
    p.add_argument("out", help="output JSONL")
    p.add_argument("--chunk", type=int, default=24, help="W: seconds per chunk (default %(default)s)")
    p.add_argument(
        "--overlap", type=int, default=12, help="O: seconds shared by neighbours (default %(default)s)"
    )
    p.add_argument("--query", default="Commentate on this match")
    p.add_argument(
        "--model", default="tiny", help="tokenizer for the previous-text cut: 'tiny' or a checkpoint"
    )
    p.set_defaults(func=cmd_stream_chunks)
    p = dsub.add_parser("stream-synth", help="a generated commented clip and its chunks (data/stream)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seconds", type=int, default=120)
    p.set_defaults(func=cmd_stream_synth)
    p = dsub.add_parser(
        "cls-fewshot", help="CLS-RL few-shot sets from an image folder (one folder per class)"
    )
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
    p = dsub.add_parser("virc-rl", help="ViRC Strategic-RL records: trajectories cut before one turn each")
    p.add_argument("trajectories", help="CRU SFT trajectories (e.g. data/synth/train.jsonl)")
    p.add_argument("out", help="output JSONL of RL records")
    p.add_argument("--cuts", choices=("all", "hard"), default="all", help="every turn, or ViRC's hard cases")
    p.add_argument("--min-turns", type=int, default=15, help="hard: answer turns after more turns than this")
    p.set_defaults(func=cmd_virc_rl)
    p = dsub.add_parser(
        "specs-pairs",
        help="SPECS preference pairs: zero-model chosen vs format-corrupted base-model rejected",
    )
    p.add_argument("--zero", required=True, help="the zero model (GRPO from base): folder or 'tiny'")
    p.add_argument("--base", required=True, help="the base model: folder or 'tiny'")
    p.add_argument("--prompts", required=True, help="verifiable prompts: RL records (prompt + answer)")
    p.add_argument("--out", required=True, help="output preference JSONL (counts in OUT.counts.json)")
    p.add_argument(
        "--n", type=int, default=8, help="samples per prompt from each model (default %(default)s)"
    )
    p.add_argument(
        "--mode",
        choices=("decoupled", "coupled"),
        default="decoupled",
        help="decoupled: both sides correct, only the format differs; coupled: rejected also wrong",
    )
    p.add_argument("--pairs-per-prompt", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="prompts sampled together (x --n sequences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--judge-url",
        help="OpenAI-compatible endpoint scoring reasoning-answer consistency (key: MMPOST_JUDGE_KEY); "
        "responses it fails on are counted (zero_judge_failed), not kept",
    )
    p.add_argument("--judge-model", default="judge", help="model name sent to the judge")
    p.add_argument("--judge-threshold", type=float, default=0.5, help="chosen needs a judge score >= this")
    p.set_defaults(func=cmd_specs_pairs)
    p = dsub.add_parser("specs-toy", help="the toy SPECS task the tiny model runs end to end (data/specs)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_specs_toy)
    p = dsub.add_parser("cls-synth", help="a generated image-folder set of six shape classes")
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=10)
    p.set_defaults(func=cmd_cls_synth)
    p = dsub.add_parser("vla-synth", help="the synthetic two-view reaching task for VLA / Spatial Forcing")
    p.add_argument("out", help="output folder (train.jsonl, test.jsonl, images/)")
    p.add_argument("--n", type=int, default=256, help="training records (default %(default)s)")
    p.add_argument("--n-test", type=int, default=32, help="test records (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=112, help="side of each rendered view in pixels")
    p.add_argument("--chunk", type=int, default=8, help="K: actions per chunk")
    p.add_argument("--dims", type=int, default=7, help="D: dimensions per action")
    p.add_argument("--distractors", type=int, default=0, help="extra balls of other colours per scene")
    p.set_defaults(func=cmd_vla_synth)
    p = dsub.add_parser(
        "teacher-features", help="precompute Spatial Forcing teacher features for a VLA data set"
    )
    p.add_argument("data", help="VLA records JSONL")
    p.add_argument("out", help="output folder (meta.json + one tensor per record)")
    p.add_argument("--teacher", default="random", help="random, timm:NAME or vggt (default %(default)s)")
    p.add_argument("--teacher-weights", default=None, help="local weights file of a timm or VGGT teacher")
    p.add_argument("--image-size", type=int, default=0, help="teacher input side (0: the teacher's default)")
    p.add_argument("--batch-size", type=int, default=16, help="records per teacher forward")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.set_defaults(func=cmd_teacher_features)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if argv is None and len(sys.argv) <= 1 else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, ImportError, RuntimeError, OSError) as e:
        print(f"mmpost {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
