"""The CLI's remote commands: a thin Typer layer over an :class:`APIClient` for the REST API (docs/deployment.md, docs/dashboard.md).

``app/cli/__init__.py`` owns the top-level Typer app and calls :func:`register` to add the commands below;
``taskgauge analyse`` (:mod:`app.cli.local`) calls :func:`analyse_remote` when its argument is a dataset id.

Where the client finds the server and the key:

* ``--api-url`` or ``TASKGAUGE_API_URL`` (default ``http://127.0.0.1:8000``);
* ``--api-key`` or ``TASKGAUGE_API_KEY``; otherwise the embedded default's local key file (written by
  ``taskgauge serve`` on first start under ``TASKGAUGE_DATA_DIR``), so a newcomer never types a key.

All HTTP errors are mapped in one place (:meth:`APIClient.request`): connection failures, timeouts and
RFC 9457 problem documents become an :class:`APIError` whose message says what went wrong and what to do;
the commands print it with :func:`app.cli.common.fail` and exit with code 1 (2 for a bad request), never with a
traceback.

Example::

    $ taskgauge upload data.npz --name digits
    $ taskgauge analyse 3f2c… -e mle -e twonn --watch
    $ taskgauge report 3f2c… --json
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli.common import (
    EstimatorOpt,
    GrayscaleOpt,
    LabelColumnOpt,
    ParamOpt,
    ResizeOpt,
    TextColumnOpt,
    fail,
    ingest_fields,
    parse_requests,
)
from taskgauge.render import fmt_number, render_report

DEFAULT_API_URL = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "cancelled"}

err_console = Console(stderr=True)
out_console = Console()


# --------------------------------------------------------------------------------------------------- client


class APIError(Exception):
    """A readable failure of a REST call: ``status`` is the HTTP status (0 for network errors)."""

    def __init__(self, message: str, *, status: int = 0, problem: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.problem = problem or {}


def _problem_message(resp: httpx.Response) -> tuple[str, dict[str, Any]]:
    """Turn an error response (problem+json, FastAPI's {"detail": …} or text) into one readable line."""
    problem: dict[str, Any] = {}
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem = body
        title = body.get("title") or resp.reason_phrase
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                for d in detail
            )
        text = f"{title}: {detail}" if detail and detail != title else str(title)
        errors = body.get("errors")
        if isinstance(errors, list) and errors and not detail:
            text += " (" + "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in errors) + ")"
    else:
        text = (resp.text or resp.reason_phrase or "error").strip()[:500]
    hint = {
        401: " — check the API key (--api-key or TASKGAUGE_API_KEY; `taskgauge keys create NAME` makes one)",
        403: " — this key may not do that",
        404: " — no such id for this API key",
        413: " — the file is larger than the server's TASKGAUGE_MAX_UPLOAD_MB",
    }.get(resp.status_code, "")
    return f"HTTP {resp.status_code} {text}{hint}", problem


