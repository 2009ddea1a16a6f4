"""lmms-eval runs an mmpost export unchanged: its ``qwen2_5_vl`` model on a local toy task
generates exactly what mmpost's own evaluation generates under the same settings (bf16 weights,
lmms-eval's pixel limits, its JPEG-encoded image). Needs lmms-eval (skipped without it; it is
best installed in its own environment, see docs/evaluation.md)."""

import base64
import glob
import io
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from alignment.infra.export import export_hf
from evaluation.evaluate import generate
from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.records import Message
from mm.rope import RopeSpec
from mm.visual import VisualConfig

pytest.importorskip("lmms_eval")

# lmms-eval's qwen2_5_vl defaults
MIN_PIXELS, MAX_PIXELS = 256 * 28 * 28, 1605632
TASK = """task: mmpost_toy
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_visual: !function toy_utils.doc_to_visual
doc_to_text: !function toy_utils.doc_to_text
doc_to_target: answer
process_results: !function toy_utils.process_results
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""
UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip() == doc["answer"])}
"""


def jpeg_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)  # how lmms-eval hands images to qwen-vl-utils
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_lmms_eval_qwen2_5_vl_runs_an_export_on_a_local_task(tmp_path):
    model, processor = load_model("tiny")
    export = str(tmp_path / "final")
    export_hf(None, model, processor, export, stage=0)
    images = [Image.new("RGB", (56, 56), c) for c in [(200, 30, 30), (30, 30, 200)]]
    question = "What colour is the square?"

    # what mmpost generates for each question with lmms-eval's settings
    model = model.to(torch.bfloat16).eval()
    encoder = ConversationEncoder(
        processor,
        VisualConfig(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        RopeSpec.from_config(model.config),
    )
    ours = []
    for image in images:
        msgs = [
            Message("system", "You are a helpful assistant."),
            Message(
                "user", [{"type": "image", "image": jpeg_data_url(image)}, {"type": "text", "text": question}]
            ),
        ]
        ours.append(generate(model, processor, encoder, [msgs], ".", max_new_tokens=4)[0].strip())

    assert all(ours)  # the tiny model says something (4 tokens), so equality below means something
    task = tmp_path / "task"
    task.mkdir()
    rows = []
    for i, image in enumerate(images):
        image.save(task / f"{i}.png")
        # the first answer is what mmpost generated, the second can never be: exact match 0.5
        rows.append(
            {"image": str(task / f"{i}.png"), "question": question, "answer": ours[0] if i == 0 else "\x00"}
        )
    (task / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task / "mmpost_toy.yaml").write_text(TASK.format(data=task / "toy.jsonl"))
    (task / "toy_utils.py").write_text(UTILS)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "qwen2_5_vl"]
    cmd += ["--model_args", f"pretrained={export},device=cpu,device_map=cpu", "--tasks", "mmpost_toy"]
    cmd += ["--include_path", str(task), "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    (results,) = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    (samples,) = glob.glob(str(out / "**" / "*_samples_mmpost_toy.jsonl"), recursive=True)
    logged = sorted((json.loads(line) for line in open(samples)), key=lambda r: r["doc_id"])
    assert [r["filtered_resps"].strip() for r in logged] == ours  # same text as mmpost generated
    assert json.load(open(results))["results"]["mmpost_toy"]["exact_match,none"] == 0.5
