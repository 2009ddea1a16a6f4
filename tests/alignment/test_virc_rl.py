"""ViRC Strategic-RL records: trajectories cut before each (or each hard) next turn."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from alignment.builders.virc_turns import next_turn_records, write_next_turn_records
from alignment.train import build_config
from tests.alignment.conftest import ROOT
from tests.conftest import reply_chat
from vision_tools.generation import ScriptedGenerator


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


# ----------------------------------------------------------------------------- the RL trainer's side

STAGE3 = os.path.join(ROOT, "configs", "virc", "stage3_strategic_rl.yaml")
CROP_C = (
    "<think>I crop bar C to read its value</think><tool_call>"
    + json.dumps({"name": "crop_image", "arguments": {"bbox_2d": [132, 28, 184, 224], "image_index": 0}})
    + "</tool_call>"
)


class Judge72B(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that rates everything 7 / 10 and counts its requests."""

    calls = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Judge72B.calls += 1
        assert body["model"] == "judge-72b" and "bar C" in body["messages"][0]["content"]
        reply_chat(self, "7")

    def log_message(self, *a):
        pass


def _rolled(overrides: list[str], turn: str) -> list[float]:
    """Rewards of two sampled copies of ``turn`` on the first RL record (data/synth: bar C,
    reference crop [132, 28, 184, 224] of a 280 x 224 image), through the trainer's own rollout."""
    from alignment.grpo import GRPOTrainer

    over = [
        f"data.train={os.path.join(ROOT, 'data', 'synth', 'train_rl.jsonl')}",
        "rollout.num_generations=2",
    ]
    trainer = GRPOTrainer(build_config(STAGE3, over + overrides))
    trainer.state = trainer.setup("cpu")
    trainer.state.engine.generator = ScriptedGenerator(trainer.processor, [[turn], [turn]])
    (group,) = trainer.state.rollouts.roll([0])
    return group.rewards.tolist()


def test_http_judge_is_reachable_from_the_training_config(tmp_path):
    """judge.kind=http in the RL config: virc_turn's reasoning score comes from the endpoint
    (0.5 x 0.7 + 0.4 x 1 + 0.1), cached (one request for two equal turns, kept in judge.cache);
    without it the rule-based fallback scores the same thought 1."""
    server = HTTPServer(("127.0.0.1", 0), Judge72B)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "judge.jsonl"
    try:
        judged = _rolled(
            [
                "judge.kind=http",
                f"judge.url=http://127.0.0.1:{server.server_port}/v1",
                "judge.model=judge-72b",
                "judge.timeout=5",
                f"judge.cache={cache}",
            ],
            CROP_C,
        )
    finally:
        server.shutdown()
    assert judged == pytest.approx([0.85, 0.85])
    assert Judge72B.calls == 1 and len(cache.read_text().splitlines()) == 1
    assert _rolled([], CROP_C) == pytest.approx([1.0, 1.0])  # judge.kind=rule (the default)
    with pytest.raises(ValueError, match="judge.url"):
        build_config(STAGE3, ["judge.kind=http"]).judge.build()


def test_fixed_coordinates_are_honoured_in_rl():
    """rollout.coords=fixed: a box on the 0..999 grid is a valid crop (rollout and reward agree),
    the same box in pixels of the 280 x 224 image leaves it (-1)."""
    grid = CROP_C.replace("[132, 28, 184, 224]", "[500, 100, 700, 999]")
    # fixed: valid; IoU with the reference 0 -> 0.5 x 1 + 0.4 x 0 + 0.1
    assert _rolled(["rollout.coords=fixed"], grid) == pytest.approx([0.6, 0.6])
    assert _rolled([], grid) == [-1.0, -1.0]  # dynamic pixels: out of bounds


def test_rl_rollouts_reject_the_scale_gap():
    """RL's format check: a scale factor of 1.0 is a violation in rollouts (inference would snap it)."""
    scale = CROP_C.replace('"crop_image"', '"scale_image"').replace(
        '"bbox_2d": [132, 28, 184, 224]', '"scale_factor": 1.0'
    )
    assert _rolled([], scale) == [-1.0, -1.0]
    assert _rolled([], scale.replace("1.0", "2.0")) == pytest.approx([0.5 + 0.32, 0.5 + 0.32])
