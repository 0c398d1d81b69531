"""The ingestion fast paths give exactly what the general paths give.

* ``images.probe`` reads plain JPEG/PNG sizes itself (``image_headers``) and asks PIL otherwise:
  every image, whole or damaged, must get the same info or the same reason and message as PIL.
* ``ShardWriter`` writes tar headers itself: shards must be byte-identical to ``tarfile``'s and
  readable by ``tarfile`` and ``tar tf``.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import tarfile

import pytest
from PIL import Image

from posepipe.datasets import image_headers, images, shards


def _samples(shared_data) -> list[bytes]:
    files = sorted((shared_data / "coco-mini" / "train2017").glob("*.jpg"))[:8]
    files += sorted(shared_data.glob("pose-samples/**/*.jpg"))[:8] + sorted(shared_data.glob("**/*.png"))[:4]
    out = [p.read_bytes() for p in files]
    for mode, fmt, extra in (("RGB", "PNG", {}), ("L", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}),
                             ("RGB", "PNG", {"dpi": (72, 72)}), ("L", "JPEG", {}), ("CMYK", "JPEG", {}),
                             ("RGB", "JPEG", {"progressive": True}), ("RGB", "JPEG", {"exif": b"Exif\0\0MM"})):
        buf = io.BytesIO()
        Image.new(mode, (33, 17)).save(buf, format=fmt, **extra)
        out.append(buf.getvalue())
    return out


def _damaged(data: bytes) -> list[bytes]:
    variants = [data, data[: len(data) // 2], data[:200], data[:30], data[:3], data[:-1], b"GIF89a" + data[6:]]
    if data.startswith(b"\xff\xd8"):
        k = data.find(b"\xff\xdb")  # a quantisation table that overruns its segment
        variants.append(data[: k + 4] + b"\x20" + data[k + 5:])
        k = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))  # 12-bit samples
        variants.append(data[: k + 4] + b"\x0c" + data[k + 5:])
    else:
        variants.append(data[:20] + b"\x00" + data[21:])  # IHDR checksum no longer matches
    return variants


def _outcome(data: bytes):
    try:
        return images.probe(data)
    except images.ImageProblem as problem:  # PIL names the BytesIO object: drop its address
        return problem.reason, re.sub(r"0x[0-9a-f]+", "", problem.message)


def test_header_probe_matches_pil(shared_data, monkeypatch):
    cases = [v for data in _samples(shared_data) for v in _damaged(data)]
    fast = [_outcome(v) for v in cases]
    taken = sum(image_headers.plain_header_size(v) is not None for v in cases)
    monkeypatch.setattr(images, "plain_header_size", lambda data: None)  # PIL for everything
    assert fast == [_outcome(v) for v in cases]
    assert taken >= 20  # the fast path really ran (plain whole images and some cut after SOS/IDAT)
    assert any(isinstance(f, tuple) for f in fast) and any(not isinstance(f, tuple) for f in fast)


def _reference_shard(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_shard_bytes_match_tarfile(tmp_path):
    blobs = [bytes([i % 251]) * n for i, n in enumerate((0, 1, 511, 512, 513, 1000, 5000, 10240, 20000))]
    writer = shards.ShardWriter(tmp_path / "s")
    members = []
    for i, blob in enumerate(blobs):
        sha = hashlib.sha256(blob + bytes([i])).hexdigest()
        writer.add(blob, sha, "png" if i % 2 else "jpg")
        members.append((f"{sha}.{'png' if i % 2 else 'jpg'}", blob))
    refs = writer.close()
    (shard,) = (tmp_path / "s").glob("*.tar")
    assert shard.read_bytes() == _reference_shard(members)
    assert shard.name == hashlib.sha256(shard.read_bytes()).hexdigest()[:32] + ".tar"
    with tarfile.open(shard) as tar:
        assert [m.name for m in tar.getmembers()] == [n for n, _ in members]
    reader = shards.ShardReader(tmp_path / "s")
    for name, blob in members:
        ref = refs[name.split(".")[0]]
        assert reader.read(ref.shard, ref.offset, ref.num_bytes) == blob
    if shutil.which("tar"):
        listed = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout
        assert listed.split() == [n for n, _ in members]


@pytest.mark.parametrize("name", ["a" * 100, "é.jpg", "dir/" * 30 + "x.jpg"])
def test_ustar_header_matches_tarfile(name):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = 12345, 0, 0o644
    assert shards.ustar_header(name, 12345) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
