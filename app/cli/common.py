"""What every ``taskgauge`` command shares: the one parser of ``-e``/``--param`` and of the ingest options, the
one report renderer, the one way to fail (a styled line on stderr, exit 2 for bad input, no traceback).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

EXIT_BAD_INPUT = 2

ESTIMATOR_HELP = "Estimator to run (repeatable, or comma-separated). Default: mle, twonn, gride."
PARAM_HELP = "Estimator parameter (repeatable); VALUE is JSON when it parses (20, true, [5, 10]), else text."

EstimatorOpt = Annotated[list[str] | None, typer.Option("--estimator", "-e", metavar="NAME", help=ESTIMATOR_HELP)]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", metavar="NAME.KEY=VALUE", help=PARAM_HELP)]
LabelColumnOpt = Annotated[
    str | None,
    typer.Option("--label-column", "-l", metavar="NAME", help="Label column of a table (default: label/y/target)."),
]
ResizeOpt = Annotated[
    str | None,
    typer.Option("--resize", metavar="HxW", help="Resize every image of a .zip to height×width, e.g. 32x32."),
]
TextColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--text-column",
        metavar="NAME",
        help="Column of a .csv/.parquet holding texts: a text dataset (a .jsonl file always is one).",
    ),
]
GrayscaleOpt = Annotated[bool, typer.Option("--grayscale", help="Convert the images of a .zip to one channel.")]
ModelSpecOpt = Annotated[
    Path | None,
    typer.Option("--model-spec", metavar="FILE", help='Model spec JSON for subspace, e.g. {"arch": "mlp"}.'),
]


def ingest_fields(
    label_column: str | None, resize: str | None, grayscale: bool, text_column: str | None = None
) -> dict[str, str]:
    """The ingest options as the upload form fields (the same names the API documents)."""
    fields = {
        "label_column": label_column,
        "text_column": text_column,
        "resize": resize,
        "grayscale": "true" if grayscale else None,
    }
    return {k: v for k, v in fields.items() if v}


def fail(reason: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``taskgauge: error: REASON`` as one line on stderr and exit with ``code`` (no traceback)."""
    one_line = " ".join(str(reason).split())
    typer.echo(f"taskgauge: error: {one_line}", err=True)
    raise typer.Exit(code=code)


class BadInput(ValueError):
    """CLI input that cannot be used; the message is the one-line reason."""


def parse_param(item: str) -> tuple[str, list[str], Any]:
    """``"mle.k=20"`` -> ``("mle", ["k"], 20)``; values are JSON when they parse (numbers, booleans, lists,
    objects, null), else strings; ``NAME.A.B=V`` sets a nested key.

    >>> parse_param("mle.k=20"), parse_param("twonn.method=ml"), parse_param("gride.scales=[2, 4]")
    (('mle', ['k'], 20), ('twonn', ['method'], 'ml'), ('gride', ['scales'], [2, 4]))
    """
    lhs, sep, raw = item.partition("=")
    parts = lhs.strip().split(".")
    if not sep or len(parts) < 2 or not all(p.strip() for p in parts):
        raise BadInput(f"--param {item!r} must look like NAME.KEY=VALUE, e.g. --param mle.k=20")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return parts[0].strip(), [p.strip() for p in parts[1:]], value


def build_requests(
    estimators: list[str] | None, params: list[str] | None, default: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """``-e`` names (repeatable or comma-separated; ``default`` — the registry's defaults — when none) and their
    ``--param`` values. The same for local and remote analyses: ``-e mle,twonn`` is two estimators everywhere.

    >>> build_requests(["mle,twonn"], ["mle.k=10"])
    {'mle': {'k': 10}, 'twonn': {}}
    """
    if default is None:
        from estimators.registry import DEFAULT_ESTIMATORS

        default = DEFAULT_ESTIMATORS
    names: list[str] = []
    for item in estimators or []:
        for name in item.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    chosen = bool(names)
    if not names:
        names = list(default)
    requests: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in params or []:
        name, keys, value = parse_param(item)
        if name not in requests:
            how = "selected with -e" if chosen else f"one of the defaults ({', '.join(default)})"
            raise BadInput(f"--param {item!r} is for estimator '{name}', which is not {how}; add -e {name}")
        target = requests[name]
        for key in keys[:-1]:
            nxt = target.setdefault(key, {})
            if not isinstance(nxt, dict):
                raise BadInput(f"--param {item!r} sets a key inside '{key}', which already has a value")
            target = nxt
        target[keys[-1]] = value
    return requests


def load_model_spec(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read model spec {str(path)!r}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"model spec {str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise BadInput(f'model spec {str(path)!r} must be a JSON object, e.g. {{"arch": "mlp", "hidden": [200, 200]}}')
    return spec


@contextlib.contextmanager
def progress_bar(enabled: bool):
    """A rich progress bar on stderr; yields a ``progress(fraction, stage)`` callback."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="cyan"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("reading data", total=1.0)

        def report(fraction: float, stage: str) -> None:
            bar.update(task, completed=min(max(float(fraction), 0.0), 1.0), description=stage)

        yield report


def parse_requests(estimators: list[str] | None, params: list[str] | None) -> dict[str, dict[str, Any]]:
    """:func:`build_requests`, failing with its one-line reason (exit 2) on bad input."""
    try:
        return build_requests(estimators, params)
    except BadInput as exc:
        fail(str(exc))
