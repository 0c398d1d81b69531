"""The ``posepipe`` command. Each area registers its commands from its own module.

Exit codes: 0 success; 1 the run finished but rejected records (only with --strict);
2 a usage or fatal input error, always with a one-line reason on stderr.
"""

from __future__ import annotations

import sys

import typer

from posepipe.datasets.errors import PosepipeError

app = typer.Typer(
    name="posepipe",
    help="Pose dataset pipeline: ingest, synthesise, mix, version, train and export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ingest_app = typer.Typer(help="Ingest labelled data into the store.", no_args_is_help=True)
export_app = typer.Typer(help="Export data out of the store.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(export_app, name="export")

from posepipe.flows import cli_store  # noqa: E402  (registers its commands on the apps above)

cli_store.register(app, ingest_app, export_app)
from posepipe.flows import cli_synth  # noqa: E402

cli_synth.register(app, ingest_app, export_app)
from posepipe.flows import cli_orchestrate  # noqa: E402

cli_orchestrate.register(app, ingest_app, export_app)
from posepipe.flows import cli_version  # noqa: E402

cli_version.register(app, ingest_app, export_app)
from posepipe.flows import cli_train  # noqa: E402

cli_train.register(app, ingest_app, export_app)
from posepipe.flows import cli_annotate  # noqa: E402

cli_annotate.register(app, ingest_app, export_app)
from posepipe.flows import cli_mix  # noqa: E402

cli_mix.register(app, ingest_app, export_app)
from posepipe.flows import cli_models  # noqa: E402

cli_models.register(app, ingest_app, export_app)
from posepipe.flows import cli_experiment  # noqa: E402

cli_experiment.register(app, ingest_app, export_app)


def main(argv: list[str] | None = None) -> None:
    """Typer handles usage errors (exit 2); user errors from posepipe get one line, exit 2."""
    try:
        app(args=argv)
    except PosepipeError as exc:
        sys.stderr.write(f"posepipe: error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
