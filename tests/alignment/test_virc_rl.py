"""ViRC Strategic-RL records: trajectories cut before each (or each hard) next turn."""

import json

from alignment.builders.virc_turns import next_turn_records, write_next_turn_records


def trajectory(n_crops: int) -> dict:
    call = '<think>look</think><tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 56, 56], "image_index": 0}}</tool_call>'
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Q"}]},
    ]
    for k in range(n_crops):
        msgs += [
            {"role": "assistant", "content": call},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": f"crop{k}.png"},
                    {"type": "text", "text": f"Image {k + 1}: 56 x 56."},
                ],
            },
        ]
    msgs.append({"role": "assistant", "content": "<think>so</think><answer>3</answer>"})
    return {"id": "t", "messages": msgs, "answer": "3"}


def test_cuts(tmp_path):
    src = tmp_path / "traj.jsonl"
    src.write_text(json.dumps(trajectory(2)) + "\n" + json.dumps(trajectory(17)) + "\n")
    recs, skipped = next_turn_records(str(src))
    assert skipped == 0 and len(recs) == 3 + 18
    first = recs[0]
    assert first["prompt"][-1]["role"] == "user" and len(first["prompt"]) == 2
    assert first["meta"] == {"turn": 0, "source_id": "t", "tool": "crop_image", "bbox": [0, 0, 56, 56]}
    last = recs[2]  # the answer turn of the short trajectory: its prompt holds both crops
    assert last["meta"]["tool"] is None and last["answer"] == "3" and len(last["prompt"]) == 6
    hard, _ = next_turn_records(str(src), cuts="hard", min_turns=15)
    # hard: every crop (2 + 17) and only the long trajectory's answer (after 17 > 15 turns)
    assert len(hard) == 19 + 1 and sum(r["meta"]["tool"] is None for r in hard) == 1


def test_images_are_re_pointed_to_the_output_folder(tmp_path):
    (tmp_path / "data").mkdir()
    src = tmp_path / "data" / "traj.jsonl"
    src.write_text(json.dumps(trajectory(1)) + "\n")
    out = tmp_path / "rl.jsonl"
    assert write_next_turn_records(str(src), str(out)) == 2
    rec = json.loads(out.read_text().splitlines()[1])
    assert rec["prompt"][1]["content"][0]["image"] == "data/a.png"
    assert rec["prompt"][3]["content"][0]["image"] == "data/crop0.png"
