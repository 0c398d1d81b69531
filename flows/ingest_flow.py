"""The ``ingest`` flow: every configured real source, incrementally, one retried task per file batch.

Sources come from ``params.yaml`` (``ingest.coco`` and ``ingest.labelme`` lists, or the
``pipeline.ingest`` section for the main job) or from the caller. A COCO file is one batch; a
LabelMe drop folder is one batch (its intake skips files whose content it has already
ingested). Re-running adds nothing for unchanged inputs, because the store remembers each
input file's content hash. A markdown artifact records counts, rejects and their reasons.

Inputs still being written are not read (``datasets/settle.py``): a LabelMe file or its image,
a COCO annotation file or a file in its images folder, is taken once unchanged for the settle
interval (``settle`` seconds per entry or for the whole flow; default 5). Each batch waits up
to that long for fresh inputs; a LabelMe file still changing then is skipped and a COCO batch
is skipped whole, and a later run takes them. A watched drop folder (``watch: true``) that is
missing or unreadable is a warning for that scan, never a failure: nothing is read or changed.

The plain functions (``CocoSpec``, ``ingest_coco_batch``, ``summary_markdown``...) hold the
logic and run without Prefect; the flow only adds tasks, retries and the artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.settle import DEFAULT_SETTLE_SECONDS, check_settle
from posepipe.flows import prefect_env

prefect_env.configure()

from prefect import flow, task  # noqa: E402  (after configure: Prefect reads its settings on import)
from prefect.cache_policies import NO_CACHE  # noqa: E402

ARTIFACT_KEY = "ingest-summary"


@dataclass(frozen=True)
class CocoSpec:
    source: str
    annotations: str
    images: str
    split: str | None = None
    skeleton: str | None = None
    settle: float | None = None  # seconds the files must be unchanged; None: the flow's (default 5)


@dataclass(frozen=True)
class LabelmeSpec:
    source: str
    folder: str
    annotator: str | None = None
    quarantine: str | None = None  # default: FOLDER/_quarantine
    quarantine_mode: str = "move"  # copy for folders that must not change (read-only samples)
    prune: bool = False
    settle: float | None = None  # seconds a file must be unchanged; None: the flow's (default 5)
    watch: bool = False  # a drop folder that may come and go: missing or unreadable is a warning


def _spec(cls, entry: Any, where: str):
    if not isinstance(entry, Mapping):
        raise PosepipeError(f"{where}: each entry must be a mapping, got {type(entry).__name__}")
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise PosepipeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    required = [name for name, f in cls.__dataclass_fields__.items() if f.default is f.default_factory]
    missing = [name for name in required if entry.get(name) in (None, "")]
    if missing:
        raise PosepipeError(f"{where}: entry {dict(entry)} lacks {missing[0]!r}")
    values = {}
    for k, v in entry.items():
        if v is None:
            values[k] = v
        elif k in ("prune", "watch"):
            if not isinstance(v, bool):
                raise PosepipeError(f"{where}: {k} must be true or false, got {v!r}")
            values[k] = v
        elif k == "settle":
            values[k] = check_settle(v, f"{where}: settle")
        else:
            values[k] = str(v)
    return cls(**values)


def specs_from_section(section: Mapping[str, Any] | None, where: str) -> tuple[list[CocoSpec], list[LabelmeSpec]]:
    """COCO and LabelMe specs from an ``ingest:``-shaped mapping (``coco:`` and ``labelme:`` lists)."""
    section = section or {}
    if not isinstance(section, Mapping):
        raise PosepipeError(f"{where}: must be a mapping with coco: and labelme: lists")
    coco = [_spec(CocoSpec, e, f"{where}.coco[{i}]") for i, e in enumerate(section.get("coco") or [])]
    labelme = [_spec(LabelmeSpec, e, f"{where}.labelme[{i}]") for i, e in enumerate(section.get("labelme") or [])]
    return coco, labelme


def check_inputs(coco: Iterable[CocoSpec], labelme: Iterable[LabelmeSpec]) -> None:
    """Fail before any task starts, naming the source and the path that is absent."""
    for spec in coco:
        if not Path(spec.annotations).is_file():
            raise PosepipeError(f"source {spec.source}: annotation file {spec.annotations} not found "
                                "(point ingest.coco / pipeline.ingest.coco in params.yaml at your data)")
        if not Path(spec.images).is_dir():
            raise PosepipeError(f"source {spec.source}: images folder {spec.images} not found")
    for spec in labelme:
        if not spec.watch and not Path(spec.folder).is_dir():
            raise PosepipeError(f"source {spec.source}: LabelMe folder {spec.folder} not found")


def _settle(spec, default: float | None) -> float:
    if spec.settle is not None:
        return spec.settle
    return DEFAULT_SETTLE_SECONDS if default is None else check_settle(default, "settle")


def coco_inputs_settled(spec: CocoSpec, settle: float, *, clock=None, sleep=None):
    """Wait (up to the settle interval) for the annotation file and every file under the images
    folder to be unchanged for ``settle`` seconds; returns the settle Verdict."""
    import time

    from posepipe.datasets.settle import Settler, snapshots, tree_snapshots

    settler = Settler(settle, clock=clock or time.time, sleep=sleep or time.sleep)
    return settler.wait(lambda: {**snapshots([spec.annotations]), **tree_snapshots(spec.images)})


def ingest_coco_batch(store_root: str, spec: CocoSpec, progress=None, *, settle: float | None = None,
                      log=print, clock=None, sleep=None) -> dict:
    """One COCO file into its source; unchanged content is skipped by the store. A file (or an
    image under its folder) still being written skips the whole batch this time."""
    from posepipe.datasets.coco import ingest_coco
    from posepipe.datasets.settle import describe
    from posepipe.datasets.store import PoseStore

    interval = _settle(spec, settle)
    if interval > 0:
        verdict = coco_inputs_settled(spec, interval, clock=clock, sleep=sleep)
        if verdict.unsettled:
            why = f"still being written: {describe(verdict.unsettled)}"
            log(f"source {spec.source}: {spec.annotations} skipped this time, {why}; a later run takes it")
            return {
                "kind": "coco", "source": spec.source, "input": spec.annotations, "unchanged": False,
                "fatal": None, "skipped": why, "read": 0, "accepted": 0, "rejected": 0, "images_accepted": 0,
                "reasons": {},
            }
    report = ingest_coco(PoseStore(store_root), spec.annotations, spec.images, spec.source, skeleton=spec.skeleton,
                         split=spec.split, workers=2, progress=progress)
    d = report.to_dict()
    return {
        "kind": "coco", "source": spec.source, "input": spec.annotations, "unchanged": report.unchanged,
        "fatal": report.fatal, "skipped": None, "read": report.annotations_read,
        "accepted": report.annotations_accepted, "rejected": report.rejected,
        "images_accepted": report.images_accepted, "reasons": d["reasons"],
    }


def ingest_labelme_batch(store_root: str, spec: LabelmeSpec, progress=None, *, settle: float | None = None,
                         log=print) -> dict:
    """One LabelMe drop folder: only new or changed files are read, and only once they settled."""
    from posepipe.annotation.intake import FolderUnavailable, ingest_labelme
    from posepipe.datasets.store import PoseStore

    try:
        report = ingest_labelme(PoseStore(store_root), spec.folder, spec.source, annotator=spec.annotator,
                                quarantine=spec.quarantine, quarantine_mode=spec.quarantine_mode, prune=spec.prune,
                                progress=progress, settle=_settle(spec, settle))
    except FolderUnavailable as exc:
        if not spec.watch:
            raise
        # A share unmounted, a folder renamed away for a while: this scan reads nothing and
        # changes nothing (no file is taken for deleted); the next scan looks again.
        log(f"WARNING source {spec.source}: {exc}; nothing scanned this time, the next scan looks again")
        return {
            "kind": "labelme", "source": spec.source, "input": spec.folder, "unchanged": True, "fatal": None,
            "skipped": str(exc), "read": 0, "accepted": 0, "rejected": 0, "images_accepted": 0,
            "instances_accepted": 0, "files_unchanged": 0, "files_skipped": 0, "reasons": {},
            "rejected_files": [], "skipped_files": [],
        }
    skipped_files = [{"file": f.relative, "reason": f.reason, "message": f.message}
                     for f in report.files if f.status == "skipped"]
    for f in skipped_files:
        log(f"source {spec.source}: skipped {f['message']}")
    for folder in report.unlisted_folders:
        log(f"WARNING source {spec.source}: {folder} could not be listed; its files were left alone this time")
    d = report.to_dict()
    return {
        "kind": "labelme", "source": spec.source, "input": spec.folder,
        "unchanged": report.files_read == 0, "fatal": None, "skipped": None, "read": report.files_read,
        "accepted": report.files_accepted, "rejected": report.files_rejected,
        "images_accepted": report.images_accepted, "instances_accepted": report.instances_accepted,
        "files_unchanged": report.files_unchanged, "files_skipped": report.files_skipped, "reasons": d["reasons"],
        "rejected_files": [{"file": f.relative, "reason": f.reason, "message": f.message}
                           for f in report.files if f.status == "rejected"],
        "skipped_files": skipped_files,
    }


def summary_markdown(results: list[dict]) -> str:
    """The artifact: one row per batch, then every reject reason with its count."""
    lines = ["# Ingest", "", "| source | kind | input | read | accepted | rejected | status |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        if r["fatal"]:
            status = "fatal: " + r["fatal"]
        elif r.get("skipped"):
            status = "skipped: " + r["skipped"]
        else:
            status = "unchanged" if r["unchanged"] else "ingested"
            if r.get("files_skipped"):
                status += f", {r['files_skipped']} file(s) still being written skipped"
        unit = "files" if r["kind"] == "labelme" else "annotations"
        lines.append(f"| {r['source']} | {r['kind']} ({unit}) | `{r['input']}` | {r['read']} | {r['accepted']} | "
                     f"{r['rejected']} | {status} |")
    reasons: dict[str, int] = {}
    for r in results:
        for reason, count in r["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    lines += ["", "## Reject reasons", ""]
    if not reasons:
        lines.append("No record was rejected.")
    else:
        from posepipe.datasets.schema import REASONS

        lines += ["| reason | count | meaning |", "| --- | ---: | --- |"]
        lines += [f"| `{k}` | {v} | {REASONS.get(k, '')} |" for k, v in sorted(reasons.items())]
    rejected_files = [f for r in results for f in r.get("rejected_files", [])]
    if rejected_files:
        lines += ["", "## Rejected LabelMe files", ""]
        lines += [f"- `{f['file']}`: [{f['reason']}] {f['message']}" for f in rejected_files]
    skipped_files = [f for r in results for f in r.get("skipped_files", [])]
    if skipped_files:
        lines += ["", "## Skipped LabelMe files (not read: a later run takes them)", ""]
        lines += [f"- `{f['file']}`: [{f['reason']}] {f['message']}" for f in skipped_files]
    return "\n".join(lines) + "\n"


def fatal_error(results: list[dict]) -> str | None:
    fatal = [f"{r['input']}: {r['fatal']}" for r in results if r["fatal"]]
    return f"{len(fatal)} input file(s) rejected as a whole: {'; '.join(fatal)}" if fatal else None


def load_specs(params: str | None, coco: list[dict] | None, labelme: list[dict] | None,
               section: str = "ingest") -> tuple[list[CocoSpec], list[LabelmeSpec]]:
    """Specs given by the caller win; otherwise the params file's section (``ingest`` or ``pipeline.ingest``)."""
    if coco is not None or labelme is not None:
        return specs_from_section({"coco": coco or [], "labelme": labelme or []}, "arguments")
    if not params:
        return [], []
    doc = read_params(params)
    node: Any = doc
    for part in section.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return specs_from_section(node, f"{params}: {section}")


