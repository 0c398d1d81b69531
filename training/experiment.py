"""The data-value experiment: does synthetic data make a better pose model on real people?

Every arm trains on the same real train rows (one manifest from ``posepipe mix``), for the same
number of optimizer steps, with the same seeds, and is scored on the same held-out real sets:

===================  ===========================================================================
``real-only``        the real rows alone (ratio 0:1), visibility-aware weights: the baseline
``mix-visibility``   synthetic : real at the ratio (1:3), visibility-aware weights on both kinds
``mix-uniform``      the same mix, every instance weighing 1
``synth-then-real``  synthetic rows only (ratio 1:0) for ``pretrain_share`` of the steps, then
                     the real rows only for the rest, from that checkpoint
===================  ===========================================================================

Each arm runs from each start (a pretrained model, ``--init``, or ``scratch:MODEL``) and each
seed; the seed sets the sampler, the augmentation and the initial head, so arm A's seed 1 and
arm B's seed 1 differ only in their data. The learning rate drops by step (``--schedule steps``),
so arms whose epochs differ in length still follow one schedule.

This module is plain Python: it plans the runs, writes each arm's manifest, runs one run through
a ``launch`` hook (torchrun by default; the Prefect flow passes its own, which streams and
cancels), and scores checkpoints. ``experiment_stats`` turns the predictions into the tables.

Layout of the output folder::

    experiment.json             the settings and fingerprints of what is compared
    sets/<set>/val_gt.json      each held-out set's COCO ground truth, and people.json (subsets)
    arms/<arm>/                 the manifest each arm trains on (arms/synth-only: the pre-training)
    runs/<start>/<arm>/seed<k>/ train/ (torchrun's output), eval/<set>/predictions.json, run.json
    runs/<start>/start/         the start itself scored untrained (pretrained starts only)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from posepipe.datasets import atomic, schema
from posepipe.datasets import weights as weighting
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress

BASELINE = "real-only"
START_RUN = "start"  # the folder of a pretrained start scored as it is
SUBSETS = ("all", "extreme", "occluded")
MANIFEST_VAL = "manifest-val"  # the base manifest's own real val rows, when it has any


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    synthetic: bool  # trains on synthetic rows
    weights: str  # weight scheme of its rows
    pretrain: bool = False  # synthetic only first, then real only


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("real-only", "real rows only (ratio 0:1), visibility-aware weights", False, "visibility"),
    Arm("mix-visibility", "synthetic:real at the ratio, visibility-aware weights", True, "visibility"),
    Arm("mix-uniform", "synthetic:real at the ratio, every instance weighs 1", True, "uniform"),
    Arm("synth-then-real", "synthetic only for pretrain_share of the steps, then real only", True, "visibility",
        pretrain=True),
)}


@dataclass(frozen=True)
class Start:
    """Where every arm's weights begin: a pretrained model (``init``) or a model from scratch."""

    label: str  # folder name and table label
    init: str | None = None  # a model name, pulled model folder or checkpoint.pt
    model: str | None = None  # from scratch: tiny, base, tiny-up, base-up

    @classmethod
    def parse(cls, text: str) -> "Start":
        text = str(text).strip()
        if text.startswith("scratch:") or text == "scratch":
            model = text.partition(":")[2] or "tiny-up"
            return cls(f"scratch-{model}", model=model)
        if not text:
            raise PosepipeError("starts: an empty start (give a model name, folder, checkpoint.pt or scratch:MODEL)")
        path = Path(text)
        name = (f"{path.parent.name}-{path.stem}" if text.endswith(".pt") else path.name) if "/" in text else text
        label = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
        return cls(label, init=text)


