"""Read back what a render wrote, with numpy: the object-index pass and the RGBA image.

Both are written uncompressed so that reading them is a reinterpretation of bytes: the index pass
as an OpenEXR of 32-bit float scanlines, the image as raw Targa (the same 8-bit pixels Blender
would put in a PNG, ~1 ms cheaper to write and to read). Loading the pass through
``bpy.data.images`` instead cost ~3.5 ms per image, and adding and removing that datablock made
Blender rebuild its depsgraph relations.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_MAGIC = b"\x76\x2f\x31\x01"
_FLOAT = 2  # pixel type of a 32-bit float channel
_NONE = 0  # compression


def _header(buf: bytes) -> tuple[dict[str, tuple[str, bytes]], int]:
    """Attribute name -> (type, raw value), and the offset just past the header."""
    if buf[:4] != _MAGIC:
        raise ValueError("not an OpenEXR file")
    if buf[5] & 0x1E:  # flag bits: tiled, long names, deep or multi-part
        raise ValueError("only single-part scanline OpenEXR is supported")
    attrs, pos = {}, 8
    while buf[pos] != 0:
        name_end = buf.index(b"\0", pos)
        type_end = buf.index(b"\0", name_end + 1)
        (size,) = struct.unpack_from("<i", buf, type_end + 1)
        start = type_end + 5
        attrs[buf[pos:name_end].decode()] = (buf[name_end + 1:type_end].decode(), buf[start:start + size])
        pos = start + size
    return attrs, pos + 1


def _channels(raw: bytes) -> list[tuple[str, int]]:
    out, pos = [], 0
    while raw[pos] != 0:
        end = raw.index(b"\0", pos)
        (ptype,) = struct.unpack_from("<i", raw, end + 1)
        out.append((raw[pos:end].decode(), ptype))
        pos = end + 17  # pixel type, pLinear + 3 reserved bytes, x and y sampling
    return out


def read_exr_channel(path: Path, channel: str | None = None) -> np.ndarray:
    """(H, W) float32 of ``channel`` (default: the only one), top row first as the file stores it."""
    buf = Path(path).read_bytes()
    attrs, pos = _header(buf)
    if attrs["compression"][1][0] != _NONE:
        raise ValueError("only uncompressed OpenEXR is supported")
    chans = _channels(attrs["channels"][1])
    if any(ptype != _FLOAT for _, ptype in chans):
        raise ValueError("only 32-bit float channels are supported")
    names = [name for name, _ in chans]  # stored in this (alphabetical) order within a line
    if channel is None:
        if len(names) != 1:
            raise ValueError(f"several channels {names}: name one")
        channel = names[0]
    x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
    w, h = x1 - x0 + 1, y1 - y0 + 1
    offsets = np.frombuffer(buf, "<u8", count=h, offset=pos)
    # Uncompressed: one line per chunk, each (int32 y, int32 byte count, pixels per channel).
    line = np.dtype([("y", "<i4"), ("size", "<i4"), ("px", "<f4", (len(names), w))])
    if not (np.diff(offsets.astype(np.int64)) == line.itemsize).all():
        raise ValueError("unexpected OpenEXR chunk layout")
    chunks = np.frombuffer(buf, line, count=h, offset=int(offsets[0]))
    if not ((chunks["size"] == line.itemsize - 8).all() and (np.diff(chunks["y"]) == 1).all()):
        raise ValueError("unexpected OpenEXR chunk layout")
    return chunks["px"][:, names.index(channel), :]


def read_tga_rgba(path: Path) -> np.ndarray:
    """(H, W, 4) uint8 RGBA, top row first, of an uncompressed 32-bit true-colour Targa."""
    buf = Path(path).read_bytes()
    id_len, colormap, kind = buf[0], buf[1], buf[2]
    w, h, bits, desc = *struct.unpack_from("<2H", buf, 12), buf[16], buf[17]
    if colormap or kind != 2 or bits != 32:
        raise ValueError("only uncompressed 32-bit true-colour Targa is supported")
    px = np.frombuffer(buf, np.uint8, count=w * h * 4, offset=18 + id_len).reshape(h, w, 4)
    if not desc & 0x20:  # rows stored bottom-up
        px = px[::-1]
    if desc & 0x10:  # columns stored right to left
        px = px[:, ::-1]
    return np.ascontiguousarray(px[..., [2, 1, 0, 3]])  # BGRA -> RGBA
