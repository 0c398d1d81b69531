"""Image probing: format, size and integrity from the bytes, cheaply and without trusting names.

A full decode of every image would dominate ingestion time, so the default check reads the
header (format, size, pixel count) and the end-of-stream marker (JPEG EOI, PNG IEND), which
catches the usual damage: truncated downloads, renamed non-images and decompression bombs.
``full=True`` decodes the pixels as well.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

from .image_headers import plain_header_size

# PIL warns above ~89 Mpx and refuses above twice that; we decide ourselves, with a clear reason.
MAX_PIXELS = 178_956_970
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")
_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "GIF": "gif"}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    sha256: str
    num_bytes: int


class ImageProblem(Exception):
    """An image that cannot be accepted; ``reason`` is a stable code from schema.REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def probe(data: bytes, *, full: bool = False, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    if not data:
        raise ImageProblem("not_an_image", "the file is empty")
    # Most images are plain JPEG/PNG whose size a few header bytes give; PIL's open costs more
    # than everything else per image, so it only sees the rest (and every full decode).
    header = None if full else plain_header_size(data)
    if header is not None:
        fmt, (width, height) = header
        if width * height > max_pixels:
            raise ImageProblem(
                "image_too_large", f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}"
            )
        return _end_checked(data, fmt, width, height)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(io.BytesIO(data))
                fmt = _PIL_FORMATS.get(im.format or "", (im.format or "unknown").lower())
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageProblem(
                        "image_too_large",
                        f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}",
                    )
                if full or fmt not in ("jpeg", "png"):
                    im.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ImageProblem:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL names the in-memory stream with its address; drop it so messages are reproducible.
        text = _OBJECT_REPR.sub("", str(exc)).strip()
        if "truncated" in text.lower():
            raise ImageProblem("image_truncated", f"image data is truncated ({text})") from None
        raise ImageProblem("not_an_image", f"not a decodable image ({text})") from None
    return _end_checked(data, fmt, width, height)


def _end_checked(data: bytes, fmt: str, width: int, height: int) -> ImageInfo:
    if fmt == "jpeg" and data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
        raise ImageProblem("image_truncated", "JPEG has no end-of-image marker: the file is truncated")
    if fmt == "png" and data.rfind(b"IEND", max(0, len(data) - 64)) < 0:
        raise ImageProblem("image_truncated", "PNG has no IEND chunk: the file is truncated")
    return ImageInfo(fmt, int(width), int(height), hashlib.sha256(data).hexdigest(), len(data))
