"""EasyR1 / verl RL columns -> mmpost RL records.

EasyR1: ``{"problem": "<image>Find x.", "answer": "3", "images": [...]}``; verl:
``{"prompt": [{"role": "user", "content": "<image>Find x."}], "reward_model": {"ground_truth":
"3"}, "data_source": "geometry3k", "images": [...]}``. ``problem`` or ``prompt`` (text or
messages), ``answer`` or ``ground_truth`` (top level or in ``reward_model``), an optional
``system``; each ``<image>`` takes the next of ``images`` (the counts must match).
``data_source`` and verl's ``extra_info`` go to ``meta``, where rewards read them.
"""

from __future__ import annotations

from mm.formats.common import Context, Placeholders, media_list, system_message
from mm.records import RecordError


def _answer(row: dict):
    for value in (
        row.get("answer"),
        row.get("ground_truth"),
        (row.get("reward_model") or {}).get("ground_truth"),
    ):
        if value is not None:
            return value
    raise RecordError(
        "missing_column",
        f"RL row has no 'answer', 'ground_truth' or 'reward_model.ground_truth' (columns: {', '.join(sorted(row))})",
        "add the reference answer the rewards check",
    )


def to_record(row: dict, ctx: Context) -> dict:
    key = "problem" if row.get("problem") is not None else "prompt"
    prompt = row.get(key)
    if prompt is None:
        raise RecordError(
            "missing_column",
            f"RL row has neither 'problem' nor 'prompt' (columns: {', '.join(sorted(row))})",
            "add the question as 'problem' (text) or 'prompt' (messages)",
        )
    ph = Placeholders(media_list(row, "images", ctx), media_list(row, "videos", ctx))
    if isinstance(prompt, str):
        turns = [{"role": "user", "content": ph.content(prompt, key)}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        turns = [
            {**m, "content": ph.content(m.get("content"), f"{key}[{i}].content")}
            for i, m in enumerate(prompt)
        ]
    else:
        raise RecordError("bad_record", f"'{key}' must be text or a list of messages")
    ph.check()
    head = system_message(row.get("system"), None)
    meta = {k: row[k] for k in ("data_source", "extra_info") if row.get(k) is not None}
    rec = {"prompt": ([head] if head else []) + turns, "answer": _answer(row), "meta": meta}
    if row.get("id") is not None:
        rec["id"] = row["id"]
    return rec
