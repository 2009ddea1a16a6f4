"""Visual tools: typed Python functions whose JSON schema is derived from the signature.

A tool is a plain function with type annotations and a Google-style docstring; ``@tool`` turns
it into a :class:`Tool` that knows its schema (the ``<tools>`` block of the system prompt),
validates arguments against it, and can be *checked* without touching pixels (the protocol
parser and the rewards do that). A parameter annotated :class:`ToolContext` is not part of the
schema: it gives the tool the conversation's images (index = order of appearance) and sizes::

    @tool
    def flip_image(ctx: ToolContext, image_index: int) -> Image.Image:
        '''Mirror an image left to right.

        Args:
            image_index: which image (0 is the question image).
        '''
        return ctx.image(image_index).transpose(Image.Transpose.FLIP_LEFT_RIGHT)

Checks come first and use ``ctx.size(i)``; pixels come from ``ctx.image(i)``. In a dry check the
context has sizes but no pixels: ``ctx.image`` validates the index and stops the call there.
Every returned image is resized with Qwen's smart_resize rule (sides multiples of the model
family's ``factor``: 28 for Qwen2.5-VL, 32 for Qwen3-VL; area in [min_pixels, max_pixels]) and
counted against the conversation's visual-token budget.

The three ViRC tools are built in: ``crop_image``, ``scale_image``, ``display_image``.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

FACTOR = 28  # pixels per visual-token side of Qwen2.5-VL; ToolContext.factor holds the model's
FIXED_GRID = 1000  # "fixed" coordinate mode: every image is a 1000 x 1000 grid, coordinates 0..999
SCALE_SNAP = (0.25, 0.5, 1.5, 2.0, 2.5, 4.0)  # ViRC inference snaps any factor in SCALE_LIMITS to these
SCALE_LIMITS = (0.25, 4.0)  # what inference accepts (then snaps)
SCALE_RANGES = ((0.25, 0.5), (1.5, 4.0))  # the RL format check accepts only these, used as given


class ToolError(Exception):
    """A tool call that cannot run. ``code`` is one of the protocol's stable violation codes."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class _DryRun(Exception):
    """Raised by ``ToolContext.image`` in a dry check once the index is known to be valid."""


@dataclass
class ToolContext:
    """The images a tool may read, how coordinates are meant, and the visual-token budget.

    ``images`` holds PIL images as the model sees them (already resized); a dry context holds
    only their ``sizes`` as (width, height).
    """

    images: list[Image.Image] | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)
    coords: Literal["dynamic", "fixed"] = "dynamic"
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    max_visual_tokens: int | None = None  # budget left for tool results (None: unlimited)
    snap_scale: bool = True  # inference: any factor in [0.25, 4] snaps; False (RL): strict ranges
    factor: int = FACTOR  # pixels per visual-token side (the model family's: 28 or 32)

    def __post_init__(self):
        if self.coords not in ("dynamic", "fixed"):
            raise ValueError(f"coords must be 'dynamic' or 'fixed', got {self.coords!r}")
        if self.images is not None:
            self.sizes = [im.size for im in self.images]

    @property
    def dry(self) -> bool:
        return self.images is None

    def size(self, index: Any) -> tuple[int, int]:
        """(width, height) of image ``index`` in pixels; raises ``index_out_of_range``."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise ToolError("bad_arguments", f"image_index must be an integer, got {index!r}")
        if not 0 <= index < len(self.sizes):
            raise ToolError(
                "index_out_of_range",
                f"image_index {index} does not exist; images 0..{len(self.sizes) - 1} are available",
            )
        return self.sizes[index]

    def coordinate_size(self, index: int) -> tuple[int, int]:
        """The size the model's coordinates refer to (the fixed grid, or the pixels)."""
        return (FIXED_GRID - 1, FIXED_GRID - 1) if self.coords == "fixed" else self.size(index)

    def image(self, index: int) -> Image.Image:
        self.size(index)
        if self.dry:
            raise _DryRun
        return self.images[index]

    def fit_size(self, width: float, height: float) -> tuple[int, int]:
        """(width, height) of a tool result after smart_resize under the pixel limits and the budget."""
        hi = self.max_pixels
        if self.max_visual_tokens is not None:
            hi = min(hi, self.max_visual_tokens * self.factor**2)
        if hi < self.min_pixels:
            raise ToolError(
                "over_budget",
                f"the visual-token budget is spent ({self.max_visual_tokens} tokens left, an image needs "
                f"at least {self.min_pixels // self.factor**2}); answer with what you have",
            )
        h, w = smart_resize(max(1, round(height)), max(1, round(width)), self.min_pixels, hi, self.factor)
        if h < self.factor or w < self.factor:  # a thin image squeezed under the budget loses a side
            raise ToolError(
                "over_budget", f"a {width:g} x {height:g} result does not fit the visual-token budget"
            )
        return w, h

    def fit(self, img: Image.Image) -> Image.Image:
        """A tool result resized with smart_resize under the pixel limits and the budget left."""
        w, h = self.fit_size(img.width, img.height)
        return img if (w, h) == img.size else img.resize((w, h), Image.Resampling.BICUBIC)


