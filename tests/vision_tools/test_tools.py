"""The ViRC tools on real photographs (scikit-image's sample images) and on edge cases.

Expected sizes are worked out by hand from smart_resize: sides rounded to multiples of 28,
area within [min_pixels, max_pixels] (scaled down with floor, up with ceil).
"""

import numpy as np
import pytest
from PIL import Image

from vision_tools.tools import (
    ToolContext,
    ToolError,
    as_toolset,
    crop_image,
    display_image,
    scale_image,
    tool,
)

skdata = pytest.importorskip("skimage.data", reason="scikit-image is in the dev extra")


@pytest.fixture(scope="module")
def photos():
    return {
        "astronaut": Image.fromarray(skdata.astronaut()),  # 512 x 512
        "coffee": Image.fromarray(skdata.coffee()),  # 600 x 400
        "chelsea": Image.fromarray(skdata.chelsea()),  # 451 x 300
        "camera": Image.fromarray(skdata.camera()).convert("RGB"),  # 512 x 512, grey
    }


def ctx(*images, **kw) -> ToolContext:
    return ToolContext(images=list(images), **kw)


def test_crop_exact_size_and_pixels(photos):
    img = photos["astronaut"]
    out = crop_image(ctx(img), {"bbox_2d": [100, 50, 300, 190], "image_index": 0})
    # crop 200 x 140 -> h: round(140/28)=5 -> 140, w: round(200/28)=7 -> 196; area 27440 >= 3136
    assert out.size == (196, 140)
    want = img.crop((100, 50, 300, 190)).resize((196, 140), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(want))


def test_crop_small_region_is_scaled_up_to_min_pixels(photos):
    out = crop_image(ctx(photos["coffee"]), {"bbox_2d": [10, 10, 30, 20], "image_index": 0})
    # 20 x 10: h=max(28, round(10/28)*28)=28, w=max(28, 28)=28 -> 784 < 3136:
    # beta = sqrt(3136/200) = 3.96; h = ceil(10*3.96/28)*28 = 56, w = ceil(20*3.96/28)*28 = 84
    assert out.size == (84, 56)


def test_crop_accepts_float_coordinates_covering_the_region(photos):
    c = ctx(photos["chelsea"])
    out = crop_image(c, {"bbox_2d": [10.4, 20.6, 150.2, 120.9], "image_index": 0})
    # floor/ceil: (10, 20, 151, 121) -> 141 x 101 -> w round(5.04)=5 -> 140, h round(3.61)=4 -> 112
    assert out.size == (140, 112)


@pytest.mark.parametrize(
    "bbox, code",
    [
        ([0, 0, 513, 100], "bbox_out_of_bounds"),  # crosses the right border
        ([-5, 0, 100, 100], "bbox_out_of_bounds"),  # negative
        ([600, 600, 700, 700], "bbox_out_of_bounds"),  # entirely outside
        ([100, 100, 100, 200], "degenerate_bbox"),  # zero width
        ([200, 200, 100, 300], "degenerate_bbox"),  # x2 < x1
        ([0, 0, 512, 2], "degenerate_bbox"),  # 256:1 cannot be resized
        ([0, 0, 100], "bad_arguments"),  # three numbers
        ([10.5, 10.5, 10.5, 10.5], "degenerate_bbox"),  # zero area, even if rounding would widen it
    ],
)
def test_crop_violations(photos, bbox, code):
    with pytest.raises(ToolError) as e:
        crop_image(ctx(photos["astronaut"]), {"bbox_2d": bbox, "image_index": 0})
    assert e.value.code == code


def test_crop_whole_image_border_inclusive(photos):
    out = crop_image(ctx(photos["coffee"]), {"bbox_2d": [0, 0, 600, 400], "image_index": 0})
    # 600 x 400 -> w round(21.43)=21 -> 588, h round(14.29)=14 -> 392
    assert out.size == (588, 392)


def test_scale_sizes(photos):
    c = ctx(photos["coffee"], photos["chelsea"])
    # 600 x 400 x 2 = 1200 x 800 -> w round(42.86)=43 -> 1204, h round(28.57)=29 -> 812
    assert scale_image(c, {"scale_factor": 2, "image_index": 0}).size == (1204, 812)
    # 451 x 300 x 0.25 = 113 x 75 -> w round(4.04)=4 -> 112, h round(2.68)=3 -> 84; 9408 >= 3136
    assert scale_image(c, {"scale_factor": 0.25, "image_index": 1}).size == (112, 84)
    # 1.7 snaps to 1.5: 900 x 600 -> w round(32.14)=32 -> 896, h round(21.43)=21 -> 588
    assert scale_image(c, {"scale_factor": 1.7, "image_index": 0}).size == (896, 588)
    no_snap = ctx(photos["coffee"], snap_scale=False)
    # 1.7 kept: 1020 x 680 -> w round(36.43)=36 -> 1008, h round(24.29)=24 -> 672
    assert scale_image(no_snap, {"scale_factor": 1.7, "image_index": 0}).size == (1008, 672)


def test_scale_capped_by_max_pixels(photos):
    c = ctx(photos["astronaut"], max_pixels=256 * 28 * 28)
    # 2048 x 2048 > 200704: beta = 2048/448 -> floor(448/28)*28 = 448 per side
    assert scale_image(c, {"scale_factor": 4, "image_index": 0}).size == (448, 448)


@pytest.mark.parametrize("factor", [0.1, 0.24, 4.01, 5, 100, 1e9, -2])
def test_scale_out_of_range(photos, factor):
    for snap in (True, False):
        with pytest.raises(ToolError) as e:
            scale_image(ctx(photos["coffee"], snap_scale=snap), {"scale_factor": factor, "image_index": 0})
        assert e.value.code == "scale_out_of_range"


@pytest.mark.parametrize(
    "factor, snapped",
    [(0.25, 0.25), (0.3, 0.25), (0.4, 0.5), (0.75, 0.5), (1.0, 0.5), (1.2, 1.5), (1.75, 1.5), (2.2, 2.0),
     (2.3, 2.5), (3.2, 2.5), (3.3, 4.0), (4.0, 4.0)],
)  # fmt: skip
def test_inference_snaps_any_factor_in_range(photos, factor, snapped):
    """ViRC inference: every factor in [0.25, 4] snaps to the nearest of {0.25, 0.5, 1.5, 2, 2.5, 4}
    (1.0 is as near 0.5 as 1.5: the smaller wins); RL (snap_scale off) refuses 0.5 < f < 1.5."""
    img = photos["chelsea"]  # 451 x 300
    got = scale_image(ctx(img), {"scale_factor": factor, "image_index": 0})
    want = scale_image(ctx(img, snap_scale=False), {"scale_factor": snapped, "image_index": 0})
    assert got.size == want.size
    if 0.5 < factor < 1.5:
        with pytest.raises(ToolError, match="0.25-0.5 to shrink or 1.5-4"):
            scale_image(ctx(img, snap_scale=False), {"scale_factor": factor, "image_index": 0})


def test_display_returns_the_image_unchanged(photos):
    shown = photos["astronaut"].resize((504, 504))  # as the model sees it (multiples of 28)
    out = display_image(ctx(photos["coffee"], shown), {"image_index": 1})
    assert out.size == (504, 504) and np.array_equal(np.asarray(out), np.asarray(shown))


@pytest.mark.parametrize(
    "args, code",
    [
        ({"image_index": 2}, "index_out_of_range"),
        ({"image_index": -1}, "index_out_of_range"),
        ({"image_index": 1.5}, "bad_arguments"),
        ({"image_index": "0"}, "bad_arguments"),
        ({"image_index": True}, "bad_arguments"),
        ({}, "bad_arguments"),
        ({"image_index": 0, "zoom": 2}, "bad_arguments"),
    ],
)
def test_index_and_argument_errors(photos, args, code):
    with pytest.raises(ToolError) as e:
        display_image(ctx(photos["coffee"], photos["camera"]), args)
    assert e.value.code == code


def test_integral_float_index_is_accepted(photos):
    assert display_image(ctx(photos["camera"]), {"image_index": 0.0}).size == (504, 504)


def test_fixed_coordinates_map_the_0_999_grid():
    img = Image.new("RGB", (280, 224))
    c = ctx(img, coords="fixed")
    # x2 = ceil(499 * 280 / 999) = ceil(139.86) = 140; full height
    assert crop_image(c, {"bbox_2d": [0, 0, 499, 999], "image_index": 0}).size == (140, 224)
    with pytest.raises(ToolError, match="bbox_out_of_bounds"):
        crop_image(c, {"bbox_2d": [0, 0, 1000, 999], "image_index": 0})


