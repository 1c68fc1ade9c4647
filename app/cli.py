"""The ``taskgauge`` command line (DESIGN.md §9).

``taskgauge analyse FILE`` runs the analysis locally, with no server: the file is read by :mod:`app.ingest`
and analysed by :func:`workers.pipeline.run_pipeline`, the same function a worker calls. Other commands
(``serve``, ``worker``, ``db``, ``keys``, ``upload``, ``report``, …) are defined in ``app.service_cli`` and
``app.client_cli`` and registered at the end of this module when those modules exist: each has a
``register(cli: typer.Typer) -> None``.

Remote analysis: ``taskgauge analyse DATASET_ID`` (an argument that is not a file and does not look like a
path) is handed to ``app.client_cli.analyse_remote`` when the remote client is installed; otherwise a PATH
that is not a file is an error (exit 2).

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from app.ingest import IngestOptions
    from estimators.base import ProgressFn

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

EXIT_BAD_INPUT = 2

def _remote_analyse_fn() -> Callable[..., Any] | None:
    """``app.client_cli.analyse_remote`` when the remote client is installed, else None."""
    try:
        mod = importlib.import_module("app.client_cli")
    except ModuleNotFoundError as exc:
        if exc.name != "app.client_cli":
            raise
        return None
    return getattr(mod, "analyse_remote", None)


def _write_json(dest: str, report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2, allow_nan=False)
    try:
        Path(dest).expanduser().write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write --json {dest!r}: {exc.strerror or exc}")
    typer.echo(f"report written to {dest}", err=True)


def fail(reason: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``taskgauge: error: REASON`` as one line on stderr and exit with ``code`` (no traceback)."""
    one_line = " ".join(str(reason).split())
    typer.echo(f"taskgauge: error: {one_line}", err=True)
    raise typer.Exit(code=code)


def _version(value: bool) -> None:
    if value:
        from workers.pipeline import taskgauge_version

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


# --------------------------------------------------------------------------------------------- parsing


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
    estimators: list[str] | None, params: list[str] | None, default: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """``-e`` names (repeatable or comma-separated; ``default`` when none) and their ``--param`` values."""
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
        raise BadInput(
            f"model spec {str(path)!r} must be a JSON object, e.g. {{\"arch\": \"mlp\", \"hidden\": [200, 200]}}"
        )
    return spec


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ local mode


def run_local_analysis(
    path: Path,
    *,
    requests: dict[str, dict[str, Any]] | None = None,
    model_spec: dict[str, Any] | None = None,
    device: str = "auto",
    ingest_options: "IngestOptions | None" = None,
    memory_budget_mb: int | None = None,
    progress: "ProgressFn | None" = None,
) -> dict[str, Any]:
    """Ingest ``path`` and run the pipeline on it; returns the report (DESIGN.md §5).

    Raises :class:`app.ingest.IngestError` or :class:`estimators.base.EstimatorError` on bad input.
    """
    from app.ingest import ingest_file
    from estimators.base import no_progress
    from workers.pipeline import DatasetInfo, run_pipeline

    path = Path(path)
    dataset = ingest_file(path, path.name, ingest_options)
    info = DatasetInfo(name=path.name, sha256=file_sha256(path))
    return run_pipeline(
        dataset,
        requests,
        info=info,
        device=device,
        model_spec=model_spec,
        memory_budget_mb=memory_budget_mb,
        progress=progress or no_progress,
    )


