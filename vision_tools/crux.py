"""The CRU data builder (``mmpost data crux``): problems -> ViRC trajectories in the one data format.

A problem (one JSONL line; ``image`` relative to the file)::

    {"id": "p1", "image": "images/p1.png", "question": "...", "answer": "42",
     "plan": "diagram description and rationale",
     "regions": [{"bbox": [x1, y1, x2, y2], "question": "guiding question", "steps": ["...", "..."]}],
     "final": "the concluding step"}

becomes a Critical-Reasoning-Unit trajectory: a Planning block and the first guiding question,
then per region a ``crop_image`` call whose result the engine really executes (smart_resize,
``Image k: W x H`` turns), the region's steps and the next guiding question; then the answer.
Boxes are pixels of the original image; they are mapped onto the image as the model sees it
(or the 0..999 grid with ``coords="fixed"``). The turns are replayed through the same
:class:`~vision_tools.engine.ToolEngine` that serves and rolls out, so data and inference agree.

Two variants: stage 1 (Instructional SFT: tool-result images dropped, the text structure
stays) and stage 2 (Practice SFT: full interleaved trajectories).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter

from PIL import Image

from mm.records import drop_tool_result_images, parse_message
from mm.visual import VisualConfig, VisualError, open_image
from vision_tools.api import build_prompt, shown_image
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import ScriptedGenerator
from vision_tools.protocol import ToolCall
from vision_tools.tools import FIXED_GRID


def read_problems(path: str) -> list[dict]:
    """Problems with their images opened; a malformed line is an error naming it and the fix."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                p = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
            missing = [k for k in ("image", "question", "answer") if not p.get(k) and p.get(k) != 0]
            if not isinstance(p, dict) or missing:
                raise ValueError(
                    f"{where}: a problem needs 'image', 'question' and 'answer' (missing {missing})"
                )
            for r in p.get("regions", []):
                box = r.get("bbox") if isinstance(r, dict) else None
                if not (
                    isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
                ):
                    raise ValueError(f"{where}: each region needs 'bbox': [x1, y1, x2, y2] (pixels)")
            ref = p["image"]
            try:
                p["_path"] = ref if os.path.isabs(ref) else os.path.join(base, ref)
                p["_image"] = open_image(p["_path"], decode=True)
            except VisualError as e:
                raise ValueError(f"{where}: {e}") from e
            p.setdefault("id", f"problem-{n}")
            out.append(p)
    return out


def _box_on(box: list[float], orig: tuple[int, int], shown: tuple[int, int], coords: str) -> list[int]:
    """A pixel box of the original image in the model's coordinates (covering the region)."""
    sx, sy = shown[0] / orig[0], shown[1] / orig[1]
    x1, y1, x2, y2 = (
        math.floor(box[0] * sx),
        math.floor(box[1] * sy),
        math.ceil(box[2] * sx),
        math.ceil(box[3] * sy),
    )
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(shown[0], x2), min(shown[1], y2)
    if coords == "fixed":
        g = FIXED_GRID - 1
        return [
            round(x1 * g / shown[0]),
            round(y1 * g / shown[1]),
            round(x2 * g / shown[0]),
            round(y2 * g / shown[1]),
        ]
    return [x1, y1, x2, y2]


def cru_turns(problem: dict, boxes: list[list[int]]) -> list[str]:
    """The assistant turns of a problem's CRU trajectory."""
    regions = problem.get("regions", [])
    plan = problem.get("plan", "").strip()
    think = f"Planning: {plan}" if plan else ""
    turns = []
    for i, (r, box) in enumerate(zip(regions, boxes)):
        if r.get("question"):
            think = f"{think}\n\n{r['question']}".strip()
        call = ToolCall("crop_image", {"bbox_2d": box, "image_index": 0})
        turns.append(f"<think>{think}</think><tool_call>{call.to_json()}</tool_call>")
        think = "\n".join(regions[i].get("steps", []))
    final = problem.get("final", "").strip()
    think = f"{think}\n{final}".strip()
    turns.append(f"<think>{think}</think><answer>{problem['answer']}</answer>")
    return turns


