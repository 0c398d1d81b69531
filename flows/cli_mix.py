"""``posepipe mix``: build the training manifest (splits, weights, ratio) and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from .cli_common import JsonOption, RichProgress, StoreOption, emit_json, say

DEFAULT_PARAMS = Path("params.yaml")


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    @app.command("mix")
    def mix_cmd(
        out: Path = typer.Option(..., "--out", help="Folder for manifest.parquet, report.json and report.md."),
        real: Optional[List[str]] = typer.Option(
            None, "--real", help="Real source(s): repeat the flag or separate by commas (params: mix.real)."),
        synth: Optional[List[str]] = typer.Option(
            None, "--synth", help="Synthetic source(s), e.g. synth/run1; train-only (params: mix.synth)."),
        ratio: Optional[str] = typer.Option(
            None, "--ratio", help="SYNTHETIC:REAL per block, e.g. 1:3; 0:1 for real only (params: mix.ratio, else 1:3)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Sampler seed for training (params: mix.seed, else 0)."),
        split_seed: Optional[int] = typer.Option(
            None, "--split-seed", help="Seed of the per-image split; keep it fixed (params: mix.split_seed, else 0)."),
        val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of real images in val (0.1)."),
        test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Share of real images in test (0.1)."),
        weights: Optional[str] = typer.Option(
            None, "--weights", help="Weight scheme: visibility or uniform (params: mix.weights.scheme)."),
        min_keypoints: Optional[int] = typer.Option(
            None, "--min-keypoints", help="Leave out instances with fewer labelled joints (1)."),
        params: Optional[Path] = typer.Option(
            None, "--params", help="YAML whose mix: section gives the defaults (params.yaml when present)."),
        store: Path = StoreOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Split real data per image, weight instances by visibility, and write the training manifest."""
        from posepipe.datasets.coco import display_path
        from posepipe.datasets.mix import MixConfig, build_manifest, write_mix
        from posepipe.datasets.store import PoseStore

        section, where = _mix_section(params)
        real_sources = _names(real) or _names(section.get("real"))
        synth_sources = _names(synth) or _names(section.get("synth"))
        config = MixConfig.from_params(
            section, where, ratio=ratio, seed=seed, split_seed=split_seed, val_fraction=val_fraction,
            test_fraction=test_fraction, weights=weights, min_keypoints=min_keypoints,
        )
        result = build_manifest(PoseStore(store), real_sources, synth_sources, config,
                                progress=RichProgress(not json_out))
        paths = write_mix(result, out)
        report = result.report
        if json_out:
            emit_json({**report, "outputs": {k: display_path(p) for k, p in paths.items()}})
            return
        splits, epoch = report["splits"], report["epoch"]
        say(f"wrote {display_path(paths['manifest'])}: {result.manifest.num_rows} instances "
            f"(train {splits['train']['real']} real + {splits['train']['synthetic']} synthetic, "
            f"val {splits['val']['real']}, test {splits['test']['real']}; "
            f"{report['instances_excluded']} of {report['instances_read']} read left out)")
        say(f"ratio {report['ratio']}: epoch of {epoch['blocks']} blocks draws "
            f"{epoch['effective_ratio']['text']} synthetic:real; ESS real {report['ess']['real']:.1f}, "
            f"synthetic {report['ess']['synthetic']:.1f} (weights {config.weights})")
        for warning in report["warnings"]:
            say(f"warning: {warning}")
        say(f"report: {display_path(paths['summary'])}")


def _mix_section(params: Optional[Path]) -> tuple[dict[str, Any], str]:
    """The mix: section of the params file; an explicitly named file must exist."""
    import yaml

    from posepipe.datasets.errors import PosepipeError

    path = params or DEFAULT_PARAMS
    if not path.exists():
        if params is not None:
            raise PosepipeError(f"--params {path}: no such file")
        return {}, str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PosepipeError(f"{path}: cannot read it as YAML: {str(exc).splitlines()[0]}") from None
    section = doc.get("mix") if isinstance(doc, dict) else None
    if section is None:
        return {}, str(path)
    if not isinstance(section, dict):
        raise PosepipeError(f"{path}: mix: must be a mapping of settings")
    return section, str(path)


def _names(values: Any) -> list[str]:
    """Source names from repeated flags, comma-separated lists or a YAML list."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]
