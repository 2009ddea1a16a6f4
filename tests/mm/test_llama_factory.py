"""LLaMA-Factory's files, written in its published layouts (its data/dataset_info.json entries,
dpo_en_demo.json, kto_en_demo.json, mllm_audio_demo.json, v1_sft_demo.jsonl, v1_dpo_demo.jsonl),
read as the records their mmpost JSONL twins give; what mmpost cannot honour (KTO labels, audio,
fractional loss weights, placeholders no image fills) is a named problem with its row and fix."""

import io
import json
import os

from mm.formats import open_records
from mm.formats.common import TOOLS_BLOCK
from mmpost.data.checks import run_validate
from tests.conftest import solid
from tests.format_rows import lf_ranking_rows, lf_v1_rows, read_jsonl, write_json, write_jsonl
from tests.mm.test_formats import SYNTH, canon, records

SYSTEM = "Answer with one letter."

# the entries of LLaMA-Factory's data/dataset_info.json these files follow (dpo_en_demo, rlhf_v;
# ultrafeedback; kto_en_demo; mllm_audio_demo), with our file names
DATASET_INFO = {
    "pairs_sharegpt": {
        "file_name": "pairs_sharegpt.json",
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {
            "messages": "conversations",
            "chosen": "chosen",
            "rejected": "rejected",
            "images": "images",
        },
    },
    "pairs_alpaca": {
        "file_name": "pairs_alpaca.json",
        "ranking": True,
        "columns": {
            "prompt": "instruction",
            "chosen": "chosen",
            "rejected": "rejected",
            "images": "images",
            "system": "system",
            "history": "history",
        },
    },
    "kto": {
        "file_name": "kto.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
    "audio": {
        "file_name": "audio.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "audios": "audios"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
}


def preference_jsonl(folder: str, n: int = 8) -> str:
    """The DPO test pairs (image and text prompts) with a system turn, and an earlier exchange in
    every other prompt, as mmpost JSONL."""
    from tests.alignment.test_dpo import write_pairs

    path = write_pairs(folder, n=n)
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        history = [{"role": "user", "content": "Ready?"}, {"role": "assistant", "content": "Yes."}]
        r["prompt"] = [{"role": "system", "content": SYSTEM}, *(history if i % 2 else []), *r["prompt"]]
        r.pop("id")  # LLaMA-Factory rows have no id
    return write_jsonl(rows, os.path.join(folder, "pairs_mmpost.jsonl"))


def llama_factory_pairs(folder: str, n: int = 8) -> dict[str, str]:
    """The same pairs as mmpost JSONL, LLaMA-Factory ranking rows (ShareGPT and alpaca, declared in
    dataset_info.json) and v1 ``chosen_messages`` / ``rejected_messages``."""
    jsonl = preference_jsonl(folder, n)
    info = {k: DATASET_INFO[k] for k in ("pairs_sharegpt", "pairs_alpaca")}
    with open(os.path.join(folder, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    return {
        "jsonl": jsonl,
        "sharegpt": write_json(lf_ranking_rows(jsonl), os.path.join(folder, "pairs_sharegpt.json")),
        "alpaca": write_json(lf_ranking_rows(jsonl, alpaca=True), os.path.join(folder, "pairs_alpaca.json")),
        "v1": write_jsonl(lf_v1_rows(jsonl), os.path.join(folder, "pairs_v1.jsonl")),
        # no dataset_info.json entry: told by the columns
        "undeclared": write_json(lf_ranking_rows(jsonl), os.path.join(folder, "pairs_undeclared.json")),
    }


def test_ranking_and_v1_pairs_read_as_the_jsonl_pairs(tmp_path):
    files = llama_factory_pairs(str(tmp_path))
    want = canon(records(files["jsonl"]), str(tmp_path))
    assert [k for k, *_ in want] == ["preference"] * 8
    assert len(want[1][3][0]) == 5  # system, the earlier exchange, the question, chosen
    for name, path in files.items():
        assert canon(records(path), str(tmp_path)) == want, name
    # LLaMA-Factory's own demo row shape: a text-only prompt (a system turn first), answers as turns
    row = {
        "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi!"}],
        "chosen": {"from": "gpt", "value": "Hello!"},
        "rejected": {"from": "gpt", "value": "Go away."},
    }
    (rec,) = records(write_json([row], str(tmp_path / "dpo_en_demo.json")))
    assert [m.to_dict() for m in rec.prompt] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi!"},
    ]
    assert (rec.chosen[0].content, rec.rejected[0].content) == ("Hello!", "Go away.")


def test_ranking_rows_that_cannot_be_pairs_are_named(tmp_path):
    rows = [
        {  # the prompt ends with an answer: the pair would follow the assistant's own turn
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
            "chosen": {"from": "gpt", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        {
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "human", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "a"}},
        {
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "<image>a"},
            "rejected": {"from": "gpt", "value": "b"},
            "images": ["a.png"],
        },
    ]
    path = write_json(rows, str(tmp_path / "bad_pairs.json"))
    got = [str(p) for _, p in open_records(path)]
    assert got[0].startswith(f"{path} row 0: [bad_record] a preference row's 'conversations' is the prompt")
    assert got[1].startswith(f"{path} row 1: [bad_message] chosen is a user turn")
    assert got[2].startswith(f"{path} row 2: [missing_column] ShareGPT preference row has no 'rejected'")
    assert got[3].startswith(f"{path} row 3: [visual_in_response] 'chosen' holds a media placeholder")


def test_v1_sft_reads_as_the_jsonl_with_loss_weights_as_train_flags(tmp_path):
    os.symlink(os.path.join(SYNTH, "images"), tmp_path / "images")
    rows = read_jsonl(os.path.join(SYNTH, "train.jsonl"))[:6]
    for r in rows[::2]:  # loss_weight 0.0 on the first answer of every other record
        next(m for m in r["messages"] if m["role"] == "assistant")["train"] = False
    jsonl = write_jsonl(rows, str(tmp_path / "sft.jsonl"))
    v1 = write_jsonl(lf_v1_rows(jsonl), str(tmp_path / "v1_sft_demo.jsonl"))
    assert read_jsonl(v1)[0]["messages"][2]["loss_weight"] == 0.0
    assert read_jsonl(v1)[0]["messages"][1]["content"][0] == {
        "type": "image_url",
        "value": "images/train_0000.png",
    }
    conversations = lambda recs: [(kind, convs) for kind, _id, _answer, convs in recs]  # noqa: E731
    want = conversations(canon(records(jsonl), str(tmp_path)))  # v1 rows carry no id or answer
    assert conversations(canon(records(v1), "")) == want
    assert [m.train for m in records(v1)[0].messages] == [True, True, False, True, True]


def test_v1_items_reasoning_tool_calls_tool_results_and_tools(tmp_path):
    solid(56, 56).save(tmp_path / "a.png")
    call = json.dumps({"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 28, 28], "image_index": 0}})
    tools = json.dumps([{"name": "crop_image", "parameters": {"type": "object"}}])
    row = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "value": "Look closely."}], "loss_weight": 0.0},
            {
                "role": "user",
                "content": [{"type": "image_url", "value": "a.png"}, {"type": "text", "value": "Colour?"}],
                "loss_weight": 0.0,
            },
            {
                "role": "assistant",
                "content": [{"type": "reasoning", "value": "Crop it."}, {"type": "tool_call", "value": call}],
                "loss_weight": 1.0,
            },
            {"role": "tool", "content": [{"type": "text", "value": "cropped"}], "loss_weight": 0.0},
            {"role": "tool", "content": [{"type": "text", "value": "done"}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Red."}]},  # no weight: 1.0
        ],
        "tools": tools,
    }
    (rec,) = records(write_jsonl([row], str(tmp_path / "v1.jsonl")))
    schema = '{"type": "function", "function": {"name": "crop_image", "parameters": {"type": "object"}}}'
    assert [m.to_dict() for m in rec.messages] == [
        {"role": "system", "content": "Look closely." + TOOLS_BLOCK.format(schemas=schema)},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(tmp_path / "a.png")},
                {"type": "text", "text": "Colour?"},
            ],
        },
        {
            "role": "assistant",
            "content": f"<think>\nCrop it.\n</think>\n\n\n<tool_call>\n{call}\n</tool_call>",
        },
        {
            "role": "user",
            "content": "<tool_response>\ncropped\n</tool_response>\n<tool_response>\ndone\n</tool_response>",
        },
        {"role": "assistant", "content": "Red."},
    ]