def build_crux(
    problems: str | list[dict],
    out_dir: str,
    stages: str = "both",
    coords: str = "dynamic",
    files: dict[str, str] | None = None,
    visual: VisualConfig | None = None,
) -> dict[str, int]:
    """Write the stage-1 and/or stage-2 trajectory files; returns counts (written, dropped by reason)."""
    from mm.tiny import tiny_processor

    files = files or {"1": "stage1.jsonl", "2": "stage2.jsonl"}
    wanted = ("1", "2") if stages == "both" else (stages,)
    items = read_problems(problems) if isinstance(problems, str) else problems
    visual = visual or VisualConfig()
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    prompts, scripts, boxes_of = [], [], []
    for p in items:
        img = p["_image"].convert("RGB")
        shown = shown_image(img, visual)
        boxes = [_box_on(r["bbox"], img.size, shown.size, coords) for r in p.get("regions", [])]
        prompts.append(build_prompt(shown, p["question"], coords=coords))
        scripts.append(cru_turns(p, boxes))
        boxes_of.append(boxes)
    processor = tiny_processor()  # only the text is kept: any Qwen tokenizer gives the same records
    cfg = EngineConfig(
        max_turns=1 + max((len(s) for s in scripts), default=1), max_resamples=0, coords=coords, visual=visual
    )
    engine = ToolEngine(None, processor, config=cfg, generator=ScriptedGenerator(processor, scripts))
    trajectories = engine.run(prompts)

    counts: Counter = Counter()
    handles = {s: open(os.path.join(out_dir, files[s]), "w") for s in wanted}
    try:
        for p, boxes, traj in zip(items, boxes_of, trajectories):
            if traj.violations or traj.finish_reason != "answer":
                counts[f"dropped ({(traj.violations or [traj.finish_reason])[0]})"] += 1
                continue
            names = []
            for k, im in enumerate(traj.images):
                names.append(_reuse(p, im, out_dir) if k == 0 else None)
                if names[-1] is None:
                    names[-1] = f"images/{p['id']}_{k}.png"
                    im.save(os.path.join(out_dir, names[-1]))
            messages = _with_paths(traj.messages, iter(names))
            meta = {"source": p.get("source", "crux"), "bbox": boxes, "coords": coords}
            for s in wanted:
                msgs = messages
                if s == "1":
                    parsed = [parse_message(m, "trajectory") for m in messages]
                    msgs = [m.to_dict() for m in drop_tool_result_images(parsed)]
                rec = {
                    "id": p["id"],
                    "messages": msgs,
                    "answer": str(p["answer"]),
                    "meta": {**meta, "stage": int(s)},
                }
                handles[s].write(json.dumps(rec) + "\n")
            counts["written"] += 1
    finally:
        for h in handles.values():
            h.close()
    return dict(counts)


def _reuse(problem: dict, shown: Image.Image, out_dir: str) -> str | None:
    """The problem's own image file, when the model sees it unresized and it lies in ``out_dir``."""
    path, root = os.path.realpath(problem.get("_path", "")), os.path.realpath(out_dir)
    if (
        problem.get("_path")
        and shown.size == problem["_image"].size
        and os.path.commonpath([root, path]) == root
    ):
        return os.path.relpath(path, root)
    return None


def _with_paths(messages: list[dict], names) -> list[dict]:
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            m = {
                **m,
                "content": [
                    {"type": "image", "image": next(names)} if isinstance(c.get("image"), Image.Image) else c
                    for c in m["content"]
                ],
            }
        out.append(m)
    return out


def write_synth(out_dir: str, n_train: int = 200, n_test: int = 40, seed: int = 0) -> dict[str, str]:
    """The generated set: ``problems.jsonl``, CRU trajectories ``train.jsonl`` (stage 2) and
    ``train_stage1.jsonl``, and ``test.jsonl`` prompts in the RL form for ``mmpost eval``."""
    from vision_tools.synth import make_problem

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rng = random.Random(seed)
    paths = {k: os.path.join(out_dir, f) for k, f in (("problems", "problems.jsonl"), ("test", "test.jsonl"))}
    with open(paths["problems"], "w") as fp, open(paths["test"], "w") as ft:
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                img, prob = make_problem(rng)
                pid, name = f"{split}-{i:04d}", f"images/{split}_{i:04d}.png"
                img.save(os.path.join(out_dir, name))
                if split == "train":
                    fp.write(json.dumps({"id": pid, "image": name, **prob, "source": "mmpost-synth"}) + "\n")
                    continue
                prompt = build_prompt(img, prob["question"])
                prompt[1]["content"][0]["image"] = name
                meta = {"source": "mmpost-synth", "bbox": [r["bbox"] for r in prob["regions"]]}
                ft.write(
                    json.dumps({"id": pid, "prompt": prompt, "answer": prob["answer"], "meta": meta}) + "\n"
                )
    build_crux(paths["problems"], out_dir, files={"1": "train_stage1.jsonl", "2": "train.jsonl"})
    return {
        **paths,
        "train": os.path.join(out_dir, "train.jsonl"),
        "stage1": os.path.join(out_dir, "train_stage1.jsonl"),
    }
