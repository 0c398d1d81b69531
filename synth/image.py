"""Pixels around a render: the background behind it, compositing, encoding, per-person masks.

Plain numpy (and PIL for photos and JPEG): no Blender, so worker threads may run it beside a
render call, and tests run it without bpy.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from .core import scene as scene_mod

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def background(spec: scene_mod.BackgroundSpec, width: int, height: int, seed: int,
               photo: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8: a real photo (scaled to cover the frame, centre-cropped) when given, else a
    vertical gradient with seeded noise."""
    if photo:
        from PIL import Image

        with Image.open(photo) as im:
            im = im.convert("RGB")
            scale = max(width / im.width, height / im.height)
            w, h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
            im = im.resize((w, h), Image.BILINEAR)
            left, top = (w - width) // 2, (h - height) // 2
            return np.asarray(im.crop((left, top, left + width, top + height)), dtype=np.uint8)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array(spec.top_rgb, np.float32), np.array(spec.bottom_rgb, np.float32)
    gradient = (top * (1 - t) + bottom * t) * 255  # (H, 1, 3)
    # float32 draws: half the cost of float64 ones, and the noise is quantised to 8 bits anyway.
    noise = np.random.default_rng(seed).standard_normal((height, width, 1), dtype=np.float32)
    noise *= np.float32(spec.noise * 255)
    out = np.add(gradient, noise)  # broadcasts to (H, W, 3)
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def mean_linear_rgb(bg: np.ndarray) -> tuple[float, float, float]:
    """A background's mean colour, sRGB -> roughly linear: the ambient light a photo gives the scene."""
    return tuple(float(c) ** 2.2 for c in bg.reshape(-1, 3).mean(axis=0) / 255.0)


def composite(rgba: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Blender's RGBA render (straight, unpremultiplied alpha) over an (H, W, 3) uint8 background,
    as (H, W, 4) uint8 RGBX (the 4th byte is padding: 4-byte pixels let opaque ones be copied as
    one word).

    Only partly covered pixels need the blend; clear ones take the background and opaque ones the
    render. Those two shortcuts give exactly what the blend would, and most pixels are one or the
    other, so this costs a fraction of blending the whole frame.
    """
    rgba = np.ascontiguousarray(rgba)
    alpha = rgba[..., 3]
    out = np.empty(rgba.shape, np.uint8)
    out[..., :3] = bg
    opaque = alpha == 255
    np.copyto(out.view(np.uint32), rgba.view(np.uint32), where=opaque[..., None])
    edge = (alpha > 0) & ~opaque
    px = rgba[edge].astype(np.float32) / 255.0
    a = px[:, 3:4]
    under = bg[edge].astype(np.float32) / 255.0
    out[..., :3][edge] = np.clip(np.rint((px[:, :3] * a + under * (1 - a)) * 255), 0, 255).astype(np.uint8)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_rgb(rgbx: np.ndarray) -> bytes:
    """An 8-bit RGB PNG (no metadata chunks) of an (H, W, 4) uint8 RGBX image.

    Every row uses PNG's "Up" filter (difference to the row above), computed in one numpy
    subtraction, then zlib level 1. On our frames (smooth gradients, sensor-like noise, a person)
    that is half the time of PIL's per-row adaptive filter choice at the same level and the file
    is no larger; both decode to the same pixels.
    """
    h, w = rgbx.shape[:2]
    rows = np.ascontiguousarray(rgbx[..., :3]).reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 2  # filter type "Up"; the first row's "above" is zeros, so it is stored as is
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG's does
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9)
    idat = deflate.compress(raw.data) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def encode(rgbx: np.ndarray, fmt: str) -> bytes:
    """PNG or JPEG (RGB, no metadata) of an (H, W, 4) uint8 RGBX image."""
    if fmt != "jpeg":
        return png_rgb(rgbx)
    from PIL import Image

    out = Image.frombytes("RGB", (rgbx.shape[1], rgbx.shape[0]), rgbx.tobytes(), "raw", "RGBX")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=92, optimize=False)
    return buf.getvalue()


def mask_annotation(mask: np.ndarray) -> dict | None:
    """bbox, area and COCO RLE of a boolean mask; None when the mask is empty."""
    from pycocotools import mask as mask_utils

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.view(np.uint8)))
    return {
        "bbox": [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)],
        "area": float(np.count_nonzero(mask)),
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }
