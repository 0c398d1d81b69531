"""Commands over the store itself: ingest coco, export coco, rejects, stats."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import JsonOption, RichProgress, StoreOption, StrictOption, emit_json, exit_code, say


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    @ingest_app.command("coco")
    def ingest_coco_cmd(
        annotations: Path = typer.Argument(..., help="COCO person_keypoints json (or MPII json list)."),
        images: Path = typer.Option(..., "--images", help="Folder the json's file_names are relative to."),
        source: str = typer.Option(..., "--source", help="Source name in the store, e.g. coco-train."),
        skeleton: Optional[str] = typer.Option(
            None, "--skeleton", help="Skeleton of the file (coco17, crowdpose14, aic14, mpii16, halpe26, "
            "halpe136, humanart21, coco_wholebody); detected from the category's keypoint names when omitted."),
        split: Optional[str] = typer.Option(None, "--split", help="Split the source declares (train/val/test)."),
        full_verify: bool = typer.Option(False, "--full-verify", help="Decode every image fully (slower)."),
        workers: int = typer.Option(8, "--workers", min=1, help="Threads reading and hashing images."),
        one_process: bool = typer.Option(
            False, "--one-process", help="Read the annotations in this process only (by default a file of "
            "16 MB or more is split with one forked helper process when this process may use a second core)."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
        strict: bool = StrictOption,
    ) -> None:
        """Ingest a COCO keypoint file and its images; re-ingesting the same file adds nothing."""
        from posepipe.datasets.coco import ingest_coco
        from posepipe.datasets.errors import PosepipeError
        from posepipe.datasets.store import PoseStore

        report = ingest_coco(PoseStore(store), annotations, images, source, skeleton=skeleton, split=split,
                             full_verify=full_verify, workers=workers, progress=RichProgress(not json_out),
                             helper_process=not one_process)
        if json_out:
            emit_json(report.to_dict())
        else:
            say(report.summary())
        if report.fatal:
            raise PosepipeError(report.fatal)
        exit_code(1 if strict and report.rejected else 0)

    @export_app.command("coco")
    def export_coco_cmd(
        source: List[str] = typer.Option(..., "--source", help="Source(s) to export (repeatable)."),
        out: Path = typer.Option(..., "--out", help="Output COCO json file."),
        images: Optional[Path] = typer.Option(None, "--images", help="Also write the images here, named as file_name."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Write standard COCO person_keypoints json (and images) out of the store."""
        from posepipe.datasets.coco_export import export_coco
        from posepipe.datasets.store import PoseStore

        report = export_coco(PoseStore(store), source, out, images_dir=images, progress=RichProgress(not json_out))
        if json_out:
            emit_json(report.__dict__)
        else:
            say(f"wrote {report.out}: {report.images} images, {report.annotations} annotations"
                + (f", {report.images_written} image files" if images else "")
                + (" (ids renumbered: sources' ids collide)" if report.renumbered else ""))

    @app.command("rejects")
    def rejects_cmd(
        source: Optional[List[str]] = typer.Option(None, "--source", help="Only these sources (repeatable)."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
        limit: int = typer.Option(0, "--limit", min=0, help="Show at most this many (0: all)."),
    ) -> None:
        """List every rejected record with its reason code and a one-line message."""
        from posepipe.datasets import stats
        from posepipe.datasets.store import PoseStore

        rows = stats.rejects(PoseStore(store), _known(store, source))
        if limit:
            rows = rows[:limit]
        if json_out:
            emit_json(rows)
            return
        if not rows:
            say("no rejects")
        for r in rows:
            typer.echo(f"{r['source']}\t{r['kind']}\t{r['reason']}\t{r['message']}")

    @app.command("gc")
    def gc_cmd(
        dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Delete image shards that no image row points to any more (and crashed writers' temporary files)."""
        from posepipe.datasets.gc import collect_garbage
        from posepipe.datasets.store import PoseStore

        report = collect_garbage(PoseStore(store), dry_run=dry_run)
        if json_out:
            emit_json(report.to_dict())
        else:
            say(report.summary())

    @app.command("stats")
    def stats_cmd(
        source: Optional[List[str]] = typer.Option(None, "--source", help="Only these sources (repeatable)."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
        out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON here (a DVC metrics file)."),
        plot: Optional[Path] = typer.Option(
            None, "--plot", help="Write visibility rows (source, visibility, joints) here as JSON, for dvc plots."),
    ) -> None:
        """Counts per source (read = accepted + rejected), visibility histograms, image counts."""
        import json

        from rich.table import Table

        from posepipe.datasets import atomic, stats
        from posepipe.datasets.store import PoseStore

        from .cli_common import stderr

        data = stats.stats(PoseStore(store), _known(store, source))
        if out:
            atomic.write_text(out, json.dumps(data, indent=2) + "\n")
        if plot:
            rows = [{"source": name, "visibility": key, "joints": count}
                    for name, s in data["sources"].items() for key, count in s["visibility"].items()]
            atomic.write_text(plot, json.dumps(rows, indent=2) + "\n")
        if json_out:
            emit_json(data)
            return
        table = Table(title=f"store {data['store']}")
        for col in ("source", "images", "instances", "ann read", "accepted", "rejected", "v=0", "v=1", "v=2"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for name, s in data["sources"].items():
            v = s["visibility"]
            table.add_row(name, str(s["images"]), str(s["instances"]), str(s["annotations_read"]),
                          str(s["annotations_accepted"]), str(s["annotations_rejected"]),
                          str(v["v0"]), str(v["v1"]), str(v["v2"]))
        stderr.print(table)


def _known(store: Path, sources: Optional[List[str]]) -> Optional[List[str]]:
    from posepipe.datasets.errors import PosepipeError
    from posepipe.datasets.store import PoseStore

    if not sources:
        return None
    known = PoseStore(store).sources()
    for s in sources:
        if s not in known:
            raise PosepipeError(f"source {s!r} is not in the store {store} (known: {', '.join(known) or 'none'})")
    return sources
