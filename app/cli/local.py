"""``taskgauge analyse``: a dataset file analysed locally (no server), or an uploaded dataset id on the server.

Local mode reads the file with :mod:`taskgauge.datasets.ingest` and analyses it with
:func:`taskgauge.pipeline.run_pipeline`, the same function a worker calls. An argument that is not a file and does
not look like a path (no suffix, no slash) is a dataset id, handed to :func:`app.cli.remote.analyse_remote` with
the same parsed requests: ``-e mle,twonn`` means the same in both modes.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from app.cli.common import (
    BadInput,
    EstimatorOpt,
    GrayscaleOpt,
    LabelColumnOpt,
    ModelSpecOpt,
    ParamOpt,
    ResizeOpt,
    TextColumnOpt,
    build_requests,
    fail,
    load_model_spec,
    progress_bar,
)
from taskgauge.render import render_report


def _write_json(dest: str, report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2, allow_nan=False)
    try:
        Path(dest).expanduser().write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write --json {dest!r}: {exc.strerror or exc}")
    typer.echo(f"report written to {dest}", err=True)


def analyse(
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH",
            help="Dataset file: .npz (arrays X, y), .npy, .csv, .parquet, or .zip of image folders "
            '(class_name/image.png), or .jsonl texts ({"text": …, "label": …} per line).',
            show_default=False,
        ),
    ],
    estimator: EstimatorOpt = None,
    param: ParamOpt = None,
    model_spec: ModelSpecOpt = None,
    model_spec_id: Annotated[
        str | None,
        typer.Option(
            "--model-spec-id",
            metavar="ID",
            help="Remote mode: a model spec stored on the server, e.g. uploaded weights (`taskgauge upload-model`).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", metavar="auto|cpu|cuda", help="Where to compute. Default: TASKGAUGE_DEVICE or auto."),
    ] = None,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json", metavar="FILE|-", help="Write the report JSON to FILE; '-' writes ONLY the JSON to stdout."
        ),
    ] = None,
    label_column: LabelColumnOpt = None,
    text_column: TextColumnOpt = None,
    resize: ResizeOpt = None,
    grayscale: GrayscaleOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", envvar="TASKGAUGE_API_URL", help="Server URL (remote mode: PATH is a dataset id)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="TASKGAUGE_API_KEY", show_default=False, help="API key (remote mode)."),
    ] = None,
) -> None:
    """Analyse a dataset file locally (no server): intrinsic dimension and more, as a table or JSON.

    Examples:

      taskgauge analyse examples/digits.npz

      taskgauge analyse examples/digits.npz -e mle -e twonn --param mle.k=10

      taskgauge analyse iris.csv --label-column species -e label_sharpness --json report.json

      taskgauge analyse pets.zip --resize 32x32 --grayscale --json - > report.json

      taskgauge analyse reviews.jsonl -e mle -e label_sharpness   (texts: embedded with MiniLM first)

      taskgauge analyse mnist.npz -e subspace --model-spec mlp.json --device cuda

      taskgauge analyse 3f2c9a… -e mle   (remote: a dataset id uploaded with `taskgauge upload`)

      taskgauge analyse 3f2c9a… -e repr_id --model-spec-id 7d41…   (weights from `taskgauge upload-model`)

    Exit code 2: bad input (unreadable data, unknown estimator, bad --param), with a one-line reason on stderr.
    """
    from pydantic import ValidationError

    from estimators.base import EstimatorError
    from taskgauge.datasets.ingest import IngestError, IngestOptions
    from taskgauge.pipeline import analyse_file
    from taskgauge.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"TASKGAUGE_{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        fail(f"bad setting: {problems}")
    try:
        requests = build_requests(estimator, param)
        spec = load_model_spec(model_spec)
        options = IngestOptions(label_column=label_column, text_column=text_column, resize=resize, grayscale=grayscale)
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
        if looks_like_file:
            fail(
                f"{path!r} is not an existing file. Local analysis needs a dataset file (.npz, .npy, .csv, "
                ".parquet or .zip of image folders); a dataset id (no suffix, no slash) is analysed on the server"
            )
        from app.cli.remote import analyse_remote

        if spec is not None and model_spec_id is not None:
            fail("give --model-spec FILE or --model-spec-id ID, not both")
        report = analyse_remote(
            path,
            requests=requests,
            model_spec=spec,
            model_spec_id=model_spec_id,
            watch=True,
            json_out=json_out == "-",
            api_url=api_url,
            api_key=api_key,
        )
        if json_out not in (None, "-") and isinstance(report, dict):
            _write_json(json_out, report)
        return
    if model_spec_id is not None:
        fail(
            "--model-spec-id names a model spec on the server: analyse an uploaded dataset id "
            "(`taskgauge upload FILE` prints one), or pass --model-spec FILE for local mode"
        )
    if json_out not in (None, "-"):
        parent = Path(json_out).expanduser().resolve().parent
        if not parent.is_dir():
            fail(f"cannot write --json {json_out!r}: folder {str(parent)!r} does not exist")

    show_progress = not quiet
    try:
        # Anything a library prints while running must not corrupt `--json -` on stdout.
        with progress_bar(show_progress) as bar, contextlib.redirect_stdout(sys.stderr):
            report = analyse_file(
                target,
                requests=requests,
                model_spec=spec,
                device=device or settings.DEVICE,
                ingest_options=options,
                # only an explicitly set TASKGAUGE_MEMORY_BUDGET_MB overrides the estimators' own defaults
                memory_budget_mb=settings.memory_budget_override,
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


def register(cli: typer.Typer) -> None:
    cli.command("analyse")(analyse)
    cli.command("analyze", hidden=True)(analyse)  # the American spelling works too
