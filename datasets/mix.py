"""The training manifest: which instances train, validate and test, and how often each is drawn.

``build_manifest(store, real, synth, config)`` reads the instances of the given sources and
returns one row per instance kept (``MANIFEST_SCHEMA``) plus a report. Rules:

* val and test hold real instances only; the split is per image (``splits.py``), so an image
  never appears in two splits, whatever source brings it;
* synthetic instances are train-only; one whose image is also a real val/test image is left out
  (``image_held_out``), so no held-out picture leaks into training;
* crowd instances and instances with fewer than ``min_keypoints`` labelled joints are left out
  with their reason; every instance read is counted as included or excluded, per source;
* weights come from ``weights.py``, fitted per source kind on its train rows.

``write_mix`` writes ``manifest.parquet``, ``report.json`` and ``report.md`` atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import atomic, schema, splits
from . import weights as weighting
from .errors import PosepipeError
from .mix_plan import KINDS, MixPlan, format_ratio, parse_ratio
from .progress import NoProgress, Progress
from .store import PoseStore

MANIFEST_SCHEMA = pa.schema(
    [
        ("instance_id", pa.string()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("source_kind", pa.string()),  # "real" or "synthetic"
        ("split", pa.string()),  # "train", "val" or "test"
        ("weight", pa.float64()),  # relative draw weight within its source kind
        ("labelled_joints", pa.int8()),  # joints with v > 0
        ("occluded_joints", pa.int8()),  # joints with v == 1
    ]
)

# Why an instance read from the store is not in the manifest.
EXCLUDE_REASONS: dict[str, str] = {
    "crowd": "a crowd annotation (iscrowd), not one person",
    "too_few_keypoints": "fewer labelled joints than min_keypoints",
    "image_held_out": "a synthetic instance whose image is a real val/test image (synthetic data is train-only)",
}
_REASON_CODES = {name: i + 1 for i, name in enumerate(EXCLUDE_REASONS)}  # 0: included


@dataclass(frozen=True)
class MixConfig:
    ratio: tuple[int, int] = (1, 3)
    seed: int = 0  # the sampler's seed, recorded for training and used for the report's epoch 0
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    weights: str = weighting.DEFAULT_SCHEME
    weight_params: weighting.WeightParams = field(default_factory=weighting.WeightParams)
    min_keypoints: int = 1
    include_crowd: bool = False
    replacement: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", parse_ratio(self.ratio))
        splits.check_fractions(self.val_fraction, self.test_fraction)
        weighting.check_scheme(self.weights)
        if not 0 <= self.min_keypoints <= schema.NUM_JOINTS:
            raise PosepipeError(f"mix: min_keypoints must be in 0..{schema.NUM_JOINTS}, got {self.min_keypoints}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, where: str = "params.yaml", **overrides: Any) -> "MixConfig":
        """Config from a params.yaml ``mix:`` section (``weights:`` a mapping), then overrides that are not None."""
        section = dict(section or {})
        for key in ("real", "synth"):  # source lists belong to the caller, not the config
            section.pop(key, None)
        known = {f.name for f in fields(cls)} - {"weight_params"}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key == "weights":
                values.update(_weights_section(value, where))
            elif key in known:
                values[key] = value
            else:
                raise PosepipeError(f"{where}: mix.{key} is not a mix setting (known: {', '.join(sorted(known))})")
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise PosepipeError(f"{where}: mix: {exc}") from None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ratio"] = format_ratio(self.ratio)
        out["weight_params"] = self.weight_params.to_dict()
        return out


def _weights_section(value: Any, where: str) -> dict:
    if isinstance(value, str):
        return {"weights": value}
    if not isinstance(value, Mapping):
        raise PosepipeError(f"{where}: mix.weights must be a scheme name or a mapping with 'scheme'")
    value = dict(value)
    out: dict[str, Any] = {}
    if "scheme" in value:
        out["weights"] = value.pop("scheme")
    allowed = {f.name for f in fields(weighting.WeightParams)}
    for key in value:
        if key not in allowed:
            raise PosepipeError(f"{where}: mix.weights.{key} is not a weight parameter (known: {', '.join(sorted(allowed))})")
    out["weight_params"] = weighting.WeightParams(**{k: float(v) for k, v in value.items()})
    return out


@dataclass
class ManifestArrays:
    """The vectorised core's result: the manifest plus per-row codes for the report."""

    table: pa.Table  # MANIFEST_SCHEMA, included rows only
    included: np.ndarray  # bool per input row
    reason: np.ndarray  # int8 per input row: 0 included, else _REASON_CODES
    split: np.ndarray  # int8 per input row: index into splits.SPLITS


