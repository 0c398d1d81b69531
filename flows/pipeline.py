"""The main job: ingest -> synth -> mix -> release (DVC) -> train -> export -> compare -> report.

``PipelineConfig.load`` reads the ``pipeline:`` section of params.yaml (plus ``mix:`` for the
mix settings it does not override). Each stage is a plain function of the config
(``stage_ingest``, ``stage_synth``...), so ``run_direct`` runs the whole job without Prefect
(the benchmark's baseline) and the ``pipeline`` flow runs the same functions as Prefect
subflows and tasks, with a summary artifact and run history.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from posepipe.datasets.errors import PosepipeError
from posepipe.flows import prefect_env

prefect_env.configure()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from posepipe.flows import ingest_flow, synth_flow, train_flow  # noqa: E402

SUMMARY_ARTIFACT_KEY = "pipeline-summary"
REPORT_NAME = "report.html"


@dataclass
class PipelineConfig:
    params: Path
    store: Path
    out: Path
    coco: list[ingest_flow.CocoSpec]
    labelme: list[ingest_flow.LabelmeSpec]
    synth: synth_flow.SynthSpec | None
    mix: dict[str, Any]
    train: train_flow.TrainSpec | None
    release: str | None = None
    repo: Path = Path(".")
    extra_real: list[str] = field(default_factory=list)  # sources already in the store to mix in
    qa: dict[str, Any] | None = None  # label check of the real sources: {"model": NAME, "sources": [...]}
    compare: dict[str, Any] | None = None  # the short data-value experiment: {"bootstrap": N}

    @classmethod
    def load(cls, params: str | Path = "params.yaml", *, store: str | Path | None = None,
             out: str | Path | None = None, release: str | None = None, synth_images: int | None = None,
             train_steps: int | None = None, skip_train: bool = False) -> "PipelineConfig":
        params = Path(params)
        doc = ingest_flow.read_params(params)
        section = doc.get("pipeline")
        if not isinstance(section, Mapping):
            raise PosepipeError(f"{params}: no pipeline: section (see docs/orchestration.md)")
        where = f"{params}: pipeline"
        known = {"out", "store", "ingest", "synth", "mix", "train", "release", "real", "qa", "compare"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise PosepipeError(f"{where}.{unknown[0]} is not a pipeline setting (known: {', '.join(sorted(known))})")
        coco, labelme = ingest_flow.specs_from_section(section.get("ingest"), f"{where}.ingest")
        synth = None
        if section.get("synth"):
            synth_values = dict(section["synth"])
            if synth_images is not None:
                synth_values["images"] = synth_images
            synth = synth_flow.SynthSpec.from_mapping(synth_values, f"{where}.synth")
            if synth.images < 1:
                synth = None
        train = None
        if section.get("train") and not skip_train:
            values = dict(section["train"])
            if train_steps is not None:
                values.update(max_steps=train_steps, epochs=None)
            train = train_flow.TrainSpec.from_mapping(values, f"{where}.train")
        mix = {k: v for k, v in (doc.get("mix") or {}).items() if k not in ("real", "synth")}
        mix.update(section.get("mix") or {})
        if synth is None:  # real data only: a ratio that asks for synthetic people cannot be met
            mix["ratio"] = "0:1"
            if train is not None:
                train.ratio = "0:1"
        out_dir = Path(out or section.get("out") or "out/pipeline")
        # --out without --store keeps the run self-contained: its store goes inside it.
        store_dir = store or (out_dir / "store" if out else section.get("store")) or out_dir / "store"
        qa = section.get("qa") or None
        if qa is not None:
            if not isinstance(qa, Mapping) or set(qa) - {"model", "sources"}:
                raise PosepipeError(f"{where}.qa: give model (a pose model name) and optionally sources (a list)")
            qa = {"model": str(qa.get("model") or "movenet-thunder"), "sources": list(qa.get("sources") or [])}
        compare = section.get("compare")
        if compare is not None:
            if not isinstance(compare, Mapping) or set(compare) - {"bootstrap"}:
                raise PosepipeError(f"{where}.compare: give bootstrap (resamples for the interval), or remove it to skip")
            compare = {"bootstrap": int(compare.get("bootstrap", 1000))}
        return cls(params=params, store=Path(store_dir), out=out_dir,
                   coco=coco, labelme=labelme, synth=synth, mix=mix, train=train,
                   release=release or section.get("release"), repo=params.resolve().parent,
                   extra_real=list(section.get("real") or []), qa=qa, compare=compare)

    @property
    def held_out(self) -> list[str]:
        """Real sources kept out of the mix to score on (``pipeline.train.val_sources``)."""
        return list(self.train.val_sources) if self.train else []

    @property
    def real_sources(self) -> list[str]:
        names = [s.source for s in self.coco] + [s.source for s in self.labelme] + self.extra_real
        return [n for n in dict.fromkeys(names) if n not in self.held_out]

    @property
    def qa_sources(self) -> list[str]:
        """The sources the label check reads: those named, else every real source with labelled people."""
        if not self.qa:
            return []
        return self.qa["sources"] or [s for s in self.real_sources + self.held_out if s in self._labelled()]

    def _labelled(self) -> set[str]:
        from posepipe.datasets.store import PoseStore

        inst = PoseStore(self.store).instances()
        counts = inst.select(["source", "num_keypoints"]).to_pandas()
        return set(counts[counts["num_keypoints"] > 0]["source"])

    @property
    def synth_sources(self) -> list[str]:
        return [self.synth.source] if self.synth else []

    def check(self) -> None:
        if not self.coco and not self.labelme and not self.extra_real:
            raise PosepipeError(f"{self.params}: pipeline.ingest lists no coco or labelme source")
        ingested = {s.source for s in self.coco} | {s.source for s in self.labelme} | set(self.extra_real)
        missing = [s for s in self.held_out if s not in ingested]
        if missing:
            raise PosepipeError(f"{self.params}: pipeline.train.val_sources names {missing[0]!r}, which pipeline.ingest "
                                f"does not ingest (known: {', '.join(sorted(ingested))})")
        if not self.real_sources:
            raise PosepipeError(f"{self.params}: every real source is held out for validation; nothing is left to train on")
        ingest_flow.check_inputs(self.coco, self.labelme)


# ----- stages (plain functions; Prefect wraps them below) ----------------------------------
def stage_ingest(cfg: PipelineConfig) -> list[dict]:
    results = [ingest_flow.ingest_coco_batch(str(cfg.store), s) for s in cfg.coco]
    results += [ingest_flow.ingest_labelme_batch(str(cfg.store), s) for s in cfg.labelme]
    fatal = ingest_flow.fatal_error(results)
    if fatal:
        raise PosepipeError(fatal)
    return results


def stage_qa(cfg: PipelineConfig) -> dict:
    """Labels of the real sources checked against a pretrained pose model (posepipe qa), before they are mixed."""
    if not cfg.qa:
        return {"status": "skipped", "reason": "no pipeline.qa section"}
    from posepipe.annotation.qa import check_source
    from posepipe.datasets import atomic
    from posepipe.datasets.store import PoseStore
    from posepipe.flows.report import write_qa_page
    from posepipe.pretrained.runtime import load

    store = PoseStore(cfg.store)
    model = load(cfg.qa["model"])
    done = {}
    for source in cfg.qa_sources:
        folder = cfg.out / "qa" / source.replace("/", "_")
        result = check_source(store, source, model)
        atomic.write_text(folder / "qa.json", json.dumps(result, indent=1))
        write_qa_page(cfg.store, result, folder / "qa.html")
        done[source] = {"folder": str(folder), **{k: result["summary"][k] for k in ("people_judged", "findings",
                                                                                  "people_flagged", "by_kind")}}
    return {"model": model.name, "sources": done}


def stage_synth(cfg: PipelineConfig) -> dict:
    if cfg.synth is None:
        return {"status": "skipped", "reason": "no synth section (or 0 images)"}
    return synth_flow.render_direct(str(cfg.store), cfg.synth)


def stage_mix(cfg: PipelineConfig) -> dict:
    from posepipe.datasets.mix import MixConfig, build_manifest, write_mix
    from posepipe.datasets.store import PoseStore

    config = MixConfig.from_params(cfg.mix, f"{cfg.params}: mix")
    synth = cfg.synth_sources if config.ratio[0] > 0 else []
    result = build_manifest(PoseStore(cfg.store), cfg.real_sources, synth, config)
    paths = write_mix(result, cfg.out / "mix")
    report = result.report
    return {"manifest": str(paths["manifest"]), "rows": result.manifest.num_rows, "ratio": report["ratio"],
            "effective_ratio": report["epoch"]["effective_ratio"]["text"], "warnings": report["warnings"]}


def stage_release(cfg: PipelineConfig, log: Callable[[str], None] = print) -> dict:
    """A DVC release of this run's store and manifest, when asked (--release NAME).

    The run folder becomes a git+DVC data repository with the tag ``dataset/NAME``; pull it with
    ``posepipe pull NAME --repo OUT --to DIR``. (``posepipe release`` releases the repository's
    own dvc.yaml pipeline instead.)
    """
    if not cfg.release:
        return {"status": "skipped", "reason": "no release asked for (posepipe run --release NAME)"}
    from posepipe.flows import versioning

    params = {"pipeline": ingest_flow.read_params(cfg.params).get("pipeline"), "mix": cfg.mix}
    card = versioning.release_run(cfg.release, cfg.out, cfg.store, cfg.out / "mix", params, log=log)
    return {"status": "released", "name": cfg.release, "tag": versioning.TAG_PREFIX + cfg.release,
            "repo": str(cfg.out), "card": str(cfg.out / "releases" / f"{cfg.release}.json"),
            "commit": card.get("code_commit")}


def stage_train(cfg: PipelineConfig, log: Callable[[str], None] = print) -> dict:
    if cfg.train is None:
        return {"status": "skipped", "reason": "no train section"}
    metrics = train_flow.train_model(cfg.train, str(cfg.out / "mix"), str(cfg.out / "train"), str(cfg.store), log=log)
    return {"metrics": metrics}


def stage_export(cfg: PipelineConfig) -> dict:
    if cfg.train is None or not cfg.train.export:
        return {"status": "skipped", "reason": "no training, or train.export is false"}
    return train_flow.export_int8(cfg.train, str(cfg.out / "mix"), str(cfg.out / "train"), str(cfg.out / "export"),
                                  str(cfg.store))


def compare_spec(cfg: PipelineConfig):
    """The short data-value experiment: the trained configuration against real-only, one seed.

    None (the stage is skipped) without training, synthetic data, ``pipeline.compare`` or a
    step budget."""
    from posepipe.training.experiment import ExperimentSpec

    train = cfg.train
    if cfg.compare is None or train is None or not cfg.synth_sources or train.max_steps is None:
        return None
    start = train.init or f"scratch:{train.model}"
    return ExperimentSpec.from_mapping({
        "manifest": str(cfg.out / "mix"), "out": str(cfg.out / "compare"), "store": str(cfg.store),
        "held_out": list(train.val_sources), "arms": ["real-only", "mix-visibility"], "seeds": [train.seed],
        "steps": train.max_steps, "starts": [start], "ratio": train.ratio, "batch_size": train.batch_size,
        "lr": train.lr, "scratch_lr": train.lr, "nproc": train.nproc, "workers": train.workers,
        "extra_args": list(train.extra_args), "bootstrap": cfg.compare["bootstrap"],
    }, where=f"{cfg.params}: pipeline.compare")


def _compare_skipped(cfg: PipelineConfig) -> dict:
    why = ("no pipeline.compare section" if cfg.compare is None else "no training" if cfg.train is None else
           "no synthetic data" if not cfg.synth_sources else "train.max_steps is not set (the budget in steps)")
    return {"status": "skipped", "reason": why}


def stage_compare(cfg: PipelineConfig) -> dict:
    """Does synthetic help, short version: real-only vs the mix, same steps and seed (no Prefect)."""
    spec = compare_spec(cfg)
    if spec is None:
        return _compare_skipped(cfg)
    from posepipe.training import experiment

    return _compare_result(experiment.run_direct(spec, replace=True))  # a new mix: compare again


def _compare_result(results: Mapping[str, Any]) -> dict:
    rows = [r for r in results["rows"] if r["subset"] == "all" and r["arm"] == "mix-visibility"]
    return {"out": results["spec"]["out"], "sets": {r["set"]: {k: r.get(k) for k in ("AP", "dAP", "dAP_ci", "verdict")}
                                                    for r in rows}}


def stage_report(cfg: PipelineConfig, summary: Mapping[str, Any] | None = None) -> str:
    from posepipe.flows.report import ReportInputs, write_report

    inputs = ReportInputs(store=cfg.store, real_sources=cfg.real_sources + cfg.held_out, synth_sources=cfg.synth_sources,
                          mix_dir=cfg.out / "mix", train_dir=cfg.out / "train", export_dir=cfg.out / "export",
                          qa_dirs=sorted((cfg.out / "qa").glob("*/")) if (cfg.out / "qa").is_dir() else [],
                          experiment_dir=cfg.out / "compare" if (cfg.out / "compare" / "results.json").is_file() else None,
                          summary=summary)
    return str(write_report(inputs, cfg.out / REPORT_NAME))


STAGES = ("ingest", "qa", "synth", "mix", "release", "train", "export", "compare")


def _detail(stage: str, result: Any) -> str:
    if isinstance(result, dict) and result.get("status") == "skipped":
        return "skipped: " + result["reason"]
    if stage == "ingest":
        return "; ".join(f"{r['source']}: {r['accepted']}/{r['read']} accepted"
                         + (" (unchanged)" if r["unchanged"] else "") for r in result)
    if stage == "qa":
        return "; ".join(f"{s}: {r['findings']} findings on {r['people_flagged']} of {r['people_judged']} people"
                         for s, r in result["sources"].items()) or "no labelled source"
    if stage == "synth":
        return f"{result.get('images', '?')} images in {result.get('source', '?')}"
    if stage == "mix":
        return f"{result['rows']} rows, ratio {result['ratio']} (epoch drew {result['effective_ratio']})"
    if stage == "release":
        return f"tagged {result['tag']}"
    if stage == "train":
        m = result["metrics"]
        return f"AP {m.get('AP', 0):.4f}, PCK {m.get('PCK', 0):.3f}"
    if stage == "export":
        return f"AP FP32 {result['ap_fp32']:.4f} / INT8 {result['ap_int8']:.4f}; size x{result['size_ratio']:.2f}"
    if stage == "compare":
        return "; ".join(f"{name}: mix AP {r['AP']:.3f}, {r['dAP']:+.3f} vs real-only ({r['verdict']}, one seed)"
                         for name, r in result["sets"].items() if r.get("AP") is not None)
    return ""


def _status(result: Any) -> str:
    return "skipped" if isinstance(result, dict) and result.get("status") == "skipped" else "done"


class Timeline:
    """Stage results and wall times, in order; listeners hear each stage start and end (the CLI's bar)."""

    listeners: list[Callable[[str, str], None]] = []

    def __init__(self) -> None:
        self.stages: list[dict] = []
        self.results: dict[str, Any] = {}
        self.started = time.perf_counter()

    def run(self, stage: str, fn: Callable[[], Any]) -> Any:
        for listener in self.listeners:
            listener(stage, "start")
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        self.results[stage] = result
        self.stages.append({"stage": stage, "status": _status(result), "seconds": round(seconds, 2),
                            "detail": _detail(stage, result)})
        for listener in self.listeners:
            listener(stage, "end")
        return result

    def summary(self, cfg: PipelineConfig) -> dict:
        return {"stages": self.stages, "seconds": round(time.perf_counter() - self.started, 2),
                "store": str(cfg.store), "out": str(cfg.out), "real_sources": cfg.real_sources,
                "synthetic_sources": cfg.synth_sources, "results": _jsonable(self.results)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_direct(cfg: PipelineConfig) -> dict:
    """Every stage called directly, in order (no Prefect): the benchmark's baseline."""
    cfg.check()
    line = Timeline()
    line.run("ingest", lambda: stage_ingest(cfg))
    line.run("qa", lambda: stage_qa(cfg))
    line.run("synth", lambda: stage_synth(cfg))
    line.run("mix", lambda: stage_mix(cfg))
    line.run("release", lambda: stage_release(cfg))
    line.run("train", lambda: stage_train(cfg))
    line.run("export", lambda: stage_export(cfg))
    line.run("compare", lambda: stage_compare(cfg))
    summary = line.summary(cfg)
    summary["report"] = stage_report(cfg, summary)
    return summary


def summary_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["# posepipe pipeline", "", f"Store `{summary['store']}`, outputs in `{summary['out']}`; "
             f"{summary['seconds']:.1f} s in all.", "", "| stage | status | seconds | detail |",
             "| --- | --- | ---: | --- |"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.2f} | {s['detail']} |" for s in summary["stages"]]
    if summary.get("report"):
        lines += ["", f"Report: `{summary['report']}`"]
    return "\n".join(lines) + "\n"


def _read_results(flow_result: Mapping[str, Any]) -> dict:
    return json.loads((Path(flow_result["out"]) / "results.json").read_text())


# ----- the flow ---------------------------------------------------------------------------
qa_task = task(stage_qa, name="label-check", cache_policy=NO_CACHE)
mix_task = task(stage_mix, name="mix", cache_policy=NO_CACHE)
release_task = task(stage_release, name="release", cache_policy=NO_CACHE)
report_task = task(stage_report, name="report", cache_policy=NO_CACHE)


@flow(name="pipeline")
def pipeline(params: str = "params.yaml", store: str | None = None, out: str | None = None,
             release: str | None = None, synth_images: int | None = None, train_steps: int | None = None,
             dask: bool = False, dask_address: str | None = None) -> dict:
    """The main job; returns the summary (stages, seconds, report path) and publishes it as an artifact."""
    from prefect.artifacts import create_markdown_artifact

    cfg = PipelineConfig.load(params, store=store, out=out, release=release, synth_images=synth_images,
                              train_steps=train_steps)
    cfg.check()
    line = Timeline()
    line.run("ingest", lambda: ingest_flow.ingest(store=str(cfg.store), params=None,
                                                  coco=ingest_flow.spec_dicts(cfg.coco),
                                                  labelme=ingest_flow.spec_dicts(cfg.labelme)))
    line.run("qa", lambda: qa_task(cfg))
    if cfg.synth is not None:
        runner = synth_flow.synth_with_runner(dask, dask_address or cfg.synth.dask_address, cfg.synth.slices)
        line.run("synth", lambda: runner(store=str(cfg.store), spec=asdict(cfg.synth)))
    else:
        line.run("synth", lambda: stage_synth(cfg))
    line.run("mix", lambda: mix_task(cfg))
    line.run("release", lambda: release_task(cfg))
    if cfg.train is not None:
        trained = train_flow.train(manifest=str(cfg.out / "mix"), out=str(cfg.out), store=str(cfg.store),
                                   spec=asdict(cfg.train), export=False)
        if not isinstance(trained, dict):  # the train flow was cancelled: its Cancelled state
            return trained
        line.results["train"] = {"metrics": trained["metrics"]}
        line.stages.append({"stage": "train", "status": "done", "seconds": trained["seconds"],
                            "detail": _detail("train", line.results["train"])})
        line.run("export", lambda: train_flow.export_task(cfg.train, str(cfg.out / "mix"), str(cfg.out / "train"),
                                                          str(cfg.out / "export"), str(cfg.store)))
    else:
        line.run("train", lambda: stage_train(cfg))
        line.run("export", lambda: stage_export(cfg))
    spec = compare_spec(cfg)
    if spec is None:
        line.run("compare", lambda: _compare_skipped(cfg))
    else:
        from posepipe.flows import experiment_flow

        line.run("compare", lambda: _compare_result(_read_results(experiment_flow.experiment(spec=spec.to_dict(), replace=True))))
    summary = line.summary(cfg)
    summary["report"] = report_task(cfg, summary)
    create_markdown_artifact(summary_markdown(summary), key=SUMMARY_ARTIFACT_KEY, description="posepipe run")
    return summary
