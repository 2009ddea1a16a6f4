"""The streaming chunk builder on a hand-made transcript, and its records training end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

from mm.records import parse_message
from mm.tiny import tiny_processor
from streaming.chunks import build_chunks, previous_text, read_words, second_text
from tests.testing_utils import require_deepspeed

WORDS = [
    {"word": "kick", "start": 0.2, "end": 0.4},
    {"word": "off", "start": 0.5, "end": 0.7},
    {"word": "pass", "start": 2.1, "end": 2.3},
    {"word": "shot", "start": 5.7, "end": 6.2},  # ends in second 6: said by the end of it
    {"word": "goal", "start": 6.0, "end": 6.4},
    {"word": "now", "start": 7.9, "end": 8.0},  # ends exactly at 8.0: second 7
]


@pytest.fixture(scope="module")
def tok():
    return tiny_processor().tokenizer


def test_seconds_get_the_words_said_by_their_end():
    assert [second_text(WORDS, t) for t in range(8)] == [
        "\n kick off ...",
        "\n ...",
        "\n pass ...",
        "\n ...",
        "\n ...",
        "\n ...",
        "\n shot goal ...",
        "\n now ...",
    ]


def test_chunks_overlap_and_carry_previous_text(tok):
    """The released layout: previous text as its own block, Time= with one decimal, the query
    after the first second's frames."""
    recs = build_chunks("v.mp4", WORDS, 8.0, tok, chunk=4, overlap=2)
    assert [(r["meta"]["start"], r["meta"]["end"]) for r in recs] == [(0, 4), (2, 6), (4, 8)]
    second = recs[1]["messages"]
    assert [m["role"] for m in second] == ["system", "previous text"] + ["user", "assistant"] * 4
    assert second[1]["content"] == " kick off"
    assert second[2]["content"] == [
        {"type": "text", "text": "Time=2.0-3.0s"},
        {"type": "video", "video": "v.mp4", "video_start": 2.0, "video_end": 3.0},
        {"type": "text", "text": "Commentate on this match"},
    ]
    assert [m["content"] for m in second[3::2]] == ["\n pass ...", "\n ...", "\n ...", "\n ..."]
    assert [c["text"] for c in second[4]["content"] if c["type"] == "text"] == ["Time=3.0-4.0s"]
    assert recs[0]["messages"][1]["content"] == ""  # nothing before: an empty block
    assert recs[2]["messages"][1]["content"] == " kick off pass"


def test_previous_text_keeps_first_and_last_tokens(tok):
    words = [{"word": f"w{i}", "start": i * 0.1, "end": i * 0.1 + 0.05} for i in range(200)]
    full = "".join(f" w{i}" for i in range(200))
    ids = tok(full, add_special_tokens=False)["input_ids"]
    cut = previous_text(words, 100.0, tok, sink=5, window=7)
    assert cut == tok.decode(ids[:5] + ids[-7:])  # the middle cut, no marker (as the cache cuts)
    assert previous_text(words[:3], 100.0, tok, sink=5, window=7) == " w0 w1 w2"


def test_bad_transcripts_name_the_fix(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{"words": [{"word": "a", "start": 1.0}]}')
    with pytest.raises(ValueError, match=r"words\[0\] needs 'word' \(text\), 'start' and 'end'"):
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
        [
            f"data.train={out}",
            "train.save_every=0",
            "train.log_every=1",
            "train.deepspeed=zero0",
            "train.gradient_accumulation_steps=1",  # 2 chunks here; the config's 64 reach 512 on 8 GPUs
        ],
        output_dir=str(tmp_path / "run"),
    )
    metrics = read_metrics(str(tmp_path / "run"))
    assert summary["steps"] == len(metrics) >= 1 and metrics[0]["visual_tokens"] > 0


def test_streaming_config_reaches_the_global_batch():
    """One chunk per micro-batch x 64 accumulation x the 8 GPUs its header assumes = 512.
    (tests/test_configs.py checks the other hyperparameters and the frozen vision side.)"""
    from alignment.train import build_config

    path = Path(__file__).resolve().parents[2] / "configs" / "streaming" / "sft.yaml"
    cfg = build_config(str(path))
    assert "Assumes 8 GPUs" in path.read_text()
    assert (cfg.data.layout, cfg.data.micro_batch_size) == ("pad", 1)
    assert cfg.data.micro_batch_size * cfg.train.gradient_accumulation_steps * 8 == 512


def test_a_reply_newline_merged_into_the_header_is_not_trained():
    """Qwen's tokenizer writes "assistant\n" + "\n kick ..." with one "\n\n" token (the tiny one
    keeps two "\n"); labels then start after it, as the released code's (im_start + 3). Simulated
    here by an id that decodes to "\n\n" in place of the two newlines."""
    from mm.encode import IGNORE, ConversationEncoder

    enc = ConversationEncoder(tiny_processor())
    msgs = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "\n kick ..."}]
    s = enc.encode(msgs)
    ids = s.input_ids.tolist()
    nl = enc.tok.convert_tokens_to_ids("Ċ")
    at = ids.index(nl, len(ids) - 12)  # the header's newline, then the reply's
    assert ids[at + 1] == nl and enc.tok.decode(s.input_ids[s.labels != IGNORE]) == "\n kick ...<|im_end|>"
    merged = 5  # any id: it stands for "\n\n"
    decode = enc.tok.decode
    enc.tok = type("Tok", (), {"decode": lambda self, t: "\n\n" if list(t) == [merged] else decode(t)})()
    ids = ids[:at] + [merged] + ids[at + 2 :]
    labels = enc._labels(np.asarray(ids), [parse_message(m, "m") for m in msgs], False)
    assert decode([t for t, lab in zip(ids, labels) if lab != IGNORE]) == " kick ...<|im_end|>"


def test_the_previous_text_block_has_a_role_the_template_renders():
    """StreamingVLM's ``previous text`` role where the template renders any role (Qwen2.5-VL);
    Qwen3-VL's template drops it with its content, so there the block is a ``user`` turn."""
    from streaming.engine import previous_role

    qwen3 = tiny_processor("qwen3_vl")
    assert previous_role(tiny_processor()) == "previous text" and previous_role(qwen3) == "user"
    conv = [{"role": "system", "content": "s"}, {"role": "previous text", "content": "earlier words"}]
    assert "earlier words" not in qwen3.apply_chat_template(conv, tokenize=False)
    recs = build_chunks("v.mp4", WORDS, 8.0, qwen3.tokenizer, chunk=4, overlap=2, previous="user")
    assert recs[2]["messages"][1] == {"role": "user", "content": " kick off pass"}