def read_params(path: str | Path) -> dict:
    """The params file as a mapping; a missing or malformed file is one line naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PosepipeError(f"{path}: params file not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PosepipeError(f"{path}: cannot read it as YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise PosepipeError(f"{path}: must be a mapping of sections")
    return doc


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry what may pass next time (a busy disk, a file still being copied), never bad input."""
    return not isinstance(state.data, PosepipeError)


_task_options = dict(retries=2, retry_delay_seconds=1, retry_condition_fn=_retry_unless_user_error,
                     cache_policy=NO_CACHE)
coco_task = task(ingest_coco_batch, name="ingest-coco-file", task_run_name="coco {spec.source}", **_task_options)
labelme_task = task(ingest_labelme_batch, name="ingest-labelme-folder", task_run_name="labelme {spec.source}",
                    **_task_options)


@flow(name="ingest", log_prints=True)
def ingest(store: str = "data/store", params: str | None = "params.yaml", coco: list[dict] | None = None,
           labelme: list[dict] | None = None, section: str = "ingest", settle: float | None = None) -> list[dict]:
    """Ingest every configured COCO file and LabelMe folder into the store; publish a summary artifact.

    ``settle``: seconds an input must be unchanged before it is read, for entries that set none
    (default 5; 0 reads everything as it is)."""
    from prefect.artifacts import create_markdown_artifact

    coco_specs, labelme_specs = load_specs(params, coco, labelme, section)
    if not coco_specs and not labelme_specs:
        raise PosepipeError(f"nothing to ingest: no coco or labelme entries in {params}: {section} or the arguments")
    check_inputs(coco_specs, labelme_specs)
    # Sequential on purpose: each batch already uses the cores (the store would let batches of
    # different sources write side by side; two of one source take turns).
    if settle is not None:
        settle = check_settle(settle, "settle")
    results = [coco_task(store, spec, settle=settle) for spec in coco_specs]
    results += [labelme_task(store, spec, settle=settle) for spec in labelme_specs]
    create_markdown_artifact(summary_markdown(results), key=ARTIFACT_KEY, description="posepipe ingest")
    fatal = fatal_error(results)
    if fatal:
        raise PosepipeError(fatal)
    return results


