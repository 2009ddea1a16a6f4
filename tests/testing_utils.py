"""Named skip marks for tests that need an optional package, a program or a GPU.

    from tests.testing_utils import require_deepspeed

    @require_deepspeed
    def test_zero2_step(...): ...

    pytestmark = require_decord          # a whole module

``require_cuda`` and ``require_flash_attn`` also carry the declared ``gpu`` / ``flash_attn``
markers, so ``-m "not gpu"`` deselects them and ``-m gpu`` runs only them.

The marks look packages up without importing them: importing decord first breaks OpenCV's
libvpx video writer in the same process (ABI mismatch), which the streaming tests use.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from mm.imports import is_available

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def installed(name: str) -> bool:
    """Whether the package ``name`` can be found (not imported)."""
    return importlib.util.find_spec(name) is not None


def _both(*marks):
    """One decorator applying several marks (a mark list works as ``pytestmark`` too)."""

    def apply(obj):
        for m in marks:
            obj = m(obj)
        return obj

    return apply


require_deepspeed = pytest.mark.skipif(
    not installed("deepspeed"), reason="needs DeepSpeed (pip install 'mmpost[deepspeed]')"
)
require_decord = pytest.mark.skipif(
    not installed("decord"), reason="needs decord (pip install 'mmpost[video]')"
)
require_opencv = pytest.mark.skipif(not installed("cv2"), reason="needs OpenCV (pip install 'mmpost[video]')")
require_peft = pytest.mark.skipif(not installed("peft"), reason="needs peft (pip install 'mmpost[lora]')")
require_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)"
)
require_cuda = _both(
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
)
require_flash_attn = _both(
    pytest.mark.gpu,
    pytest.mark.flash_attn,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and is_available("flash_attn")),
        reason="needs flash-attn and a CUDA GPU (pip install 'mmpost[cuda]')",
    ),
)
