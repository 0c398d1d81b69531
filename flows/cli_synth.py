"""``posepipe synth``: render synthetic people in extreme poses into the store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import JsonOption, RichProgress, StoreOption, emit_json, say


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    @app.command("synth")
    def synth_cmd(
        count: int = typer.Option(..., "--count", min=1, help="Number of images in the run."),
        units: Optional[str] = typer.Option(
            None, "--units", help="FIRST:STOP: render only images FIRST..STOP-1 of the run, with the same seeds and "
                                  "bytes as the whole run (split a run over machines or jobs)."),
        seed: int = typer.Option(..., "--seed", help="Run seed: same seed and options, same bytes."),
        resolution: str = typer.Option("256x256", "--resolution", help="WIDTHxHEIGHT in pixels."),
        engine: str = typer.Option("cycles", "--engine", help="cycles or workbench."),
        samples: int = typer.Option(16, "--samples", min=1, help="Render samples per pixel (Cycles)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Worker processes, one Blender each."),
        source: Optional[str] = typer.Option(None, "--source", help="Source name (default synth/s<seed>-n<count>)."),
        fmt: str = typer.Option("png", "--format", help="Image format: png or jpeg."),
        family: Optional[List[str]] = typer.Option(None, "--family", help="Only these pose families (repeatable)."),
        backgrounds: Optional[List[str]] = typer.Option(
            None, "--backgrounds", help="Composite real images of this store source behind people (repeatable); "
                                        "default: procedural backgrounds."),
        bvh: Optional[List[Path]] = typer.Option(
            None, "--bvh", help="BVH mocap clip as a second pose source (repeatable; CMU/Truebones/Mixamo joint "
                                "names); --bvh-share of the people take a frame from a clip."),
        bvh_share: float = typer.Option(0.5, "--bvh-share", min=0.0, max=1.0,
                                        help="Share of people posed from the --bvh clips."),
        rig: Optional[Path] = typer.Option(
            None, "--rig", help="Joint-map JSON of your own rigged human (.glb/.gltf/.fbx, see docs/user_rig.md): "
                                "people are that model, posed by retargeting, instead of the mannequin."),
        body: str = typer.Option("anny", "--body", help="anny: realistic Anny people (phenotypes over the "
                                 "whole population, clothed); mannequin: capsule mannequins."),
        age_range: str = typer.Option("0:90", "--age-range", help="MIN:MAX years of Anny people (within 0:90)."),
        realism: bool = typer.Option(False, "--realism", help="Score the source with a real-trained pretrained "
                                     "model (MoveNet Thunder) next to the store's real sources, in the report."),
        max_people: int = typer.Option(3, "--max-people", min=1, max=3, help="At most this many people per image."),
        device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu or gpu."),
        threads: int = typer.Option(0, "--threads", min=0, help="Render threads per worker (0: min(cores, 2 x cores / workers))."),
        timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds one image may take before a retry."),
        retries: int = typer.Option(1, "--retries", min=0, help="Retries of a crashed or timed-out image."),
        report_dir: Optional[Path] = typer.Option(None, "--report-dir",
                                                  help="Where report.json/report.md go (default reports/<source>)."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Render N synthetic people images (seeded) into source synth/<run>, with a report."""
        from posepipe.datasets.errors import PosepipeError
        from posepipe.datasets.store import PoseStore
        from posepipe.synth.core.pose import FAMILY_NAMES
        from posepipe.synth.core.scene import SceneConfig
        from posepipe.synth.run import SynthOptions, parse_resolution, parse_units, synth_run

        width, height = parse_resolution(resolution)
        for f in family or []:
            if f not in FAMILY_NAMES:
                raise PosepipeError(f"--family {f!r} is not a pose family; known: {', '.join(FAMILY_NAMES)}")
        try:
            ages = tuple(float(a) for a in age_range.split(":"))
        except ValueError:
            ages = ()
        if len(ages) != 2:
            raise PosepipeError(f"--age-range {age_range!r} is not MIN:MAX in years, e.g. 0:90")
        config = SceneConfig(width=width, height=height, max_people=max_people,
                             min_people=1, families=tuple(family) if family else None, bvh_share=bvh_share,
                             body=body, age_range=ages)
        opts = SynthOptions(count=count, seed=seed, width=width, height=height, engine=engine, samples=samples,
                            workers=workers, source=source, format=fmt, device=device, threads=threads,
                            timeout=timeout, retries=retries, config=config, backgrounds=tuple(backgrounds or ()),
                            bvh=tuple(str(b) for b in bvh or ()), rig=None if rig is None else str(rig),
                            units=None if units is None else parse_units(units), realism=realism)
        out_dir = report_dir or Path("reports") / opts.source_name()
        result = synth_run(PoseStore(store), opts, progress=RichProgress(not json_out), report_dir=out_dir)
        if json_out:
            emit_json({**result.to_dict(), "report_dir": str(out_dir)})
            return
        run = result.report["run"]
        removed = f"removed {result.removed} of another run, " if result.removed else ""
        say(f"source {result.source}: rendered {result.rendered}, unchanged {result.unchanged}, {removed}"
            f"failed {len(result.failed)}; {result.images} images and {result.instances} people added; "
            f"report in {out_dir}")
        for index, reason in sorted(result.failed.items()):
            say(f"  image {index}: {reason}")
        if run["share_outside_render"] is not None:
            say(f"time in Blender's render call {run['render_seconds']} s of {run['wall_seconds']} s wall")
