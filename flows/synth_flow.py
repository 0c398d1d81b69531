"""The ``synth`` flow: synthetic renders fanned out as mapped tasks over slices of one run.

A run of N images with seed S is cut into ``slices`` contiguous slices of image indices; slice k
renders its images through ``posepipe.synth.run.synth_run`` (``units=(first, stop)``) with one
worker, i.e. one Blender process per task (bpy is process-global and not thread-safe). Image i
has seed ``SeedSequence([S, i])`` whichever slice renders it, so the flow writes the same bytes as
``posepipe synth --count N --seed S`` (and the dvc.yaml stage) however many slices it uses. Every
image is its own input file of source ``synth/<run>`` (keyed by its unit seed), so slices never
overwrite each other, a retried slice re-renders only what is missing, and a re-run adds nothing.

Task runners: Prefect's thread pool by default (each task waits on its own Blender process);
``DaskTaskRunner`` with ``dask_address`` (an existing scheduler: the same flow on a cluster of
many machines, unchanged) or a temporary local cluster for ``--dask``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from posepipe.datasets.errors import PosepipeError
from posepipe.flows import prefect_env

prefect_env.configure()

from prefect import flow, task, unmapped  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

ARTIFACT_KEY = "synth-summary"


@dataclass
class SynthSpec:
    """params.yaml ``pipeline.synth``."""

    run: str = "demo"
    images: int = 8
    seed: int = 0
    slices: int = 2  # mapped tasks, each a contiguous slice of the run's images
    workers: int = 2  # tasks at once (thread-pool runner) or local Dask workers (--dask)
    width: int = 192
    height: int = 256
    engine: str = "cycles"  # or workbench (fast, flat shading)
    samples: int = 8  # render samples per pixel
    rig: str | None = None  # joint-map file of your own rigged human (docs/user_rig.md); else the mannequin
    dask_address: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = "pipeline.synth") -> "SynthSpec":
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise PosepipeError(f"{where}: {unknown[0]!r} is not a setting (known: "
                                f"{', '.join(sorted(cls.__dataclass_fields__))})")
        spec = cls(**values)
        if spec.images < 0 or spec.slices < 1 or spec.workers < 1:
            raise PosepipeError(f"{where}: images must be >= 0, slices and workers >= 1")
        if spec.rig is not None:
            from posepipe.synth.core.user_rig import load_joint_map

            try:
                load_joint_map(spec.rig)  # before any task starts: a bad map fails the run at once
            except PosepipeError as exc:
                raise PosepipeError(f"{where}.rig: {exc}") from None
        return spec

    @property
    def source(self) -> str:
        return f"synth/{self.run}"


def unit_slices(spec: SynthSpec) -> list[tuple[int, int]]:
    """(first, stop) image indices per slice: contiguous, as even as possible, covering 0..images-1."""
    from posepipe.synth.run import contiguous_ranges

    return contiguous_ranges(spec.images, min(spec.slices, spec.images)) if spec.images else []


def render_slice(store: str, spec_dict: dict, first: int, stop: int) -> dict:
    """One slice: images first..stop-1 of the run, rendered by one Blender worker process."""
    from posepipe.datasets.store import PoseStore
    from posepipe.synth.run import SynthOptions, render_threads, synth_run

    spec = SynthSpec(**spec_dict)
    # Up to ``spec.workers`` slices render at once: each takes the render threads of one of that many workers.
    at_once = min(spec.workers, len(unit_slices(spec)))
    threads = render_threads(SynthOptions(count=spec.images, seed=spec.seed, workers=at_once))
    opts = SynthOptions(count=spec.images, seed=spec.seed, units=(first, stop), width=spec.width,
                        height=spec.height, engine=spec.engine, samples=spec.samples, workers=1, threads=threads,
                        source=spec.source, rig=spec.rig)
    result = synth_run(PoseStore(store), opts)
    if result.failed:
        index, reason = next(iter(result.failed.items()))
        raise RuntimeError(f"slice {first}:{stop}: {len(result.failed)} of {stop - first} renders failed "
                           f"(image {index}: {reason})")
    return {"units": [first, stop], "rendered": result.rendered, "unchanged": result.unchanged,
            "images": result.images, "instances": result.instances, "seconds": round(result.wall_seconds, 2),
            "pid": os.getpid()}


def combine(spec: SynthSpec, slices: list[dict]) -> dict:
    return {"source": spec.source, "run": spec.run, "slices": len(slices),
            "rendered": sum(s["rendered"] for s in slices), "unchanged": sum(s["unchanged"] for s in slices),
            "images": sum(s["images"] for s in slices), "instances": sum(s["instances"] for s in slices),
            "seconds_rendering": round(sum(s["seconds"] for s in slices), 2),
            "processes": len({s["pid"] for s in slices})}


def render_direct(store: str, spec: SynthSpec) -> dict:
    """All slices one after another in this process, without Prefect (the benchmark's baseline)."""
    return combine(spec, [render_slice(store, asdict(spec), a, b) for a, b in unit_slices(spec)])


def summary_markdown(result: dict) -> str:
    return ("# Synthetic renders\n\n| source | slices | rendered | unchanged | images | people | slice seconds (sum) |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
            f"| {result['source']} | {result['slices']} | {result['rendered']} | {result['unchanged']} | "
            f"{result['images']} | {result['instances']} | {result['seconds_rendering']} |\n")


slice_task = task(render_slice, name="render-slice", task_run_name="images {first}:{stop}", retries=1,
                  cache_policy=NO_CACHE)


@flow(name="synth")
def synth(store: str = "data/store", spec: dict | None = None) -> dict:
    """Render spec.images synthetic images into synth/<run>, one mapped task per slice of the run."""
    from prefect.artifacts import create_markdown_artifact

    synth_spec = SynthSpec.from_mapping(spec)
    slices = unit_slices(synth_spec)
    futures = slice_task.map(unmapped(store), unmapped(asdict(synth_spec)), [a for a, _ in slices],
                             [b for _, b in slices])
    result = combine(synth_spec, [f.result() for f in futures])
    create_markdown_artifact(summary_markdown(result), key=ARTIFACT_KEY, description="posepipe synth")
    return result


def task_runner(dask: bool, address: str | None, workers: int):
    """The runner for the slices: Dask (a scheduler address, or a temporary local cluster) or threads."""
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    if dask:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=workers)


def synth_with_runner(dask: bool = False, address: str | None = None, workers: int = 2):
    """The synth flow bound to the chosen task runner."""
    return synth.with_options(task_runner=task_runner(dask, address, workers))
