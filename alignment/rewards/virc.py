"""ViRC Strategic RL's reward of one next turn: -1 on a protocol violation, 0.8 for a correct
answer, 0.5 x reasoning (a judge) + 0.4 x crop + 0.1 x same tool for a tool call."""

from __future__ import annotations

from evaluation.answers import answers_match
from evaluation.judge import Judge, RuleJudge


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def crop_score(box: list[float], reference: list[float] | None, size: tuple[int, int]) -> float:
    """1.0 for a precise crop (IoU >= 0.5 with the reference), 0.8 for (nearly) the whole image,
    otherwise 0.8 x IoU / 0.5 (partial credit); 0.8 without a reference box."""
    whole = [0, 0, size[0], size[1]]
    if reference is None:
        return 0.8
    if iou(box, whole) >= 0.9 and iou(reference, whole) < 0.9:
        return 0.8  # looking at everything is not a precise crop, however much it overlaps
    overlap = iou(box, reference)
    return 1.0 if overlap >= 0.5 else 0.8 * overlap / 0.5


def virc_turn(
    completions: list[str], answer=None, judge: Judge | None = None, coords: str | None = None, **sample
) -> list[float]:
    """ViRC Strategic-RL reward of one next turn (see the module docstring).

    ``sample``: ``image_sizes`` [(w, h), ...] (or ``images``: the PIL images, to execute the call),
    ``question``, and ``meta`` with the reference ``tool`` name and ``bbox`` of the next step.
    ``judge`` scores the reasoning (default: the rule-based fallback); ``coords`` is how the
    model's boxes are meant (the trainer passes ``rollout.coords``; else ``meta.coords``, else
    dynamic pixels). Scale factors are checked as RL checks them: 0.25-0.5 or 1.5-4 only.
    """
    from vision_tools.protocol import parse_turn
    from vision_tools.tools import ToolContext, ToolError, as_toolset

    judge = judge or RuleJudge()
    meta = sample.get("meta") or {}
    coords = coords or meta.get("coords", "dynamic")
    images = sample.get("images")
    sizes = [tuple(s) for s in sample.get("image_sizes") or [im.size for im in images or []]]
    tools = as_toolset(None)
    ref_box = meta.get("bbox")
    ref_box = ref_box[0] if ref_box and isinstance(ref_box[0], list | tuple) else ref_box
    out = []
    for c in completions:
        ctx = (
            ToolContext(images=list(images), coords=coords, snap_scale=False)
            if images
            else ToolContext(sizes=sizes, coords=coords, snap_scale=False)
        )
        turn = parse_turn(c, tools, ctx if sizes else None)
        if not turn.ok:
            out.append(-1.0)
            continue
        if turn.kind == "answer":
            out.append(0.8 if answers_match(turn.answer, answer) else 0.0)
            continue
        if not sizes:  # without the images' sizes a call cannot be verified: no credit
            out.append(0.0)
            continue
        if images:
            try:
                tools[turn.call.name](ctx, turn.call.arguments)  # executed, not just well-formed
            except ToolError:
                out.append(-1.0)
                continue
        args = turn.call.arguments
        index = int(args.get("image_index", 0))
        if turn.call.name == "crop_image":  # boxes compared in the model's coordinates
            crop = crop_score(args["bbox_2d"], ref_box, ctx.coordinate_size(index))
        else:
            crop = 0.8
        reasoning = judge.score(str(sample.get("question", "")), turn.think, str(meta.get("reasoning", "")))
        same_tool = float(turn.call.name == meta.get("tool", "crop_image"))
        out.append(0.5 * reasoning + 0.4 * crop + 0.1 * same_tool)
    return out
