"""mm.formats: each format read into the records its mmpost JSONL twin gives, hand-written
expectations for the mappings, bad input named by row and key, lazy images, convert."""

import base64
import io
import json
import os

import pytest

from mm.dataset import DataError, RecordDataset
from mm.formats import open_records
from mm.formats.common import TOOLS_BLOCK
from mm.formats.tables import EmbeddedImage, TableRows
from mm.visual import VisualConfig, open_image
from mmpost.data.checks import run_convert, run_validate
from tests.conftest import solid
from tests.format_rows import (  # noqa: F401 (datasets_cache: a fixture)
    datasets_cache,
    easyr1_rows,
    sharegpt_rows,
    write_disk,
    write_json,
    write_parquet,
)

pytest.importorskip("datasets")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTH = os.path.join(ROOT, "data", "synth")


def canon(records, base: str) -> list:
    """Records as plain data, every image replaced by its decoded pixels (wherever it was stored)."""

    def ref(r):
        if isinstance(r, str) and not os.path.isabs(r):
            r = os.path.join(base, r)
        return open_image(r, decode=True).convert("RGB").tobytes()

    def msgs(ms):
        return [
            (
                m.role,
                m.train,
                m.content
                if isinstance(m.content, str)
                else [
                    ("image", ref(c["image"])) if c.get("type") == "image" else (c["type"], c["text"])
                    for c in m.content
                ],
            )
            for m in ms
        ]

    out = []
    for rec in records:
        convs = [msgs(c) for c in rec.conversations()]
        out.append((rec.kind, rec.id, getattr(rec, "answer", None), convs))
    return out


def records(path, fmt="auto"):
    got = list(open_records(path, fmt))
    bad = [r for _, r in got if not hasattr(r, "kind")]
    assert not bad, bad[0]
    return [r for _, r in got]


@pytest.fixture
def synth8(tmp_path):
    """The first 8 quickstart records, in a folder of their own (images linked)."""
    os.symlink(os.path.join(SYNTH, "images"), tmp_path / "images")
    with open(os.path.join(SYNTH, "train.jsonl")) as f:
        lines = f.readlines()[:8]
    (tmp_path / "head.jsonl").write_text("".join(lines))
    return str(tmp_path / "head.jsonl")


def test_sharegpt_in_json_parquet_and_disk_reads_as_the_jsonl(synth8, tmp_path):
    want = canon(records(synth8), str(tmp_path))
    files = [
        write_json(sharegpt_rows(synth8), str(tmp_path / "sg.json")),
        write_parquet(sharegpt_rows(synth8, embed=True), str(tmp_path / "sg.parquet")),
        write_parquet(sharegpt_rows(synth8), str(tmp_path / "paths.parquet")),  # paths, no bytes
        write_disk(sharegpt_rows(synth8, embed=True), str(tmp_path / "sg_disk")),
    ]
    for f in files:
        assert canon(records(f), "") == want, f
    embedded = records(files[1])[0].messages[1].content[0]["image"]
    assert isinstance(embedded, EmbeddedImage) and str(embedded).endswith("sg.parquet row 0 images[0]")


def test_shipped_parquet_is_the_quickstart_set():
    shipped = canon(records(os.path.join(SYNTH, "train.parquet"))[:5], "")
    assert shipped == canon(records(os.path.join(SYNTH, "train.jsonl"))[:5], SYNTH)