def spec_dicts(specs: Iterable[CocoSpec | LabelmeSpec]) -> list[dict]:
    return [{k: v for k, v in asdict(s).items() if v is not None} for s in specs]


# ----- schedules (posepipe schedule ingest / watch) ------------------------------------------
def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "folder"


def ingest_deployment(name: str, *, cron: str | None = None, interval: float | None = None,
                      parameters: dict, timezone: str = "UTC", one_at_a_time: bool = False):
    """The ingest flow as a deployment with a schedule (loaded by module path, so any cwd works).

    ``one_at_a_time``: a run due while the previous one still runs is cancelled rather than
    started beside it or queued (a scan of a drop folder every few seconds that takes longer,
    while it waits for a copy to settle, would otherwise pile up runs)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.deployments.runner import EntrypointType
    from datetime import timedelta

    if cron is not None:
        try:
            schedule = CronSchedule(cron=cron, timezone=timezone)
        except ValueError as exc:
            raise PosepipeError(f"--cron {cron!r}: {str(exc).splitlines()[-1]}") from None
    else:
        schedule = IntervalSchedule(interval=timedelta(seconds=float(interval)))
    limit = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW) \
        if one_at_a_time else None
    return ingest.to_deployment(name=name, schedule=schedule, parameters=parameters,
                                entrypoint_type=EntrypointType.MODULE_PATH,
                                description="posepipe scheduled ingest", concurrency_limit=limit)


def serve_ingest_cron(cron: str, *, params: str, section: str, store: str, name: str = "scheduled",
                      timezone: str = "UTC", settle: float | None = None, log=print) -> None:
    """Serve the configured ingest on a cron schedule until interrupted."""
    from prefect import serve

    parameters = {"store": store, "params": params, "section": section}
    if settle is not None:
        parameters["settle"] = settle
    deployment = ingest_deployment(name, cron=cron, timezone=timezone, parameters=parameters)
    log(f"serving ingest/{name} on cron {cron!r} ({timezone}) into {store}; {prefect_env.describe()}")
    serve(deployment, print_starting_message=False)


def serve_watch(folder: str, every: float, *, source: str, store: str, annotator: str | None = None,
                name: str | None = None, settle: float = DEFAULT_SETTLE_SECONDS, log=print) -> None:
    """Serve a scan of one LabelMe drop folder every ``every`` seconds until interrupted.

    Each scan takes the files that have been unchanged for ``settle`` seconds (waiting up to that
    long for fresh ones); one scan runs at a time; a folder that is gone or unreadable for a
    while is a warning in that scan's log."""
    from prefect import serve

    entry = {"source": source, "folder": folder, "watch": True, "settle": settle}
    if annotator:
        entry["annotator"] = annotator
    deployment = ingest_deployment(name or f"watch-{_safe_name(Path(folder).name)}", interval=every,
                                   parameters={"store": store, "params": None, "labelme": [entry]},
                                   one_at_a_time=True)
    log(f"watching {folder} every {every:g} s into source {source} of {store} (files taken once unchanged "
        f"for {settle:g} s); {prefect_env.describe()}")
    serve(deployment, print_starting_message=False)