def test_budget_shrinks_results_then_refuses():
    img = Image.new("RGB", (560, 560))
    out = display_image(ctx(img, max_visual_tokens=100), {"image_index": 0})
    # 100 tokens = 78400 px: beta = 560/280 -> 280 x 280 = exactly 100 tokens
    assert out.size == (280, 280)
    with pytest.raises(ToolError) as e:
        display_image(ctx(img, max_visual_tokens=3), {"image_index": 0})  # below the 4-token minimum
    assert e.value.code == "over_budget"


def test_dry_check_needs_no_pixels():
    dry = ToolContext(sizes=[(280, 224)])
    assert crop_image.check({"bbox_2d": [0, 0, 10, 10], "image_index": 0}, dry)["image_index"] == 0
    with pytest.raises(ToolError, match="index_out_of_range"):
        crop_image.check({"bbox_2d": [0, 0, 10, 10], "image_index": 1}, dry)


def test_user_tool_schema_from_signature_and_docstring():
    @tool
    def rotate_image(ctx: ToolContext, angle: float, image_index: int, expand: bool = False) -> Image.Image:
        """Rotate an image counter-clockwise.

        Args:
            angle: degrees, counter-clockwise.
            image_index: which image.
            expand: grow the canvas to fit
                the rotated image.
        """
        return ctx.image(image_index).rotate(angle, expand=expand)

    assert rotate_image.schema() == {
        "type": "function",
        "function": {
            "name": "rotate_image",
            "description": "Rotate an image counter-clockwise.",
            "parameters": {
                "type": "object",
                "properties": {
                    "angle": {"type": "number", "description": "degrees, counter-clockwise."},
                    "image_index": {"type": "integer", "description": "which image."},
                    "expand": {"type": "boolean", "description": "grow the canvas to fit the rotated image."},
                },
                "required": ["angle", "image_index"],
            },
        },
    }
    out = rotate_image(ctx(Image.new("RGB", (280, 140))), {"angle": 90, "image_index": 0, "expand": True})
    assert out.size == (140, 280)
    assert set(as_toolset([rotate_image, crop_image])) == {"rotate_image", "crop_image"}


def test_user_tool_bug_becomes_tool_error():
    @tool
    def broken(ctx: ToolContext, image_index: int) -> Image.Image:
        """Always fails.

        Args:
            image_index: which image.
        """
        raise ZeroDivisionError("oops")

    with pytest.raises(ToolError) as e:
        broken(ctx(Image.new("RGB", (56, 56))), {"image_index": 0})
    assert e.value.code == "tool_error" and "ZeroDivisionError" in e.value.message


def test_tool_definition_errors():
    def no_doc(x: int): ...

    with pytest.raises(TypeError, match="docstring"):
        tool(no_doc)

    def untyped(x):
        """Doc."""

    with pytest.raises(TypeError, match="annotation"):
        tool(untyped)
    with pytest.raises(ValueError, match="two tools"):
        as_toolset([crop_image, crop_image])


def test_thin_result_squeezed_by_the_budget_is_a_tool_error():
    # 1120 x 40 under a 5-token budget: smart_resize would give it a side of 0 pixels
    img = Image.new("RGB", (1120, 56))
    with pytest.raises(ToolError) as e:
        crop_image(ctx(img, max_visual_tokens=5), {"bbox_2d": [0, 0, 1120, 40], "image_index": 0})
    assert e.value.code == "over_budget"


def test_scale_goes_straight_to_the_final_size(monkeypatch):
    sizes = []
    real = Image.Image.resize
    monkeypatch.setattr(
        Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or real(self, size, *a, **k)
    )
    big = Image.new("RGB", (4096, 4096))
    out = scale_image(ctx(big, max_pixels=1024 * 28 * 28), {"scale_factor": 4, "image_index": 0})
    assert out.size == (896, 896) and sizes == [(896, 896)]  # no 16384 x 16384 intermediate


def test_checks_never_run_a_tool_without_images_nor_leak_its_errors():
    calls = []

    @tool
    def note(text: str) -> Image.Image:
        """Write a note.

        Args:
            text: the note.
        """
        calls.append(text)
        return Image.new("RGB", (56, 56))

    @tool
    def peek(ctx: ToolContext, image_index: int) -> Image.Image:
        """Reads pixels without ctx.image.

        Args:
            image_index: which image.
        """
        return ctx.images[image_index]

    dry = ToolContext(sizes=[(56, 56)])
    assert note.check({"text": "hi"}, dry) == {"text": "hi"} and calls == []
    with pytest.raises(ToolError) as e:
        peek.check({"image_index": 0}, dry)
    assert e.value.code == "tool_error"
