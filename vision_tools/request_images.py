"""Images a request may name: data URLs, or paths inside the folders the server was given.

Nothing is fetched from the network, and a path that leaves the image folders (``..``, an
absolute path elsewhere, a symlink out) is refused. :class:`ApiError` is the one error type the
HTTP API answers with (status, stable code, message).
"""

from __future__ import annotations

import base64
import io
import os
import re

from PIL import Image

from mm.visual import FACTOR, VisualConfig, VisualError, open_image
from vision_tools.api import shown_image
from vision_tools.serve_config import ServeConfig

# the "type" of an OpenAI error body, by HTTP status (others: invalid_request_error / server_error)
ERROR_TYPES = {403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
# where a message starts with the request field it is about: "messages[1].content[0]: ..." or "'n' must ..."
_PARAM = re.compile(
    r"^(?:'([\w.\[\]]+)'|([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*):|([A-Za-z_]\w*\[\d+\](?:\[\d+\]|\.[A-Za-z_]\w*)*) )"
)


class ApiError(Exception):
    """An HTTP error answered with ``status`` as OpenAI's error body: ``{"error": {"message",
    "type", "param", "code"}}`` (``code`` stable; ``param`` the request field, given or read from
    the message's ``field: ...`` / ``'field' ...`` start; ``type`` from the status)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        found = _PARAM.match(message) if param is None and status < 500 else None  # a 5xx names no field
        self.param = param if found is None else next(g for g in found.groups() if g)

    @property
    def type(self) -> str:
        default = "server_error" if self.status >= 500 else "invalid_request_error"
        return ERROR_TYPES.get(self.status, default)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load_request_image(
    ref, cfg: ServeConfig, where: str, visual: VisualConfig | None = None, factor: int = FACTOR
) -> Image.Image:
    """A data URL, or a path inside one of ``cfg.image_dirs``; anything else is refused. With
    ``visual``, the image comes back as the model would see it (smart_resize under its limits, to
    multiples of ``factor``: the model family's pixels per visual-token side)."""
    if isinstance(ref, dict):  # OpenAI: {"url": ...}
        ref = ref.get("url")
    if not isinstance(ref, str) or not ref:
        raise ApiError(400, "bad_image", f"{where}: an image must be a data URL or a path string")
    if ref.startswith(("http://", "https://", "ftp://")):
        raise ApiError(400, "remote_url", f"{where}: the server does not fetch URLs; send a data: URL")
    if ref.startswith("data:"):
        if not ref.startswith("data:image/") or ";base64," not in ref:
            raise ApiError(400, "bad_image", f"{where}: use data:image/<type>;base64,<payload>")
        if len(ref) * 3 // 4 > cfg.max_image_bytes:
            raise ApiError(413, "image_too_large", f"{where}: image over {cfg.max_image_bytes} bytes")
        src = ref
    else:
        src = safe_path(ref[7:] if ref.startswith("file://") else ref, cfg, where)
        if os.path.getsize(src) > cfg.max_image_bytes:
            raise ApiError(413, "image_too_large", f"{where}: image over {cfg.max_image_bytes} bytes")
    try:
        img = open_image(src)
        if img.width * img.height > cfg.max_image_pixels:
            raise ApiError(
                413,
                "image_too_large",
                f"{where}: {img.width} x {img.height} pixels exceed {cfg.max_image_pixels}",
            )
        img.load()
        img = img.convert("RGB")
        return shown_image(img, visual, factor) if visual is not None else img
    except VisualError as e:
        raise ApiError(400, "bad_image", f"{where}: {e.message}") from e
    except Image.DecompressionBombError as e:
        raise ApiError(413, "image_too_large", f"{where}: {e}") from e


def safe_path(path: str, cfg: ServeConfig, where: str) -> str:
    """The file ``path`` names inside one of the image folders; 403 outside them, 404 if missing."""
    if not cfg.image_dirs:
        raise ApiError(
            403, "path_refused", f"{where}: this server reads no files (start it with --image-dir)"
        )
    inside = False
    for root in cfg.image_dirs:
        try:
            root = os.path.realpath(root)
            full = os.path.realpath(os.path.join(root, path))
        except (ValueError, OSError) as e:  # e.g. a NUL byte
            raise ApiError(400, "bad_image", f"{where}: invalid path") from e
        if os.path.commonpath([root, full]) != root:
            continue
        inside = True
        if os.path.isfile(full):
            return full
    if inside:
        raise ApiError(404, "missing_image", f"{where}: no file {path!r} in the image folder(s)")
    raise ApiError(403, "path_refused", f"{where}: {path!r} is outside the image folder(s)")
