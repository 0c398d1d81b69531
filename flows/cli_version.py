"""Versioning commands: release, pull, diff (real git + DVC, see flows/versioning.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import JsonOption, emit_json, say


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    @app.command("release")
    def release_cmd(
        name: str = typer.Argument(..., help="Release name, tagged as dataset/NAME (e.g. 2026-11-a)."),
        repo: Path = typer.Option(Path("."), "--repo", help="The posepipe repository (git + DVC)."),
        target: Optional[List[str]] = typer.Option(None, "--target", help="Only reproduce these stages."),
        json_out: bool = JsonOption,
    ) -> None:
        """dvc repro, dvc push, commit dvc.lock and a release card, tag dataset/NAME."""
        from .versioning import release

        card = release(name, repo, targets=target, log=(lambda m: None) if json_out else say)
        if json_out:
            emit_json(card)
        else:
            total = sum(s["instances"] for s in card["sources"].values())
            say(f"release {name}: {len(card['sources'])} sources, {total} instances; card releases/{name}.md")

    @app.command("pull")
    def pull_cmd(
        name: str = typer.Argument(..., help="Release name."),
        to: Path = typer.Option(..., "--to", help="Folder to materialise the release into."),
        repo: str = typer.Option(".", "--repo", help="Repository path or URL holding the release tag."),
        json_out: bool = JsonOption,
    ) -> None:
        """Materialise a release: manifest, store tables, image shards and COCO json per split."""
        from .versioning import pull

        card = pull(name, to, repo, log=(lambda m: None) if json_out else say)
        if json_out:
            emit_json({"name": name, "to": str(to), "files": len(card["files"])})
        else:
            say(f"pulled release {name} into {to}: {len(card['files'])} files verified, COCO json in {to / 'coco'}")

    @app.command("diff")
    def diff_cmd(
        a: str = typer.Argument(..., help="Older release."),
        b: str = typer.Argument(..., help="Newer release."),
        repo: str = typer.Option(".", "--repo", help="Repository path or URL."),
        json_out: bool = JsonOption,
    ) -> None:
        """What changed between two releases: sources, counts by source and split, visibility, params."""
        from .versioning import diff

        d = diff(a, b, repo)
        if json_out:
            emit_json(d)
            return
        typer.echo(f"{a} -> {b}")
        for s in d["sources_added"]:
            typer.echo(f"+ source {s}")
        for s in d["sources_removed"]:
            typer.echo(f"- source {s}")
        for s, change in d["sources_changed"].items():
            typer.echo(f"~ source {s}: {change}")
        for s, splits in d["instances_by_source_and_split"].items():
            for split, ab in splits.items():
                typer.echo(f"  {s} {split}: {ab['a']} -> {ab['b']}")
        for k, ab in d["params"].items():
            typer.echo(f"  param {k}: {ab['a']!r} -> {ab['b']!r}")
