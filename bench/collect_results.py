"""Assemble bench/RESULTS.md: the hand-kept summary (bench/summary.md) followed by every section file
(bench/results_*.md) that the individual benchmark scripts write. Run after any benchmark:

    .venv/bin/python bench/collect_results.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "results_id.md",
    "results_id_rounds.md",
    "results_label_sharpness.md",
    "results_subspace.md",
    "results_load.md",
]


def main() -> None:
    parts = [(HERE / "summary.md").read_text(encoding="utf-8").rstrip()]
    names = ORDER + sorted(p.name for p in HERE.glob("results_*.md") if p.name not in ORDER)
    for name in names:
        path = HERE / name
        if path.exists():
            body = path.read_text(encoding="utf-8").rstrip()
            # demote the section's headings one level under the collected document's title
            body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
            parts.append(f"<!-- from bench/{name} -->\n{body}")
    (HERE / "RESULTS.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
