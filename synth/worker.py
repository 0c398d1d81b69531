"""Child-process entry point: render a fixed list of seeds and leave one result per seed.

Run as ``python -m posepipe.synth.worker JOB.json``. For each unit it writes ``<index>.img`` and
then ``<index>.json`` into the job's output folder, each atomically, so the parent sees either a
whole result or none, and an empty ``<index>.rendering`` just before Blender renders it, so that
if the process dies the parent knows which unit it died on. The parent process is the only
writer of the store.

The main thread does everything that touches Blender (bpy is not thread-safe): building the
image's scene, the render call, reading the render back, casting visibility rays. One helper
thread does the numpy work on either side of it, while the main thread is in the render call
(which releases the GIL): sampling the next unit's scene, poses and background, and compositing,
encoding, masking and writing the previous unit's results. Every unit's output depends only on its
seed, so the overlap changes no bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from posepipe.datasets import atomic

from . import image
from .core import anny_body, posing
from .core import scene as scene_mod


def _config(job: dict) -> scene_mod.SceneConfig:
    return scene_mod.SceneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})


@dataclass
class Prepared:
    """A unit's scene before Blender sees it: the sampled spec, its background and its people's
    poses (mocap people excepted: Blender reads their clips, on the main thread)."""
    unit: dict
    spec: scene_mod.SceneSpec
    background: np.ndarray  # (H, W, 3) uint8
    world_rgb: tuple[float, float, float] | None
    posed: list[tuple | None]
    seconds: float
    skinned: list | None = None  # Anny bodies (None for mocap people: posed on the main thread)


def prepare(unit: dict, cfg: scene_mod.SceneConfig, anny: "anny_body.AnnyModel | None" = None) -> Prepared:
    """numpy (and Anny's torch shape call) only: safe in the helper thread while the main thread renders."""
    t0 = time.perf_counter()
    spec = scene_mod.sample_scene(unit["seed"], cfg)
    photo = unit.get("background")
    bg = image.background(spec.background, spec.width, spec.height, unit["seed"], photo and photo["path"])
    world_rgb = None
    if photo:
        spec.background.kind = "store"
        world_rgb = image.mean_linear_rgb(bg)  # ambient light takes the photo's colour: the person sits in it
    posed = [None if person.pose.family == "bvh" else posing.pose_person(person, cfg) for person in spec.people]
    skinned = None
    if anny is not None:  # the pose actually kept (after re-draws) is the one skinned
        skinned = [None if ready is None else anny_body.skin_person(anny, person, ready[1])
                   for person, ready in zip(spec.people, posed)]
    return Prepared(unit, spec, bg, world_rgb, posed, time.perf_counter() - t0, skinned)


def annotate(prep: Prepared, result, fmt: str, timing: dict) -> tuple[bytes, dict]:
    """numpy only: the unit's image bytes and its annotation record."""
    t0 = time.perf_counter()
    unit, spec, photo = prep.unit, prep.spec, prep.unit.get("background")
    data = image.encode(image.composite(result.rgba, prep.background), fmt)
    people, hidden = [], []
    for p, person in enumerate(result.people):
        ann = image.mask_annotation(result.index == p + 1)
        if ann is None:
            hidden.append(p)  # nothing of this person reaches the image
            continue
        kp = np.round(person.keypoints, 3)
        people.append({
            "person": p, "keypoints": kp.tolist(), "occlusion": person.occlusion,
            "num_keypoints": int((kp[:, 2] > 0).sum()), **ann,
            "pose": person.pose.to_dict(), "pose_attempts": person.pose_attempts,
            "interpenetration": round(person.interpenetration, 4),
            **({"body": person.body} if person.body else {}),
        })
    spec_dict = spec.to_dict()
    for sp, person in zip(spec_dict["people"], result.people):
        sp["pose"] = person.pose.to_dict()  # the pose actually rendered (after re-draws)
    annotation = {
        "index": unit["index"], "seed": unit["seed"], "width": spec.width, "height": spec.height,
        "format": fmt, "sha256": hashlib.sha256(data).hexdigest(), "engine": result.engine,
        "samples": result.samples, "device": result.device, "people": people, "hidden_people": hidden,
        "camera": result.camera, "scene": spec_dict,
        "background": {k: v for k, v in photo.items() if k != "path"} if photo else None,
        # Timings vary run to run; they live apart so the rest is byte-identical per seed.
        "timing": {k: round(v, 4) for k, v in
                   {**timing, **result.timings, "render_seconds": result.render_seconds,
                    "prepare": prep.seconds, "encode_seconds": time.perf_counter() - t0}.items()},
    }
    return data, annotation


def finish(prep: Prepared, result, timing: dict, *, fmt: str, out: Path) -> None:
    data, annotation = annotate(prep, result, fmt, timing)
    index = prep.unit["index"]
    # Scratch files the parent reads moments later: atomic (never seen half-written), not
    # fsynced (the store's commit is what must survive a crash; 2 fsyncs cost ~2 ms an image).
    atomic.write_bytes(out / f"{index}.img", data, durable=False)
    atomic.write_bytes(out / f"{index}.json", orjson.dumps(annotation), durable=False)


class _Inline:
    """An executor that runs each task at once, on the calling thread: the serial baseline
    (``SynthOptions.pipeline=False``) through the same loop."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - re-raised by future.result(), as a thread's would be
            future.set_exception(e)
        return future


def _fail(out: Path, index: int, exc: BaseException) -> None:
    """Leave ``<index>.failed`` naming the error, so the parent blames this unit and says why."""
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    atomic.write_bytes(out / f"{index}.failed", orjson.dumps({"error": reason}), durable=False)


def _guarded(index: int, notes: Path, fn, /, *args, **kwargs):
    """``fn`` for unit ``index``, its failure noted in ``notes`` as that unit's (it may run on the
    helper thread while another unit renders, so the render marks alone would blame the wrong one)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        _fail(notes, index, exc)
        raise


