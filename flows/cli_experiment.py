"""``posepipe experiment``: does synthetic data help? Arms x starts x seeds on one budget, compared."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import JsonOption, RichProgress, emit_json, say


def _split(values: Optional[List[str]]) -> Optional[list[str]]:
    if not values:
        return None
    return [v for item in values for v in item.replace(",", " ").split() if v]


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    @app.command("experiment")
    def experiment_cmd(
        manifest: Optional[Path] = typer.Option(None, "--manifest", help="Base manifest (posepipe mix): real train "
                                                "rows, synthetic rows, real val rows [default: experiment.manifest]."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: experiment.out]."),
        params: Optional[Path] = typer.Option(None, "--params", help="Params file whose experiment: section gives "
                                              "the defaults (flags override)."),
        store: Optional[Path] = typer.Option(None, "--store", help="Store root [default: the manifest's]."),
        held_out: Optional[List[str]] = typer.Option(
            None, "--held-out", help="Store source to score on, never trained on (repeatable; the manifest's real "
                                     "val rows are scored too)."),
        arms: Optional[List[str]] = typer.Option(
            None, "--arms", help="Arms (comma list): real-only, mix-visibility, mix-uniform, synth-then-real."),
        seeds: Optional[List[str]] = typer.Option(None, "--seeds", help="Seeds (comma list), e.g. 0,1,2."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps per arm (the budget)."),
        start: Optional[List[str]] = typer.Option(
            None, "--start", help="Starting weights (repeatable): a model name (movenet-lightning), folder, "
                                  "checkpoint.pt, or scratch:MODEL (tiny-up, base-up...)."),
        ratio: Optional[str] = typer.Option(None, "--ratio", help="synthetic:real of the mix arms [1:3]."),
        pretrain_share: Optional[float] = typer.Option(
            None, "--pretrain-share", help="synth-then-real: share of the steps on synthetic rows [0.5]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per process [8]."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Adam rate from a pretrained start [2e-5]."),
        scratch_lr: Optional[float] = typer.Option(None, "--scratch-lr", help="Adam rate from scratch [2e-3]."),
        nproc: Optional[int] = typer.Option(None, "--nproc", help="torchrun processes per run [2]."),
        parallel: Optional[int] = typer.Option(None, "--parallel", help="Runs at once on CPU, sharing the cores [1]."),
        devices: Optional[List[str]] = typer.Option(
            None, "--devices", help="GPU ids (comma list): runs share them out, nproc each, one lane per group."),
        bootstrap: Optional[int] = typer.Option(None, "--bootstrap", help="Resamples for the 95% intervals [1000]."),
        flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Flip test when scoring [no]."),
        replace: bool = typer.Option(False, "--replace", help="When OUT holds runs over other data or settings, "
                                     "delete them instead of refusing."),
        prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="Run as a Prefect flow (run history, "
                                     "retries, Dask); --no-prefect runs the same lanes in this process."),
        dask: bool = typer.Option(False, "--dask", help="Lanes on a temporary local Dask cluster."),
        dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Lanes on this Dask scheduler."),
        json_out: bool = JsonOption,
    ) -> None:
        """Train arms (real-only, 1:3 mixes, synthetic pre-training) on the same steps and seeds, score them on
        held-out real sets, and write results.json, results.md, metrics.json (dvc metrics), curves/ and report.html.

        A finished run is kept: running the same command again resumes an interrupted experiment.
        """
        import yaml

        from posepipe.datasets.errors import PosepipeError
        from posepipe.training import experiment as exp

        values: dict = {}
        if params is not None:
            if not params.is_file():
                raise PosepipeError(f"--params {params}: no such file")
            section = (yaml.safe_load(params.read_text()) or {}).get("experiment")
            if not isinstance(section, dict):
                raise PosepipeError(f"{params}: no experiment: section")
            values.update(section)
        flags = {"manifest": str(manifest) if manifest else None, "out": str(out) if out else None,
                 "store": str(store) if store else None, "held_out": _split(held_out), "arms": _split(arms),
                 "seeds": _split(seeds), "steps": steps, "starts": _split(start), "ratio": ratio,
                 "pretrain_share": pretrain_share, "batch_size": batch_size, "lr": lr, "scratch_lr": scratch_lr,
                 "nproc": nproc, "parallel": parallel, "devices": _split(devices), "bootstrap": bootstrap,
                 "flip_test": flip}
        values.update({k: v for k, v in flags.items() if v is not None})
        spec = exp.ExperimentSpec.from_mapping(values, where=f"{params}: experiment" if params else "experiment")
        progress = RichProgress(not json_out)
        info = exp.prepare(spec, progress, replace)  # every check before any training
        if not json_out:
            runs = exp.plan(spec)
            say(f"{len(runs)} runs ({len(spec.arms)} arms x {len(spec.starts)} start(s) x {len(spec.seeds)} seed(s), "
                f"{spec.steps} steps each) scored on {', '.join(info['sets'])} -> {spec.out}")
        if prefect:
            from posepipe.flows import prefect_env

            prefect_env.configure()
            from posepipe.flows.experiment_flow import experiment_with_runner

            lanes = exp.lanes(spec)
            flow_fn = experiment_with_runner(dask, dask_address, len(lanes))
            flow_fn(spec=spec.to_dict())  # prepare ran above: the flow finds the folder consistent
            import json

            results = json.loads((spec.folder / "results.json").read_text())
        else:
            results = exp.run_direct(spec, progress=progress)  # prepare ran above
        from posepipe.flows.report import write_experiment_page

        page = write_experiment_page(results, spec.folder / "report.html")
        if json_out:
            emit_json({"out": spec.out, "report": str(page), "headline": results["headline"], "rows": results["rows"]})
        else:
            typer.echo((spec.folder / "results.md").read_text())
            say(f"report: {page}")