class APIClient(httpx.Client):
    """``httpx.Client`` for ``{api_url}/api/v1`` with the bearer key, a timeout and one error mapper.

    Idempotent requests (GET/HEAD/DELETE) are retried with capped exponential backoff on network errors and
    5xx answers; everything else is tried once. Every failure raises :class:`APIError`.

    >>> with APIClient("http://127.0.0.1:8000", "tg_…") as api:   # doctest: +SKIP
    ...     api.get_json("/datasets")
    """

    def __init__(self, api_url: str, api_key: str | None, *, timeout: float = 60.0, retries: int = 3, **kwargs: Any):
        self.api_url = api_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "taskgauge-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        super().__init__(base_url=self.api_url + "/api/v1", headers=headers, timeout=timeout, **kwargs)
        self.retries = retries

    def request(self, method: str, url: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        idempotent = method.upper() in {"GET", "HEAD", "DELETE"}
        attempts = self.retries + 1 if idempotent else 1
        delay = 0.25
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = super().request(method, url, **kwargs)
            except httpx.ConnectError:
                if last:
                    raise APIError(
                        f"cannot connect to the taskgauge server at {self.api_url}: is it running? Start one with "
                        "`taskgauge serve`, or point the CLI at yours with --api-url / TASKGAUGE_API_URL"
                    ) from None
            except httpx.TimeoutException:
                if last:
                    raise APIError(
                        f"the server at {self.api_url} did not answer in {self.timeout.read}s; try again later"
                    ) from None
            except httpx.TransportError as exc:
                if last:
                    raise APIError(f"network error talking to {self.api_url}: {exc}") from None
            else:
                if resp.status_code >= 500 and not last:
                    pass  # retry below
                elif resp.is_error:
                    message, problem = _problem_message(resp)
                    raise APIError(message, status=resp.status_code, problem=problem)
                else:
                    return resp
            time.sleep(min(delay, 4.0))
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def get_json(self, url: str, **kwargs: Any) -> Any:
        return self.get(url, **kwargs).json()

    def post_json(self, url: str, body: Any) -> Any:
        return self.post(url, json=body).json()

    def events(self, analysis_id: str) -> Iterator[dict[str, Any]]:
        """Yield the ``data`` payloads (parsed JSON) of the analysis' Server-Sent Events until the stream ends."""
        with self.stream(
            "GET",
            f"/analyses/{analysis_id}/events",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(self.timeout.connect, read=None),
        ) as resp:
            if resp.is_error:
                resp.read()
                message, problem = _problem_message(resp)
                raise APIError(message, status=resp.status_code, problem=problem)
            data: list[str] = []
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "" and data:
                    try:
                        yield json.loads("\n".join(data))
                    except ValueError:
                        pass
                    data = []


def local_key_file() -> Path | None:
    """The embedded default's local key file under ``TASKGAUGE_DATA_DIR`` (None if the settings are unreadable)."""
    from taskgauge.auth import local_key_path
    from taskgauge.settings import get_settings

    try:
        return local_key_path(get_settings().DATA_DIR)
    except ValueError:  # a bad TASKGAUGE_* value: no local key to offer; the request will say 401
        return None


def resolve_key(api_key: str | None) -> str | None:
    if api_key:
        return api_key.strip()
    path = local_key_file()
    if path is not None and path.is_file():
        return path.read_text().strip() or None
    return None


def make_client(api_url: str | None, api_key: str | None) -> APIClient:
    return APIClient(api_url or DEFAULT_API_URL, resolve_key(api_key))


def run(fn, *args, **kwargs):
    """Call fn; APIError → styled one-line message and exit (2 for a rejected request, 1 otherwise)."""
    try:
        return fn(*args, **kwargs)
    except APIError as exc:
        code = 2 if exc.status in (400, 404, 409, 413, 422) else 1
        fail(exc.message, code)


# --------------------------------------------------------------------------------------------------- helpers

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="TASKGAUGE_API_URL", help="Server URL.", show_default=True)]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="TASKGAUGE_API_KEY",
        show_default=False,
        help="API key (default: the embedded server's local key file under TASKGAUGE_DATA_DIR).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the JSON document instead of a table.")]


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def watch_analysis(api: APIClient, analysis_id: str, *, quiet: bool = False, poll: float = 0.5) -> dict[str, Any]:
    """Show a progress bar until the analysis finishes; returns its final state.

    Follows the SSE stream when the server offers it and falls back to polling ``GET /analyses/{id}``.
    """
    state = api.get_json(f"/analyses/{analysis_id}")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stage]}"),
        console=err_console,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task(f"analysis {analysis_id[:8]}", total=1.0, stage=state.get("stage") or "")

        def show(s: dict[str, Any]) -> None:
            bar.update(task, completed=float(s.get("progress") or 0.0), stage=s.get("stage") or s.get("status", ""))

        show(state)
        if state.get("status") not in TERMINAL:
            try:
                for event in api.events(analysis_id):
                    if isinstance(event, dict):
                        state = {**state, **event}
                        show(state)
                        if state.get("status") in TERMINAL:
                            break
            except (APIError, httpx.HTTPError):
                pass  # no SSE (or it broke): poll instead
            while state.get("status") not in TERMINAL:
                time.sleep(poll)
                state = api.get_json(f"/analyses/{analysis_id}")
                show(state)
            state = api.get_json(f"/analyses/{analysis_id}")
        if state.get("status") == "succeeded":
            bar.update(task, completed=1.0, stage="done")
        else:
            show(state)
    return state


