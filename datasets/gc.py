"""Garbage in the image shards: shards no image row points to any more, and what they cost.

Shards are content-addressed and never rewritten (``shards.py``), so bytes outlive the rows that
used them: a re-ingested file whose images changed, pruned LabelMe files, synthetic images
rendered anew with other parameters, or an ingest that failed after finishing a shard. This
module deletes whole shards that no images row of any source references (images are shared
across sources by content, so every source counts), and the temporary files of writers that
crashed. Shards that still hold some live image are kept whole and reported with the bytes their
dead members take: rewriting them would change the files DVC versions for data still in use.

Everything runs under the store's write lock, so no ingest can be between writing a shard and
committing the rows that point to it.
"""

from __future__ import annotations

import dataclasses
import tarfile
from dataclasses import dataclass, field

from .store import PoseStore


@dataclass
class GcReport:
    dry_run: bool
    shards: int = 0  # shard files found
    deleted: list[str] = field(default_factory=list)  # shard names (as rows name them) without a row
    deleted_bytes: int = 0
    temporary: list[str] = field(default_factory=list)  # leftovers of crashed writers
    partly_dead: int = 0  # shards kept for their live images that also hold dead ones
    dead_bytes_kept: int = 0  # bytes of dead members inside those shards

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{self.shards} shards: {verb} {len(self.deleted)} unreferenced ({self.deleted_bytes / 1e6:.1f} MB)"
                f" and {len(self.temporary)} temporary files; {self.partly_dead} shards kept for their live "
                f"images hold {self.dead_bytes_kept / 1e6:.1f} MB of dead ones")


def collect_garbage(store: PoseStore, dry_run: bool = False) -> GcReport:
    report = GcReport(dry_run)
    if not store.shard_dir.is_dir():
        return report
    with store.exclusive():
        images = store.images().select(["shard", "sha256"]).to_pydict()
        live: dict[str, set[str]] = {}  # shard -> sha256 of the images rows point to in it
        for shard, sha in zip(images["shard"], images["sha256"]):
            live.setdefault(shard, set()).add(sha)
        for folder in sorted(p for p in store.shard_dir.iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".tmp-"):
                    report.temporary.append(f"{folder.name}/{path.name}")
                    if not dry_run:
                        path.unlink()
                    continue
                if path.suffix != ".tar":
                    continue
                report.shards += 1
                name = f"{folder.name}/{path.name}"
                if name not in live:
                    report.deleted.append(name)
                    report.deleted_bytes += path.stat().st_size
                    if not dry_run:
                        path.unlink()
                    continue
                dead = _dead_bytes(path, live[name])
                if dead:
                    report.partly_dead += 1
                    report.dead_bytes_kept += dead
    return report


def _dead_bytes(path, live: set[str]) -> int:
    """Bytes of the members (named ``<sha256>.<ext>``) that no row points to; headers only are read."""
    with tarfile.open(path, "r:") as tar:
        return sum(m.size for m in tar if m.name.split(".", 1)[0] not in live)
