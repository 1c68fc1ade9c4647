"""The ``taskgauge`` command line (docs/dashboard.md): one Typer app, its commands in three modules.

* :mod:`app.cli.local`: ``analyse`` (a file locally, or a dataset id on the server);
* :mod:`app.cli.remote`: the API client commands (``upload``, ``datasets``, ``status``, ``watch``, ``report``,
  ``compare``, ``schedule``, ``workers``);
* :mod:`app.cli.service`: running the service (``serve``, ``worker``, ``beat``, ``db``, ``keys``).

What they share (the ``-e``/``--param`` parser, the ingest options, the renderer, ``fail``) is
:mod:`app.cli.common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli import local, remote, service
from app.cli.common import BadInput, build_requests, fail, parse_param
from taskgauge.render import render_report

__all__ = ["BadInput", "build_requests", "cli", "fail", "main", "parse_param", "render_report"]

cli = typer.Typer(
    name="taskgauge",
    help=(
        "taskgauge measures how hard a supervised task is before you train on it: intrinsic dimension "
        "(mle, twonn, gride), label sharpness, inductive-bias complexity and subspace-training d_int90.\n\n"
        "Quick start (no server needed):\n\n"
        "  taskgauge analyse examples/digits.npz\n\n"
        "  taskgauge analyse data.csv --label-column species -e mle -e label_sharpness\n\n"
        "  taskgauge analyse examples/digits.npz --json report.json\n\n"
        "Every command honours the TASKGAUGE_* settings (e.g. TASKGAUGE_DATA_DIR, TASKGAUGE_DEVICE). "
        "Run `taskgauge COMMAND --help` for examples of each command."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from taskgauge.version import taskgauge_version

        typer.echo(f"taskgauge {taskgauge_version()}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """taskgauge: how hard is this supervised task?"""


local.register(cli)
remote.register(cli)
service.register(cli)


def main() -> None:
    """Console-script entry point (``taskgauge = app.cli:main``)."""
    cli()