def problems_of(path: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    status = run_validate(path, __import__("mm").VisualConfig(), out)
    return status, out.getvalue().splitlines()


def test_kto_rows_are_a_named_problem(tmp_path):
    """mmpost has no KTO trainer: LLaMA-Factory's kto_tag rows (declared, or a boolean label beside
    a conversation) and TRL's unpaired prompt/completion/label rows are refused, never trained as SFT."""
    with open(tmp_path / "dataset_info.json", "w") as f:
        json.dump({"kto": DATASET_INFO["kto"]}, f)
    turns = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "5"}]
    write_json(
        [{"messages": turns, "label": True}, {"messages": turns, "label": False}], str(tmp_path / "kto.json")
    )
    write_jsonl([{"messages": turns, "label": False}], str(tmp_path / "undeclared.jsonl"))
    write_jsonl([{"prompt": "2 + 2?", "completion": "5", "label": False}], str(tmp_path / "trl_kto.jsonl"))
    for name, where in (("kto.json", " row 1:"), ("undeclared.jsonl", ":1:"), ("trl_kto.jsonl", ":1:")):
        status, lines = problems_of(str(tmp_path / name))
        assert status == 1
        first = next(line for line in lines if where in line)
        assert "[unpaired_preference]" in first and "no KTO trainer" in first, lines
        assert any(
            line.strip().startswith("fix: pair a desirable and an undesirable answer") for line in lines
        )


