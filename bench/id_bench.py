"""Intrinsic-dimension benchmark: taskgauge vs scikit-dimension vs DADApy vs faiss-cpu (docs/methods.md §7).

Every measurement is the *whole call from a numpy array to the number*, in a fresh subprocess per
(method, n, D), repeated ``--repeats`` times (median reported); the peak memory is that subprocess's
resident-set high-water mark (``VmHWM``) over the calls, reset just before the first call (after imports and
data loading), and ``Δ peak`` is that peak minus the resident set at the reset: the working memory of the calls
(code pages the calls touch for the first time included).

Methods
  tg_mle      taskgauge ``estimators.id.mle.mle_id(X, k=20)`` (dedupe + exact float64 kNN + MacKay–Ghahramani)
  skdim_mle   ``skdim.id.MLE().fit(X).dimension_`` (k=20, same estimator)
  tg_twonn    taskgauge ``estimators.id.twonn.twonn_id(X, decimation=False)`` (LS fit, 10 % discard)
  dadapy_2nn  ``dadapy.Data(X).compute_id_2NN()[0]`` (same fit: fraction 0.9, F_emp denominator N)
  tg_knn      taskgauge ``estimators.knn.kneighbors(X, 20)`` alone (exact float64 neighbours)
  faiss_knn   faiss-cpu ``IndexFlatL2`` add + search(k=21) alone (float32, not exact)
If the taskgauge estimators cannot be imported, ``tg_mle`` falls back to kneighbors + the k=20 MLE formula inline.

Data
  D=784   Fashion-MNIST train images (first n), pixels/255, float32 (Debian ``dataset-fashion-mnist``).
  D=3072  the same images upsampled to 32×32 (bilinear, half-pixel centres, numpy), three channels (grey × 1.0, 0.8, 0.6) plus iid
          N(0, 0.01²) pixel noise, float32: an honest 3072-d image set with the same content (no CIFAR offline).

    .venv/bin/python bench/id_bench.py            # full grid, n ∈ {2000, 10000, 20000} × D ∈ {784, 3072}
    .venv/bin/python bench/id_bench.py --quick    # n ∈ {2000, 10000} × D=784, 2 repeats
    .venv/bin/python bench/id_bench.py --rounds 5 # n=20000, D=784: taskgauge and the reference alternating
Writes ``bench/results_id.md`` (``--out`` to change); ``--rounds`` writes ``bench/results_id_rounds.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
METHODS = ("tg_mle", "skdim_mle", "tg_twonn", "dadapy_2nn", "tg_knn", "faiss_knn")
RATIOS = (("skdim_mle", "tg_mle"), ("dadapy_2nn", "tg_twonn"), ("faiss_knn", "tg_knn"))


def load(n: int, D: int) -> np.ndarray:
    """The benchmark matrix (module docstring), float32, C-contiguous."""
    if not FMNIST.exists():
        sys.exit(f"{FMNIST} is missing: run bench/setup.sh (apt-get install -y dataset-fashion-mnist)")
    with gzip.open(FMNIST) as f:
        imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n].astype(np.float32) / 255
    if D == 784:
        return np.ascontiguousarray(imgs.reshape(n, 784))
    if D == 3072:
        up = _bilinear_28_to_32(imgs)
        rgb = np.stack([up, 0.8 * up, 0.6 * up], axis=1)
        rgb += np.random.default_rng(0).normal(0, 0.01, rgb.shape).astype(np.float32)
        return np.ascontiguousarray(rgb.reshape(n, 3072).astype(np.float32))
    raise SystemExit(f"unsupported D={D}; use 784 or 3072")


def _bilinear_28_to_32(imgs: np.ndarray) -> np.ndarray:
    """Bilinear 28×28 → 32×32 upsampling with half-pixel centres (the convention of torch's
    ``interpolate(mode="bilinear", align_corners=False)``), in numpy, so that no worker imports torch just to make
    the data (it would add torch's ~200 MB to the references' resident set)."""

    def taps(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w1 = (src - i0).astype(np.float32)
        return i0, i1, w1

    r0, r1, wr = taps(imgs.shape[1], 32)
    c0, c1, wc = taps(imgs.shape[2], 32)
    rows = imgs[:, r0, :] * (1 - wr)[None, :, None] + imgs[:, r1, :] * wr[None, :, None]
    return (rows[:, :, c0] * (1 - wc)[None, None, :] + rows[:, :, c1] * wc[None, None, :]).astype(np.float32)


def _inline_mle(X: np.ndarray, k: int = 20) -> float:
    import torch

    from estimators.knn import exact_duplicates, kneighbors

    Xt = torch.from_numpy(X)
    dup = exact_duplicates(Xt)
    Xt = Xt[torch.from_numpy(dup.unique_index)]
    return mle_from_distances(kneighbors(Xt, k).distances.numpy(), k)


def mle_from_distances(T: np.ndarray, k: int) -> float:
    """MacKay–Ghahramani pooled MLE (k - 1 normaliser, docs/methods.md §1.1) of ascending neighbour distances (Q, >= k)."""
    T = T[:, :k]
    u = np.log(T[:, -1:] / T[:, :-1]).sum(1) / (k - 1)
    return float(1.0 / u.mean())


def make_call(method: str):
    """A zero-argument-after-X callable for ``method`` (imports happen here, outside the timing)."""
    if method == "tg_mle":
        try:
            import torch

            from estimators.id.mle import mle_id

            return lambda X: mle_id(torch.from_numpy(X), k=20).value, "estimators.id.mle.mle_id"
        except ImportError:
            return _inline_mle, "inline MLE formula over estimators.knn"
    if method == "skdim_mle":
        import skdim

        return lambda X: float(
            skdim.id.MLE().fit(X).dimension_
        ), f"skdim {skdim.__version__ if hasattr(skdim, '__version__') else ''}"
    if method == "tg_twonn":
        import torch

        from estimators.id.twonn import twonn_id

        return lambda X: twonn_id(torch.from_numpy(X), decimation=False).value, "estimators.id.twonn.twonn_id"
    if method == "dadapy_2nn":
        import warnings

        from dadapy import Data

        def run(X):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return float(Data(X).compute_id_2NN()[0])

        return run, "dadapy Data.compute_id_2NN"
    if method == "tg_knn":
        import torch

        from estimators.knn import kneighbors

        return lambda X: float(kneighbors(torch.from_numpy(X), 20).distances[:, -1].mean()), "mean 20th-NN distance"
    if method == "faiss_knn":
        import faiss

        def run(X):
            index = faiss.IndexFlatL2(X.shape[1])
            index.add(X)
            d2, _ = index.search(X, 21)  # the point itself first (no duplicates in these data)
            return float(np.sqrt(np.maximum(d2[:, 20], 0)).mean())

        return run, "mean 20th-NN distance"
    raise SystemExit(f"unknown method {method}")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's resident set to its current size (Linux ≥ 4.0:
    ``echo 5 > /proc/self/clear_refs``), so that the peak read afterwards belongs to the calls and not to the
    data loading before them (the D=3072 loader's temporaries peak far above any method)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """VmHWM (the resident set's high-water mark since the last reset), else ru_maxrss."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method: str, n: int, D: int, repeats: int) -> None:
    """Run one (method, n, D) cell in this fresh process and print one JSON line."""
    sys.path.insert(0, str(ROOT))
    X = load(n, D)
    call, note = make_call(method)
    base = _rss_mb()
    reset = _reset_peak()
    times, values = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        v = call(X)
        times.append(time.perf_counter() - t)
        values.append(v)
    peak = _peak_mb()
    print(
        json.dumps(
            {
                "method": method,
                "n": n,
                "D": D,
                "times": times,
                "value": values[0],
                "values_equal": len(set(values)) == 1,
                "base_mb": base,
                "peak_mb": peak,
                "peak_reset": reset,
                "note": note,
            }
        )
    )


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for mod in ("torch", "numpy", "sklearn", "faiss", "dadapy"):
        try:
            m = __import__(mod)
            versions.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, Python {platform.python_version()}; " + ", ".join(
        versions
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n ∈ {2000, 10000}, D = 784, 2 repeats")
    ap.add_argument("--n", type=int, nargs="*", help="sample sizes (default 2000 10000 20000)")
    ap.add_argument("--D", type=int, nargs="*", help="dimensions (default 784 3072)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell (median reported; default 3)")
    ap.add_argument(
        "--out",
        default=None,
        help="result file (default bench/results_id.md, with --rounds bench/results_id_rounds.md)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="instead of the grid: R rounds on one cell (first --n and "
        "--D, default 20000 × 784), taskgauge and the reference alternating, each a fresh process",
    )
    ap.add_argument("--worker", nargs=4, metavar=("METHOD", "N", "D", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        m, n, D, r = args.worker
        worker(m, int(n), int(D), int(r))
        return
    if args.rounds:
        rounds(args)
        return
    args.out = args.out or str(ROOT / "bench" / "results_id.md")
    ns = args.n or ([2000, 10000] if args.quick else [2000, 10000, 20000])
    Ds = args.D or ([784] if args.quick else [784, 3072])
    repeats = args.repeats or (2 if args.quick else 3)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    t0 = time.time()
    rows = []
    for D in Ds:
        for n in ns:
            for m in args.methods:
                r = _run_worker(m, n, D, repeats)
                rows.append(r)
                if "error" in r:
                    continue
                print(
                    f"D={D} n={n} {m:11s} {r['median']:8.3f} s  value {r['value']:.10g}  peak {r['peak_mb']:.0f} MB",
                    flush=True,
                )
    write(args, rows, started, load_before, os.getloadavg(), time.time() - t0, repeats)


def _run_worker(method: str, n: int, D: int, repeats: int) -> dict:
    """One cell in a fresh subprocess: its JSON line plus ``median``, or ``{..., "error": last stderr line}``
    (the stderr tail is printed)."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, str(n), str(D), str(repeats)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return {"method": method, "n": n, "D": D, "error": out.stderr.strip().splitlines()[-1]}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["median"] = statistics.median(r["times"])
    return r


def rounds(args) -> None:
    """``--rounds R``: on one cell, each of ``tg_mle``/``skdim_mle`` and ``tg_twonn``/``dadapy_2nn`` run in
    alternation (each a fresh subprocess with ``repeats`` calls, as in the grid), R times. This shared machine's
    speed drifts from minute to minute; neighbours in time see the same drift, so each round's ratio is fair even
    when the absolute times move. Writes ``bench/results_id_rounds.md`` (``--out`` to change)."""
    n, D = (args.n or [20000])[0], (args.D or [784])[0]
    repeats = args.repeats or 3
    pairs = [
        (other, mine)
        for other, mine in RATIOS
        if other in args.methods and mine in args.methods and other != "faiss_knn"
    ]
    started, load_before, t0 = datetime.now(UTC), os.getloadavg(), time.time()
    res: list[dict] = []
    for i in range(args.rounds):
        got = {}
        for other, mine in pairs:
            for m in (mine, other):
                got[m] = _run_worker(m, n, D, repeats)
                if "error" in got[m]:
                    sys.exit(f"{m} n={n} D={D} failed: {got[m]['error']}")
        res.append(got)
        print(
            f"round {i + 1}: " + "  ".join(f"{m} {r['median']:.2f} s {r['peak_mb']:.1f} MB" for m, r in got.items()),
            flush=True,
        )
    cmd = "python bench/id_bench.py " + " ".join(sys.argv[1:])
    load_after = os.getloadavg()
    L = [
        "# Intrinsic-dimension benchmark, interleaved rounds",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; command: `{cmd.strip()}`; total wall time {time.time() - t0:.0f} s",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) at start {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"at end {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}",
        f"- cell: n={n}, D={D} (data as in the grid); each entry a fresh subprocess, median of {repeats} calls; peak ="
        " VmHWM during the calls (reset after imports and data loading), as in the grid",
        "",
        "| round | comparison | time: other / taskgauge | ratio | peak MB: other / taskgauge | peak difference MB | values: relative difference |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = []
    for other, mine in pairs:
        ratios, diffs = [], []
        for i, got in enumerate(res, 1):
            a, b = got[other], got[mine]
            ratios.append(a["median"] / b["median"])
            diffs.append(a["peak_mb"] - b["peak_mb"])
            rel = abs(a["value"] - b["value"]) / abs(b["value"])
            L.append(
                f"| {i} | {other} / {mine} | {a['median']:.2f} / {b['median']:.2f} s | {ratios[-1]:.2f}× | "
                f"{a['peak_mb']:.1f} / {b['peak_mb']:.1f} | {diffs[-1]:+.1f} | {rel:.1e} |"
            )
        summary.append(
            f"- {other} / {mine}: time ratio min {min(ratios):.2f}×, median {statistics.median(ratios):.2f}×, "
            f"max {max(ratios):.2f}×; the reference's peak minus ours: min {min(diffs):+.1f} MB, "
            f"median {statistics.median(diffs):+.1f} MB (positive: ours lower)"
        )
    L += ["", "Summary", ""] + summary
    out = Path(args.out or ROOT / "bench" / "results_id_rounds.md")
    out.write_text("\n".join(L) + "\n")
    print(f"wrote {out}")


def write(args, rows, started, load_before, load_after, wall, repeats) -> None:
    cmd = "python bench/id_bench.py " + " ".join(a for a in sys.argv[1:])
    L = [
        "# Intrinsic-dimension benchmark (taskgauge vs scikit-dimension vs DADApy vs faiss-cpu)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; command: `{cmd.strip()}`; total wall time {wall:.0f} s",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) at start {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"at end {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} (the CPU is shared; re-run on a quiet machine)",
        f"- each cell: a fresh subprocess, {repeats} calls, median wall time of the whole call (numpy array in, number out);"
        " peak = the subprocess's resident-set high-water mark (VmHWM) during the calls, reset after imports and data"
        " loading (so the loader's own peak is not counted); Δ = peak − resident set before the first call",
        "- D=784: Fashion-MNIST train images (first n) /255; D=3072: the same upsampled to 32×32 (bilinear), 3 channels"
        " (×1.0, 0.8, 0.6) + iid N(0, 0.01²) noise. float32 input everywhere.",
        "- tg_twonn runs with `decimation=False` (DADApy's compute_id_2NN does one fit on all points);"
        " tg_knn / faiss_knn are the k=20 neighbour search alone (faiss: float32 IndexFlatL2, not exact).",
        "",
        "| D | n | method | median s | runs s | value | peak MB | Δ MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {}
    for r in rows:
        by[(r["D"], r["n"], r["method"])] = r
        if "error" in r:
            L.append(f"| {r['D']} | {r['n']} | {r['method']} | error | {r['error']} | | | |")
            continue
        L.append(
            f"| {r['D']} | {r['n']} | {r['method']} | {r['median']:.3f} | "
            f"{', '.join(f'{t:.2f}' for t in r['times'])} | {r['value']:.10g} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] - r['base_mb']:.0f} |"
        )
    L += [
        "",
        "## Ratios (time of the other tool / time of taskgauge; memory Δ of the other tool / taskgauge's)",
        "",
        "| D | n | comparison | time ratio | Δ-memory ratio | values (other / taskgauge) |",
        "|---|---|---|---|---|---|",
    ]
    for D in sorted({r["D"] for r in rows}):
        for n in sorted({r["n"] for r in rows}):
            for other, mine in RATIOS:
                a, b = by.get((D, n, other)), by.get((D, n, mine))
                if not a or not b or "error" in a or "error" in b:
                    continue
                dm = (a["peak_mb"] - a["base_mb"]) / max(b["peak_mb"] - b["base_mb"], 1e-9)
                L.append(
                    f"| {D} | {n} | {other} / {mine} | {a['median'] / b['median']:.2f}× | {dm:.2f} | "
                    f"{a['value']:.10g} / {b['value']:.10g} |"
                )
    Path(args.out).write_text("\n".join(L) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
