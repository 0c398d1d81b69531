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
        review_score: float = typer.Option(0.5, "--review-score", help="For predictions (pred/ sources): joints "
                                                                         "scoring less are flagged `check`."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Write LabelMe json files (and images) that annotators open and correct."""
        from posepipe.annotation.preannotate import export_labelme
        from posepipe.datasets.store import PoseStore

        report = export_labelme(PoseStore(store), source, out, progress=RichProgress(not json_out),
                                review_score=review_score)
        if json_out:
            emit_json(report.__dict__)
        else:
            say(f"wrote {report.files} LabelMe files ({report.people} people, {report.images_written} images) to {out}")

    @app.command("qa")
    def qa_cmd(
        source: str = typer.Option(..., "--source", help="Store source whose labels to check."),
        model: str = typer.Option("movenet-thunder", "--model", help="Pose model name (pulled on first use) or ONNX file."),
        out: Path = typer.Option(Path("qa"), "--out", help="Folder for qa.json (every finding, ranked) and qa.html."),
        top: int = typer.Option(40, "--top", help="Findings shown with crops on the page."),
        threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads (0: all cores)."),
        store: Path = StoreOption,
        cache: Optional[Path] = typer.Option(None, "--cache", help="Model cache folder (env POSEPIPE_MODELS)."),
        json_out: bool = JsonOption,
    ) -> None:
        """Check labels against a pose model: left/right swaps, joints off, visible joints unlabelled, bad boxes."""
        import json

        from posepipe.annotation.qa import check_source
        from posepipe.datasets import atomic
        from posepipe.datasets.store import PoseStore
        from posepipe.flows.report import write_qa_page
        from posepipe.pretrained.cache import ModelCache
        from posepipe.pretrained.runtime import load

        progress = RichProgress(not json_out)
        pose_store = PoseStore(store)
        result = check_source(pose_store, source, load(model, ModelCache(cache), threads=threads, progress=progress),
                              progress=progress)
        atomic.write_text(out / "qa.json", json.dumps(result, indent=1))
        page = write_qa_page(store, result, out / "qa.html", top)
        if json_out:
            emit_json({"qa": str(out / "qa.json"), "page": str(page), "summary": result["summary"],
                       "findings": [{k: f[k] for k in ("kind", "severity", "instance_id", "file_name", "joint", "message")}
                                    for f in result["findings"]]})
            return
        summ = result["summary"]
        say(f"{summ['people_judged']} people checked, {summ['findings']} findings on {summ['people_flagged']} people "
            f"({', '.join(f'{k} {n}' for k, n in summ['by_kind'].items())}) -> {out / 'qa.json'}, {page}")
        for f in result["findings"][:10]:
            say(f"  {f['severity']:.2f} {f['kind']}: {f['message']}")

    @annotate_app.command("prelabel")
    def prelabel_cmd(
        folder: Path = typer.Argument(..., help="Folder of new images; LabelMe files are written beside them."),
        model: str = typer.Option("movenet-thunder", "--model", help="Pose model name (pulled on first use) or ONNX file."),
        boxes: str = typer.Option("multipose", "--boxes", help="multipose (find every person) or whole-image (one each)."),
        min_score: float = typer.Option(0.3, "--min-score", help="Joints scoring less are left out for the annotator to add."),
        review_score: float = typer.Option(0.5, "--review-score", help="Joints scoring less are flagged `check`."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace LabelMe files that already exist."),
        threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads (0: all cores)."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Model cache folder (env POSEPIPE_MODELS)."),
        json_out: bool = JsonOption,
    ) -> None:
        """Pre-annotate a folder of new images with a pose model: annotators correct instead of starting from zero."""
        import numpy as np

        from posepipe.annotation.preannotate import prelabel_folder
        from posepipe.datasets.errors import PosepipeError
        from posepipe.pretrained import predict as P
        from posepipe.pretrained.cache import ModelCache
        from posepipe.pretrained.runtime import load

        if boxes not in ("multipose", "whole-image"):
            raise PosepipeError(f"--boxes {boxes}: use multipose or whole-image")
        progress = RichProgress(not json_out)
        pose_model = load(model, ModelCache(cache), threads=threads, progress=progress)
        opts = P.PredictOptions(min_score=min_score, boxes=boxes)
        detector = P.multipose_detector(ModelCache(cache), threads, progress) if boxes == "multipose" else None
        people, images, skipped = P.people_of_folder(folder, opts, detector, progress)
        pred = P.run(pose_model, people, images, opts, pose_model.describe(), {"kind": "folder", "path": str(folder)},
                     skipped, progress)
        result = prelabel_folder(folder, pred.keypoints, np.stack([p.bbox for p in pred.people]) if pred.people else
                                 np.zeros((0, 4)), [p.file_name for p in pred.people],
                                 [(p.height, p.width) for p in pred.people], min_score, review_score,
                                 overwrite, pose_model.name)
        result.update(unreadable=pred.unreadable, skipped=pred.skipped, model=pose_model.describe())
        if json_out:
            emit_json(result)
            return
        say(f"wrote {result['files_written']} LabelMe files ({result['people']} people) in {folder}"
            + (f"; kept {len(result['kept_existing'])} existing" if result["kept_existing"] else ""))
        for problem in pred.unreadable:
            say(f"  unreadable: {problem['file']}: {problem['reason']}")
