"""Annotator commands: ingest labelme, annotate config, annotate export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from posepipe.datasets.settle import DEFAULT_SETTLE_SECONDS

from .cli_common import JsonOption, RichProgress, StoreOption, StrictOption, emit_json, exit_code, say

annotate_app = typer.Typer(help="Work with annotators: LabelMe config and pre-annotations.", no_args_is_help=True)


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    app.add_typer(annotate_app, name="annotate")

    @ingest_app.command("labelme")
    def ingest_labelme_cmd(
        folder: Path = typer.Argument(..., help="Intake folder: every *.json under it is read."),
        source: str = typer.Option(..., "--source", help="Source name in the store, e.g. labelme/batch1."),
        annotator: Optional[str] = typer.Option(None, "--annotator", help="Recorded on every accepted person."),
        quarantine: Optional[Path] = typer.Option(
            None, "--quarantine", help="Where rejected files go, beside a *.errors.txt [default: FOLDER/_quarantine]."),
        quarantine_mode: str = typer.Option("move", "--quarantine-mode", help="move or copy rejected files."),
        prune: bool = typer.Option(False, "--prune", help="Remove the records of files deleted from the folder."),
        settle: float = typer.Option(
            DEFAULT_SETTLE_SECONDS, "--settle", metavar="SECONDS",
            help="A file (and its image) is read once unchanged for this long; fresh files are waited for, "
                 "files still changing are skipped (a later run takes them). 0: read every file as it is."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
        strict: bool = StrictOption,
    ) -> None:
        """Ingest LabelMe files (3.x to 7.x, X-AnyLabeling); unchanged files are skipped."""
        from posepipe.annotation.intake import ingest_labelme
        from posepipe.datasets.store import PoseStore

        from rich.markup import escape

        report = ingest_labelme(PoseStore(store), folder, source, annotator=annotator, quarantine=quarantine,
                                quarantine_mode=quarantine_mode, prune=prune, progress=RichProgress(not json_out),
                                settle=settle)
        if json_out:
            emit_json(report.to_dict())
        else:
            say(escape(report.summary()))
            for f in report.files:
                if f.status == "rejected":
                    where = f.quarantined_to or "left in place"
                    say(escape(f"  rejected [{f.reason}] {f.message} -> {where}"))
                elif f.status == "skipped":
                    say(escape(f"  skipped [{f.reason}] {f.message}"))
            for folder in report.unlisted_folders:
                say(escape(f"  could not list {folder}: its files were left alone"))
            for m in report.missing:
                say(escape(f"  {m['state']}: {m['file']}: {m['action']}"))
        exit_code(1 if strict and report.rejected else 0)

    @annotate_app.command("config")
    def config_cmd(
        out: Path = typer.Option(Path("labelme-posepipe.yaml"), "--out", help="Config file to write."),
        images: Path = typer.Option(Path("."), "--images", help="Folder the annotator opens (for the printed command)."),
        json_out: bool = JsonOption,
    ) -> None:
        """Write the LabelMe config of posepipe's convention and print the command to run."""
        from posepipe.annotation.config import labelme_command, write_config

        path = write_config(out)
        command = labelme_command(path, images)
        if json_out:
            emit_json({"config": str(path), "command": command})
            return
        say(f"wrote {path}; annotators install labelme with `pip install posepipe\\[annotate]` and run:")
        typer.echo(command)

    @annotate_app.command("export")
    def export_cmd(
        source: str = typer.Option(..., "--source", help="Store source to pre-annotate (COCO, synthetic, predictions)."),
        out: Path = typer.Option(..., "--out", help="Folder for the LabelMe json files and images."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Write LabelMe json files (and images) that annotators open and correct."""
        from posepipe.annotation.preannotate import export_labelme
        from posepipe.datasets.store import PoseStore

        report = export_labelme(PoseStore(store), source, out, progress=RichProgress(not json_out))
        if json_out:
            emit_json(report.__dict__)
        else:
            say(f"wrote {report.files} LabelMe files ({report.people} people, {report.images_written} images) to {out}")