def test_audio_and_unknown_placeholders_are_named_problems(tmp_path):
    """An audio column or <audio> placeholder, and an <image> that no image fills, used to pass
    validation and train with the audio dropped or the placeholder as literal text."""
    solid(28, 28).save(tmp_path / "a.png")
    with open(tmp_path / "dataset_info.json", "w") as f:
        json.dump({"audio": DATASET_INFO["audio"]}, f)
    # LLaMA-Factory's mllm_audio_demo.json layout
    audio_turns = [
        {"role": "user", "content": "<audio>What is she saying?"},
        {"role": "assistant", "content": "Hi."},
    ]
    write_json([{"messages": audio_turns, "audios": ["1.mp3"]}], str(tmp_path / "audio.json"))
    ok = {
        "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yo"}],
        "images": ["a.png"],
    }
    mixed = [
        ok,
        {
            "conversations": [{"from": "human", "value": "<audio>Hi"}, {"from": "gpt", "value": "Yo"}]
        },  # no column
        {
            "messages": [
                {"role": "user", "content": "<image>What is it?"},
                {"role": "assistant", "content": "A box."},
            ]
        },
        {"prompt": "<image>What is shown?", "completion": "A box."},  # TRL: images never come from the text
        {"messages": [{"role": "user", "content": [{"type": "audio_url", "value": "1.mp3"}]}]},  # v1
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi <video>"}]},
                {"role": "assistant", "content": "Yo"},
            ]
        },
    ]
    write_jsonl(mixed, str(tmp_path / "mixed.jsonl"))

    status, lines = problems_of(str(tmp_path / "audio.json"))
    assert status == 1 and lines[0].startswith(
        f"{tmp_path / 'audio.json'} row 0: [unsupported_audio] the row has an audio column 'audios'"
    )
    assert lines[1].strip().startswith("fix: drop the audio")
    status, lines = problems_of(str(tmp_path / "mixed.jsonl"))
    found = {line.split(":")[1]: line.split("] ")[0].split("[")[1] for line in lines if ": [" in line}
    assert status == 1 and found == {
        "2": "unsupported_audio",
        "3": "unknown_placeholder",
        "4": "unknown_placeholder",
        "5": "unsupported_audio",
        "6": "unknown_placeholder",
    }, lines
    assert (
        lines[-1]
        == f"{tmp_path / 'mixed.jsonl'}: 6 record(s), 1 ok, 5 with problems (unknown_placeholder: 3, unsupported_audio: 2)"
    )
    third = next(i for i, line in enumerate(lines) if line.startswith(f"{tmp_path / 'mixed.jsonl'}:3:"))
    assert "messages[0] text holds <image>, which no image of the record fills" in lines[third]
    assert '{"type": "image", "image": PATH}' in lines[third + 1]


def test_loss_weights_mmpost_cannot_honour_are_refused(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "Hi"}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Yo"}], "loss_weight": 0.5},
        ]
    }
    (problem,) = [p for _, p in open_records(write_jsonl([row], str(tmp_path / "w.jsonl")))]
    assert problem.code == "unsupported_loss_weight" and problem.line == 1
    assert "messages[1] has loss_weight 0.5" in problem.message and "1.0 to train the turn" in problem.hint