@dataclass
class ExperimentSpec:
    """One experiment (params.yaml ``experiment:``; the CLI's flags override; unknown keys are refused)."""

    manifest: str = "data/mix"  # the base manifest (posepipe mix): real train rows and synthetic rows
    out: str = "metrics/experiment"
    store: str | None = None  # default: the manifest's
    held_out: list[str] = field(default_factory=list)  # store sources scored on (besides the manifest's real val rows)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 200  # the budget of every arm, in optimizer steps
    starts: list[str] = field(default_factory=lambda: ["movenet-lightning"])
    ratio: str = "1:3"  # synthetic:real of the mix arms
    pretrain_share: float = 0.5  # synth-then-real: share of the steps on synthetic rows
    batch_size: int = 8  # per process
    lr: float = 2e-5  # from a pretrained start
    scratch_lr: float = 2e-3  # from scratch
    nproc: int = 2  # torchrun processes per run
    parallel: int = 1  # runs at once on this machine (CPU); with devices, one run per nproc devices
    devices: list[str] = field(default_factory=list)  # GPU ids shared out between runs, nproc each
    augment: str = "light"
    workers: int = 0  # data-loader processes per rank
    flip_test: bool = False
    occluded_share: float = 0.3  # "heavily occluded": at least this share of a person's labelled joints v=1
    bootstrap: int = 1000  # resamples for the 95% intervals (0: none)
    bootstrap_seed: int = 0
    extra_args: list[str] = field(default_factory=list)  # more flags for posepipe.training.train

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = "experiment") -> "ExperimentSpec":
        values = {k: v for k, v in dict(values or {}).items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PosepipeError(f"{where}: {unknown[0]!r} is not a setting (known: {', '.join(sorted(known))})")
        for key in ("held_out", "arms", "seeds", "starts", "devices", "extra_args"):
            if key in values and isinstance(values[key], (str, int)):
                values[key] = [v for v in str(values[key]).replace(",", " ").split() if v]
        try:
            spec = cls(**values)
            spec.seeds = [int(s) for s in spec.seeds]
            spec.devices = [str(d) for d in spec.devices]
        except (TypeError, ValueError) as exc:
            raise PosepipeError(f"{where}: {exc}") from None
        spec.check(where)
        return spec

    def check(self, where: str = "experiment") -> None:
        """Settings that make no experiment, refused before anything runs."""
        from posepipe.datasets.mix_plan import parse_ratio

        if self.steps < 1:
            raise PosepipeError(f"{where}: steps must be at least 1 (the budget of every arm), got {self.steps}")
        if not self.seeds:
            raise PosepipeError(f"{where}: seeds is empty (give at least one; 3 or more for intervals over seeds)")
        if len(set(self.seeds)) != len(self.seeds):
            raise PosepipeError(f"{where}: seeds repeat: {self.seeds}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise PosepipeError(f"{where}: unknown arm {unknown[0]!r} (arms: {', '.join(ARMS)})")
        if BASELINE not in self.arms:
            raise PosepipeError(f"{where}: arms must include {BASELINE} (every other arm is compared with it)")
        if len(set(self.arms)) != len(self.arms):
            raise PosepipeError(f"{where}: arms repeat: {self.arms}")
        if not self.starts:
            raise PosepipeError(f"{where}: starts is empty (a model name such as movenet-lightning, or scratch:tiny-up)")
        labels = [Start.parse(s).label for s in self.starts]
        if len(set(labels)) != len(labels):
            raise PosepipeError(f"{where}: starts name the same start twice: {self.starts}")
        ratio = parse_ratio(self.ratio)
        if any(ARMS[a].synthetic and not ARMS[a].pretrain for a in self.arms) and (ratio[0] == 0 or ratio[1] == 0):
            raise PosepipeError(f"{where}: ratio {self.ratio} is not a mix (the mix arms need synthetic and real, e.g. 1:3)")
        if self.batch_size < 1 or self.batch_size % sum(ratio):
            raise PosepipeError(f"{where}: batch_size {self.batch_size} is not a multiple of the ratio's block {sum(ratio)}")
        if not 0 < self.pretrain_share < 1:
            raise PosepipeError(f"{where}: pretrain_share must be between 0 and 1, got {self.pretrain_share}")
        if "synth-then-real" in self.arms and min(round(self.steps * self.pretrain_share),
                                                  self.steps - round(self.steps * self.pretrain_share)) < 1:
            raise PosepipeError(f"{where}: steps {self.steps} leave synth-then-real a stage without steps")
        if self.nproc < 1 or self.parallel < 1:
            raise PosepipeError(f"{where}: nproc and parallel must be at least 1")
        if self.devices and len(self.devices) < self.nproc:
            raise PosepipeError(f"{where}: {len(self.devices)} device(s) for runs of nproc {self.nproc}")
        if not 0 < self.occluded_share <= 1:
            raise PosepipeError(f"{where}: occluded_share must be in (0, 1], got {self.occluded_share}")
        if self.bootstrap < 0:
            raise PosepipeError(f"{where}: bootstrap must be >= 0, got {self.bootstrap}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def folder(self) -> Path:
        return Path(self.out)


@dataclass(frozen=True)
class RunSpec:
    """One training run: a start, an arm and a seed (the message a lane hands to ``run_one``)."""

    start: str  # as given in ExperimentSpec.starts
    arm: str
    seed: int

    def folder(self, out: Path) -> Path:
        return out / "runs" / Start.parse(self.start).label / self.arm / f"seed{self.seed}"


@dataclass(frozen=True)
class Lane:
    """Runs done one after another on the same devices (or the same share of the CPU)."""

    runs: tuple[RunSpec, ...]
    devices: tuple[str, ...] = ()
    threads: int | None = None


def plan(spec: ExperimentSpec) -> list[RunSpec]:
    """Every run, baseline first (so a partial experiment can already be compared)."""
    arms = [BASELINE] + [a for a in spec.arms if a != BASELINE]
    return [RunSpec(s, a, seed) for seed in spec.seeds for s in spec.starts for a in arms]


def lanes(spec: ExperimentSpec, runs: list[RunSpec] | None = None) -> list[Lane]:
    """Runs shared out round-robin: one lane per ``nproc`` devices, or ``parallel`` lanes on CPU."""
    runs = plan(spec) if runs is None else runs
    if spec.devices:
        groups = [tuple(spec.devices[i:i + spec.nproc]) for i in range(0, len(spec.devices) - spec.nproc + 1, spec.nproc)]
        return [Lane(tuple(runs[k::len(groups)]), g) for k, g in enumerate(groups) if runs[k::len(groups)]]
    count = max(1, min(spec.parallel, len(runs)))
    from .launch import threads_per_process

    threads = threads_per_process(spec.nproc * count)
    return [Lane(tuple(runs[k::count]), (), threads) for k in range(count) if runs[k::count]]


# ----- preparing: checks, arm manifests, held-out sets -------------------------------------

@dataclass
class HeldOutSet:
    name: str
    sources: list[str] | None  # store sources, or None for the manifest's val rows
    instance_ids: list[str] | None = None


def prepare(spec: ExperimentSpec, progress: Progress | None = None, replace: bool = False) -> dict:
    """Check everything, write experiment.json, the arms' manifests and the held-out sets.

    Raises ``PosepipeError`` (one line) for anything that makes arms incomparable, before any
    training starts; that includes an output folder holding runs over other data or settings,
    unless ``replace`` (then those runs are deleted). Returns experiment.json's content."""
    from posepipe.datasets.store import PoseStore
    from posepipe.training.data import load_manifest

    spec.check()
    progress = progress or NoProgress()
    manifest = load_manifest(spec.manifest, spec.store)
    store = PoseStore(manifest.store_root)
    rows = manifest.rows
    train = rows[rows["split"] == "train"]
    real_train = train[train["source_kind"] == "real"]
    synth_train = train[train["source_kind"] == "synthetic"]
    where = f"{manifest.folder}/manifest.parquet"
    if real_train.empty:
        raise PosepipeError(f"{where}: no real train rows (every arm trains on them)")
    needing = [a for a in spec.arms if ARMS[a].synthetic]
    if needing and synth_train.empty:
        raise PosepipeError(f"{where}: no synthetic train rows, which arm {needing[0]} needs "
                            "(build the manifest with `posepipe mix --synth SOURCE`, or drop the arm)")
    sets = _held_out_sets(spec, store, rows, train, where)
    for start in spec.starts:
        s = Start.parse(start)
        if s.init:
            from .launch import prepare_init

            prepare_init(s.init)  # a named model is pulled once here, before any run
        else:
            from .model import get_config

            get_config(s.model)

    info = {
        "format": "posepipe-experiment/1",
        "spec": spec.to_dict(),
        "store": str(store.root),
        "fingerprints": {
            "real_train": _hash(sorted(real_train["instance_id"])),
            "synthetic_train": _hash(sorted(synth_train["instance_id"])),
            "held_out": {},
            "training": _hash([spec.steps, spec.ratio, spec.pretrain_share, spec.batch_size, spec.nproc, spec.lr,
                               spec.scratch_lr, spec.augment, spec.flip_test, spec.extra_args]),
        },
        "sets": {},
    }
    folder = spec.folder
    for held in progress.track(sets, len(sets), "held-out sets"):
        gt, people = _write_set(store, held, spec, folder / "sets" / held.name)
        info["fingerprints"]["held_out"][held.name] = _hash([[a["id"], a["keypoints"]] for a in gt["annotations"]])
        info["sets"][held.name] = {"sources": held.sources, "images": len(gt["images"]),
                                   "people": len(people), **{f"{k}_people": sum(p[k] for p in people.values())
                                                             for k in ("extreme", "occluded")}}
    if not _same_experiment(folder, info, raise_on_difference=not replace):
        for stale in ("runs", "arms", "curves"):
            shutil.rmtree(folder / stale, ignore_errors=True)
    _write_arm_manifests(spec, manifest, store, train, rows)
    atomic.write_text(folder / "experiment.json", json.dumps(info, indent=2))
    return info


def _held_out_sets(spec: ExperimentSpec, store, rows: pd.DataFrame, train: pd.DataFrame, where: str) -> list[HeldOutSet]:
    known = store.sources()
    train_sources = set(train["source"])
    sets = []
    for name in spec.held_out:
        if name not in known:
            raise PosepipeError(f"held-out source {name!r} is not in the store {store.root} (known: {', '.join(known)})")
        if name in train_sources:
            raise PosepipeError(f"held-out source {name!r} is also in {where}'s train rows: it would not be held out")
        sets.append(HeldOutSet(name, [name]))
    val = rows[(rows["split"] == "val") & (rows["source_kind"] == "real")]
    val = val[~val["source"].isin(spec.held_out)]
    if len(val):
        sets.append(HeldOutSet(MANIFEST_VAL, None, list(val["instance_id"])))
    if not sets:
        raise PosepipeError(f"{where}: no real val people and no held-out source (--held-out SOURCE): nothing to score on")
    train_images = set(train["image_id"])
    for held in sets:
        table = store.instances(held.sources) if held.sources else None
        images = set(table.column("image_id").to_pylist()) if table is not None else set(val["image_id"])
        shared = len(images & train_images)
        if shared:
            raise PosepipeError(f"held-out set {held.name!r} shares {shared} image(s) with the train rows of {where}: "
                                "scores on it would not be held out")
    return sets


def _write_set(store, held: HeldOutSet, spec: ExperimentSpec, folder: Path) -> tuple[dict, dict]:
    """The set's COCO ground truth and, per counted person, whether it is extreme / heavily occluded."""
    from posepipe.synth.core import extreme

    from . import evaluate

    val = evaluate.validation_set(store, instance_ids=held.instance_ids, sources=held.sources)
    gt = val.ground_truth
    counted = [a for a in gt["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    kp = np.array([a["keypoints"] for a in counted], dtype=np.float64).reshape(-1, schema.NUM_JOINTS, 3)
    flags, _ = extreme.categories(kp)
    occluded = weighting.occluded_share(weighting.visibility_flags(kp))
    people = {str(a["id"]): {"extreme": bool(flags[i].any()), "occluded": bool(occluded[i] >= spec.occluded_share),
                             "categories": [c for c, f in zip(extreme.CATEGORIES, flags[i]) if f]}
              for i, a in enumerate(counted)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / "val_gt.json", json.dumps(gt))
    atomic.write_text(folder / "people.json", json.dumps(people))
    return gt, people


def _same_experiment(folder: Path, info: dict, raise_on_difference: bool) -> bool:
    """Whether runs already in ``folder`` compare with the new ones (same data, same settings)."""
    old_path = folder / "experiment.json"
    if not old_path.is_file():
        return True
    try:
        old = json.loads(old_path.read_text())["fingerprints"]
    except (ValueError, KeyError, TypeError):
        old = {}
    new = info["fingerprints"]
    what = {"real_train": "its real train split differs", "synthetic_train": "its synthetic train rows differ",
            "training": "its training settings (steps, ratio, batch, lr, augment, flip) differ"}
    problems = [text for key, text in what.items() if old.get(key) != new[key]]
    problems += [f"its held-out set {name!r} holds other people" for name, digest in new["held_out"].items()
                 if name in old.get("held_out", {}) and old["held_out"][name] != digest]
    if problems and raise_on_difference:
        raise PosepipeError(f"{folder} holds an experiment that cannot be compared with this one: {problems[0]}; "
                            "use a new --out (or --replace to delete its runs)")
    return not problems


def _write_arm_manifests(spec: ExperimentSpec, manifest, store, train: pd.DataFrame, rows: pd.DataFrame) -> None:
    """arms/<arm>/manifest.parquet: the train rows each arm draws from, with its weights.

    Visibility weights are fitted per kind on the train rows, as ``posepipe mix`` does, with the
    base mix's weight parameters; the real val rows come along for the per-epoch PCK check."""
    from posepipe.datasets.instance_dataset import load_instances
    from posepipe.datasets.mix import MANIFEST_SCHEMA

    params = _weight_params(manifest.folder)
    val = rows[(rows["split"] == "val") & (rows["source_kind"] == "real")]
    frame = pd.concat([train, val], ignore_index=True)
    vis = weighting.visibility_flags(load_instances(store, frame["instance_id"], what="experiment manifest").keypoints)
    frame["labelled_joints"] = (vis > 0).sum(axis=1).astype(np.int8)
    frame["occluded_joints"] = (vis == schema.VISIBILITY_OCCLUDED).sum(axis=1).astype(np.int8)
    frame["weight_visibility"] = 1.0
    is_train = (frame["split"] == "train").to_numpy()
    for kind in ("real", "synthetic"):
        idx = np.flatnonzero(is_train & (frame["source_kind"].to_numpy() == kind))
        frame.loc[idx, "weight_visibility"] = weighting.compute_weights(vis[idx], "visibility", params)
    val, frame = frame[~is_train], frame[is_train]
    columns = [f.name for f in MANIFEST_SCHEMA]
    manifests = {}
    for name in spec.arms:
        arm = ARMS[name]
        if arm.pretrain:  # its second stage trains on real-only's manifest
            manifests["synth-only"] = (frame[frame["source_kind"] == "synthetic"], "visibility",
                                       "synth-then-real's first stage: the synthetic rows only")
        else:
            manifests[name] = (frame if arm.synthetic else frame[frame["source_kind"] == "real"], arm.weights,
                               arm.description)
    for name, (part, scheme, description) in manifests.items():
        part = part.assign(weight=part["weight_visibility"] if scheme == "visibility" else 1.0)
        table = pa.Table.from_pandas(pd.concat([part[columns], val[columns]], ignore_index=True),
                                     schema=MANIFEST_SCHEMA, preserve_index=False)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        folder = spec.folder / "arms" / name
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(folder / "manifest.parquet", buf.getvalue().to_pybytes())
        atomic.write_text(folder / "report.json", json.dumps({"store": str(store.root), "arm": name, "weights": scheme,
                                                              "description": description,
                                                              "base_manifest": str(manifest.folder)}, indent=2))


def _weight_params(folder: Path) -> weighting.WeightParams:
    try:
        report = json.loads((Path(folder) / "report.json").read_text())
        return weighting.WeightParams(**report["config"]["weight_params"])
    except (OSError, ValueError, KeyError, TypeError):
        return weighting.WeightParams()


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----- one run --------------------------------------------------------------------------

Launch = Callable[[Any], int]  # a LaunchConfig in, torchrun's exit code out


def run_one(spec: ExperimentSpec, run: RunSpec, launch: Launch | None = None, lane: Lane | None = None,
            progress: Progress | None = None) -> dict:
    """Train one run (resuming a half-done one), score it on every held-out set, write run.json."""
    from .launch import run as torchrun

    launch = launch or torchrun
    folder = run.folder(spec.folder)
    info = json.loads((spec.folder / "experiment.json").read_text())
    done = folder / "run.json"
    if done.is_file():
        old = json.loads(done.read_text())
        if old.get("fingerprints") == info["fingerprints"] and set(old.get("sets", {})) >= set(info["sets"]):
            return old
    started = time.perf_counter()
    start = Start.parse(run.start)
    arm = ARMS[run.arm]
    stages = []
    if arm.pretrain:
        first = round(spec.steps * spec.pretrain_share)
        stages.append(("pretrain", "synth-only", "1:0", first, start.init))
        stages.append(("train", BASELINE, "0:1", spec.steps - first, str(folder / "pretrain" / "checkpoint.pt")))
    else:
        stages.append(("train", run.arm, spec.ratio if arm.synthetic else "0:1", spec.steps, start.init))
    results = []
    for name, manifest, ratio, steps, init in stages:
        results.append(_train_stage(spec, run, start, folder / name, spec.folder / "arms" / manifest, ratio, steps,
                                    init, info, launch, lane))
    checkpoint = folder / "train" / "checkpoint.pt"
    from .export import load_model

    model, config = load_model(checkpoint)
    scores = score_sets(spec, model, config.input_size, folder / "eval", info, progress)
    curve = []
    offset = 0
    for (name, *_), res in zip(stages, results):
        for point in json.loads((folder / name / "train_curve.json").read_text()):
            curve.append({"step": point["step"] + offset, "loss": point["loss"], "stage": name})
        offset += res["steps"]
    atomic.write_text(folder / "curve.json", json.dumps(curve))
    out = {"start": start.label, "arm": run.arm, "seed": run.seed, "fingerprints": info["fingerprints"],
           "steps": sum(r["steps"] for r in results), "images": sum(r["images"] for r in results),
           "train_seconds": sum(r["train_seconds"] for r in results), "wall_s": round(time.perf_counter() - started, 2),
           "sets": scores}
    atomic.write_text(done, json.dumps(out, indent=2))
    return out


def _train_stage(spec: ExperimentSpec, run: RunSpec, start: Start, out: Path, manifest: Path, ratio: str, steps: int,
                 init: str | None, info: dict, launch: Launch, lane: Lane | None) -> dict:
    from .launch import LaunchConfig

    result_path = out / "train_result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    lr = spec.lr if start.init else spec.scratch_lr
    args = ["--batch-size", str(spec.batch_size), "--ratio", ratio, "--lr", str(lr), "--seed", str(run.seed),
            "--workers", str(spec.workers), "--augment", spec.augment, "--schedule", "steps", "--no-eval",
            "--pck-instances", "16", *spec.extra_args]
    val_sources = [s for held in info["sets"].values() for s in (held["sources"] or [])]
    if val_sources and not info["sets"].get(MANIFEST_VAL):
        args += ["--val-sources", val_sources[0]]  # the per-epoch PCK check
    env = {"CUDA_VISIBLE_DEVICES": ",".join(lane.devices)} if lane and lane.devices else {}
    cfg = LaunchConfig(manifest=manifest, out=out, model=start.model or "tiny", nproc=spec.nproc, max_steps=steps,
                       resume=(out / "checkpoint.pt").is_file(), store=Path(info["store"]), train_args=args,
                       threads=lane.threads if lane else None, init=init, env=env)
    code = launch(cfg)
    if code:
        raise RuntimeError(f"run {start.label}/{run.arm}/seed{run.seed}: training failed (torchrun exit {code})")
    if not result_path.is_file():
        raise RuntimeError(f"run {start.label}/{run.arm}/seed{run.seed}: training wrote no {result_path}")
    return json.loads(result_path.read_text())


def score_start(spec: ExperimentSpec, start_text: str, progress: Progress | None = None) -> dict | None:
    """A pretrained start scored as it is (no training): the row every arm moves from."""
    start = Start.parse(start_text)
    if not start.init:
        return None
    folder = spec.folder / "runs" / start.label / START_RUN
    info = json.loads((spec.folder / "experiment.json").read_text())
    done = folder / "run.json"
    if done.is_file():
        old = json.loads(done.read_text())
        if old.get("fingerprints", {}).get("held_out") == info["fingerprints"]["held_out"]:
            return old
    from .init import resolve
    from .model import build_model, inference_module

    config, state = resolve(start.init)
    model = build_model(config)
    model.load_state_dict(state)
    scores = score_sets(spec, inference_module(model).eval(), config.input_size, folder / "eval", info, progress)
    out = {"start": start.label, "arm": START_RUN, "seed": None, "fingerprints": info["fingerprints"], "steps": 0,
           "sets": scores}
    atomic.write_text(done, json.dumps(out, indent=2))
    return out


def score_sets(spec: ExperimentSpec, model, input_size, folder: Path, info: dict,
               progress: Progress | None = None) -> dict:
    """Predictions on every held-out set (COCO results + which person each is for), with AP.

    AP comes from ``oks`` and is checked against pycocotools' COCOeval on the same files: a
    difference is a bug, and fails the run."""
    from posepipe.datasets.store import PoseStore

    from . import evaluate, oks
    from .data import PoseDataset

    store = PoseStore(info["store"])
    predict_fn = evaluate.torch_predictor(model)
    scores = {}
    for name, held in info["sets"].items():
        gt_path = spec.folder / "sets" / name / "val_gt.json"
        val = evaluate.validation_set(store, sources=held["sources"], instance_ids=None if held["sources"] else
                                      _manifest_val_ids(spec, info))
        dataset = PoseDataset(store, val.instances, input_size, train=False)
        keypoints, person = evaluate.predict(predict_fn, dataset, flip_test=spec.flip_test, progress=progress)
        out = folder / name
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "predictions.json", json.dumps(evaluate.coco_results(keypoints, person, val.gt_ids)))
        atomic.write_text(out / "predictions.people.json", json.dumps([ann for _, ann in val.gt_ids]))
        ours = oks.average_precision(oks.match(*oks.load(gt_path, out / "predictions.json")))
        theirs = evaluate.coco_eval(gt_path, out / "predictions.json")
        if any(ours[k] != theirs[k] for k in ("AP", "AP50", "AP75")):
            raise RuntimeError(f"{out}: posepipe's AP {ours} differs from pycocotools' {theirs}")
        scores[name] = {"AP": theirs["AP"], "AP50": theirs["AP50"], "AP75": theirs["AP75"],
                        "PCK": evaluate.pck(keypoints, val.instances.keypoints, val.instances.bbox),
                        "people": len(val.instances)}
    return scores


def _manifest_val_ids(spec: ExperimentSpec, info: dict) -> list[str]:
    from posepipe.training.data import load_manifest

    rows = load_manifest(spec.manifest, info["store"]).rows
    val = rows[(rows["split"] == "val") & (rows["source_kind"] == "real")]
    return list(val[~val["source"].isin(spec.held_out)]["instance_id"])


def run_lane(spec: ExperimentSpec, lane: Lane, launch: Launch | None = None,
             on_run: Callable[[RunSpec, dict], None] | None = None) -> list[dict]:
    """The lane's runs one after another."""
    out = []
    for run in lane.runs:
        result = run_one(spec, run, launch, lane)
        if on_run:
            on_run(run, result)
        out.append(result)
    return out


def run_direct(spec: ExperimentSpec, launch: Launch | None = None, progress: Progress | None = None,
               on_run: Callable[[RunSpec, dict], None] | None = None, replace: bool = False) -> dict:
    """The whole experiment in this process (lanes in threads), without Prefect; returns results.json."""
    from concurrent.futures import ThreadPoolExecutor

    from . import experiment_stats

    prepare(spec, progress, replace)
    for start in spec.starts:
        score_start(spec, start, progress)
    work = lanes(spec)
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        for future in [pool.submit(run_lane, spec, lane, launch, on_run) for lane in work]:
            future.result()
    return experiment_stats.write_results(spec, progress)


__all__ = ["ARMS", "BASELINE", "ExperimentSpec", "RunSpec", "Lane", "Start", "plan", "lanes", "prepare", "run_one",
           "score_start", "score_sets", "run_lane", "run_direct"]
