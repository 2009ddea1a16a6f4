"""The CRU data builder (``mmpost data crux``): problems -> ViRC trajectories in the one data format.

A problem (one JSONL line; image paths relative to the file)::

    {"id": "p1", "image": "images/p1.png", "question": "...", "answer": "42",
     "plan": "diagram description and rationale",
     "regions": [{"bbox": [x1, y1, x2, y2], "question": "guiding question", "steps": ["...", "..."]},
                 {"tool": "scale_image", "scale_factor": 2, "image": 0, "steps": ["..."]},
                 {"tool": "display_image", "image": 1, "question": "...", "steps": ["..."]}],
     "final": "the concluding step"}

``images`` (a list) instead of ``image`` gives a problem several images: they open the first user
turn as images 0..n-1 (``Image k: W x H.`` each). Each region is one Critical Reasoning Unit,
grounded by one tool call: ``crop_image`` (the default; ``bbox`` in pixels of problem image
``image``), ``scale_image`` (``scale_factor`` in 0.25-0.5 or 1.5-4, the range RL accepts) or
``display_image``; ``image`` (default 0) is the conversation's image index, so scale and display
may name an earlier tool result (problem images first, then one index per unit before it).

It becomes a CRU trajectory: a Planning block and the first guiding question, then per unit its
tool call, whose result the engine really executes (smart_resize, ``Image k: W x H`` turns), the
unit's steps and the next guiding question; then the answer. Boxes are pixels of the original
image; they are mapped onto the image as the model sees it (or the 0..999 grid with
``coords="fixed"``). The turns are replayed through the same
:class:`~vision_tools.engine.ToolEngine` that serves and rolls out, so data and inference agree;
a unit the engine refuses (a box or index out of range, a scale factor RL would reject) drops
its problem, counted by reason.

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

from mm.jsonl import DataError
from mm.records import drop_tool_result_images, parse_message
from mm.visual import VisualConfig, VisualError, open_image
from vision_tools.api import build_prompt, shown_image
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import ScriptedGenerator
from vision_tools.protocol import ToolCall
from vision_tools.tools import FIXED_GRID

UNIT_TOOLS = ("crop_image", "scale_image", "display_image")


def _check_units(p: dict, where: str, n_images: int) -> None:
    """Each region names a known tool with its arguments (see the module docstring)."""
    for i, r in enumerate(p.get("regions", [])):
        if not isinstance(r, dict):
            raise DataError(f"{where}: region {i} must be an object")
        tool = r.get("tool", "crop_image")
        if tool not in UNIT_TOOLS:
            raise DataError(f"{where}: region {i} has tool {tool!r}; use one of {', '.join(UNIT_TOOLS)}")
        index = r.get("image", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise DataError(f"{where}: region {i}: 'image' must be an image index >= 0, got {index!r}")
        if tool == "crop_image":
            box = r.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
                raise DataError(f"{where}: each crop region needs 'bbox': [x1, y1, x2, y2] (pixels)")
            if index >= n_images:
                raise DataError(
                    f"{where}: region {i} crops image {index}, but the problem has {n_images} image(s); "
                    "a crop's box is in pixels of a problem image"
                )
        if tool == "scale_image" and not isinstance(r.get("scale_factor"), int | float):
            raise DataError(f"{where}: region {i} (scale_image) needs a numeric 'scale_factor'")


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
                raise DataError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(p, dict):
                raise DataError(f"{where}: a problem is a JSON object")
            refs = p.get("images") or ([p["image"]] if p.get("image") else [])
            missing = [k for k in ("question", "answer") if not p.get(k) and p.get(k) != 0]
            if not refs or not isinstance(refs, list) or missing:
                raise DataError(
                    f"{where}: a problem needs 'image' (or 'images'), 'question' and 'answer' "
                    f"(missing {missing or ['image']})"
                )
            _check_units(p, where, len(refs))
            try:
                p["_paths"] = [r if os.path.isabs(r) else os.path.join(base, r) for r in refs]
                p["_images"] = [open_image(path, decode=True) for path in p["_paths"]]
            except VisualError as e:
                raise DataError(f"{where}: {e}") from e
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


def unit_call(region: dict, originals: list, shown: list, coords: str) -> ToolCall:
    """A region's tool call in the model's coordinates."""
    tool, index = region.get("tool", "crop_image"), region.get("image", 0)
    if tool == "crop_image":
        box = _box_on(region["bbox"], originals[index].size, shown[index].size, coords)
        return ToolCall(tool, {"bbox_2d": box, "image_index": index})
    if tool == "scale_image":
        return ToolCall(tool, {"scale_factor": region["scale_factor"], "image_index": index})
    return ToolCall(tool, {"image_index": index})


def cru_turns(problem: dict, calls: list[ToolCall]) -> list[str]:
    """The assistant turns of a problem's CRU trajectory (one tool call per region)."""
    regions = problem.get("regions", [])
    plan = problem.get("plan", "").strip()
    think = f"Planning: {plan}" if plan else ""
    turns = []
    for i, (r, call) in enumerate(zip(regions, calls)):
        if r.get("question"):
            think = f"{think}\n\n{r['question']}".strip()
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
    prompts, scripts, calls_of = [], [], []
    for p in items:
        imgs = [im.convert("RGB") for im in p["_images"]]
        shown = [shown_image(im, visual) for im in imgs]
        calls = [unit_call(r, imgs, shown, coords) for r in p.get("regions", [])]
        prompts.append(build_prompt(shown, p["question"], coords=coords))
        scripts.append(cru_turns(p, calls))
        calls_of.append(calls)
    processor = tiny_processor()  # only the text is kept: any Qwen tokenizer gives the same records
    cfg = EngineConfig(
        max_turns=1 + max((len(s) for s in scripts), default=1),
        max_resamples=0,
        coords=coords,
        snap_scale=False,  # scale factors as written, and only those RL accepts
        visual=visual,
    )
    engine = ToolEngine(None, processor, config=cfg, generator=ScriptedGenerator(processor, scripts))
    trajectories = engine.run(prompts)

    counts: Counter = Counter()
    handles = {s: open(os.path.join(out_dir, files[s]), "w") for s in wanted}
    try:
        for p, calls, traj in zip(items, calls_of, trajectories):
            if traj.violations or traj.finish_reason != "answer":
                counts[f"dropped ({(traj.violations or [traj.finish_reason])[0]})"] += 1
                continue
            n = len(p["_images"])
            names = []
            for k, im in enumerate(traj.images):
                names.append(_reuse(p["_paths"][k], p["_images"][k], im, out_dir) if k < n else None)
                if names[-1] is None:
                    names[-1] = f"images/{p['id']}_{k}.png"
                    im.save(os.path.join(out_dir, names[-1]))
            messages = _with_paths(traj.messages, iter(names))
            meta = {
                "source": p.get("source", "crux"),
                "bbox": [c.arguments.get("bbox_2d") for c in calls],  # None for scale / display units
                "tools": [c.name for c in calls],
                "coords": coords,
            }
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


