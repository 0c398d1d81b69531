"""The ``experiment`` flow: the data-value experiment's runs fanned out over lanes.

``posepipe.training.experiment`` plans the runs (arm x start x seed) and shares them out into
lanes: on a GPU machine one lane per ``nproc`` devices (``CUDA_VISIBLE_DEVICES`` set for its
torchrun), on CPU ``parallel`` lanes splitting the cores. Each lane is one task that trains its
runs one after another; the task runner decides where lanes execute: Prefect's thread pool on
this machine, or Dask (a temporary local cluster, or a scheduler's address: the same flow over a
cluster, as for synth). A retried lane resumes: finished runs are kept, a half-trained one
resumes from its checkpoint. The statistics and the tables come last, as one task.

Prefect's settings are the caller's business (``prefect_env.configure`` runs in the CLI before
this module is imported), so importing it configures nothing.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from posepipe.training import experiment as exp

ARTIFACT_KEY = "experiment-results"


def _lane(spec_dict: dict, lane: exp.Lane) -> list[dict]:
    from prefect.logging import get_run_logger

    from posepipe.flows.train_flow import _flow_run_cancelled, run_torchrun

    logger = get_run_logger()
    should_stop = _flow_run_cancelled()
    spec = exp.ExperimentSpec.from_mapping(spec_dict)

    def launch(cfg) -> int:
        logger.info(f"torchrun {cfg.out}")
        return run_torchrun(cfg, log=logger.info, should_stop=should_stop)

    def done(run: exp.RunSpec, result: dict) -> None:
        scores = ", ".join(f"{name} AP {s['AP']:.3f}" for name, s in result["sets"].items())
        line = f"{run.start}/{run.arm}/seed{run.seed}: {scores}"
        logger.info(line)
        print(line, file=sys.stderr, flush=True)  # the console shows progress run by run

    return exp.run_lane(spec, lane, launch, done)


def _start(spec_dict: dict, start: str) -> dict | None:
    return exp.score_start(exp.ExperimentSpec.from_mapping(spec_dict), start)


def _stats(spec_dict: dict) -> dict:
    from posepipe.training.experiment_stats import write_results

    return write_results(exp.ExperimentSpec.from_mapping(spec_dict))


lane_task = task(_lane, name="lane", retries=1,
                 retry_delay_seconds=2, cache_policy=NO_CACHE)
start_task = task(_start, name="score-start", task_run_name="start {start}", cache_policy=NO_CACHE)
stats_task = task(_stats, name="intervals", cache_policy=NO_CACHE)


@flow(name="experiment")
def experiment(spec: dict, replace: bool = False) -> dict:
    """Train every arm x start x seed on the same budget, score them on the held-out sets, compare.

    ``replace``: an output folder holding runs over other data is emptied instead of refused."""
    from prefect.artifacts import create_markdown_artifact

    from posepipe.training.experiment_stats import markdown

    parsed = exp.ExperimentSpec.from_mapping(spec)
    exp.prepare(parsed, replace=replace)
    settings = asdict(parsed)
    starts = start_task.map(unmapped(settings), list(parsed.starts))
    lanes = lane_task.map(unmapped(settings), exp.lanes(parsed))
    for future in list(starts) + list(lanes):
        future.result()
    results = stats_task(settings)
    create_markdown_artifact(markdown(results), key=ARTIFACT_KEY, description="posepipe experiment")
    return {"out": parsed.out, "runs": len(results["runs"]), "headline": results["headline"],
            "train_seconds": results["train_seconds"]}


def experiment_with_runner(dask: bool = False, address: str | None = None, workers: int = 1):
    """The flow bound to its task runner (threads, a local Dask cluster, or a Dask scheduler)."""
    from posepipe.flows.synth_flow import task_runner

    return experiment.with_options(task_runner=task_runner(dask, address, workers))
