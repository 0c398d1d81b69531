"""Size of plain JPEG and PNG files from their first bytes, without PIL.

``images.probe`` runs once per image of every ingestion, and opening an image with PIL costs
more than reading, hashing and storing it. Most images are plain: a baseline or progressive
JPEG with JFIF/quantisation/Huffman segments, or a PNG whose IHDR is followed by IDAT. For
those this module reads the size itself. It is deliberately narrower than PIL: anything it
does not fully understand (EXIF/ICC/Adobe segments, padding, junk bytes, palettes, ancillary
PNG chunks, a segment running past the end...) returns None, and the caller asks PIL, so every
accepted image gets the size PIL would give and every odd one gets PIL's own verdict and message.
"""

from __future__ import annotations

import zlib

from PIL import PngImagePlugin

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2))  # baseline, extended, progressive; 8-bit checked below
# Segments PIL only stores or skips (DHT, DRI, COM); DQT and APP0 are checked as PIL checks them.
_JPEG_PASSIVE = frozenset((0xC4, 0xDD, 0xFE))
_SOS, _DQT, _APP0 = 0xDA, 0xDB, 0xE0


def plain_header_size(data: bytes) -> tuple[str, tuple[int, int]] | None:
    """("jpeg" or "png", (width, height)) of a plain image, or None to leave it to PIL."""
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png(data)
    return None


def _jpeg(data: bytes) -> tuple[str, tuple[int, int]] | None:
    n = len(data)
    pos = 2
    size: tuple[int, int] | None = None
    while True:
        if pos + 4 > n or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        start, end = pos + 4, pos + 2 + length
        if length < 2 or end > n:
            return None  # PIL: "Truncated File Read" or a broken marker
        if marker == _SOS:
            return ("jpeg", size) if size is not None else None
        if marker in _JPEG_SOF:
            # PIL: 8-bit samples only, 1, 3 or 4 layers, one frame header, a non-empty size.
            if size is not None or length < 8 or data[start] != 8 or data[start + 5] not in (1, 3, 4):
                return None
            height = (data[start + 1] << 8) | data[start + 2]
            width = (data[start + 3] << 8) | data[start + 4]
            if width == 0 or height == 0:
                return None
            size = (width, height)
        elif marker == _DQT:
            q = start
            while q < end:  # each table is 1 + 64 bytes of 8-bit or 1 + 128 of 16-bit values
                q += 65 if data[q] < 16 else 129
            if q != end:
                return None  # PIL: "bad quantization table marker"
        elif marker == _APP0:
            if data.startswith(b"JFIF", start) and length < 9:
                return None  # PIL reads the JFIF version at offset 5
        elif marker not in _JPEG_PASSIVE:
            return None
        pos = end


def _png(data: bytes) -> tuple[str, tuple[int, int]] | None:
    # signature, IHDR (length 13, type, 13 bytes, crc), then the next chunk's length and type
    if len(data) < 41 or data[8:16] != b"\x00\x00\x00\x0dIHDR" or data[37:41] != b"IDAT":
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None  # PIL: "broken PNG file (bad header checksum in IHDR)"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    depth, colour, compression, filtering = data[24], data[25], data[26], data[27]
    if (depth, colour) not in PngImagePlugin._MODES or colour == 3 or compression or filtering:
        return None  # unknown mode, a palette (its PLTE would come first), or PIL's SyntaxErrors
    if width == 0 or height == 0:
        return None
    return "png", (width, height)
