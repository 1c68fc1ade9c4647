"""The one report renderer: a report (docs/methods.md §0) as a rich table, for the CLI (local and remote) and as plain text
for the Python API's ``Report.table()``. Light on purpose (no torch): the remote CLI imports it."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table


def fmt_number(v: Any) -> str:
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
    console.print(" · ".join(bits) + f"  [dim]({env.get('device')}, {fmt_number(env.get('seconds_total'))} s)[/dim]")
    table = Table(show_lines=False, header_style="bold")
    table.add_column("estimator")
    table.add_column("value", justify="right")
    table.add_column("CI")
    table.add_column("seconds", justify="right")
    table.add_column("warnings")
    footnotes: list[str] = []
    for name, r in (report.get("results") or {}).items():
        ci = r.get("ci")
        ci_text = f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]" if ci else "—"
        warnings = r.get("warnings") or []
        marks = []
        for w in warnings:
            footnotes.append(f"[yellow]({len(footnotes) + 1})[/yellow] {name}: {w}")
            marks.append(f"({len(footnotes)})")
        seconds = r.get("seconds")
        table.add_row(
            f"{name} [dim]{r.get('version', '')}[/dim]",
            (r.get("details") or {}).get("d_int90_display") or fmt_number(r.get("value")),
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


def report_text(report: dict[str, Any], width: int = 120) -> str:
    """:func:`render_report` as plain text (no colours)."""
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    render_report(report, console)
    return console.export_text()
