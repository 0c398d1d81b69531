"""Fetch an npm package tarball with the machine's own npm client, check it, extract members.

``npm pack NAME@VERSION`` downloads the published tarball from the configured registry (and its
cache, mirrors and proxies), without installing anything or running package scripts. The
tarball's sha512 must equal the integrity the registry published, pinned in ``registry.py``; a
tarball given by hand (``--from FILE.tgz``, for machines without the registry) is held to the
same hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from posepipe.datasets.errors import PosepipeError

from .registry import NpmPackage

PACK_TIMEOUT_S = 600


def integrity_of(path: Path) -> str:
    """npm's Subresource Integrity string of a file: "sha512-" + base64 of its sha512."""
    with open(path, "rb") as fh:
        return "sha512-" + base64.b64encode(hashlib.file_digest(fh, "sha512").digest()).decode()


def pack(package: NpmPackage, dest: Path) -> Path:
    """Download ``package``'s tarball into ``dest`` with ``npm pack``; returns its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise PosepipeError(f"cannot fetch {package.spec}: npm is not installed (install Node.js and npm, "
                            f"or download the tarball elsewhere and pass it with --from FILE.tgz)")
    cmd = [npm, "pack", package.spec, "--pack-destination", str(dest), "--json", "--ignore-scripts"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PACK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise PosepipeError(f"npm pack {package.spec} took more than {PACK_TIMEOUT_S} s; check the network "
                            f"or pass a downloaded tarball with --from FILE.tgz") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PosepipeError(f"npm pack {package.spec} failed (exit {done.returncode}): {last}")
    try:
        filename = json.loads(done.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        raise PosepipeError(f"npm pack {package.spec}: unexpected output {done.stdout[:200]!r}") from None
    # npm names scoped packages "scope-name-version.tgz"; take what it reports.
    path = dest / Path(filename).name
    if not path.is_file():
        raise PosepipeError(f"npm pack {package.spec} reported {filename!r} but wrote no such file in {dest}")
    return path


def check(package: NpmPackage, tarball: Path) -> None:
    found = integrity_of(tarball)
    if found != package.integrity:
        raise PosepipeError(f"{tarball}: not the published {package.spec} (integrity {found[:24]}..., "
                            f"expected {package.integrity[:24]}...)")


def extract(tarball: Path, members: tuple[str, ...], dest: Path) -> list[Path]:
    """Extract the named regular files (flat, by base name) into ``dest``; nothing else is written."""
    out = []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for name in members:
                try:
                    info = tar.getmember(name)
                except KeyError:
                    raise PosepipeError(f"{tarball}: has no member {name!r}") from None
                if not info.isfile():
                    raise PosepipeError(f"{tarball}: member {name!r} is not a regular file")
                target = dest / Path(name).name
                with tar.extractfile(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                out.append(target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PosepipeError(f"{tarball}: cannot read the tarball ({exc})") from None
    return out
