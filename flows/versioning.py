"""Dataset releases with real git and DVC: release, pull, diff, open_release.

DVC owns hashing, lineage and storage (``dvc repro``, ``dvc push``, ``DVCFileSystem``); git
owns the release record (``dvc.lock``, the release card, the ``dataset/NAME`` tag). Commands
run without a shell, with argument lists.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from posepipe.datasets import release_card
from posepipe.datasets.atomic import write_bytes, write_text
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.store import PoseStore

TAG_PREFIX = "dataset/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _env() -> dict[str, str]:
    """Stages call ``posepipe``: make sure this interpreter's scripts are first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _run(args: list[str], cwd: Path, what: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env())
    if check and proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        reason = next((ln.strip() for ln in reversed(tail) if ln.strip().startswith("ERROR")), tail[-1] if tail else "")
        raise PosepipeError(f"{what} failed (exit {proc.returncode}): {reason.strip()}")
    return proc


def git(repo: Path, *args: str, what: str | None = None, check: bool = True) -> str:
    return _run(["git", *args], repo, what or f"git {args[0]}", check).stdout.strip()


def dvc(repo: Path, *args: str, what: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], repo, what or f"dvc {args[0]}", check)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise PosepipeError(f"invalid release name {name!r}: use letters, digits, '.', '_' and '-' (e.g. 2026-11-a)")
    return name


def load_params(repo: Path) -> dict:
    path = repo / "params.yaml"
    if not path.exists():
        raise PosepipeError(f"{path}: no params.yaml in the repository")
    return yaml.safe_load(path.read_text()) or {}


def release_paths(params: dict) -> tuple[str, str]:
    section = params.get("release") or {}
    return section.get("store", params.get("store", "data/store")), section.get("manifest", "data/mix")


