"""Orchestration commands: ``posepipe run`` (the main job), ``posepipe server``, ``posepipe schedule ...``.

Prefect is imported inside the commands (through the flow modules), so ``posepipe --help``
stays fast and the other commands never load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from posepipe.datasets.settle import DEFAULT_SETTLE_SECONDS

from .cli_common import JsonOption, emit_json, say, stderr

schedule_app = typer.Typer(help="Serve flows on a schedule (cron, or an interval over a drop folder).",
                           no_args_is_help=True)


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")

    @app.command("run")
    def run_cmd(
        config: Path = typer.Option(Path("params.yaml"), "--config", help="Params file with a pipeline: section."),
        store: Optional[Path] = typer.Option(None, "--store", help="Store root [default: pipeline.store]."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: pipeline.out]."),
        release: Optional[str] = typer.Option(
            None, "--release", help="Make DVC release NAME (needs a git+DVC repo with a clean tree)."),
        synth_images: Optional[int] = typer.Option(None, "--synth-images", help="Synthetic images (0: none)."),
        train_steps: Optional[int] = typer.Option(None, "--train-steps", help="Optimizer steps to train."),
        dask: bool = typer.Option(False, "--dask", help="Render on a temporary local Dask cluster."),
        dask_address: Optional[str] = typer.Option(
            None, "--dask-address", help="Render on this Dask scheduler, e.g. tcp://10.0.0.5:8786."),
        json_out: bool = JsonOption,
    ) -> None:
        """Run the main job as a Prefect flow: ingest, synth, mix, release, train, export, report."""
        summary = _run_pipeline(config, store, out, release, synth_images, train_steps, dask, dask_address, json_out)
        if json_out:
            emit_json(summary)
            return
        from rich.table import Table

        table = Table(title=f"posepipe run: {summary['seconds']:.0f} s")
        for col in ("stage", "status", "seconds", "detail"):
            table.add_column(col, justify="right" if col == "seconds" else "left")
        for s in summary["stages"]:
            table.add_row(s["stage"], s["status"], f"{s['seconds']:.1f}", s["detail"])
        stderr.print(table)
        say(f"report: {summary['report']}")
        typer.echo(summary["report"])

    @app.command("server")
    def server_cmd(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(4200, "--port", help="Port of the API and UI."),
    ) -> None:
        """Start a Prefect server with its UI (runs report there once PREFECT_API_URL points at it)."""
        import os
        import sys

        from posepipe.flows import prefect_env

        prefect_env.configure()
        say(f"Prefect server on http://{host}:{port} (history in {os.environ['PREFECT_HOME']}); in another shell: "
            f"export PREFECT_API_URL=http://{host}:{port}/api")
        os.execv(sys.executable, [sys.executable, "-m", "prefect", "server", "start", "--host", host,
                                  "--port", str(port)])

    @schedule_app.command("ingest")
    def schedule_ingest_cmd(
        cron: str = typer.Option(..., "--cron", help='Cron schedule, e.g. "0 2 * * *" (02:00 every day).'),
        params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file naming the sources."),
        section: str = typer.Option("ingest", "--section", help="Its section: ingest or pipeline.ingest."),
        store: Path = typer.Option(Path("data/store"), "--store", help="Store root."),
        name: str = typer.Option("scheduled", "--name", help="Deployment name."),
        timezone: str = typer.Option("UTC", "--timezone", help="Time zone of the cron schedule."),
        settle: Optional[float] = typer.Option(
            None, "--settle", metavar="SECONDS",
            help="Inputs are read once unchanged this long (entries' own settle: wins) [default: 5]; 0: off."),
    ) -> None:
        """Serve the ingest flow on a cron schedule (blocks; Ctrl-C stops serving)."""
        from posepipe.datasets.settle import check_settle
        from posepipe.flows.ingest_flow import serve_ingest_cron

        if settle is not None:
            settle = check_settle(settle)
        _check_params(params, section)
        serve_ingest_cron(cron, params=str(params.resolve()), section=section, store=str(store.resolve()),
                          name=name, timezone=timezone, settle=settle, log=say)

    @schedule_app.command("watch")
    def schedule_watch_cmd(
        folder: Path = typer.Argument(..., help="Annotators' LabelMe drop folder."),
        every: float = typer.Option(60.0, "--every", help="Seconds between scans."),
        source: Optional[str] = typer.Option(None, "--source", help="Store source [default: labelme/FOLDER-NAME]."),
        store: Path = typer.Option(Path("data/store"), "--store", help="Store root."),
        annotator: Optional[str] = typer.Option(None, "--annotator", help="Recorded on every accepted person."),
        name: Optional[str] = typer.Option(None, "--name", help="Deployment name [default: watch-FOLDER-NAME]."),
        settle: float = typer.Option(
            DEFAULT_SETTLE_SECONDS, "--settle", metavar="SECONDS",
            help="A file (and its image) is taken once unchanged this long; fresh files are waited for, files "
                 "still changing are left to a later scan. 0: take every file as it is."),
    ) -> None:
        """Scan a drop folder every N seconds and ingest new or changed LabelMe files (blocks)."""
        from posepipe.datasets.errors import PosepipeError
        from posepipe.datasets.settle import check_settle
        from posepipe.flows.ingest_flow import serve_watch

        if not folder.is_dir():
            raise PosepipeError(f"{folder}: drop folder does not exist")
        if every <= 0:
            raise PosepipeError("--every must be a positive number of seconds")
        serve_watch(str(folder.resolve()), every, source=source or f"labelme/{folder.resolve().name}",
                    store=str(store.resolve()), annotator=annotator, name=name, settle=check_settle(settle), log=say)


def _check_params(params: Path, section: str) -> None:
    from posepipe.datasets.errors import PosepipeError
    from posepipe.flows.ingest_flow import load_specs

    coco, labelme = load_specs(str(params), None, None, section)
    if not coco and not labelme:
        raise PosepipeError(f"{params}: {section} lists no coco or labelme source to ingest")


def _run_pipeline(config: Path, store, out, release, synth_images, train_steps, dask, dask_address,
                  json_out: bool) -> dict:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from posepipe.datasets.errors import PosepipeError
    from posepipe.flows import pipeline as pipeline_module
    from posepipe.flows.prefect_env import describe

    if not config.is_file():
        raise PosepipeError(f"--config {config}: no such file")
    # Fail on bad settings or absent inputs before Prefect starts anything.
    pipeline_module.PipelineConfig.load(config, store=store, out=out, release=release, synth_images=synth_images,
                                        train_steps=train_steps).check()
    if not json_out:
        say(f"runs recorded in the {describe()}")
    kwargs = dict(params=str(config), store=str(store) if store else None, out=str(out) if out else None,
                  release=release, synth_images=synth_images, train_steps=train_steps, dask=dask,
                  dask_address=dask_address)
    show = not json_out and stderr.is_terminal
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=stderr,
                  transient=True, disable=not show) as bar:
        task_id = bar.add_task("starting", total=len(pipeline_module.STAGES))

        def on_stage(stage: str, event: str) -> None:
            if event == "start":
                bar.update(task_id, description=f"stage {stage}")
            else:
                bar.advance(task_id)

        pipeline_module.Timeline.listeners.append(on_stage)
        try:
            state = pipeline_module.pipeline(**kwargs, return_state=True)
        finally:
            pipeline_module.Timeline.listeners.remove(on_stage)
    return _result(state)


def _result(state) -> dict:
    """The flow's summary; a failure becomes one line (the stage's own message)."""
    from posepipe.datasets.errors import PosepipeError

    try:
        result = state.result()
    except PosepipeError:
        raise
    except Exception as exc:  # a stage failed for another reason: say which and why, in one line
        raise PosepipeError(f"pipeline {state.name.lower()}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(result, dict):
        raise PosepipeError(f"pipeline ended {state.name}: {state.message}")
    return result


__all__: List[str] = ["register"]
