"""Where Prefect keeps its state: a project-local PREFECT_HOME, or the server PREFECT_API_URL names.

With nothing configured, flows run on Prefect's ephemeral API (an in-process server on SQLite)
with its home in ``<project>/.prefect``, so no server has to be started and run history stays
beside the project. ``PREFECT_API_URL`` (a server from ``posepipe server`` or Prefect Cloud) wins:
then every run reports there. Prefect reads its settings when it is first imported, so
:func:`configure` must run before ``import prefect`` (every flow module calls it first).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_HOME_NAME = ".prefect"


def project_root() -> Path:
    """The folder holding params.yaml (the working directory when run from the project)."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").exists():
            return folder
    return here


def configure(home: str | os.PathLike | None = None) -> dict[str, str]:
    """Set Prefect's environment defaults (never overriding what the user set); returns them."""
    chosen: dict[str, str] = {}
    if "PREFECT_HOME" not in os.environ:
        chosen["PREFECT_HOME"] = str(Path(home) if home else project_root() / PROJECT_HOME_NAME)
    if not os.environ.get("PREFECT_API_URL"):
        # Ephemeral mode: Prefect starts its API itself, on SQLite under PREFECT_HOME.
        chosen["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
    chosen["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no telemetry calls from an offline machine
    # Flow runs are tracked, their results need not be pickled to disk (they are small dicts).
    chosen["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "false"
    # Keep the console for posepipe's own output; Prefect's logs stay available in the UI/API.
    chosen["PREFECT_LOGGING_LEVEL"] = os.environ.get("POSEPIPE_PREFECT_LOG_LEVEL", "WARNING")
    for key, value in chosen.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return {key: os.environ[key] for key in chosen}


def describe() -> str:
    """One line saying where runs are recorded."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return f"Prefect API {url}"
    return f"Prefect ephemeral API, history in {os.environ.get('PREFECT_HOME', PROJECT_HOME_NAME)}"
