"""A synthetic run: W worker processes render fixed slices of seeds; the parent writes the store.

Each image of a run is one render unit (``file_key`` ``synth:<source>/<unit seed>``) whose
``file_sha256`` is a hash of everything that determines it (run seed, index, scene config, engine,
samples, resolution, format). Units already in the store with the same hash are not rendered
again, so re-running a command adds nothing and an interrupted run resumes.

A worker that crashes or stops reporting for ``timeout`` seconds is killed; its current unit is
retried up to ``retries`` times and then recorded as failed: a ``rejects`` row (reason
``render_failed``, record_id the unit seed, file ``synth:<source>/<seed>``) and a batch row counting
it as one image read and rejected; the other units and workers carry on. Workers write whole files atomically,
so a dead worker never leaves a partial result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
import pyarrow as pa

from posepipe.datasets import atomic, records, schema
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.store import PoseStore, validate_source_name

from .core import anny_body, phenotype
from .core.scene import BODIES, SceneConfig, unit_seed
from .core.user_rig import load_joint_map


# Part of every unit's parameters (so of its hash): bump it when the same unit would render to
# other bytes, so that a resumed or re-run source does not mix images of two generator versions.
# 2: PNG written by synth/image.py, float32 background noise (2026-11).
# 3: Anny bodies by default (SceneConfig.body), phenotype and outfit streams, records carry the body (2026-12).
GENERATOR_VERSION = 3


@dataclass
class SynthOptions:
    count: int
    seed: int
    width: int = 256
    height: int = 256
    engine: str = "cycles"
    samples: int = 16
    workers: int = 1
    source: str | None = None
    format: str = "png"
    device: str = "auto"
    threads: int = 0  # Blender render threads per worker; 0 = min(cores, 2 * cores // workers)
    timeout: float = 120.0  # seconds a worker may go without finishing a unit
    retries: int = 1
    config: SceneConfig = field(default_factory=SceneConfig)
    backgrounds: tuple[str, ...] = ()  # store sources whose images are composited behind (else procedural)
    bvh: tuple[str, ...] = ()  # BVH mocap files: a second pose source (config.bvh_share of the people)
    rig: str | None = None  # joint-map file of a user's own rigged human (docs/user_rig.md); else the mannequin
    # Numpy work (scene sampling, posing, compositing, encoding) in a helper thread beside each
    # render call; False does it all between render calls: the baseline bench/synth.py compares.
    pipeline: bool = True
    # Score the source with a real-trained pretrained model next to the store's real sources
    # (synth/realism.py) and put it in the report; it pulls the model on first use.
    realism: bool = False
    # (first, stop): render only images first..stop-1 of the run (same seeds, same bytes as in a
    # whole run), e.g. one slice of a run fanned out over tasks or machines; None: all of them.
    units: tuple[int, int] | None = None
    # Test hooks: unit indices whose worker dies (or hangs) on its first launch instead of rendering.
    crash_on: tuple[int, ...] = ()
    hang_on: tuple[int, ...] = ()

    def source_name(self) -> str:
        return self.source or f"synth/s{self.seed}-n{self.count}"

    def indices(self) -> range:
        """The images of the run this call renders."""
        return range(*self.units) if self.units is not None else range(self.count)


@dataclass
class SynthResult:
    source: str
    rendered: int = 0
    unchanged: int = 0
    removed: int = 0  # images of another run under the same source, taken out of it
    failed: dict[int, str] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    images: int = 0
    instances: int = 0
    wall_seconds: float = 0.0
    render_seconds: float = 0.0
    unit_seconds: float = 0.0
    phase_seconds: dict = field(default_factory=dict)  # worker time per phase (build, render, encode...)
    report: dict | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failed"] = {str(k): v for k, v in self.failed.items()}
        d["attempts"] = {str(k): v for k, v in self.attempts.items()}
        return d


def _validate(opts: SynthOptions) -> None:
    if opts.count < 1:
        raise PosepipeError(f"--count must be at least 1, got {opts.count}")
    if opts.units is not None and not (0 <= opts.units[0] < opts.units[1] <= opts.count):
        raise PosepipeError(f"--units {opts.units[0]}:{opts.units[1]} is not a non-empty range within "
                            f"0:{opts.count} (the run's --count)")
    if opts.workers < 1:
        raise PosepipeError(f"--workers must be at least 1, got {opts.workers}")
    if opts.engine not in ("cycles", "workbench"):
        raise PosepipeError(f"--engine must be cycles or workbench, got {opts.engine!r}")
    if opts.format not in ("png", "jpeg"):
        raise PosepipeError(f"--format must be png or jpeg, got {opts.format!r}")
    if opts.samples < 1:
        raise PosepipeError(f"--samples must be at least 1, got {opts.samples}")
    if not (8 <= opts.width <= 8192 and 8 <= opts.height <= 8192):
        raise PosepipeError(f"--resolution {opts.width}x{opts.height} is outside 8..8192")
    if opts.config.body not in BODIES:
        raise PosepipeError(f"--body must be one of {', '.join(BODIES)}, got {opts.config.body!r}")
    if opts.rig is not None:
        load_joint_map(opts.rig)  # a bad map or model path fails here, with its file and field named
    elif opts.config.body == "anny":
        phenotype.check_age_range(opts.config.age_range)
        problem = anny_body.install_problem()
        if problem:
            raise PosepipeError(f"--body anny: {problem}; or use --body mannequin")
    validate_source_name(opts.source_name())
    if not opts.source_name().startswith("synth/"):
        raise PosepipeError(f"--source {opts.source_name()!r} must start with 'synth/'")


def render_threads(opts: SynthOptions) -> int:
    """Blender threads per worker: as asked, else twice an equal share of the cores this process
    may use (at most all of them), so that W workers start about two threads per core in all.

    An equal share leaves cores idle whenever a worker is between render calls (building the next
    scene, reading back, casting rays); with two workers on two cores that made two workers 0.86x
    as fast as one, while two workers with two threads each were 1.06-1.09x (bench/synth.py)."""
    if opts.threads:
        return opts.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(opts.workers, len(opts.indices())))
    return max(1, min(cores, 2 * cores // workers))


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PosepipeError(f"--resolution {text!r} is not WIDTHxHEIGHT, e.g. 256x256") from None
    return w, h


def parse_units(text: str) -> tuple[int, int]:
    """``FIRST:STOP`` (image indices of the run, STOP excluded) as a pair."""
    try:
        first, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise PosepipeError(f"--units {text!r} is not FIRST:STOP, e.g. 0:100") from None
    return first, stop


def _unit_params(opts: SynthOptions, index: int, pool: list[dict], rig: dict | None = None) -> dict:
    cfg = dataclasses.asdict(opts.config)
    cfg.update(width=opts.width, height=opts.height)
    seed = unit_seed(opts.seed, index)
    params = {"run_seed": opts.seed, "index": index, "seed": seed, "config": cfg,
              "engine": opts.engine, "samples": opts.samples, "format": opts.format, "generator": GENERATOR_VERSION}
    if pool:
        params["background"] = pick_background(pool, seed)
    if rig is not None:
        params["rig"] = rig
    return params


def rig_fingerprint(map_path: str) -> dict:
    """What a user rig contributes to a unit's parameters: an edited map or model renders anew."""
    joint_map = load_joint_map(map_path)
    digest = hashlib.sha256(Path(map_path).read_bytes())
    digest.update(joint_map.model.read_bytes())
    return {"map": Path(map_path).name, "model": joint_map.model.name, "sha256": digest.hexdigest()}