def display_size(size: tuple[int, int], coords: str) -> tuple[int, int]:
    """The size announced to the model as ``Image k: W x H`` (the grid in fixed mode)."""
    return (FIXED_GRID, FIXED_GRID) if coords == "fixed" else size


def smart_resize(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR
) -> tuple[int, int]:
    """``mm.visual.smart_size`` for tool results: a size it refuses is the call's violation."""
    from mm.visual import VisualError, smart_size

    try:
        return smart_size(height, width, min_pixels, max_pixels, factor)
    except VisualError as e:
        raise ToolError(
            "degenerate_bbox", f"an image of {width} x {height} cannot be shown: {e.message}"
        ) from e


# ----------------------------------------------------------------------------- schema

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _json_type(tp: Any, where: str) -> tuple[dict, bool]:
    """(JSON schema of an annotation, optional?)"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: only `X | None` unions are supported, got {tp}")
        return _json_type(rest[0], where)[0], True
    if origin is Literal:
        return {"type": _JSON_TYPES[type(args[0])], "enum": list(args)}, False
    if origin in (list, tuple):
        return {"type": "array", "items": _json_type(args[0], where)[0] if args else {}}, False
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}, False
    raise TypeError(f"{where}: cannot derive a JSON schema for annotation {tp!r}")


def _doc_sections(doc: str) -> tuple[str, dict[str, str]]:
    """Description (text before ``Args:``) and per-argument descriptions of a Google docstring."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("\nArgs:")
    args: dict[str, str] = {}
    name = None
    for line in rest.splitlines():
        m = re.match(r"\s{1,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
        if m and (name is None or len(line) - len(line.lstrip()) <= 4):
            name = m.group(1)
            args[name] = m.group(2).strip()
        elif line.strip() and name and line.startswith(" "):
            args[name] = (args[name] + " " + line.strip()).strip()
        elif line.strip():
            break  # another section (Returns:, ...)
    return " ".join(head.split()), args


class Tool:
    """A callable tool: name, schema, argument validation, dry check and execution."""

    def __init__(self, fn, name: str | None = None, repeat_question: bool = False):
        self.fn = fn
        self.name = name or fn.__name__
        self.repeat_question = repeat_question  # ViRC repeats the question after scale_image
        hints = typing.get_type_hints(fn)
        self.description, docs = _doc_sections(fn.__doc__)
        if not self.description:
            raise TypeError(f"tool {self.name}: add a docstring (it becomes the tool's description)")
        self.ctx_param = None
        props, required = {}, []
        for p in inspect.signature(fn).parameters.values():
            tp = hints.get(p.name)
            if tp is ToolContext:
                self.ctx_param = p.name
                continue
            if tp is None:
                raise TypeError(f"tool {self.name}: parameter {p.name!r} needs a type annotation")
            schema, optional = _json_type(tp, f"tool {self.name}, parameter {p.name}")
            if p.name in docs:
                schema["description"] = docs[p.name]
            props[p.name] = schema
            if p.default is inspect.Parameter.empty and not optional:
                required.append(p.name)
        self.parameters = {"type": "object", "properties": props, "required": required}

    def schema(self) -> dict:
        """The Qwen/Hermes function schema (one line of the ``<tools>`` block)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: Any) -> dict:
        """Arguments checked and coerced against the schema; raises ``bad_arguments``."""
        if not isinstance(arguments, dict):
            raise ToolError(
                "bad_arguments", f"arguments must be a JSON object, got {type(arguments).__name__}"
            )
        props = self.parameters["properties"]
        extra = sorted(set(arguments) - set(props))
        if extra:
            raise ToolError(
                "bad_arguments", f"{self.name} has no argument(s) {extra}; it takes {sorted(props)}"
            )
        missing = [k for k in self.parameters["required"] if k not in arguments]
        if missing:
            raise ToolError("bad_arguments", f"{self.name} needs argument(s) {missing}")
        return {k: _coerce(v, props[k], f"{self.name}.{k}") for k, v in arguments.items()}

    def check(self, arguments: dict, ctx: ToolContext) -> dict:
        """Validate without executing (only sizes are needed); returns the coerced arguments."""
        args = self.validate(arguments)
        if self.ctx_param is None:  # a tool that sees no images has nothing to check without running
            return args
        dry = ToolContext(
            sizes=list(ctx.sizes), coords=ctx.coords, snap_scale=ctx.snap_scale, factor=ctx.factor
        )
        try:
            self._call(dry, args)
        except _DryRun:
            pass
        except ToolError:
            raise
        except Exception as e:  # a user tool that reads pixels another way: judged when it runs
            raise ToolError("tool_error", f"{self.name} cannot be checked: {type(e).__name__}: {e}") from e
        return args

    def __call__(self, ctx: ToolContext, arguments: dict) -> Image.Image:
        """Run the tool; the result comes back resized (smart_resize) under the budget."""
        args = self.validate(arguments)
        try:
            out = self._call(ctx, args)
            if not isinstance(out, Image.Image):
                raise ToolError("tool_error", f"{self.name} returned {type(out).__name__}, not an image")
            return ctx.fit(out.convert("RGB"))
        except ToolError:
            raise
        except Exception as e:  # a user tool's own bug must not take the engine down
            raise ToolError("tool_error", f"{self.name} failed: {type(e).__name__}: {e}") from e

    def _call(self, ctx: ToolContext, args: dict):
        return self.fn(**({self.ctx_param: ctx} if self.ctx_param else {}), **args)

    def __repr__(self) -> str:
        return f"Tool({self.name})"


def _coerce(value: Any, schema: dict, where: str) -> Any:
    kind = schema.get("type")
    bad = ToolError("bad_arguments", f"{where} must be {kind}, got {value!r}")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if isinstance(value, float) and not value.is_integer():
            raise bad
        value = int(value)
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad
        value = float(value)
    elif kind == "string" and not isinstance(value, str) or kind == "boolean" and not isinstance(value, bool):
        raise bad
    elif kind == "array":
        if not isinstance(value, list):
            raise bad
        value = [_coerce(v, schema.get("items", {}), f"{where}[{i}]") for i, v in enumerate(value)]
    if "enum" in schema and value not in schema["enum"]:
        raise ToolError("bad_arguments", f"{where} must be one of {schema['enum']}, got {value!r}")
    return value


def tool(fn=None, *, name: str | None = None, repeat_question: bool = False):
    """Decorator: ``@tool`` or ``@tool(name=..., repeat_question=True)`` makes a :class:`Tool`."""
    if fn is None:
        return lambda f: Tool(f, name=name, repeat_question=repeat_question)
    return Tool(fn, name=name, repeat_question=repeat_question)


# ----------------------------------------------------------------------------- ViRC tools


def crop_box(ctx: ToolContext, bbox_2d: list[float], image_index: int) -> tuple[int, int, int, int]:
    """The pixel box of a ``crop_image`` call, or the violation it commits."""
    w, h = ctx.size(image_index)
    if len(bbox_2d) != 4:
        raise ToolError("bad_arguments", f"bbox_2d must be [x1, y1, x2, y2], got {len(bbox_2d)} numbers")
    x1, y1, x2, y2 = bbox_2d
    if x2 <= x1 or y2 <= y1:
        raise ToolError("degenerate_bbox", f"bbox_2d {_fmt(bbox_2d)} has no area; use x1 < x2 and y1 < y2")
    cw, ch = ctx.coordinate_size(image_index)
    if min(x1, y1, x2, y2) < 0 or max(x1, x2) > cw or max(y1, y2) > ch:
        raise ToolError(
            "bbox_out_of_bounds",
            f"bbox_2d {_fmt(bbox_2d)} leaves image {image_index}; coordinates must lie in "
            f"x 0..{cw}, y 0..{ch}",
        )
    sx, sy = w / cw, h / ch
    box = (math.floor(x1 * sx), math.floor(y1 * sy), math.ceil(x2 * sx), math.ceil(y2 * sy))
    bw, bh = box[2] - box[0], box[3] - box[1]
    if bw < 1 or bh < 1 or max(bw, bh) / min(bw, bh) > 200:
        raise ToolError(
            "degenerate_bbox",
            f"bbox_2d {_fmt(bbox_2d)} is empty or too thin ({max(bw, 0)} x {max(bh, 0)} px); "
            "use x1 < x2, y1 < y2 and an aspect ratio under 200",
        )
    return box


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


@tool
def crop_image(ctx: ToolContext, bbox_2d: list[float], image_index: int) -> Image.Image:
    """Crop a region of an image and return it as a new image, to look at a detail closely.

    Args:
        bbox_2d: the region as [x1, y1, x2, y2] in absolute pixel coordinates of that image.
        image_index: which image to crop (0 is the question image; each tool result adds the next index).
    """
    box = crop_box(ctx, bbox_2d, image_index)
    return ctx.image(image_index).crop(box)


def scale_factor_of(ctx: ToolContext, scale_factor: float) -> float:
    """The factor a ``scale_image`` call uses, or its violation.

    Inference (``ctx.snap_scale``, ViRC's rule): any factor in [0.25, 4] snaps to the nearest of
    {0.25, 0.5, 1.5, 2, 2.5, 4} (a tie goes to the smaller). RL's format check (``snap_scale``
    off): only 0.25-0.5 or 1.5-4, used as given.
    """
    lo, hi = SCALE_LIMITS
    if ctx.snap_scale and lo <= scale_factor <= hi:
        return min(SCALE_SNAP, key=lambda s: abs(s - scale_factor))
    if not ctx.snap_scale and any(a <= scale_factor <= b for a, b in SCALE_RANGES):
        return scale_factor
    allowed = "0.25-4" if ctx.snap_scale else "0.25-0.5 to shrink or 1.5-4 to enlarge"
    raise ToolError("scale_out_of_range", f"scale_factor {scale_factor:g} is not allowed; use {allowed}")


@tool(repeat_question=True)
def scale_image(ctx: ToolContext, scale_factor: float, image_index: int) -> Image.Image:
    """Resize an image by a factor (0.25-0.5 to see the whole, 1.5-4 to see small details).

    Args:
        scale_factor: the resize factor, in 0.25-0.5 or 1.5-4.
        image_index: which image to resize (0 is the question image).
    """
    w, h = ctx.size(image_index)
    s = scale_factor_of(ctx, scale_factor)
    img = ctx.image(image_index)
    # straight to the final size: never materialise a huge intermediate (8192 px x 4)
    return img.resize(ctx.fit_size(w * s, h * s), Image.Resampling.BICUBIC)


@tool
def display_image(ctx: ToolContext, image_index: int) -> Image.Image:
    """Show an earlier image again, unchanged, to recall or verify something.

    Args:
        image_index: which image to show again (0 is the question image).
    """
    return ctx.image(image_index).copy()


VIRC_TOOLS = (crop_image, scale_image, display_image)


def as_toolset(tools) -> dict[str, Tool]:
    """Tools by name from a list of Tools or typed functions (None: the ViRC tools)."""
    out: dict[str, Tool] = {}
    for t in VIRC_TOOLS if tools is None else tools:
        t = t if isinstance(t, Tool) else Tool(t)
        if t.name in out:
            raise ValueError(f"two tools are named {t.name!r}")
        out[t.name] = t
    return out


def resolve_tools(spec: bool | list[str], key: str = "tools") -> list[Tool] | None:
    """A config's tool choice: False -> None (the data's prompts decide), True -> the ViRC tools,
    a list -> built-ins by name and users' ``path/to/file.py:function`` tools (loaded with
    :func:`mm.plugins.load_function`, their schema derived here). Errors name ``key``."""
    from mm.config import ConfigError
    from mm.plugins import is_ref, load_function

    if spec is False:
        return None
    if spec is True:
        return list(VIRC_TOOLS)
    builtin = {t.name: t for t in VIRC_TOOLS}
    out: list[Tool] = []
    for i, name in enumerate(spec):
        where = f"{key}[{i}]"
        if is_ref(name):
            fn = load_function(name, where)
            try:
                out.append(fn if isinstance(fn, Tool) else Tool(fn))
            except TypeError as e:  # no docstring, an unannotated parameter, an unsupported type
                raise ConfigError(
                    f"{where}: {name} is not a tool: {e} (a tool is a typed function with a docstring; "
                    "see vision_tools.tools)"
                ) from e
        elif name in builtin:
            out.append(builtin[name])
        else:
            raise ConfigError(
                f"{where}: unknown tool {name!r}; built in: {', '.join(builtin)}, or a function of yours "
                "as path/to/file.py:function"
            )
    try:
        as_toolset(out)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}; give each tool once (a user's tool needs its own name)") from e
    return out