def _reuse(path: str, original: Image.Image, shown: Image.Image, out_dir: str) -> str | None:
    """A problem's own image file, when the model sees it unresized and it lies in ``out_dir``."""
    real, root = os.path.realpath(path), os.path.realpath(out_dir)
    if shown.size == original.size and os.path.commonpath([root, real]) == root:
        return os.path.relpath(real, root)
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
    ``train_stage1.jsonl``, ``test.jsonl`` prompts in the RL form for ``mmpost eval``, and the test
    problems (``test_problems.jsonl``) as held-out stage-2 trajectories ``val.jsonl`` (the SFT
    held-out loss during training)."""
    from vision_tools.synth import make_problem

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rng = random.Random(seed)
    files = (("problems", "problems.jsonl"), ("test", "test.jsonl"), ("test_problems", "test_problems.jsonl"))
    paths = {k: os.path.join(out_dir, f) for k, f in files}
    with (
        open(paths["problems"], "w") as fp,
        open(paths["test"], "w") as ft,
        open(paths["test_problems"], "w") as fq,
    ):
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                img, prob = make_problem(rng)
                pid, name = f"{split}-{i:04d}", f"images/{split}_{i:04d}.png"
                img.save(os.path.join(out_dir, name))
                line = json.dumps({"id": pid, "image": name, **prob, "source": "mmpost-synth"}) + "\n"
                (fp if split == "train" else fq).write(line)
                if split == "train":
                    continue
                prompt = build_prompt(img, prob["question"])
                prompt[1]["content"][0]["image"] = name
                meta = {"source": "mmpost-synth", "bbox": [r["bbox"] for r in prob["regions"]]}
                ft.write(
                    json.dumps({"id": pid, "prompt": prompt, "answer": prob["answer"], "meta": meta}) + "\n"
                )
    build_crux(paths["problems"], out_dir, files={"1": "train_stage1.jsonl", "2": "train.jsonl"})
    build_crux(paths["test_problems"], out_dir, stages="2", files={"2": "val.jsonl"})
    return {
        **paths,
        "val": os.path.join(out_dir, "val.jsonl"),
        "train": os.path.join(out_dir, "train.jsonl"),
        "stage1": os.path.join(out_dir, "train_stage1.jsonl"),
    }