def read_clips(paths: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """Clip name (file stem + content hash, so an edited file renders anew) -> (path, frames).

    Every file is checked here, before any Blender starts: it must be a BVH file whose joint
    names cover the retarget's required joints (see ``synth/core/retarget.py``)."""
    from .core import bvh, retarget

    out: dict[str, tuple[str, int]] = {}
    for path in paths:
        p = Path(path)
        try:
            joints, frames = bvh.read_header(p)
            retarget.resolve(joints)
            digest = schema.short_hash(p.read_bytes(), length=12)
        except ValueError as e:
            raise PosepipeError(f"--bvh {path}: {e}") from None
        out[f"{p.stem}-{digest}"] = (str(p.resolve()), frames)
    return out


def background_pool(store: PoseStore, sources: tuple[str, ...]) -> list[dict]:
    """The store images that may go behind people: every image of ``sources``, in sha256 order (so the
    pick does not depend on ingest order); an image held by two sources appears once."""
    if not sources:
        return []
    known = set(store.sources())
    for src in sources:
        if src not in known:
            raise PosepipeError(f"--backgrounds {src!r}: no such source in the store {store.root}; "
                                f"known: {', '.join(sorted(known)) or 'none'}")
        if src.startswith("synth/"):
            raise PosepipeError(f"--backgrounds {src!r}: backgrounds must be real images, not a synth/ source")
    cols = ["source", "image_id", "sha256", "format", "shard", "offset", "num_bytes"]
    rows = store.images(list(sources)).select(cols).to_pylist()
    pool = list({r["sha256"]: r for r in sorted(rows, key=lambda r: (r["sha256"], r["source"]))}.values())
    if not pool:
        raise PosepipeError(f"--backgrounds {', '.join(sources)}: these sources hold no images")
    return pool


def pick_background(pool: list[dict], seed: int) -> dict:
    """The background of the unit with ``seed``: its own random stream, apart from the scene's."""
    row = pool[int(np.random.default_rng([seed, 0xB6]).integers(len(pool)))]
    return {"source": row["source"], "image_id": row["image_id"], "sha256": row["sha256"]}


def _public(params: dict) -> dict:
    """A unit's parameters without this run's scratch entries (``_``-prefixed, e.g. temp paths)."""
    return {k: v for k, v in params.items() if not k.startswith("_")}


def _params_hash(params: dict) -> str:
    return schema.short_hash(orjson.dumps(_public(params), option=orjson.OPT_SORT_KEYS), length=64)


def file_key(source: str, seed: int) -> str:
    return f"synth:{source}/{seed}"


def synth_run(store: PoseStore, opts: SynthOptions, progress: Progress | None = None,
              report_dir: str | os.PathLike | None = None) -> SynthResult:
    """Render the run's images (``opts.count``, or the ``opts.units`` slice of them) into source
    ``synth/...`` of ``store``; write the run's report."""
    _validate(opts)
    t0 = time.perf_counter()
    source = opts.source_name()
    result = SynthResult(source)
    pool = background_pool(store, tuple(opts.backgrounds))
    clips = read_clips(opts.bvh)
    if clips:
        opts = dataclasses.replace(opts, config=dataclasses.replace(
            opts.config, bvh_clips=tuple((name, frames) for name, (_path, frames) in clips.items())))
    rig = None if opts.rig is None else rig_fingerprint(opts.rig)  # the model is hashed once a run
    params = [_unit_params(opts, i, pool, rig) for i in opts.indices()]
    done = _already_done(store, source, params)
    todo = [p for p in params if p["index"] not in done]
    result.unchanged = len(params) - len(todo)
    with tempfile.TemporaryDirectory(prefix="posepipe-synth-run-") as tmp:
        out = Path(tmp)
        _stage_backgrounds(store, pool, todo, out)
        track = (progress or NoProgress()).track
        staged: dict[int, _Staged] = {}
        by_index = {p["index"]: p for p in todo}
        for index in track(_render(todo, opts, out, result), len(todo), f"rendering {len(todo)} images"):
            # Rows are built as each image lands, while the workers render on: only the store's
            # transaction (its lock, shard appends and commit) waits for the end.
            staged[index] = _stage_unit(source, opts, by_index[index], out, result)
        _write_store(store, source, opts, todo, staged, result)
    result.wall_seconds = time.perf_counter() - t0
    from .report import build_report, write_report

    realism = None
    if opts.realism:
        from .realism import realism as score_realism

        realism = score_realism(store, source)
    result.report = build_report(store, source, result, realism=realism)
    if report_dir is not None:
        write_report(result.report, Path(report_dir))
    return result


def _stage_backgrounds(store: PoseStore, pool: list[dict], todo: list[dict], out: Path) -> None:
    """Copy each background photo the units need out of the store once, for the workers to read."""
    rows = {r["sha256"]: r for r in pool}
    folder = out / "backgrounds"
    for p in todo:
        bg = p.get("background")
        if not bg:
            continue
        path = folder / f"{bg['sha256']}.img"
        if not path.exists():
            row = rows[bg["sha256"]]
            atomic.write_bytes(path, store.read_image(row["shard"], row["offset"], row["num_bytes"]))
        p["_background_path"] = str(path)


def _already_done(store: PoseStore, source: str, params: list[dict]) -> set[int]:
    if source not in store.sources():
        return set()
    batches = store.batches([source]).select(["source_file", "file_sha256"]).to_pydict()
    have = dict(zip(batches["source_file"], batches["file_sha256"]))
    return {p["index"] for p in params if have.get(file_key(source, p["seed"])) == _params_hash(p)}


def contiguous_ranges(count: int, n: int) -> list[tuple[int, int]]:
    """(first, stop) of n contiguous, near-equal parts of range(count), empty ones dropped."""
    size, extra = divmod(count, max(1, n))
    out, start = [], 0
    for k in range(max(1, n)):
        end = start + size + (1 if k < extra else 0)
        if end > start:
            out.append((start, end))
        start = end
    return out


def _slices(items: list, n: int) -> list[list]:
    """n contiguous, near-equal slices (empty ones dropped): worker w always gets the same seeds."""
    return [items[a:b] for a, b in contiguous_ranges(len(items), n)]


@dataclass
class _Slot:
    pending: list[dict]
    job_dir: Path
    proc: subprocess.Popen | None = None
    last_progress: float = 0.0
    launches: int = 0


def _culprit(slot: _Slot) -> tuple[int, str | None]:
    """Position in ``slot.pending`` of the unit a dead or stalled worker failed on, and the error it
    left: the first unit with a ``.failed`` note (its preparation, render or finishing raised),
    else the last one it marked as started. Units before it whose results are missing were still
    being written by the worker's helper thread; they are rendered again, without counting an
    attempt against them."""
    for n, p in enumerate(slot.pending):
        note = slot.job_dir / f"{p['index']}.failed"
        if note.exists():
            try:
                return n, str(json.loads(note.read_bytes())["error"])
            except (OSError, ValueError, KeyError, TypeError):
                return n, None
    started = [n for n, p in enumerate(slot.pending) if (slot.job_dir / f"{p['index']}.rendering").exists()]
    return (started[-1] if started else 0), None


def _launch(slot: _Slot, opts: SynthOptions) -> None:
    slot.launches += 1
    for marker in [*slot.job_dir.glob("*.rendering"), *slot.job_dir.glob("*.failed")]:  # this launch's count
        marker.unlink()
    job = {
        "out": str(slot.job_dir), "engine": opts.engine, "samples": opts.samples, "format": opts.format,
        "device": opts.device, "threads": render_threads(opts), "pipeline": opts.pipeline,
        "config": slot.pending[0]["config"],
        "units": [{"index": p["index"], "seed": p["seed"],
                   **({"background": {**p["background"], "path": p["_background_path"]}}
                      if p.get("background") else {})} for p in slot.pending],
        "bvh": {name: path for name, (path, _f) in read_clips(opts.bvh).items()},
        "rig": None if opts.rig is None else str(Path(opts.rig).resolve()),
        "crash_on": list(opts.crash_on) if slot.launches == 1 else [],
        "hang_on": list(opts.hang_on) if slot.launches == 1 else [],
    }
    job_file = slot.job_dir / f"job{slot.launches}.json"
    job_file.write_text(json.dumps(job))
    log = open(slot.job_dir / f"worker{slot.launches}.log", "wb")
    # numpy's BLAS threads would only compete with Blender's render threads for the same cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    slot.proc = subprocess.Popen([sys.executable, "-m", "posepipe.synth.worker", str(job_file)],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    log.close()
    slot.last_progress = time.monotonic()


def _render(todo: list[dict], opts: SynthOptions, out: Path, result: SynthResult) -> Iterator[int]:
    """Yield each unit index as its result lands (or as it is given up on)."""
    slots = []
    for w, part in enumerate(_slices(todo, min(opts.workers, max(1, len(todo))))):
        job_dir = out / f"w{w}"
        job_dir.mkdir()
        slots.append(_Slot(part, job_dir))
    for slot in slots:
        _launch(slot, opts)
    try:
        while any(slot.pending for slot in slots):
            for slot in slots:
                while slot.pending and (slot.job_dir / f"{slot.pending[0]['index']}.json").exists():
                    index = slot.pending.pop(0)["index"]
                    slot.last_progress = time.monotonic()
                    result.attempts[index] = result.attempts.get(index, 0) + 1
                    yield index
                if not slot.pending:
                    continue
                code = slot.proc.poll()
                stalled = time.monotonic() - slot.last_progress > opts.timeout
                if code is None and not stalled:
                    continue
                if code is None:
                    slot.proc.kill()
                    slot.proc.wait()
                    reason = f"timed out after {opts.timeout:g} s"
                else:
                    if (slot.job_dir / f"{slot.pending[0]['index']}.json").exists():
                        continue  # it finished the unit just before exiting: collect it next round
                    reason = f"worker exited with code {code}"
                at, error = _culprit(slot)
                if error:
                    reason = f"{error} ({reason})"
                index = slot.pending[at]["index"]
                result.attempts[index] = result.attempts.get(index, 0) + 1
                if result.attempts[index] > opts.retries:
                    result.failed[index] = f"{reason} (after {result.attempts[index]} attempts)"
                    slot.pending.pop(at)
                    yield index
                if slot.pending:
                    _launch(slot, opts)
            time.sleep(0.02)
    finally:
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()


@dataclass
class _Staged:
    """One unit's store rows, built as it lands; its image bytes stay in the worker's file."""
    key: str
    tables: dict[str, pa.Table]
    image: Path | None = None
    sha256: str = ""


def _write_store(store: PoseStore, source: str, opts: SynthOptions, todo: list[dict],
                 staged: dict[int, _Staged], result: SynthResult) -> None:
    if not todo and source not in store.sources():
        return
    with store.transaction(source) as tx:
        # A source holds one run: images no index of this run (seed, count) gives, from an earlier
        # --count or --seed under the same --source, leave it (their bytes stay until `posepipe gc`).
        held = tx.known_files()  # only synth_run writes synth/ sources: every file is a unit key
        if held:
            run = {file_key(source, unit_seed(opts.seed, i)) for i in range(opts.count)}
            for stale in (f for f in held if f not in run):
                tx.remove_file(stale)
                result.removed += 1
        for p in todo:  # in unit order, whatever order they landed in: same shard bytes every run
            unit = staged[p["index"]]
            if unit.image is not None:
                tx.put_image(unit.image.read_bytes(), unit.sha256, opts.format)
            tx.replace_file(unit.key, unit.tables)


def _stage_unit(source: str, opts: SynthOptions, p: dict, out: Path, result: SynthResult) -> _Staged:
    ext = "jpg" if opts.format == "jpeg" else "png"
    stem = source.replace("/", "_")
    index, seed = p["index"], p["seed"]
    key = file_key(source, seed)
    digest = _params_hash(p)
    batch_id = schema.short_hash(source, key, digest, length=12)
    if index in result.failed:
        # Read and rejected: the unit counts as one image read, and `posepipe rejects` lists why.
        rejects = records.Rejects(source, key, batch_id)
        rejects.add("image", seed, index, None, "render_failed",
                    f"{key}: image {index} (seed {seed}) was not rendered: {result.failed[index]}",
                    _public(p))
        return _Staged(key, {"rejects": rejects.table(), "batches": _batch(
            source, key, digest, batch_id, 0, 0, {**p, "failed": result.failed[index]}, rejected=1)})
    w_dir = next(out.glob(f"w*/{index}.json")).parent
    image_path = w_dir / f"{index}.img"
    num_bytes = image_path.stat().st_size
    ann = orjson.loads((w_dir / f"{index}.json").read_bytes())
    sha = ann["sha256"]
    image_id = schema.image_id_from_sha256(sha)
    timing = ann["timing"]
    result.rendered += 1
    result.render_seconds += timing["render_seconds"]
    result.unit_seconds += timing["unit_seconds"]
    for phase, secs in timing.items():
        result.phase_seconds[phase] = result.phase_seconds.get(phase, 0.0) + secs
    provenance = {"generator": "posepipe-synth", "generator_version": GENERATOR_VERSION, "run_seed": opts.seed,
                  "index": index, "seed": seed, "engine": ann["engine"], "samples": ann["samples"], "device": ann["device"],
                  "render_seconds": timing["render_seconds"], "camera": ann["camera"],
                  "background": ann["background"] or "procedural"}
    image_row = {
        "image_id": image_id, "source": source, "source_image_id": index,
        "file_name": f"{stem}_{index:06d}.{ext}", "width": ann["width"], "height": ann["height"],
        "sha256": sha, "format": opts.format, "num_bytes": num_bytes, "license": None,
        "provenance": records.to_json(provenance), "split": None, "source_file": key,
        "record_index": 0, "batch_id": batch_id,
    }
    people = ann["people"]
    scene_people = ann["scene"]["people"]
    cols = {
        "instance_id": [schema.instance_id(source, f"{seed}:{pp['person']}") for pp in people],
        "image_id": [image_id] * len(people), "source": [source] * len(people),
        "area": [pp["area"] for pp in people], "iscrowd": [False] * len(people),
        "num_keypoints": [pp["num_keypoints"] for pp in people], "skeleton": ["coco17"] * len(people),
        "source_annotation_id": [index * 10 + pp["person"] for pp in people],
        "segmentation": [records.to_json(pp["segmentation"]) for pp in people],
        "notes": [["bbox_from_mask", "area_from_mask"] for _ in people],
        "attributes": [records.to_json(_attributes(pp, scene_people[pp["person"]], ann, opts))
                       for pp in people],
        "source_file": [key] * len(people), "record_index": [pp["person"] for pp in people],
        "annotator": ["posepipe-synth"] * len(people), "batch_id": [batch_id] * len(people),
    }
    kp = np.array([pp["keypoints"] for pp in people], dtype=np.float32).reshape(-1, 17, 3)
    boxes = np.array([pp["bbox"] for pp in people], dtype=np.float64).reshape(-1, 4)
    result.images += 1
    result.instances += len(people)
    return _Staged(key, {
        "images": records.images_table([image_row]),
        "instances": records.instances_table(cols, kp, boxes),
        "rejects": schema.empty_table("rejects"),
        "batches": _batch(source, key, digest, batch_id, 1, len(people),
                          {**p, "hidden_people": ann["hidden_people"], "attempts": result.attempts.get(index)}),
    }, image_path, sha)


def _attributes(person: dict, scene_person: dict, ann: dict, opts: SynthOptions) -> dict:
    return {
        "synthetic": True, "run_seed": opts.seed, "seed": ann["seed"], "person": person["person"],
        "pose_family": person["pose"]["family"], "pose": person["pose"], "occlusion": person["occlusion"],
        "pose_attempts": person["pose_attempts"], "interpenetration": person["interpenetration"],
        "body": {**{k: scene_person[k] for k in ("height_scale", "limb_thickness", "torso_width", "location")},
                 **({"phenotype": scene_person["phenotype"], "outfit": scene_person["outfit"]}
                    if scene_person.get("phenotype") else {}),
                 **person.get("body", {"kind": "mannequin"})},
        "engine": ann["engine"], "samples": ann["samples"], "render_seconds": ann["timing"]["render_seconds"],
    }


def _batch(source: str, key: str, digest: str, batch_id: str, images: int, people: int, params: dict,
           rejected: int = 0) -> pa.Table:
    # A failed unit's hash never matches, so the next run with the same options retries it.
    row = {"batch_id": batch_id, "source": source, "source_file": key,
           "file_sha256": "failed:" + digest if rejected else digest,
           "format": "synth", "images_read": images + rejected, "images_accepted": images, "images_rejected": rejected,
           "annotations_read": people, "annotations_accepted": people, "annotations_rejected": 0,
           "files_rejected": 0, "params": records.to_json(_public(params))}
    return pa.Table.from_pylist([row], schema=schema.BATCHES_SCHEMA)