def report_for(api: APIClient, ident: str) -> dict[str, Any]:
    """A report by report id, or the report of an analysis id, or the latest report of a dataset id."""
    try:
        return api.get_json(f"/reports/{ident}")
    except APIError as exc:
        if exc.status != 404:
            raise
    try:
        analysis = api.get_json(f"/analyses/{ident}")
    except APIError as exc:
        if exc.status != 404:
            raise
    else:
        rid = analysis.get("report_id")
        if not rid:
            raise APIError(
                f"analysis {ident} has no report yet (status {analysis.get('status')}); "
                f"wait with `taskgauge watch {ident}`",
                status=409,
            )
        return api.get_json(f"/reports/{rid}")
    try:
        history = api.get_json(f"/datasets/{ident}/reports")
    except APIError as exc:
        if exc.status == 404:
            raise APIError(f"no report, analysis or dataset with id {ident} for this API key", status=404) from None
        raise
    items = history.get("items", history) if isinstance(history, dict) else history
    if not items:
        raise APIError(f"dataset {ident} has no reports yet; start one with `taskgauge analyse {ident}`", status=404)
    latest = max(items, key=lambda r: r.get("created_at") or "")
    return api.get_json(f"/reports/{latest.get('report_id') or latest.get('id')}")


# --------------------------------------------------------------------------------------------------- commands


def upload_file(
    api: APIClient, path: Path, *, name: str | None, fields: dict[str, str] | None = None
) -> dict[str, Any]:
    return _post_file(api, "/datasets", path, {"name": name or path.stem, **(fields or {})})


