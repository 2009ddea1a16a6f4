"""Streaming SFT data (``mmpost data stream-chunks``): overlapped chunks of a commented video.

Input: a video and its commentary with word timestamps, JSON ``{"words": [{"word": "Goal",
"start": 12.3, "end": 12.6}, ...]}`` (a bare list of words works too). Output: SFT records in the
one data format, one per chunk of ``W`` seconds starting every ``W - O`` seconds, laid out as
StreamingVLM's released training code lays them out (and as ``streaming.engine`` keeps its
cache, token for token)::

    system           {system}
    previous text    the words said before the chunk (first T_sink + last T_window tokens)
    user             Time=a.0-(a+1).0s + that second of video + the query
    assistant        \\n + the words said by the end of the second + " ..."
    user             Time=(a+1).0-(a+2).0s + that second of video
    assistant        ...

A word belongs to the second in which it ends (spoken by the end of it); every reply closes
with ``" ..."``, which alone means nothing was said. The released training data carries no
query (only its inference does, after the first second's frames); here every chunk has it
there, where the engine keeps it pinned. Under a chat template that drops the ``previous text``
role (Qwen3-VL's), the block is a ``user`` turn (``previous_role``), as the engine lays it out.
"""

from __future__ import annotations

import json
import math
import os

from mm.config import ConfigError
from mm.dataset import DataError
from streaming.engine import PREVIOUS, SILENCE, previous_role, time_prompt


def read_words(path: str) -> list[dict]:
    """Words with start/end seconds, in the order they end; a malformed file is an error naming the fix."""
    with open(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    words = obj.get("words") if isinstance(obj, dict) else obj
    if not isinstance(words, list):
        raise DataError(f'{path}: expected {{"words": [{{"word", "start", "end"}}, ...]}}')
    for i, w in enumerate(words):
        ok = isinstance(w, dict) and isinstance(w.get("word"), str)
        if not ok or not all(isinstance(w.get(k), int | float) for k in ("start", "end")):
            raise DataError(f"{path}: words[{i}] needs 'word' (text), 'start' and 'end' (seconds), got {w!r}")
    return sorted(words, key=lambda w: (w["end"], w["start"]))


def _said(words: list[dict], lo: float, hi: float) -> str:
    """The words ending in (lo, hi], each with its leading space (as the model says them)."""
    return "".join(" " + w["word"].strip() for w in words if lo < w["end"] <= hi and w["word"].strip())


def second_text(words: list[dict], t: int) -> str:
    """The target of second [t, t+1): a newline, the words said by its end, then ``" ..."``."""
    return "\n" + _said(words, t, t + 1) + SILENCE


def previous_text(words: list[dict], before: float, tokenizer, sink: int = 512, window: int = 512) -> str:
    """Words said by ``before`` seconds: all of them, or their first ``sink`` and last ``window`` tokens."""
    text = _said(words, -math.inf, before)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= sink + window:
        return text
    return tokenizer.decode(ids[:sink] + ids[-window:])  # the middle cut, as the engine's cache cuts it


def build_chunks(
    video: str,
    words: list[dict],
    duration: float,
    tokenizer,
    query: str = "Commentate on this match",
    system: str = "You are a helpful assistant.",
    chunk: int = 24,
    overlap: int = 12,
    sink: int = 512,
    window: int = 512,
    video_ref: str | None = None,
    previous: str = PREVIOUS,
) -> list[dict]:
    """SFT records of ``chunk``-second windows every ``chunk - overlap`` seconds; ``previous``:
    the role of the previous-text block (``previous_role`` of the model's processor)."""
    if not 0 <= overlap < chunk:
        raise ConfigError(f"need 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    seconds = math.floor(duration)
    if seconds < 1:
        raise DataError(f"{video}: {duration:.2f} s is shorter than one second")
    ref = video_ref or video
    records = []
    for a in range(0, max(1, seconds - overlap), chunk - overlap):
        b = min(a + chunk, seconds)
        msgs = [
            {"role": "system", "content": system},
            {"role": previous, "content": previous_text(words, a, tokenizer, sink, window)},
        ]
        for t in range(a, b):
            content = [
                {"type": "text", "text": time_prompt(t)},
                {"type": "video", "video": ref, "video_start": float(t), "video_end": float(t + 1)},
            ]
            if t == a and query:
                content.append({"type": "text", "text": query})
            msgs += [
                {"role": "user", "content": content},
                {"role": "assistant", "content": second_text(words, t)},
            ]
        records.append(
            {"id": f"{os.path.basename(video)}@{a}-{b}", "messages": msgs, "meta": {"start": a, "end": b}}
        )
        if b >= seconds:
            break
    return records


def write_chunks(video: str, transcript: str, out: str, tokenizer=None, processor=None, **kwargs) -> int:
    """Write the chunks of one video to ``out`` (JSONL; the video is referenced relative to it);
    ``processor`` (default: the tiny Qwen2.5-VL one) gives the tokenizer and the previous-text role."""
    from mm.tiny import tiny_processor
    from mm.visual import probe_video

    info = probe_video(video)
    processor = processor or tiny_processor()
    tokenizer = tokenizer or processor.tokenizer
    ref = os.path.relpath(os.path.abspath(video), os.path.dirname(os.path.abspath(out)))
    kwargs.setdefault("previous", previous_role(processor))
    recs = build_chunks(
        video, read_words(transcript), info.frames / info.fps, tokenizer, video_ref=ref, **kwargs
    )
    with open(out, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return len(recs)


def write_stream_synth(out_dir: str, seconds: int = 120, seed: int = 0) -> dict[str, str]:
    """A generated commented clip: a dot crossing the frame, with words saying where it is."""
    import random

    import numpy as np

    from mm.synthetic import write_video

    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    fps, size = 4, 112
    frames, words = [], []
    for i in range(seconds * fps):
        t = i / fps
        x = int((0.5 + 0.45 * math.sin(t / 3)) * (size - 16))
        f = np.full((size, size, 3), 235, np.uint8)
        f[size // 2 - 8 : size // 2 + 8, x : x + 16] = (200, 30, 30)
        frames.append(f)
    for t in range(seconds):
        if rng.random() < 0.5:
            x = 0.5 + 0.45 * math.sin(t / 3)
            where = "left" if x < 0.35 else "right" if x > 0.65 else "center"
            for j, w in enumerate(f"the dot is {where}".split()):
                words.append({"word": w, "start": t + 0.1 + 0.2 * j, "end": t + 0.25 + 0.2 * j})
    video = write_video(os.path.join(out_dir, "dot.webm"), frames, fps=fps)
    transcript = os.path.join(out_dir, "dot.words.json")
    with open(transcript, "w") as f:
        json.dump({"words": words}, f)
    chunks = os.path.join(out_dir, "chunks.jsonl")
    write_chunks(video, transcript, chunks, chunk=24, overlap=12)
    return {"video": video, "transcript": transcript, "chunks": chunks}
