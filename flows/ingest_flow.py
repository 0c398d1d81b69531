"""The ``ingest`` flow: every configured real source, incrementally, one retried task per file batch.

Sources come from ``params.yaml`` (``ingest.coco`` and ``ingest.labelme`` lists, or the
``pipeline.ingest`` section for the main job) or from the caller. A COCO file is one batch; a
LabelMe drop folder is one batch (its intake skips files whose content it has already
ingested). Re-running adds nothing for unchanged inputs, because the store remembers each
input file's content hash. A markdown artifact records counts, rejects and their reasons.

The plain functions (``CocoSpec``, ``ingest_coco_batch``, ``summary_markdown``...) hold the
logic and run without Prefect; the flow only adds tasks, retries and the artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from posepipe.datasets.errors import PosepipeError
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


@dataclass(frozen=True)
class LabelmeSpec:
    source: str
    folder: str
    annotator: str | None = None
    quarantine: str | None = None  # default: FOLDER/_quarantine
    quarantine_mode: str = "move"  # copy for folders that must not change (read-only samples)
    prune: bool = False


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
    return cls(**{k: (str(v) if v is not None and k not in ("prune",) else v) for k, v in entry.items()})


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
        if not Path(spec.folder).is_dir():
            raise PosepipeError(f"source {spec.source}: LabelMe folder {spec.folder} not found")


def ingest_coco_batch(store_root: str, spec: CocoSpec, progress=None) -> dict:
    """One COCO file into its source; unchanged content is skipped by the store."""
    from posepipe.datasets.coco import ingest_coco
    from posepipe.datasets.store import PoseStore

    report = ingest_coco(PoseStore(store_root), spec.annotations, spec.images, spec.source, skeleton=spec.skeleton,
                         split=spec.split, workers=2, progress=progress)
    d = report.to_dict()
    return {
        "kind": "coco", "source": spec.source, "input": spec.annotations, "unchanged": report.unchanged,
        "fatal": report.fatal, "read": report.annotations_read, "accepted": report.annotations_accepted,
        "rejected": report.rejected, "images_accepted": report.images_accepted, "reasons": d["reasons"],
    }


def ingest_labelme_batch(store_root: str, spec: LabelmeSpec, progress=None) -> dict:
    """One LabelMe drop folder: only new or changed files are read."""
    from posepipe.annotation.intake import ingest_labelme
    from posepipe.datasets.store import PoseStore

    report = ingest_labelme(PoseStore(store_root), spec.folder, spec.source, annotator=spec.annotator,
                            quarantine=spec.quarantine, quarantine_mode=spec.quarantine_mode, prune=spec.prune,
                            progress=progress)
    d = report.to_dict()
    return {
        "kind": "labelme", "source": spec.source, "input": spec.folder,
        "unchanged": report.files_read == 0, "fatal": None, "read": report.files_read,
        "accepted": report.files_accepted, "rejected": report.files_rejected,
        "images_accepted": report.images_accepted, "instances_accepted": report.instances_accepted,
        "files_unchanged": report.files_unchanged, "reasons": d["reasons"],
        "rejected_files": [{"file": f.relative, "reason": f.reason, "message": f.message}
                           for f in report.files if f.status == "rejected"],
    }


def summary_markdown(results: list[dict]) -> str:
    """The artifact: one row per batch, then every reject reason with its count."""
    lines = ["# Ingest", "", "| source | kind | input | read | accepted | rejected | status |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        status = "fatal: " + r["fatal"] if r["fatal"] else ("unchanged" if r["unchanged"] else "ingested")
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
           labelme: list[dict] | None = None, section: str = "ingest") -> list[dict]:
    """Ingest every configured COCO file and LabelMe folder into the store; publish a summary artifact."""
    from prefect.artifacts import create_markdown_artifact

    coco_specs, labelme_specs = load_specs(params, coco, labelme, section)
    if not coco_specs and not labelme_specs:
        raise PosepipeError(f"nothing to ingest: no coco or labelme entries in {params}: {section} or the arguments")
    check_inputs(coco_specs, labelme_specs)
    # Sequential on purpose: each batch already uses the cores (the store would let batches of
    # different sources write side by side; two of one source take turns).
    results = [coco_task(store, spec) for spec in coco_specs]
    results += [labelme_task(store, spec) for spec in labelme_specs]
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
                      parameters: dict, timezone: str = "UTC"):
    """The ingest flow as a deployment with a schedule (loaded by module path, so any cwd works)."""
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
    return ingest.to_deployment(name=name, schedule=schedule, parameters=parameters,
                                entrypoint_type=EntrypointType.MODULE_PATH,
                                description="posepipe scheduled ingest")


def serve_ingest_cron(cron: str, *, params: str, section: str, store: str, name: str = "scheduled",
                      timezone: str = "UTC", log=print) -> None:
    """Serve the configured ingest on a cron schedule until interrupted."""
    from prefect import serve

    deployment = ingest_deployment(name, cron=cron, timezone=timezone,
                                   parameters={"store": store, "params": params, "section": section})
    log(f"serving ingest/{name} on cron {cron!r} ({timezone}) into {store}; {prefect_env.describe()}")
    serve(deployment, print_starting_message=False)


def serve_watch(folder: str, every: float, *, source: str, store: str, annotator: str | None = None,
                name: str | None = None, log=print) -> None:
    """Serve a scan of one LabelMe drop folder every ``every`` seconds until interrupted."""
    from prefect import serve

    entry = {"source": source, "folder": folder}
    if annotator:
        entry["annotator"] = annotator
    deployment = ingest_deployment(name or f"watch-{_safe_name(Path(folder).name)}", interval=every,
                                   parameters={"store": store, "params": None, "labelme": [entry]})
    log(f"watching {folder} every {every:g} s into source {source} of {store}; {prefect_env.describe()}")
    serve(deployment, print_starting_message=False)
