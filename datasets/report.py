"""What one ingestion did: counts read, accepted and rejected, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class IngestReport:
    source: str
    file: str
    format: str
    batch_id: str = ""
    unchanged: bool = False  # the same file content was ingested before: nothing was added
    fatal: str | None = None  # the file as a whole could not be read (the CLI exits 2)
    images_read: int = 0
    images_accepted: int = 0
    images_rejected: int = 0
    annotations_read: int = 0
    annotations_accepted: int = 0
    annotations_rejected: int = 0
    files_rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        return self.images_rejected + self.annotations_rejected + self.files_rejected

    def check_balance(self) -> None:
        """Records read = accepted + rejected, always; a violation is a bug, not bad input."""
        if self.images_read != self.images_accepted + self.images_rejected:
            raise AssertionError(f"image counts do not add up: {self}")
        if self.annotations_read != self.annotations_accepted + self.annotations_rejected:
            raise AssertionError(f"annotation counts do not add up: {self}")

    def to_dict(self) -> dict:
        return {**report_dict(self), "rejected": self.rejected}

    def summary(self) -> str:
        if self.fatal:
            return f"{self.file}: rejected as a whole: {self.fatal}"
        if self.unchanged:
            return f"{self.file}: unchanged since batch {self.batch_id}; nothing added to source {self.source}"
        text = (
            f"{self.file} -> source {self.source} (batch {self.batch_id}): "
            f"images {self.images_accepted}/{self.images_read} accepted, "
            f"annotations {self.annotations_accepted}/{self.annotations_read} accepted"
        )
        return text + counts_text(self.reasons, self.notes)


def report_dict(report) -> dict:
    """A report dataclass as json-ready data, its reason and note counts sorted by name."""
    d = asdict(report)
    d["reasons"] = dict(sorted(report.reasons.items()))
    d["notes"] = dict(sorted(report.notes.items()))
    return d


def counts_text(reasons: Counter, notes: Counter) -> str:
    """'; rejects: a 2, b 1; notes: c 3' (empty parts left out), for one-line summaries."""
    text = ""
    if reasons:
        text += "; rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    if notes:
        text += "; notes: " + ", ".join(f"{k} {v}" for k, v in sorted(notes.items()))
    return text
