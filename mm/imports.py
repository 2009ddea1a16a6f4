"""The one place where optional dependencies are imported.

Every optional package (flash-attn, decord, OpenCV, DeepSpeed, peft, FastAPI/uvicorn, timm, VGGT,
PyAV, pyarrow, datasets, MetaWorld, the experiment trackers wandb/mlflow/trackio) is looked up here, so the rest of the
code asks ``is_available("decord")`` or ``require("peft", "lora")`` and a
missing package produces one clear error naming the extra that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import cache
from types import ModuleType

# package import name -> (pip extra that installs it, distribution name)
OPTIONAL = {
    "flash_attn": ("cuda", "flash-attn"),
    "decord": ("video", "decord"),
    "cv2": ("video", "opencv-python-headless"),
    "deepspeed": ("deepspeed", "deepspeed"),
    "peft": ("lora", "peft"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "timm": ("spatial", "timm"),
    "av": ("lerobot", "av"),
    "pyarrow": ("data", "pyarrow"),
    "datasets": ("data", "datasets"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "trackio": ("trackio", "trackio"),
    "mujoco": ("sim", "mujoco"),
    "metaworld": ("sim", "metaworld"),
}


class MissingDependency(ImportError):
    """An optional package is needed but not installed."""


@cache
def is_available(name: str) -> bool:
    """True when the optional package ``name`` can be imported (checked once, cached)."""
    if importlib.util.find_spec(name) is None:
        return False
    if name in ("mujoco", "metaworld"):
        _before_mujoco()
    try:
        importlib.import_module(name)
    except Exception:  # a broken install (e.g. flash-attn built for another torch) counts as absent
        return False
    return True


def is_installed(name: str) -> bool:
    """True when package ``name`` is installed, without importing it (cheap: config checks)."""
    return importlib.util.find_spec(name) is not None


def _before_mujoco() -> None:
    """MuJoCo fixes its OpenGL backend when imported: offscreen Mesa EGL unless MUJOCO_GL is set
    (osmesa gives the same pixels). Mesa renders with its own LLVM; measured here, importing triton
    (torch._dynamo does, e.g. via torchvision) after a Mesa context exists segfaults, and importing
    it first does not, so triton is loaded before MuJoCo when it is installed."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if importlib.util.find_spec("triton") is not None:
        try:
            importlib.import_module("triton")
        except Exception:  # a broken triton is torch's concern, not the simulator's
            pass


def require(name: str, feature: str = "") -> ModuleType:
    """Import an optional package (or one of its modules: ``require("pyarrow.parquet")``; a
    package does not import its submodules by itself) or raise ``MissingDependency`` naming the
    extra to install."""
    package = name.split(".")[0]
    if not is_available(package):
        extra, dist = OPTIONAL.get(package, ("", package))
        what = f" for {feature}" if feature else ""
        hint = f"pip install 'mmpost[{extra}]'" if extra else f"pip install {dist}"
        raise MissingDependency(f"{dist} is needed{what} but is not installed: {hint}")
    return importlib.import_module(name)


def version_of(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
