"""``mmpost data ...``: check, describe and generate data files.

    validate FILE             every problem with its line (or row) and a fix hint (mmpost.data.files)
    stats FILE                counts, token lengths, visual tokens
    convert IN OUT.jsonl      any format (ShareGPT, parquet, TRL, EasyR1, ...) -> mmpost JSONL
    synth DIR                 the generated visual-reasoning set
    crux PROBLEMS OUT         CRU trajectories (ViRC stage 1 + 2) from problems
    stream-chunks V T OUT     streaming SFT chunks from a video and word timestamps
    vla-synth OUT             the synthetic two-view reaching task (VLA / Spatial Forcing; --format lerobot)
    metaworld-demos OUT       MetaWorld expert demonstrations as VLA records (needs mmpost[sim])
    teacher-features D O      precomputed Spatial Forcing teacher features
    specs-pairs ...           SPECS preference pairs (zero vs corrupted base responses)

Each subcommand is an ``add_*(parser)`` that declares its arguments and a ``cmd_*(args)`` handler;
only the subcommand named on the command line is built.
"""

from __future__ import annotations

import argparse

from mmpost.data import files, recipes, vla


def add_data(p: argparse.ArgumentParser, words) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    for name, (add, text) in COMMANDS.items():
        q = sub.add_parser(name, help=text, description=text)
        if words[:1] == [name]:
            add(q)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


# name -> (adds the arguments and the handler, one-line help)
COMMANDS = {
    "validate": (files.add_validate, "check every line; print each problem with its line number and a fix"),
    "stats": (files.add_stats, "counts, token lengths and visual tokens as a table"),
    "convert": (files.add_convert, "write any data file as mmpost JSONL (what the trainers read)"),
    "synth": (recipes.add_synth, "write the procedurally generated visual-reasoning set (train + test)"),
    "crux": (recipes.add_crux, "CRU trajectories (planning, guiding question, crop, steps, answer)"),
    "stream-chunks": (
        recipes.add_stream_chunks,
        "streaming SFT records: overlapped chunks of a commented video",
    ),
    "stream-synth": (recipes.add_stream_synth, "a generated commented clip and its chunks (data/stream)"),
    "cls-fewshot": (
        recipes.add_cls_fewshot,
        "CLS-RL few-shot sets from an image folder (one folder per class)",
    ),
    "virc-rl": (recipes.add_virc_rl, "ViRC Strategic-RL records: trajectories cut before one turn each"),
    "specs-pairs": (
        recipes.add_specs_pairs,
        "SPECS preference pairs: zero-model chosen vs format-corrupted base-model rejected",
    ),
    "specs-toy": (recipes.add_specs_toy, "the toy SPECS task the tiny model runs end to end (data/specs)"),
    "cls-synth": (recipes.add_cls_synth, "a generated image-folder set of six shape classes"),
    "vla-synth": (vla.add_vla_synth, "the synthetic two-view reaching task for VLA / Spatial Forcing"),
    "metaworld-demos": (
        vla.add_metaworld_demos,
        "MetaWorld scripted-expert episodes as VLA records (rendered)",
    ),
    "teacher-features": (
        vla.add_teacher_features,
        "precompute Spatial Forcing teacher features for a VLA data set",
    ),
}