def _post_file(api: APIClient, route: str, path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """A multipart upload of ``path`` with form fields ``data`` (long read timeout: the server parses it first)."""
    with path.open("rb") as fh:
        return api.post(
            route,
            data=data,
            files={"file": (path.name, fh, "application/octet-stream")},
            timeout=httpx.Timeout(60.0, read=600.0),
        ).json()


def upload_model_file(
    api: APIClient,
    path: Path,
    *,
    name: str | None,
    spec: dict[str, Any] | None = None,
    input_shape: str | None = None,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """Upload weights (multipart ``POST /model-specs``); returns the stored model spec."""
    data: dict[str, Any] = {"name": name or path.stem}
    if spec is not None:
        data["spec"] = json.dumps(spec)
    if input_shape:
        data["input_shape"] = input_shape
    if n_classes is not None:
        data["n_classes"] = str(n_classes)
    return _post_file(api, "/model-specs", path, data)


def analyse_remote(
    dataset_id: str,
    *,
    requests: dict[str, dict[str, Any]],
    model_spec: dict[str, Any] | None = None,
    model_spec_id: str | None = None,
    watch: bool = True,
    json_out: bool = False,
    quiet: bool = False,
    api_url: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Start an analysis of an uploaded dataset on the server (``taskgauge analyse DATASET_ID``).

    With ``watch`` it shows the progress bar until the analysis finishes and then prints the report table (or the
    report JSON with ``json_out``); without it, prints the analysis id. Exits 1 when the analysis failed.
    """

    def go() -> dict[str, Any]:
        with make_client(api_url, api_key) as api:
            body: dict[str, Any] = {"dataset_id": dataset_id, "estimators": requests}
            if model_spec_id is not None:
                body["model_spec_id"] = model_spec_id
            elif model_spec is not None:
                spec = api.post_json("/model-specs", {"name": "cli", "spec": model_spec})
                body["model_spec_id"] = spec["id"]
            analysis = api.post_json("/analyses", body)
            aid = analysis["id"]
            if not watch:
                if json_out:
                    print_json(analysis)
                else:
                    out_console.print(f"analysis [bold]{aid}[/] queued — follow it with `taskgauge watch {aid}`")
                return analysis
            state = watch_analysis(api, aid, quiet=json_out or quiet)
            if state.get("status") != "succeeded":
                raise APIError(f"analysis {aid} {state.get('status')}: {_error_text(state)}", status=1)
            report = api.get_json(f"/reports/{state['report_id']}")
            if json_out:
                print_json(report)
            else:
                render_report(report, out_console)
            return report

    return run(go)


def _error_text(state: dict[str, Any]) -> str:
    err = state.get("error")
    if isinstance(err, dict):
        return str(err.get("detail") or err.get("title") or err)
    return str(err or "no detail")


def _task_line(task: dict[str, Any]) -> str:
    """One running task of ``taskgauge workers``: analysis id (and a shard's key), stage, progress."""
    progress = task.get("progress")
    pct = "" if progress is None else f"{100 * progress:.0f}%"
    extra = " ".join(str(a) for a in (task.get("args") or [])[1:])
    parts = (task.get("analysis_id") or task.get("id"), extra, task.get("stage") or "", pct)
    return " ".join(str(p) for p in parts if p)


def register(cli: typer.Typer) -> None:
    """Add the remote commands to the top-level ``taskgauge`` Typer app."""

    @cli.command(
        "upload",
        epilog="Example: taskgauge upload digits.npz --name digits\n\n"
        "Example: taskgauge upload table.csv --label-column species",
    )
    def upload(
        path: Annotated[
            Path,
            typer.Argument(
                exists=True, dir_okay=False, readable=True, help="File to upload (.npz .npy .csv .parquet .zip .jsonl)."
            ),
        ],
        name: Annotated[str | None, typer.Option(help="Dataset name (default: the file name).")] = None,
        label_column: LabelColumnOpt = None,
        text_column: TextColumnOpt = None,
        resize: ResizeOpt = None,
        grayscale: GrayscaleOpt = False,
        json_out: JsonFlag = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Upload a dataset to the server and print its id."""

        def go() -> None:
            with make_client(api_url, api_key) as api:
                ds = upload_file(
                    api, path, name=name, fields=ingest_fields(label_column, resize, grayscale, text_column)
                )
            if json_out:
                print_json(ds)
            else:
                out_console.print(f"uploaded [bold]{ds.get('name')}[/] → dataset id [bold]{ds['id']}[/]")
                out_console.print(f"analyse it with: taskgauge analyse {ds['id']}", highlight=False)

        run(go)

    @cli.command(
        "upload-model",
        epilog="Example: taskgauge upload-model mlp.safetensors --spec mlp.json --input-shape 784\n\n"
        "Example: taskgauge upload-model lenet.safetensors --spec lenet.json --input-shape 1,28,28 --n-classes 10\n\n"
        "Example: taskgauge upload-model my-bert.zip --name my-bert   (a zipped save_pretrained directory)\n\n"
        "Then: taskgauge analyse DATASET_ID -e repr_id --model-spec-id MODEL_SPEC_ID",
    )
    def upload_model(
        path: Annotated[
            Path,
            typer.Argument(
                exists=True,
                dir_okay=False,
                readable=True,
                help="Weights: .safetensors (with --spec and --input-shape), or a .zip of a Hugging Face-style "
                "model directory (config.json, model.safetensors, tokenizer files). Pickles (.bin .pt .pth .ckpt) "
                "are refused.",
            ),
        ],
        spec: Annotated[
            Path | None,
            typer.Option(
                "--spec",
                metavar="FILE",
                help='Model spec JSON. .safetensors: the arch spec the weights belong to, e.g. {"arch": "mlp", '
                '"hidden": [200, 200]}. .zip: options of the pretrained spec, e.g. {"train_blocks": 2}.',
            ),
        ] = None,
        input_shape: Annotated[
            str | None,
            typer.Option(
                "--input-shape",
                metavar="SHAPE",
                help=".safetensors: the per-sample shape the network takes, e.g. 784 or 1,28,28.",
            ),
        ] = None,
        n_classes: Annotated[
            int | None,
            typer.Option(
                "--n-classes", min=1, help=".safetensors: outputs of the network (default: read from the weights)."
            ),
        ] = None,
        name: Annotated[str | None, typer.Option(help="Model spec name (default: the file name).")] = None,
        json_out: JsonFlag = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Upload model weights to the server and print the model spec id.

        .safetensors: every tensor must have the name and shape of the --spec network for --input-shape.

        .zip: config.json, model.safetensors and tokenizer files, read offline with transformers.

        Nothing is ever unpickled; a refused file leaves nothing stored (exit code 2, the reason on stderr).

        Then: taskgauge analyse DATASET_ID -e repr_id --model-spec-id ID (a .zip model also with -e subspace).
        """
        from app.cli.common import BadInput, load_model_spec

        try:
            spec_doc = load_model_spec(spec)
        except BadInput as exc:
            fail(str(exc))

        def go() -> None:
            with make_client(api_url, api_key) as api:
                row = upload_model_file(
                    api, path, name=name, spec=spec_doc, input_shape=input_shape, n_classes=n_classes
                )
            if json_out:
                print_json(row)
                return
            w = row.get("weights") or {}
            meta = w.get("meta") or {}
            what = (
                f"{meta.get('model_type')} model, {meta.get('n_layers')} layers"
                if w.get("format") == "hf-zip"
                else f"{row.get('spec', {}).get('arch')} for input {meta.get('input_shape')}, "
                f"{meta.get('n_classes')} classes"
            )
            out_console.print(
                f"uploaded [bold]{row.get('name')}[/] ({what}, {fmt_number(meta.get('n_params'))} weights) → "
                f"model spec id [bold]{row['id']}[/]"
            )
            out_console.print(
                f"use it with: taskgauge analyse DATASET_ID -e repr_id --model-spec-id {row['id']}", highlight=False
            )

        run(go)

    @cli.command("datasets", epilog="Example: taskgauge datasets")
    def datasets(json_out: JsonFlag = False, api_url: ApiUrl = DEFAULT_API_URL, api_key: ApiKey = None) -> None:
        """List your datasets on the server."""

        def go() -> None:
            with make_client(api_url, api_key) as api:
                page = api.get_json("/datasets", params={"limit": 200})
            items = page.get("items", page) if isinstance(page, dict) else page
            if json_out:
                print_json(page)
                return
            table = Table(title="datasets")
            for col in ("id", "name", "samples", "shape", "created"):
                table.add_column(col)
            for d in items:
                table.add_row(
                    str(d.get("id")),
                    str(d.get("name")),
                    fmt_number(d.get("n_samples")),
                    "×".join(str(s) for s in d.get("shape") or []),
                    str(d.get("created_at", ""))[:19],
                )
            out_console.print(table)

        run(go)

    @cli.command("status", epilog="Example: taskgauge status 3f2c9a…")
    def status(
        analysis_id: Annotated[str, typer.Argument(help="Analysis id.")],
        json_out: JsonFlag = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Print an analysis' status, progress and stage once."""

        def go() -> None:
            with make_client(api_url, api_key) as api:
                s = api.get_json(f"/analyses/{analysis_id}")
            if json_out:
                print_json(s)
            else:
                out_console.print(
                    f"{s.get('status')}  {100 * float(s.get('progress') or 0):.1f}%  {s.get('stage') or ''}"
                    + (f"  error: {_error_text(s)}" if s.get("status") == "failed" else "")
                )

        run(go)

    @cli.command("watch", epilog="Example: taskgauge watch 3f2c9a…   (exit code 0 when it succeeded)")
    def watch(
        analysis_id: Annotated[str, typer.Argument(help="Analysis id (printed by `taskgauge analyse`).")],
        json_out: Annotated[bool, typer.Option("--json", help="Print the final report JSON when done.")] = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Show a live progress bar until the analysis finishes; exit 1 if it failed."""

        def go() -> None:
            with make_client(api_url, api_key) as api:
                state = watch_analysis(api, analysis_id)
                if state.get("status") != "succeeded":
                    raise APIError(f"analysis {analysis_id} {state.get('status')}: {_error_text(state)}")
                if json_out:
                    print_json(api.get_json(f"/reports/{state['report_id']}"))
                else:
                    out_console.print(f"done — see it with `taskgauge report {state['report_id']}`", highlight=False)

        run(go)

    @cli.command(
        "report", epilog="Example: taskgauge report 3f2c9a…\n\nExample: taskgauge report 3f2c9a… --json > r.json"
    )
    def report(
        ident: Annotated[
            str, typer.Argument(metavar="ID", help="Report id, analysis id, or dataset id (its latest report).")
        ],
        json_out: JsonFlag = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Show a report as a table (or its JSON, docs/methods.md §0, with --json)."""

        def go() -> None:
            with make_client(api_url, api_key) as api:
                doc = report_for(api, ident)
            if json_out:
                print_json(doc)
            else:
                render_report(doc, out_console)

        run(go)

    @cli.command(
        "compare",
        epilog="Example: taskgauge compare REPORT_A REPORT_B\n\n"
        "Dataset or analysis ids work too (their latest report is used).",
    )
    def compare(
        ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Two or more report/analysis/dataset ids.")],
        json_out: JsonFlag = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Compare the headline values of several reports side by side."""
        if len(ids) < 2:
            fail("give at least two ids to compare")

        def go() -> None:
            with make_client(api_url, api_key) as api:
                reports = [report_for(api, i) for i in ids]
            if json_out:
                print_json(
                    {
                        "reports": [
                            {
                                "report_id": r.get("report_id"),
                                "dataset": r.get("dataset", {}).get("name"),
                                "results": {
                                    k: {"value": v.get("value"), "ci": v.get("ci"), "version": v.get("version")}
                                    for k, v in (r.get("results") or {}).items()
                                },
                            }
                            for r in reports
                        ]
                    }
                )
                return
            table = Table(title="comparison")
            table.add_column("estimator")
            for r in reports:
                table.add_column(f"{r.get('dataset', {}).get('name')}\n{str(r.get('report_id'))[:8]}", justify="right")
            names: list[str] = []
            for r in reports:
                names += [n for n in (r.get("results") or {}) if n not in names]
            for n in names:
                table.add_row(n, *[fmt_number((r.get("results") or {}).get(n, {}).get("value")) for r in reports])
            out_console.print(table)

        run(go)

    schedule = typer.Typer(
        help="Scheduled re-analysis of a dataset (cron expression + time zone).", no_args_is_help=True
    )
    cli.add_typer(schedule, name="schedule")

    @schedule.command(
        "add", epilog='Example: taskgauge schedule add DATASET_ID --cron "0 3 * * 1" --tz Europe/Berlin -e mle -e twonn'
    )
    def schedule_add(
        dataset_id: Annotated[str, typer.Argument(help="Dataset id.")],
        cron: Annotated[str, typer.Option(help='Cron expression, e.g. "0 3 * * *" (03:00 daily).')],
        tz: Annotated[str, typer.Option("--tz", help="IANA time zone of the cron expression.")] = "UTC",
        estimator: EstimatorOpt = None,
        param: ParamOpt = None,
        json_out: JsonFlag = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Re-analyse a dataset on a cron schedule."""

        def go() -> None:
            body: dict[str, Any] = {"dataset_id": dataset_id, "cron": cron, "timezone": tz}
            body["estimators"] = parse_requests(estimator, param)
            with make_client(api_url, api_key) as api:
                s = api.post_json("/schedules", body)
            if json_out:
                print_json(s)
            else:
                out_console.print(f"schedule [bold]{s['id']}[/]: next run {s.get('next_run_at')}", highlight=False)

        run(go)

    @schedule.command("list", epilog="Example: taskgauge schedule list")
    def schedule_list(json_out: JsonFlag = False, api_url: ApiUrl = DEFAULT_API_URL, api_key: ApiKey = None) -> None:
        """List your schedules."""

        def go() -> None:
            with make_client(api_url, api_key) as api:
                page = api.get_json("/schedules")
            if json_out:
                print_json(page)
                return
            table = Table(title="schedules")
            for col in ("id", "dataset", "cron", "tz", "estimators", "next run", "last run"):
                table.add_column(col)
            for s in page.get("items", []):
                table.add_row(
                    s["id"],
                    s["dataset_id"],
                    s["cron"],
                    s["timezone"],
                    ", ".join(s.get("estimators") or {}),
                    str(s.get("next_run_at") or "")[:19],
                    str(s.get("last_run_at") or "—")[:19],
                )
            out_console.print(table)

        run(go)

    @schedule.command("rm", epilog="Example: taskgauge schedule rm SCHEDULE_ID")
    def schedule_rm(
        schedule_id: Annotated[str, typer.Argument(help="Schedule id.")],
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Delete a schedule (its past analyses and reports stay)."""

        def go() -> None:
            with make_client(api_url, api_key) as api:
                api.delete(f"/schedules/{schedule_id}")
            out_console.print(f"schedule {schedule_id} deleted", highlight=False)

        run(go)

    @cli.command("workers", epilog="Example: taskgauge workers\n\nExample: taskgauge workers --all --json")
    def workers_cmd(
        all_: Annotated[bool, typer.Option("--all", help="Also workers whose heartbeat stopped (gone).")] = False,
        json_out: JsonFlag = False,
        api_url: ApiUrl = DEFAULT_API_URL,
        api_key: ApiKey = None,
    ) -> None:
        """List the live workers: queues, device and the analysis each runs now (admin keys only).

        An admin is an owner named in the server's TASKGAUGE_ADMIN_OWNERS; with the embedded default the local key
        is one.
        """

        def go() -> None:
            with make_client(api_url, api_key) as api:
                page = api.get_json("/workers", params={"all": "true"} if all_ else None)
            if json_out:
                print_json(page)
                return
            table = Table(title=f"workers ({page.get('count', 0)})")
            for col in ("name", "queues", "device", "conc.", "running", "heartbeat"):
                table.add_column(col)
            for w in page.get("items", []):
                running = "\n".join(_task_line(t) for t in w.get("active", [])) or "idle"
                beat = str(w.get("heartbeat_at") or "")[11:19] + ("" if w.get("live", True) else " (gone)")
                table.add_row(
                    w["name"],
                    ",".join(w.get("queues", [])),
                    w.get("device", ""),
                    str(w.get("concurrency", "")),
                    running,
                    beat,
                )
            out_console.print(table)

        run(go)