@dataclass
class MixResult:
    manifest: pa.Table
    report: dict


def manifest_from_arrays(
    instance_id: pa.Array,
    image_id: pa.Array,
    source: pa.Array,
    is_synthetic: np.ndarray,
    visibility: np.ndarray,
    iscrowd: np.ndarray | None,
    config: MixConfig,
) -> ManifestArrays:
    """Splits, exclusions and weights for N instances, vectorised (a million take well under a second)."""
    is_synthetic = np.asarray(is_synthetic, dtype=bool)
    labelled = (visibility > 0).sum(axis=1).astype(np.int8)
    occluded = (visibility == schema.VISIBILITY_OCCLUDED).sum(axis=1).astype(np.int8)
    image_u64 = splits.ids_to_uint64(image_id)
    split = splits.assign_splits(image_u64, config.split_seed, config.val_fraction, config.test_fraction)

    reason = np.zeros(len(is_synthetic), dtype=np.int8)
    reason[labelled < config.min_keypoints] = _REASON_CODES["too_few_keypoints"]
    if iscrowd is not None and not config.include_crowd:
        reason[np.asarray(iscrowd, dtype=bool)] = _REASON_CODES["crowd"]
    # Synthetic rows are train; a picture that is also a held-out real image stays out of training.
    held_out_real = np.unique(image_u64[~is_synthetic & (split != 0)])
    leak = is_synthetic & (split != 0) & np.isin(image_u64, held_out_real)
    reason[leak & (reason == 0)] = _REASON_CODES["image_held_out"]
    split[is_synthetic] = 0
    included = reason == 0

    weight = np.zeros(len(is_synthetic), dtype=np.float64)
    for kind_mask in (is_synthetic, ~is_synthetic):
        rows = np.flatnonzero(kind_mask & included)
        pool = split[rows] == 0
        weight[rows] = weighting.compute_weights(visibility[rows], config.weights, config.weight_params, pool=pool)

    keep = pa.array(included)
    kinds = np.where(is_synthetic, 1, 0)[included]
    table = pa.Table.from_arrays(
        [
            _filter(instance_id, keep),
            _filter(image_id, keep),
            _filter(source, keep),
            pc.take(pa.array(["real", "synthetic"]), pa.array(kinds)),
            pc.take(pa.array(list(splits.SPLITS)), pa.array(split[included])),
            pa.array(weight[included]),
            pa.array(labelled[included]),
            pa.array(occluded[included]),
        ],
        schema=MANIFEST_SCHEMA,
    )
    return ManifestArrays(table, included, reason, split)


def _filter(values, mask: pa.Array) -> pa.Array:
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=pa.string())
    return pc.filter(arr, mask).cast(pa.string())


def build_manifest(
    store: PoseStore,
    real: Iterable[str],
    synth: Iterable[str] = (),
    config: MixConfig | None = None,
    *,
    progress: Progress | None = None,
) -> MixResult:
    """Read the sources' instances from the store and build the manifest and its report."""
    config = config or MixConfig()
    progress = progress or NoProgress()
    real, synth = _dedupe(real), _dedupe(synth)
    _check_sources(store, real, synth, config)

    parts, kinds = [], []
    columns = ["instance_id", "image_id", "source", "keypoints", "iscrowd"]
    for name in progress.track(real + synth, len(real) + len(synth), "reading instances"):
        table = store.instances([name]).select(columns)
        parts.append(table)
        kinds.append(np.full(table.num_rows, name in synth, dtype=bool))
    instances = pa.concat_tables(parts)
    is_synthetic = np.concatenate(kinds)
    if not (~is_synthetic).any():
        raise PosepipeError(
            f"no real data: the real source(s) {', '.join(real)} hold no instances in the store {store.root}"
        )
    keypoints = schema.keypoints_from_arrow(instances.column("keypoints"))
    visibility = weighting.visibility_flags(keypoints)
    iscrowd = pc.fill_null(instances.column("iscrowd"), False).to_numpy()
    arrays = manifest_from_arrays(
        instances.column("instance_id"), instances.column("image_id"), instances.column("source"),
        is_synthetic, visibility, iscrowd, config,
    )
    if not (arrays.table.column("source_kind").to_numpy(zero_copy_only=False) == "real").any():
        raise PosepipeError(
            f"no real data: every instance of {', '.join(real)} was excluded "
            f"(min_keypoints={config.min_keypoints}, include_crowd={config.include_crowd})"
        )
    report = mix_report(store, real, synth, config, instances.column("source"), keypoints, arrays)
    return MixResult(arrays.table, report)