def test_llama_factory_dataset_info_maps_columns_and_tags(tmp_path):
    solid(56, 56).save(tmp_path / "a.png")
    row = {
        "dialog": [
            {"speaker": "q", "text": "<image>Weather in Paris?"},
            {"speaker": "call", "text": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"speaker": "obs", "text": "sunny"},
            {"speaker": "a", "text": "It is sunny."},
        ],
        "pics": ["a.png"],
        "sys": "Be brief.",
        "fns": json.dumps([{"name": "weather", "parameters": {"type": "object"}}]),
    }
    write_json([row], str(tmp_path / "chat.json"))
    info = {
        "mine": {
            "file_name": "chat.json",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog", "images": "pics", "system": "sys", "tools": "fns"},
            "tags": {
                "role_tag": "speaker",
                "content_tag": "text",
                "user_tag": "q",
                "assistant_tag": "a",
                "observation_tag": "obs",
                "function_tag": "call",
            },
        }
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    (rec,) = records(str(tmp_path / "chat.json"))
    schema = '{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}'
    assert [m.to_dict() for m in rec.messages] == [
        {"role": "system", "content": "Be brief." + TOOLS_BLOCK.format(schemas=schema)},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(tmp_path / "a.png")},
                {"type": "text", "text": "Weather in Paris?"},
            ],
        },
        {
            "role": "assistant",
            "content": '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        },
        {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    assert "<tools>\n" + schema + "\n</tools>" in rec.messages[0].content  # Qwen2.5's tools block


def test_openai_messages(tmp_path):
    png = io.BytesIO()
    solid(28, 28).save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    row = {
        "messages": [
            {"role": "developer", "content": "Be exact."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                    {"type": "text", "text": "Add 2 and 3."},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me add.",
                "weight": 0,
                "tool_calls": [
                    {"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "5"},
            {"role": "assistant", "content": "5"},
        ]
    }
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (rec,) = records(str(path))
    assert [m.to_dict() for m in rec.messages] == [
        {"role": "system", "content": "Be exact."},
        {
            "role": "user",
            "content": [{"type": "image", "image": url}, {"type": "text", "text": "Add 2 and 3."}],
        },
        {
            "role": "assistant",
            "train": False,
            "content": 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
        },
        {"role": "user", "content": "<tool_response>\n5\n</tool_response>"},
        {"role": "assistant", "content": "5"},
    ]


def test_trl_columns(tmp_path):
    solid(28, 28).save(tmp_path / "a.png")
    solid(28, 56).save(tmp_path / "b.png")
    img = lambda n: {"type": "image", "image": str(tmp_path / n)}  # noqa: E731
    rows = [
        {"prompt": "What is shown?", "completion": "Two boxes.", "images": ["a.png", "b.png"]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
            ],
            "images": ["a.png", "b.png"],
        },
        {"prompt": "Colour?", "chosen": "Red.", "rejected": "Blue.", "images": ["b.png"]},
    ]
    sft, conv, pref = records(write_json(rows, str(tmp_path / "trl.json")), "trl")
    assert [m.to_dict() for m in sft.messages] == [
        {"role": "user", "content": [img("a.png"), img("b.png"), {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": "Two boxes."},
    ]
    assert conv.messages[0].content == [{"type": "text", "text": "Compare"}, img("a.png"), img("b.png")]
    assert pref.kind == "preference" and pref.chosen[0].to_dict() == {"role": "assistant", "content": "Red."}
    assert pref.prompt[0].content == [img("b.png"), {"type": "text", "text": "Colour?"}]


def test_rl_columns_easyr1_and_verl(tmp_path):
    solid(28, 28).save(tmp_path / "a.png")
    rows = [
        {
            "problem": "<image>Find x.",
            "answer": "3",
            "images": [{"bytes": (tmp_path / "a.png").read_bytes()}],
        },
        {
            "prompt": [
                {"role": "system", "content": "Think."},
                {"role": "user", "content": "<image>Find y."},
            ],
            "reward_model": {"ground_truth": "4", "style": "rule"},
            "data_source": "geo3k",
            "images": ["a.png"],
        },
    ]
    easy, verl = records(write_parquet(rows[:1], str(tmp_path / "e.parquet"))) + records(
        write_json(rows[1:], str(tmp_path / "v.json"))
    )
    image = {"type": "image", "image": str(tmp_path / "a.png")}
    assert easy.kind == "rl" and easy.answer == "3"
    assert easy.prompt[0].content[1] == {"type": "text", "text": "Find x."}
    assert isinstance(easy.prompt[0].content[0]["image"], EmbeddedImage)
    assert [m.to_dict() for m in verl.prompt] == [
        {"role": "system", "content": "Think."},
        {"role": "user", "content": [image, {"type": "text", "text": "Find y."}]},
    ]
    assert verl.answer == "4" and verl.meta == {"data_source": "geo3k"}


def test_alpaca(tmp_path):
    row = {"instruction": "Add", "input": "2 and 3", "output": "5", "history": [["Hi", "Hello"]]}
    (rec,) = records(write_json([row], str(tmp_path / "a.json")))
    assert [m.to_dict() for m in rec.messages] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Add\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]


def test_bad_rows_are_named_by_row_and_key(tmp_path, encoder):
    solid(28, 28).save(tmp_path / "a.png")
    rows = [
        {
            "conversations": [{"from": "human", "value": "<image><image>Hi"}, {"from": "gpt", "value": "Yo"}],
            "images": ["a.png"],
        },
        {
            "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yo"}],
            "images": ["../a.png"],
        },
        {"problem": "<image>Find x.", "images": ["a.png"]},
        {
            "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yo"}],
            "images": ["a.png"],
        },
    ]
    path = write_json(rows, str(tmp_path / "sub_bad.json"))
    got = [str(p) for _, p in open_records(path) if not hasattr(p, "kind")]
    assert got[0].startswith(f"{path} row 0: [placeholder_mismatch] 2 <image> placeholder(s)")
    assert "1 item(s) in 'images'" in got[0]
    assert got[1].startswith(f"{path} row 1: [path_outside_root] 'images[0]' = '../a.png'")
    assert got[2].startswith(f"{path} row 2: [missing_column] RL row has no 'answer'")
    assert len(got) == 3
    with pytest.raises(DataError, match=r"row 0: \[placeholder_mismatch\]"):
        RecordDataset(path, encoder)
    ds = RecordDataset(path, encoder, on_error="skip")
    assert len(ds) == 1 and ds.skipped == 3


def test_undecodable_embedded_image_names_row_and_key(tmp_path, encoder):
    png = io.BytesIO()
    solid(28, 28).save(png, format="PNG")
    rows = [
        {"problem": "<image>A?", "answer": "a", "images": [{"bytes": png.getvalue(), "path": "ok.png"}]},
        {"problem": "<image>B?", "answer": "b", "images": [{"bytes": b"not an image", "path": "bad.png"}]},
    ]
    path = write_parquet(rows, str(tmp_path / "rl.parquet"))
    out = io.StringIO()
    assert run_validate(path, VisualConfig(), out=out) == 1
    assert f"{path} row 1: [bad_image] cannot decode image {path} row 1 images[0]" in out.getvalue()
    ds = RecordDataset(path, encoder, on_error="skip")
    assert ds.lengths(progress=False)[1] == 0 and ds.skipped == 1 and ds[0] is not None


def test_table_images_are_read_only_when_opened(tmp_path, encoder, monkeypatch):
    """Reading the rows and measuring the records touches no image bytes; encoding one record
    reads exactly its own images."""
    rows = sharegpt_rows(os.path.join(SYNTH, "train.jsonl"), embed=True)[:6]
    path = write_parquet(rows, str(tmp_path / "t.parquet"))
    reads = []
    real = TableRows.image_bytes
    monkeypatch.setattr(
        TableRows, "image_bytes", lambda self, r, c, k: reads.append((r, k)) or real(self, r, c, k)
    )
    ds = RecordDataset(path, encoder)
    assert len(ds) == 6 and reads == []
    ds[2]
    assert reads == [(2, k) for k in range(len(rows[2]["images"]))] * 2  # header (plan), then pixels


def test_convert_writes_what_the_trainer_reads(synth8, tmp_path):
    src = write_parquet(sharegpt_rows(synth8, embed=True), str(tmp_path / "sg.parquet"))
    out = str(tmp_path / "out" / "train.jsonl")
    log = io.StringIO()
    assert run_convert(src, out, out=log) == 0
    assert "8 record(s) written, 0 row(s) with problems" in log.getvalue()
    converted = records(out)
    assert converted[0].messages[1].content[0]["image"] == "train_images/0_images_0.png"
    assert canon(converted, str(tmp_path / "out")) == canon(records(synth8), str(tmp_path))
    with open(tmp_path / "out" / "train_images" / "0_images_0.png", "rb") as f:
        assert f.read() == rows_bytes(synth8)


def rows_bytes(jsonl: str) -> bytes:
    return sharegpt_rows(jsonl, embed=True)[0]["images"][0]["bytes"]


def test_rl_rows_round_trip_through_convert(tmp_path):
    src = os.path.join(ROOT, "data", "cls", "cls_rl", "train.jsonl")
    parquet = write_parquet(easyr1_rows(src, embed=True)[:4], str(tmp_path / "rl.parquet"))
    run_convert(parquet, str(tmp_path / "rl.jsonl"), out=io.StringIO())
    with open(src) as f:
        want = [json.loads(line) for line in f][:4]
    with open(tmp_path / "rl.jsonl") as f:
        got = [json.loads(line) for line in f]
    assert [g["answer"] for g in got] == [w["answer"] for w in want]
    assert [g["meta"] for g in got] == [{"data_source": "cls"}] * 4
    got = [(k, a, c) for k, _, a, c in canon(records(str(tmp_path / "rl.jsonl")), str(tmp_path))]
    want = [(k, a, c) for k, _, a, c in canon(records(src)[:4], os.path.dirname(src))]
    assert got == want
