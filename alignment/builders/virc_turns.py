"""ViRC Strategic-RL data (``mmpost data virc-rl``): truncated trajectories, one next turn each.

Strategic RL trains **one next turn**: each CRU trajectory (an SFT record with tool calls) is cut
before one of its assistant turns; the prompt is everything up to there (images of earlier tool
results included, in order, so image indices keep their meaning) and the reference is what that
turn did: ``meta.tool`` / ``meta.bbox`` for a tool call, the record's ``answer`` for the answer
turn. ``virc_turn`` scores the sampled turn against them.

``cuts="all"`` keeps every cut point; ``"hard"`` keeps ViRC's hard cases: cuts just before a
crop of a critical region (the reference turn is a ``crop_image`` call) and answer turns that come
after more than ``min_turns`` turns.
"""

from __future__ import annotations

import json

from mm.config import ConfigError
from mm.dataset import DataError, Problem, iter_jsonl, rebase_images


def next_turn_records(path: str, cuts: str = "all", min_turns: int = 15) -> tuple[list[dict], int]:
    """RL records cut from the SFT trajectories in ``path``; returns (records, records skipped)."""
    from vision_tools.protocol import parse_turn

    if cuts not in ("all", "hard"):
        raise ConfigError(f"cuts must be 'all' or 'hard', got {cuts!r}")
    out, skipped = [], 0
    for line, rec in iter_jsonl(path):
        if isinstance(rec, Problem) or rec.kind != "sft" or rec.answer is None:
            skipped += 1
            continue
        msgs = [m.to_dict() for m in rec.messages]
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        for k, i in enumerate(turns):
            turn = parse_turn(msgs[i]["content"])
            if not turn.ok:
                continue  # a reference turn that breaks the protocol teaches nothing
            meta = {"turn": k, "source_id": rec.id or f"line-{line}"}
            if (rec.meta or {}).get("coords"):  # how the boxes are meant (crux: dynamic or fixed)
                meta["coords"] = rec.meta["coords"]
            if turn.kind == "tool_call":
                meta["tool"] = turn.call.name
                if turn.call.name == "crop_image":
                    meta["bbox"] = turn.call.arguments.get("bbox_2d")
                hard = turn.call.name == "crop_image"
            else:
                meta["tool"] = None
                hard = k > min_turns
            if cuts == "hard" and not hard:
                continue
            out.append(
                {
                    "id": f"{meta['source_id']}#turn{k}",
                    "prompt": msgs[:i],
                    "answer": rec.answer,
                    "meta": meta,
                }
            )
    return out, skipped


def write_next_turn_records(path: str, out: str, cuts: str = "all", min_turns: int = 15) -> int:
    recs, _ = next_turn_records(path, cuts, min_turns)
    if not recs:
        raise DataError(f"{path}: no trajectories with assistant turns to cut (SFT records with an answer)")
    for r in recs:
        r["prompt"] = rebase_images(r["prompt"], path, out)
    with open(out, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return len(recs)