def _dedupe(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name not in out:
            out.append(name)
    return out


def _check_sources(store: PoseStore, real: list[str], synth: list[str], config: MixConfig) -> None:
    if not real:
        raise PosepipeError("no real data: name at least one real source (--real); val and test come from real data only")
    both = sorted(set(real) & set(synth))
    if both:
        raise PosepipeError(f"source {both[0]!r} is given as both real and synthetic")
    known = store.sources()
    for name in real + synth:
        if name not in known:
            raise PosepipeError(f"source {name!r} is not in the store {store.root} (known: {', '.join(known) or 'none'})")
    if config.ratio[0] and not synth:
        raise PosepipeError(
            f"ratio {format_ratio(config.ratio)} asks for synthetic data but no synthetic source was given "
            "(--synth); use --ratio 0:1 for a real-only mix"
        )


def mix_report(
    store: PoseStore,
    real: list[str],
    synth: list[str],
    config: MixConfig,
    source_column: pa.ChunkedArray,
    keypoints: np.ndarray,
    arrays: ManifestArrays,
) -> dict:
    """Counts per source and split, the epoch's effective ratio, weight statistics, ESS, visibility."""
    table = arrays.table
    is_synth_row = pc.equal(table.column("source_kind"), "synthetic").to_numpy(zero_copy_only=False)
    split_of_row = arrays.split[arrays.included]
    source_of_input = source_column.to_numpy(zero_copy_only=False) if len(source_column) else np.array([])
    reasons = list(EXCLUDE_REASONS)

    sources = {}
    for name in real + synth:
        rows = source_of_input == name
        kept = rows & arrays.included
        excluded = {r: int((rows & (arrays.reason == _REASON_CODES[r])).sum()) for r in reasons}
        sources[name] = {
            "kind": "synthetic" if name in synth else "real",
            "read": int(rows.sum()),
            "included": int(kept.sum()),
            "excluded": {r: n for r, n in excluded.items() if n},
            "splits": {s: int((kept & (arrays.split == i)).sum()) for i, s in enumerate(splits.SPLITS)},
            "visibility": schema.visibility_histogram(keypoints[kept]),
            "visibility_by_split": {
                s: schema.visibility_histogram(keypoints[kept & (arrays.split == i)]) for i, s in enumerate(splits.SPLITS)
            },
        }
        assert sources[name]["read"] == sources[name]["included"] + sum(excluded.values())

    image_ids = table.column("image_id")
    split_counts = {}
    for i, s in enumerate(splits.SPLITS):
        in_split = split_of_row == i
        split_counts[s] = {
            "real": int((in_split & ~is_synth_row).sum()),
            "synthetic": int((in_split & is_synth_row).sum()),
            "images": len(pc.unique(pc.filter(image_ids, pa.array(in_split)))),
        }

    train = split_of_row == 0
    weight = table.column("weight").to_numpy()
    kind_rows = {"synthetic": train & is_synth_row, "real": train & ~is_synth_row}
    weight_report = {"scheme": config.weights, "params": config.weight_params.to_dict()}
    cap = config.weight_params.cap if config.weights != "uniform" else None
    for kind, mask in kind_rows.items():
        weight_report[kind] = weighting.weight_stats(weight[mask], cap)

    epoch, warnings = _epoch_report(config, table.column("source_kind"), weight, train, kind_rows)
    read = sum(s["read"] for s in sources.values())
    included = sum(s["included"] for s in sources.values())
    return {
        "store": str(store.root),
        "real_sources": real,
        "synthetic_sources": synth,
        "params": config.to_dict(),
        "instances_read": read,
        "instances_included": included,
        "instances_excluded": read - included,
        "exclude_reasons": {r: EXCLUDE_REASONS[r] for r in reasons},
        "sources": sources,
        "splits": split_counts,
        "ratio": format_ratio(config.ratio),
        "pool_ratio": _pool_ratio(split_counts["train"]),
        "epoch": epoch,
        "effective_ratio": epoch["effective_ratio"],
        "ess": {kind: weight_report[kind].get("ess", 0.0) for kind in KINDS},
        "weights": weight_report,
        "warnings": warnings,
    }


def _pool_ratio(train: dict) -> dict:
    """What the train pool holds, before sampling: synthetic instances per real one."""
    per_real = train["synthetic"] / train["real"] if train["real"] else None
    return {"synthetic": train["synthetic"], "real": train["real"], "synthetic_per_real": per_real}


def _epoch_report(config, kind_column, weight, train, kind_rows) -> tuple[dict, list[str]]:
    """Epoch 0 drawn exactly as MixedRatioSampler draws it (one rank), counted back."""
    train_mask = pa.array(train)
    plan = MixPlan(pc.filter(kind_column, train_mask).to_pandas(), weight[train], config.ratio,
                   replacement=config.replacement)
    num_blocks = plan.default_blocks()
    blocks = plan.blocks(config.seed, 0, num_blocks)
    synthetic_row = np.zeros(int(train.sum()), dtype=bool)
    synthetic_row[plan.rows["synthetic"]] = True
    drawn_synthetic = synthetic_row[blocks]
    synth_draws, real_draws = int(drawn_synthetic.sum()), int((~drawn_synthetic).sum())
    share = synth_draws / blocks.size
    repeats = {}
    for kind in KINDS:
        n = int(kind_rows[kind].sum())
        need = plan.needed(kind, num_blocks)
        drawn = blocks[drawn_synthetic] if kind == "synthetic" else blocks[~drawn_synthetic]
        repeats[kind] = {
            "train_instances": n,
            "draws_per_epoch": need,
            "distinct_drawn": int(len(np.unique(drawn))),
            "draws_per_instance": need / n if n else 0.0,
        }
    epoch = {
        "blocks": num_blocks,
        "block_size": plan.block_size,
        "samples": int(blocks.size),
        "synthetic_draws": synth_draws,
        "real_draws": real_draws,
        "effective_ratio": {
            "synthetic_share": share,
            "real_share": 1.0 - share,
            "text": f"{synth_draws}:{real_draws}",
        },
        "with_replacement": plan.with_replacement(num_blocks),
        "per_kind": repeats,
    }
    warnings = []
    synth = repeats["synthetic"]
    if config.ratio[0] and synth["train_instances"] < synth["draws_per_epoch"]:
        warnings.append(
            f"synthetic: {synth['train_instances']} train instances but an epoch at ratio "
            f"{format_ratio(config.ratio)} draws {synth['draws_per_epoch']}: they are sampled with replacement, "
            f"about {synth['draws_per_instance']:.2f} times each per epoch"
        )
    epoch["synthetic_short"] = bool(warnings)
    return epoch, warnings


def write_mix(result: MixResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """manifest.parquet, report.json and report.md under ``out_dir``, each written atomically."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PosepipeError(f"--out {out}: exists and is not a folder")
    paths = {"manifest": out / "manifest.parquet", "report": out / "report.json", "summary": out / "report.md"}
    atomic.write_parquet(paths["manifest"], result.manifest)
    atomic.write_text(paths["report"], json.dumps(result.report, indent=2, sort_keys=False) + "\n")
    atomic.write_text(paths["summary"], report_markdown(result.report))
    return paths


def report_markdown(report: dict) -> str:
    """A human summary of the report."""
    lines = [
        "# Training mix",
        "",
        f"Store `{report['store']}`; real: {', '.join(report['real_sources'])}; "
        f"synthetic: {', '.join(report['synthetic_sources']) or 'none'}.",
        f"Ratio {report['ratio']} (synthetic:real); epoch 0 drew {report['epoch']['effective_ratio']['text']} "
        f"(synthetic share {report['epoch']['effective_ratio']['synthetic_share']:.4f}) in "
        f"{report['epoch']['blocks']} blocks of {report['epoch']['block_size']}.",
        f"Instances read {report['instances_read']}, included {report['instances_included']}, "
        f"excluded {report['instances_excluded']}.",
        "",
        "| source | kind | read | included | excluded | train | val | test | v=0 | v=1 | v=2 |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in report["sources"].items():
        excluded = ", ".join(f"{k} {v}" for k, v in s["excluded"].items()) or "0"
        v = s["visibility"]
        lines.append(
            f"| {name} | {s['kind']} | {s['read']} | {s['included']} | {excluded} | {s['splits']['train']} | "
            f"{s['splits']['val']} | {s['splits']['test']} | {v['v0']} | {v['v1']} | {v['v2']} |"
        )
    lines += ["", "| split | real | synthetic | images |", "| --- | ---: | ---: | ---: |"]
    for name, s in report["splits"].items():
        lines.append(f"| {name} | {s['real']} | {s['synthetic']} | {s['images']} |")
    w = report["weights"]
    lines += ["", f"Weights: scheme `{w['scheme']}`, params {json.dumps(w['params'])}.", "",
              "| kind | count | min | mean | max | p90 | ESS | ESS share |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in KINDS:
        s = w[kind]
        if not s.get("count"):
            lines.append(f"| {kind} | 0 | | | | | | |")
            continue
        lines.append(f"| {kind} | {s['count']} | {s['min']:.3f} | {s['mean']:.3f} | {s['max']:.3f} | "
                     f"{s['p90']:.3f} | {s['ess']:.1f} | {s['ess_fraction']:.3f} |")
    if report["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {text}" for text in report["warnings"]]
    return "\n".join(lines) + "\n"