def ensure_remote(repo: Path) -> str:
    """The default DVC remote; a local directory remote is created on first use.

    Its location: $POSEPIPE_DVC_REMOTE, else ``<repo>.dvc-storage`` beside the repository.
    Cloud remotes (S3, GCS, Azure, SSH) are configured with ``dvc remote add -d`` as usual;
    credentials go in ``.dvc/config.local`` (``dvc remote modify --local``), never in git.
    """
    proc = dvc(repo, "remote", "default", check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip()
    path = Path(os.environ.get("POSEPIPE_DVC_REMOTE") or repo.resolve().parent / f"{repo.resolve().name}.dvc-storage")
    path.mkdir(parents=True, exist_ok=True)
    dvc(repo, "remote", "add", "-d", "local", str(path.resolve()), what="adding the local DVC remote")
    return "local"


def release(name: str, repo: Path = Path("."), *, targets: list[str] | None = None, log=print) -> dict:
    """dvc repro, dvc push, commit dvc.lock and the release card, tag dataset/NAME.

    Nothing is tagged unless every step succeeded; each failure says which step and why.
    """
    check_name(name)
    repo = repo.resolve()
    if git(repo, "tag", "--list", TAG_PREFIX + name):
        raise PosepipeError(f"release {name} already exists (tag {TAG_PREFIX}{name})")
    dirty = git(repo, "status", "--porcelain", what="checking the working tree")
    if dirty:
        first = dirty.splitlines()[0][3:]
        raise PosepipeError(f"working tree is dirty ({len(dirty.splitlines())} changes, e.g. {first}); "
                            "commit or stash first: no release made")
    try:
        if (repo / "dvc.yaml").exists():  # a data repository made by `posepipe run` has no stages
            log(f"dvc repro {' '.join(targets or [])}".strip())
            dvc(repo, "repro", *(targets or []), what="dvc repro (a pipeline stage)")
        remote = ensure_remote(repo)
        log(f"dvc push -r {remote}")
        pushed = dvc(repo, "push", what=f"dvc push to remote {remote!r}").stdout.strip()
    except PosepipeError as exc:
        raise PosepipeError(f"{exc}; release {name} not made, nothing tagged") from None
    params = load_params(repo)
    store_rel, manifest_rel = release_paths(params)
    card = release_card.build_card(name, PoseStore(repo / store_rel), repo / manifest_rel, params,
                                   git(repo, "rev-parse", "HEAD"), repo)
    card["pushed"] = pushed.splitlines()[-1] if pushed else ""
    cards = repo / "releases"
    write_text(cards / f"{name}.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    write_text(cards / f"{name}.md", release_card.card_markdown(card))
    git(repo, "add", "-A", what="staging the release")
    git(repo, "commit", "-q", "-m", f"Dataset release {name}", what="committing the release")
    git(repo, "tag", "-a", TAG_PREFIX + name, "-m", f"Dataset release {name}", what="tagging the release")
    log(f"tagged {TAG_PREFIX}{name}")
    return card


def release_run(name: str, out: Path, store: Path, manifest: Path, params: dict, *, log=print) -> dict:
    """Release what one ``posepipe run`` produced: ``out`` becomes a git+DVC data repository.

    The run's store and manifest are tracked with ``dvc add`` (content-addressed shards, so a
    later run re-pushes only new shards), the run's params are written beside them, and the
    same :func:`release` tags ``dataset/NAME``; ``posepipe pull NAME --repo OUT`` gets it back.
    """
    check_name(name)
    out = out.resolve()
    rel = {}
    for key, path in (("store", store), ("manifest", manifest)):
        try:
            rel[key] = path.resolve().relative_to(out).as_posix()
        except ValueError:
            raise PosepipeError(f"a run release needs its {key} inside {out} (it is {path})") from None
    if not (out / ".git").exists():
        git(out, "init", "-q", "-b", "main", what="creating the data repository")
    if not git(out, "config", "user.email", check=False):
        git(out, "config", "user.email", "posepipe@localhost")
        git(out, "config", "user.name", "posepipe")
    if not (out / ".dvc").exists():
        dvc(out, "init", "-q", what="dvc init")
        dvc(out, "config", "core.analytics", "false")
    # Only the released data and its record are versioned; the rest of the run folder is not.
    keep = ["/.gitignore", "/.dvcignore", "/.dvc/", "/params.yaml", "/*.dvc", "/releases/"]
    write_text(out / ".gitignore", "/*\n" + "".join(f"!{k}\n" for k in keep))
    _ignore_store_locks(out / ".dvcignore")
    write_text(out / "params.yaml", yaml.safe_dump({**params, "release": rel}, sort_keys=False))
    dvc(out, "add", rel["store"], rel["manifest"], what="dvc add of the run's store and manifest")
    git(out, "add", "-A", what="staging the run's data")
    if git(out, "status", "--porcelain"):
        git(out, "commit", "-q", "-m", f"posepipe run: data for release {name}", what="committing the run's data")
    return release(name, out, log=log)


STORE_LOCKS = (".lock", ".locks/")  # the store's lock files (datasets/store.py): not data


def _ignore_store_locks(dvcignore: Path) -> None:
    """Keep the store's empty lock files out of what ``dvc add`` hashes and pushes."""
    text = dvcignore.read_text() if dvcignore.exists() else ""
    missing = [p for p in STORE_LOCKS if p not in text.splitlines()]
    if missing:
        write_text(dvcignore, text + ("" if text.endswith("\n") or not text else "\n")
                   + "# posepipe store lock files\n" + "".join(f"{p}\n" for p in missing))


def read_card(name: str, repo: str | Path = ".") -> dict:
    """The card of a release, from its tag (works on a local path or a repository URL)."""
    from dvc.api import DVCFileSystem

    check_name(name)
    try:
        fs = DVCFileSystem(url=str(repo), rev=TAG_PREFIX + name)
        return json.loads(fs.read_text(f"releases/{name}.json"))
    except PosepipeError:
        raise
    except Exception as exc:  # DVC/scmrepo raise many types for "no such revision"
        raise PosepipeError(f"release {name} not found in {repo} ({type(exc).__name__}: {exc})") from None


def pull(name: str, to: Path, repo: str | Path = ".", *, log=print) -> dict:
    """Materialise release NAME into ``to``: store tables, shards, manifest, COCO json per split."""
    from dvc.api import DVCFileSystem

    card = read_card(name, repo)
    fs = DVCFileSystem(url=str(repo), rev=TAG_PREFIX + name)
    to = Path(to)
    for key in ("store", "manifest"):
        rel = card["paths"][key]
        log(f"pulling {rel}")
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get(rel, str(to / rel), recursive=True)
    problems = []
    for rel, info in card["files"].items():
        path = to / rel
        if not path.exists():
            problems.append(f"{rel} missing")
        elif release_card.file_sha256(path) != info["sha256"]:
            problems.append(f"{rel} differs from the release")
    if problems:
        raise PosepipeError(f"release {name} pulled incompletely: {problems[0]} ({len(problems)} problems)")
    _write_coco(to, card)
    write_text(to / "release.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def _write_coco(to: Path, card: dict) -> None:
    import pyarrow.parquet as pq

    from posepipe.datasets.coco_export import coco_dict, dumps

    store = PoseStore(to / card["paths"]["store"])
    manifest = pq.read_table(to / card["paths"]["manifest"] / "manifest.parquet", columns=["instance_id", "split", "source"])
    rows = manifest.to_pylist()
    for split in sorted({r["split"] for r in rows}):
        ids = [r["instance_id"] for r in rows if r["split"] == split]
        sources = sorted({r["source"] for r in rows if r["split"] == split})
        doc, _ = coco_dict(store, sources, instance_ids=ids)
        write_bytes(to / "coco" / f"{split}.json", dumps(doc))


def diff(a: str, b: str, repo: str | Path = ".") -> dict[str, Any]:
    return release_card.diff_cards(read_card(a, repo), read_card(b, repo))


def open_release(name: str, repo: str | Path = ".", *, cache_dir: str | Path | None = None, split: str = "train"):
    """(manifest as a pandas DataFrame, torch Dataset over ``split``) for release NAME.

    The release is pulled once into ``cache_dir`` (default ~/.cache/posepipe/releases/NAME).
    """
    import pandas as pd

    from posepipe.datasets.instance_dataset import InstanceDataset

    root = Path(cache_dir or Path.home() / ".cache" / "posepipe" / "releases" / name)
    if not (root / "release.json").exists():
        pull(name, root, repo, log=lambda _msg: None)
    card = json.loads((root / "release.json").read_text())
    manifest = pd.read_parquet(root / card["paths"]["manifest"] / "manifest.parquet")
    subset = manifest[manifest["split"] == split].reset_index(drop=True)
    return manifest, InstanceDataset(subset, PoseStore(root / card["paths"]["store"]))