def _fmt_number(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):  # "inf", "-inf", "nan"
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def render_report(report: dict[str, Any], console: Console) -> None:
    """A readable summary: one line about the dataset, a table of results, the interpretation notes."""
    ds = report.get("dataset", {})
    dup = ds.get("duplicates", {}) or {}
    bits = [f"[bold]{ds.get('name')}[/bold]", f"{ds.get('n_samples')} samples", f"shape {ds.get('shape')}"]
    if ds.get("n_classes") is not None:
        bits.append(f"{ds['n_classes']} classes")
    if dup.get("exact"):
        bits.append(f"{dup['exact']} exact duplicates")
    if dup.get("conflicting_labels"):
        bits.append(f"[red]{dup['conflicting_labels']} duplicate groups with conflicting labels[/red]")
    env = report.get("environment", {})
    console.print(" · ".join(bits) + f"  [dim]({env.get('device')}, {_fmt_number(env.get('seconds_total'))} s)[/dim]")
    table = Table(show_lines=False, header_style="bold")
    table.add_column("estimator")
    table.add_column("value", justify="right")
    table.add_column("CI")
    table.add_column("seconds", justify="right")
    table.add_column("warnings")
    footnotes: list[str] = []
    for name, r in (report.get("results") or {}).items():
        ci = r.get("ci")
        ci_text = f"[{_fmt_number(ci[0])}, {_fmt_number(ci[1])}]" if ci else "—"
        warnings = r.get("warnings") or []
        marks = []
        for w in warnings:
            footnotes.append(f"[yellow]({len(footnotes) + 1})[/yellow] {name}: {w}")
            marks.append(f"({len(footnotes)})")
        seconds = r.get("seconds")
        table.add_row(
            f"{name} [dim]{r.get('version', '')}[/dim]",
            _fmt_number(r.get("value")),
            ci_text,
            f"{seconds:.2f}" if isinstance(seconds, (int, float)) else "—",
            f"[yellow]{' '.join(marks)}[/yellow]" if marks else "",
        )
    console.print(table)
    for name, r in (report.get("results") or {}).items():
        if r.get("ci") and r.get("ci_method"):
            console.print(f"[dim]CI of {name}: {r['ci_method']}[/dim]")
    for line in footnotes:
        console.print(line)
    for note in report.get("interpretation") or []:
        console.print(f"[dim]• {note}[/dim]")


@contextlib.contextmanager
def _progress_bar(enabled: bool):
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


ESTIMATOR_HELP = "Estimator to run (repeatable, or comma-separated). Default: mle, twonn, gride."


