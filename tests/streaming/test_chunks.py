"""The streaming chunk builder on a hand-made transcript, and its records training end to end."""

import json
from pathlib import Path

import pytest

from mm.tiny import tiny_processor
from streaming.chunks import build_chunks, previous_text, read_words, second_text
from tests.testing_utils import require_deepspeed

WORDS = [
    {"word": "kick", "start": 0.2, "end": 0.4},
    {"word": "off", "start": 0.5, "end": 0.7},
    {"word": "pass", "start": 2.1, "end": 2.3},
    {"word": "shot", "start": 5.9, "end": 6.2},
    {"word": "goal", "start": 6.0, "end": 6.4},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_processor().tokenizer


def test_seconds_get_their_words_or_silence():
    assert [second_text(WORDS, t) for t in range(7)] == [
        " kick off",
        " ...",
        " pass",
        " ...",
        " ...",
        " shot",
        " goal",
    ]


def test_chunks_overlap_and_carry_previous_text(tok):
    recs = build_chunks("v.mp4", WORDS, 8.0, tok, chunk=4, overlap=2)
    assert [(r["meta"]["start"], r["meta"]["end"]) for r in recs] == [(0, 4), (2, 6), (4, 8)]
    second = recs[1]["messages"]
    assert [m["role"] for m in second] == ["system"] + ["user", "assistant"] * 4
    first_user = second[1]["content"]
    assert first_user[0]["text"] == "Commentate on this match\nkick off\nTime=2-3s"  # the engine's order
    assert first_user[1] == {"type": "video", "video": "v.mp4", "video_start": 2.0, "video_end": 3.0}
    assert [m["content"] for m in second[2::2]] == [" pass", " ...", " ...", " shot"]
    assert second[3]["content"][0]["text"] == "Time=3-4s"  # later seconds: only the time
    assert (
        recs[0]["messages"][1]["content"][0]["text"] == "Commentate on this match\nTime=0-1s"
    )  # nothing before


def test_previous_text_keeps_first_and_last_tokens(tok):
    words = [{"word": f"w{i}", "start": i * 0.1} for i in range(200)]
    full = " ".join(f"w{i}" for i in range(200))
    ids = tok(full, add_special_tokens=False)["input_ids"]
    cut = previous_text(words, 100.0, tok, sink=5, window=7)
    assert cut == tok.decode(ids[:5] + ids[-7:])  # the middle cut, no marker (as the cache cuts)
    assert previous_text(words[:3], 100.0, tok, sink=5, window=7) == "w0 w1 w2"


def test_bad_transcripts_name_the_fix(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{"words": [{"word": "a"}]}')
    with pytest.raises(ValueError, match=r"words\[0\] needs 'word'"):
        read_words(str(p))
    p.write_text("[oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_words(str(p))
    with pytest.raises(ValueError, match="overlap"):
        build_chunks("v.mp4", WORDS, 8.0, None, chunk=4, overlap=4)
    with pytest.raises(ValueError, match="shorter than one second"):
        build_chunks("v.mp4", WORDS, 0.5, None)


@require_deepspeed
def test_chunks_train_with_the_streaming_config(tmp_path):
    from alignment.infra.metrics import read_metrics
    from alignment.train import train
    from mm.synthetic import moving_dot_frames, write_video
    from streaming.chunks import write_chunks

    video = write_video(str(tmp_path / "clip.webm"), moving_dot_frames(48, size=56), fps=4)  # 12 s
    words = tmp_path / "w.json"
    words.write_text(json.dumps({"words": WORDS}))
    out = tmp_path / "chunks.jsonl"
    assert write_chunks(video, str(words), str(out), chunk=8, overlap=4) == 2
    summary = train(
        str(Path(__file__).resolve().parents[2] / "configs" / "streaming" / "sft.yaml"),
        [f"data.train={out}", "train.save_every=0", "train.log_every=1", "train.deepspeed=zero0"],
        output_dir=str(tmp_path / "run"),
    )
    metrics = read_metrics(str(tmp_path / "run"))
    assert summary["steps"] == len(metrics) >= 1 and metrics[0]["visual_tokens"] > 0