def run_units(renderer, units: list[dict], job: dict, workdir: Path, setup: dict,
              crash_on: frozenset = frozenset(), hang_on: frozenset = frozenset()) -> None:
    """Render ``units`` in order, pipelined: the helper thread's work for unit k-1 (finish) and
    unit k+1 (prepare) is handed over just as Blender's render call for unit k starts, so it runs
    while the main thread waits in that call rather than competing with it for the GIL while it
    builds the scene.

    A unit whose preparation, render or finishing fails leaves ``<index>.failed`` and the worker
    exits with an error, after writing every unit it had rendered; the parent retries or records
    that unit and relaunches for the rest."""
    out, fmt, cfg = Path(job["out"]), job["format"], _config(job)
    units = [u for u in units if not (out / f"{u['index']}.json").exists()]
    if not units:
        return
    pipelined = job.get("pipeline", True)
    anny = renderer.anny_model()
    with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="posepipe-synth-numpy") if pipelined
          else _Inline()) as helper:
        t_cycle = time.perf_counter()
        next_prep: Future = helper.submit(_guarded, units[0]["index"], out, prepare, units[0], cfg, anny)
        finishing: Future | None = None
        done: tuple | None = None  # the previous unit's (prepared, result, timing), to finish

        def finish_now(prep, result, timing) -> None:  # on the way out after a failure: keep what rendered
            _guarded(prep.unit["index"], out, finish, prep, result, timing, fmt=fmt, out=out)

        for k, unit in enumerate(units):
            index = unit["index"]
            # Marked before its preparation is awaited: if the worker dies or stalls from here on,
            # this is the unit it was on.
            (out / f"{index}.rendering").touch()
            try:
                prep = next_prep.result()
            except Exception:
                if done is not None:
                    finish_now(*done)
                raise

            handed: list[bool] = []

            def hand_over(k=k, done=done, handed=handed):
                nonlocal next_prep, finishing
                if handed:
                    return
                handed.append(True)
                if done is not None:
                    finishing = helper.submit(_guarded, done[0].unit["index"], out, finish, *done, fmt=fmt, out=out)
                if k + 1 < len(units):
                    next_prep = helper.submit(_guarded, units[k + 1]["index"], out, prepare, units[k + 1], cfg, anny)

            # Test hooks. The crash stands for a failure while building the scene, before the
            # previous unit is handed over: its results are lost and the parent must not blame it.
            if index in crash_on:
                os._exit(3)
            if index in hang_on:
                hand_over()
                time.sleep(3600)
            try:
                result = renderer.render(prep.spec, cfg, workdir, world_rgb=prep.world_rgb, posed=prep.posed,
                                         on_render=hand_over, skinned=prep.skinned)
            except Exception as exc:
                _fail(out, index, exc)
                if not handed and done is not None:  # it failed building the scene: keep the previous unit
                    finish_now(*done)
                raise
            hand_over()  # a no-op: the renderer calls it just before its render call
            now = time.perf_counter()
            # unit_seconds: this unit's share of the main thread's wall time (the first one's
            # includes its own preparation, which nothing ran beside).
            timing = {"unit_seconds": now - t_cycle, **setup}
            setup, t_cycle = {}, now  # the worker's one-off setup rides on its first image only
            if finishing is not None:
                try:
                    finishing.result()  # the previous unit is written (and its errors raised here)
                except Exception:
                    finish_now(prep, result, timing)
                    raise
            done = (prep, result, timing)
        finish_now(*done)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    # Test hooks: indices whose worker dies, or hangs, instead of rendering them.
    crash_on, hang_on = frozenset(job.get("crash_on", [])), frozenset(job.get("hang_on", []))
    from .renderer.blender import BlenderRenderer

    renderer = BlenderRenderer(job["engine"], job["samples"], job.get("device", "auto"), job.get("threads", 0),
                               clips=job.get("bvh"), rig=job.get("rig"))
    t_stage = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="posepipe-synth-") as tmp:
        # One-off work that used to fall into the first image's timing: done and timed up front and
        # reported apart from the images (and within the whole setup, which adds Blender's import).
        import pycocotools.mask  # noqa: F401

        renderer.stage(_config(job), Path(tmp))
        t_ready = time.perf_counter()
        import resource

        # ru_maxrss is in KiB on Linux: the worker's peak memory once staged (Blender, and Anny's model)
        setup = {"worker_setup_seconds": t_ready - t0, "stage_seconds": t_ready - t_stage,
                 "worker_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        run_units(renderer, job["units"], job, Path(tmp), setup, crash_on, hang_on)
    sys.stdout.flush()
    sys.stderr.flush()
    # Leaving through Blender's own exit can hang after an add-on error; everything is written.
    os._exit(0)


if __name__ == "__main__":
    main()
