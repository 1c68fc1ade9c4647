"""One line per result JSON under a directory (bench/gpu_runs.sh prints these: the output tail of a lent GPU machine
is the one channel that always comes back; files may not)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: str) -> None:
    for f in sorted(Path(root).rglob("*.json")):
        r = json.loads(f.read_text())
        for row in r.get("rows", [r]):
            det = row.get("details", {})
            base = det.get("baseline") or row.get("baseline")
            base_mean = base.get("direct_mean") if isinstance(base, dict) else row.get("baseline_mean")
            curve = det.get("curve", row.get("curve", []))
            label = row.get("name") or row.get("arm") or f"{row.get('init')} {row.get('method')}"
            print(
                f"{f.stem} | {label} | d90 {row.get('value', row.get('d90'))} ci {row.get('ci')} "
                f"bound {det.get('bound', row.get('bound'))} base {base_mean} | {row.get('seconds', 0):.0f} s | "
                + " ".join(f"{c['d']}:{c['mean']:.3f}" for c in curve),
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/res")