@cli.command("analyse")
def analyse(
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH",
            help="Dataset file: .npz (arrays X, y), .npy, .csv, .parquet, or .zip of image folders "
            "(class_name/image.png).",
            show_default=False,
        ),
    ],
    estimator: Annotated[
        Optional[list[str]], typer.Option("--estimator", "-e", metavar="NAME", help=ESTIMATOR_HELP)
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            "--param",
            "-p",
            metavar="NAME.KEY=VALUE",
            help="Estimator parameter (repeatable); VALUE is JSON when it parses (20, true, [5, 10]), else text.",
        ),
    ] = None,
    model_spec: Annotated[
        Optional[Path],
        typer.Option("--model-spec", metavar="FILE", help='Model spec JSON for subspace, e.g. {"arch": "mlp"}.'),
    ] = None,
    device: Annotated[
        Optional[str],
        typer.Option("--device", metavar="auto|cpu|cuda", help="Where to compute. Default: TASKGAUGE_DEVICE or auto."),
    ] = None,
    json_out: Annotated[
        Optional[str],
        typer.Option(
            "--json", metavar="FILE|-", help="Write the report JSON to FILE; '-' writes ONLY the JSON to stdout."
        ),
    ] = None,
    label_column: Annotated[
        Optional[str],
        typer.Option("--label-column", "-l", metavar="NAME", help="Label column of a table (default: label/y/target)."),
    ] = None,
    resize: Annotated[
        Optional[str],
        typer.Option("--resize", metavar="HxW", help="Resize every image of a .zip to height×width, e.g. 32x32."),
    ] = None,
    grayscale: Annotated[
        bool, typer.Option("--grayscale", help="Convert the images of a .zip to one channel.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    api_url: Annotated[
        Optional[str],
        typer.Option("--api-url", envvar="TASKGAUGE_API_URL", help="Server URL (remote mode: PATH is a dataset id)."),
    ] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option("--api-key", envvar="TASKGAUGE_API_KEY", show_default=False, help="API key (remote mode)."),
    ] = None,
) -> None:
    """Analyse a dataset file locally (no server): intrinsic dimension and more, as a table or JSON.

    Examples:

      taskgauge analyse examples/digits.npz

      taskgauge analyse examples/digits.npz -e mle -e twonn --param mle.k=10

      taskgauge analyse iris.csv --label-column species -e label_sharpness --json report.json

      taskgauge analyse pets.zip --resize 32x32 --grayscale --json - > report.json

      taskgauge analyse mnist.npz -e subspace --model-spec mlp.json --device cuda

      taskgauge analyse 3f2c9a… -e mle   (remote: a dataset id uploaded with `taskgauge upload`)

    Exit code 2: bad input (unreadable data, unknown estimator, bad --param), with a one-line reason on stderr.
    """
    from pydantic import ValidationError

    from app.ingest import IngestError, IngestOptions
    from app.settings import get_settings
    from estimators.base import EstimatorError
    from workers.pipeline import DEFAULT_ESTIMATORS

    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"TASKGAUGE_{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        fail(f"bad setting: {problems}")
    try:
        requests = build_requests(estimator, param, DEFAULT_ESTIMATORS)
        spec = load_model_spec(model_spec)
        options = IngestOptions(label_column=label_column, resize=resize, grayscale=grayscale)
    except BadInput as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))

    target = Path(path)
    if not target.is_file():
        if target.is_dir():
            fail(
                f"{path!r} is a directory; analyse a file (zip an image-folder tree first: "
                f"cd {path} && zip -r ../data.zip .)"
            )
        looks_like_file = bool(target.suffix) or "/" in path or "\\" in path
        remote = None if looks_like_file else _remote_analyse_fn()
        if remote is None:
            fail(
                f"{path!r} is not an existing file. Local analysis needs a dataset file (.npz, .npy, .csv, "
                ".parquet or .zip of image folders)"
                + ("" if looks_like_file else "; analysing an uploaded dataset by id (remote mode) is not "
                   "available in this installation")
            )
        report = remote(
            path,
            estimators=estimator,
            params=param,
            model_spec=model_spec,
            watch=True,
            json_out=json_out == "-",
            api_url=api_url,
            api_key=api_key,
        )
        if json_out not in (None, "-") and isinstance(report, dict):
            _write_json(json_out, report)
        return
    if json_out not in (None, "-"):
        parent = Path(json_out).expanduser().resolve().parent
        if not parent.is_dir():
            fail(f"cannot write --json {json_out!r}: folder {str(parent)!r} does not exist")

    show_progress = not quiet
    try:
        # Anything a library prints while running must not corrupt `--json -` on stdout.
        with _progress_bar(show_progress) as bar, contextlib.redirect_stdout(sys.stderr):
            report = run_local_analysis(
                target,
                requests=requests,
                model_spec=spec,
                device=device or settings.DEVICE,
                ingest_options=options,
                # only an explicitly set TASKGAUGE_MEMORY_BUDGET_MB overrides the estimators' own defaults
                memory_budget_mb=settings.MEMORY_BUDGET_MB if "MEMORY_BUDGET_MB" in settings.model_fields_set else None,
                progress=bar,
            )
    except IngestError as exc:
        fail(f"{exc.title}: {exc.detail}")
    except EstimatorError as exc:
        fail(str(exc))

    if json_out == "-":
        sys.stdout.write(json.dumps(report, indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
        return
    render_report(report, Console())
    if json_out is not None:
        _write_json(json_out, report)


cli.command("analyze", hidden=True)(analyse)  # the American spelling works too


def main() -> None:
    """Console-script entry point (``taskgauge = app.cli:main``)."""
    cli()


# ---------------------------------------------------------------------------------- extension commands
# Commands defined by other modules: each module has ``register(cli: typer.Typer) -> None``. A module that is
# not written yet is skipped; any other import error is a real bug and is raised. (``importlib`` rather than
# ``from app import service_cli``: the latter turns a missing module into a plain ImportError.)
for _module in ("app.service_cli", "app.client_cli"):
    try:
        _ext = importlib.import_module(_module)
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise
    else:
        _ext.register(cli)
