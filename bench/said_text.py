"""Issue 16 (slow, never in CI): fine-tuning d90 of the packaged MiniLM on real text, DID vs SAID, pretrained vs
the same architecture randomly initialised (Aghajanyan et al. 2021; docs/methods.md §4.5).

Task: topic classification of Debian fortunes (computers / love / science / politics / sports, ``--per-class``
texts each, seeded), token ids truncated at ``--max-length``. Every configuration runs the registered ``subspace``
estimator (baseline = direct training of the same trainable subset, ``--seeds`` seeds, coarse log grid of d then
bisection, d90 = 90% of the baseline's mean validation accuracy, percentile bootstrap CI over seeds). On this 2-core
CPU the sweep trains the last ``--blocks`` transformer blocks + the head only (the lower blocks are frozen,
computed once per text and shared by every seed and trial; the seeds run in one batched call); the table says so. Writes bench/results_said_text.md and bench/said_text.png.

    PYTHONPATH=. .venv/bin/python bench/said_text.py [--blocks 1] [--seeds 3] [--epochs 100]
    # where a GPU is lent, the full-model sweep (all 6 blocks, embeddings included):
    PYTHONPATH=. python3 bench/said_text.py --device cuda --blocks all --out bench/results_said_text_gpu.md

Protocol: subspace 2.x's converged one (every trial and baseline seed trains to a plateau; ``--epochs`` is a cap;
θ_d's lr from a range test per d; the direct baseline uses ``--lr``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fortunes import TOPICS, load_fortunes

HERE = Path(__file__).resolve().parent

CONFIGS = [
    ("pretrained", "DID", {"init": "pretrained"}, False),
    ("pretrained", "SAID", {"init": "pretrained"}, True),
    ("random init", "DID", {"init": "random"}, False),
    ("random init", "SAID", {"init": "random"}, True),
]


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="1", help="train the last L blocks + head, or 'all' (every weight)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100, help="cap; each trial stops on a validation plateau")
    ap.add_argument("--lr", type=float, default=1e-4, help="lr of the direct (full fine-tuning) baseline")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-budget-mb", type=int, default=2048, help="the estimator's budget (GPU: raise it)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--d-min", type=int, default=16)
    ap.add_argument("--grid-factor", type=float, default=4.0)
    ap.add_argument("--bisect-steps", type=int, default=2)
    ap.add_argument("--max-d", type=int, default=65_536)
    ap.add_argument("--only", default="", help="comma-separated config indices (0..3) to run")
    ap.add_argument("--lr-candidates", default="", help="comma-separated lr candidates of θ_d's range test")
    ap.add_argument("--range-steps", type=int, default=0, help="steps per range-test candidate (0: 2 scores)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    ap.add_argument("--out", default=str(HERE / "results_said_text.md"))
    ap.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="write the table and plot from the JSON files of earlier runs (one configuration each, e.g. run "
        "side by side with --only I --threads 1 --out /tmp/cI.md) instead of running anything",
    )
    a = ap.parse_args()
    if a.merge:
        merge(a)
        return
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    blocks = None if a.blocks == "all" else int(a.blocks)
    started = datetime.now(UTC)
    load_start = load()
    t_all = time.perf_counter()

    from estimators import registry
    from estimators.base import json_number
    from estimators.text import tokenize_texts

    texts, y, names = load_fortunes(TOPICS, per_class=a.per_class, seed=0)
    ids = tokenize_texts(texts, max_length=a.max_length)
    X, Y = ids.float(), torch.from_numpy(y)
    est = registry.get("subspace")
    rows = []
    json_path = Path(a.out).with_suffix(".json")
    picked = [int(i) for i in a.only.split(",")] if a.only else range(len(CONFIGS))
    for i in picked:
        init, method, extra, said = CONFIGS[i]
        spec = {
            "arch": "pretrained",
            "source": "minilm",
            "train_blocks": blocks,
            "max_length": a.max_length,
            **extra,
            "train": {"optimizer": "adam", "lr": a.lr, "epochs": a.epochs, "batch_size": a.batch_size},  # epochs: cap
        }
        p = est.parse_params(
            {
                "model": spec,
                "said": said,
                "seeds": a.seeds,
                "d_min": a.d_min,
                "grid_factor": a.grid_factor,
                "bisect_steps": a.bisect_steps,
                "max_d": a.max_d,
                "n_bootstrap": 1000,
                "memory_budget_mb": a.memory_budget_mb,
                "projection": "fastfood",
                **({"lr_candidates": [float(v) for v in a.lr_candidates.split(",")]} if a.lr_candidates else {}),
                **({"lr_range_steps": a.range_steps} if a.range_steps else {}),
            }
        )
        t = time.perf_counter()
        last = {"stage": "", "t": time.monotonic()}

        def show(fraction: float, stage: str, last=last, label=f"{init} {method}") -> None:
            # one line per finished group of seeds, and the stage every 2 minutes
            if (stage != last["stage"] and "models trained" in stage) or time.monotonic() - last["t"] > 120:
                print(f"[{time.strftime('%H:%M:%S')}] {label} {fraction:.0%} {stage}", file=sys.stderr, flush=True)
                last["t"] = time.monotonic()
            last["stage"] = stage

        r = est.fn(X, Y, p, device=device, progress=show)
        sec = time.perf_counter() - t
        det = r.details
        row = {
            "init": init,
            "method": method,
            "d90": r.value,
            "ci": list(r.ci) if r.ci else None,
            "d90_grid": det["d_int90_grid"],
            "censored": det["censored"],
            "D": det["D"],
            "m": det["n_tensors"],
            "baseline": det["baseline"]["direct_seeds"],
            "baseline_mean": det["baseline"]["direct_mean"],
            "level": det["baseline"]["level"],
            "curve": det["curve"],
            "seconds": sec,
            "warnings": r.warnings,
            "load_after": load(),
            "n_unconverged": det.get("n_unconverged"),
            "bound": det.get("bound"),
            "median_steps": sorted(t["steps"] for t in det["trials"])[len(det["trials"]) // 2],
            "lr_by_d": {str(t["d"]): t["lr"] for t in det["trials"] if t["d"] is not None},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "direct_lr": a.lr,
            "cap_epochs": a.epochs,
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}, default=str), flush=True)
        meta = {
            "started": f"{started:%Y-%m-%d %H:%M}",
            "wall_s": time.perf_counter() - t_all,
            "load_start": load_start,
            "load_end": load(),
            "n_texts": len(texts),
            "topics": list(names),
            "torch": torch.__version__,
            "version": est.version,
        }
        json_path.write_text(json.dumps({"args": vars(a), "meta": meta, "rows": rows}, default=json_number, indent=1))
    if rows:
        write_report(a, meta, rows, [f"`PYTHONPATH=. .venv/bin/python bench/said_text.py {' '.join(sys.argv[1:])}`"])


def merge(a) -> None:
    """The table and plot of runs made side by side, one configuration each (``--merge`` JSON files), and their raw
    records in one JSON beside the table (which ``--merge`` reads again)."""
    runs = []
    for f in a.merge:  # a run's JSON, or a merged file's {"runs": [...]}
        doc = json.loads(Path(f).read_text())
        runs += doc["runs"] if "runs" in doc else [doc]
    Path(a.out).with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1))
    # each row with its own run's direct lr and epoch cap (runs side by side may differ in them)
    rows = [
        {"direct_lr": run["args"]["lr"], "cap_epochs": run["args"]["epochs"], **r} for run in runs for r in run["rows"]
    ]
    first = argparse.Namespace(**{"lr_candidates": "", "range_steps": 0, **runs[0]["args"], "out": a.out})
    meta = {
        **runs[0]["meta"],
        "started": min(run["meta"]["started"] for run in runs),
        "wall_s": max(run["meta"]["wall_s"] for run in runs),
        "load_start": " · ".join(run["meta"]["load_start"] for run in runs),
        "load_end": " · ".join(run["meta"]["load_end"] for run in runs),
    }
    write_report(
        first,
        meta,
        rows,
        [
            f"{run['meta']['started']} UTC, {run['meta']['wall_s']:.0f} s: `PYTHONPATH=. .venv/bin/python "
            "bench/said_text.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}"
                for k, v in run["args"].items()
                if k not in ("out", "merge") and v not in ("", None)
            )
            + "`"
            for run in runs
        ],
    )


def write_report(a, meta: dict, rows: list[dict], commands: list[str]) -> None:
    blocks = None if a.blocks == "all" else int(a.blocks)
    cmds = "; ".join(commands)
    lines = [
        "## Fine-tuning d90 of MiniLM on real text: pretrained vs random init, DID vs SAID (issue 16)",
        "",
        f"- date: {meta['started']} UTC; "
        + (
            "command: "
            if len(commands) == 1
            else f"{len(commands)} runs, one configuration each (runs started at "
            "the same minute ran side by side, one process each): "
        )
        + f"{cmds}; wall time {meta['wall_s']:.0f} s",
        f"- machine: {rows[0]['device'] if rows else a.device}, torch {meta['torch']}; load average (1/5/15 min) "
        f"at start {meta['load_start']}, at end {meta['load_end']}",
        f"- data: Debian `fortunes`, {meta['n_texts']} texts ({a.per_class} per topic: {', '.join(meta['topics'])}), "
        f"token ids truncated at {a.max_length}; 20% seeded validation split (metric: validation accuracy)",
        "- model: packaged all-MiniLM-L6-v2 (6 blocks, 22.7M weights) + a new linear head on the mean-pooled last "
        + (
            "hidden state; **every weight is trained** (the full-model sweep: D = all 22.7M weights + head)"
            if blocks is None
            else f"hidden state; **only the last {blocks} block(s) + head are trained** (the lower blocks and "
            "embeddings stay at θ₀ and are computed once per text)"
        )
        + ". 'random init' is the same architecture freshly initialised (one fixed random encoder), trained the same "
        "way (a second random-init row, where present, gives its direct baseline a larger lr)",
        f"- protocol: registered `subspace` estimator, converged protocol (subspace {meta['version']}): every trial and "
        f"baseline seed trains to a validation plateau, up to the cap of epochs in the table, batch {a.batch_size}; the "
        "direct (full fine-tuning) baseline uses Adam at the table's lr, θ_d's lr comes from a range test per d (candidates "
        f"{a.lr_candidates or 'the default 1e-3…1'}, {a.range_steps or 'two scores’ worth of'} steps each); {a.seeds} seeds; "
        f"Fastfood projection; grid d = {a.d_min}·{a.grid_factor:g}^k then {a.bisect_steps} bisections; d90 = first "
        "d whose mean reaches 0.9 × the mean direct accuracy, interpolated in log d; 95% percentile bootstrap CI "
        "over seeds; SAID: d includes the m per-tensor scales",
        "",
        "| init | method | direct lr, cap | D (trained subset) | baseline acc (seeds) | d90 | 95% CI "
        "| unconverged trials | median steps | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "–" if not r["ci"] else f"[{r['ci'][0]:g}, {r['ci'][1]:g}]"
        d90 = "> max_d" if r["d90"] is None else f"{r['d90']:g}" + (" (≤ d_min)" if r["censored"] == "below" else "")
        base = ", ".join(f"{v:.3f}" for v in r["baseline"])
        lines.append(
            f"| {r['init']} | {r['method']} | {r.get('direct_lr', a.lr):g}, {r.get('cap_epochs', a.epochs)} ep "
            f"| {r['D']:,} | {r['baseline_mean']:.3f} ({base}) | {d90} | {ci} "
            f"| {r.get('n_unconverged', '–')} | {r.get('median_steps', '–')} | {r['seconds']:.0f} s |"
        )
    lines += ["", "Accuracy against d (mean over seeds):", ""]
    for r in rows:
        lrs = r.get("lr_by_d", {})
        pts = "; ".join(
            f"{c['d']}: {c['mean']:.3f}" + (f" [lr {lrs[str(c['d'])]:g}]" if str(c["d"]) in lrs else "")
            for c in r["curve"]
        )
        lines.append(f"- {_label(r, rows)} (level {r['level']:.3f}): {pts}")
    from estimators.subspace.sweep import crossing

    # claim (a) on one yardstick: where each random-init curve reaches the *pretrained* arm's level (its own
    # baseline may be far lower, which makes its own-baseline d90 small without the task being easy for it)
    for r in rows:
        pre = next((q for q in rows if q["init"] == "pretrained" and q["method"] == r["method"]), None)
        if r["init"] == "pretrained" or pre is None:
            continue
        at = crossing({c["d"]: [c["mean"]] for c in r["curve"]}, pre["level"]).value  # as the estimator's d90
        top = max(c["d"] for c in r["curve"])
        lines += [
            "",
            f"{_label(r, rows)} at the pretrained arm's level ({pre['level']:.3f}): "
            + (
                f"d ≈ {at:.0f}"
                if at is not None
                else f"not reached by d = {top} (best mean {max(c['mean'] for c in r['curve']):.3f})"
            ),
        ]
    warn = [f"- {_label(r, rows)}: {w}" for r in rows for w in r["warnings"]]
    if warn:
        lines += ["", "Warnings:", ""] + warn
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(rows, HERE / "said_text.png")
    print("\n".join(lines))


def _label(r: dict, rows: list[dict]) -> str:
    """A row's name: init and method, and its direct lr where another row has the same init and method."""
    twins = sum(q["init"] == r["init"] and q["method"] == r["method"] for q in rows)
    return f"{r['init']} {r['method']}" + (f" (direct lr {r.get('direct_lr', 0):g})" if twins > 1 else "")


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        ds = [c["d"] for c in r["curve"]]
        ms = [c["mean"] for c in r["curve"]]
        sd = [c["std"] for c in r["curve"]]
        line = ax.errorbar(ds, ms, yerr=sd, marker="o", ms=3, capsize=2, label=_label(r, rows))
        ax.axhline(r["level"], ls=":", lw=0.8, color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("d (trained numbers)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("MiniLM on fortunes topics: subspace fine-tuning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
