"""GPU figures of the ID estimators (issue 3): ``mle`` (k=20) on n = 1,000,000 points of D = 784 on one CUDA device,
whole call from a CPU array to the number, with a check of the neighbours; and the warm small-case latency that
torchid publishes for an H100 (MLE and TwoNN at n = 20,000, D = 50).

Data (nothing is downloaded)
  big    Fashion-MNIST's 70,000 images (train + t10k, pixels/255; Debian ``dataset-fashion-mnist``) and augmented
         copies up to n: each copy shifted by a random (dy, dx) in [-2, 2]² pixels (zero fill), its brightness
         scaled by U(0.8, 1.2), plus iid N(0, 0.01²) pixel noise. Distinct, image-like points (no offline image set
         has a million); seed 0, built in numpy on the host.
  small  iid N(0, 1) in D = 50, n = 20,000 (seed 0).

Check (big case): the engine's 20 neighbours of 1,000 random rows against a float64 brute force over all n rows
(difference-based distances of the 64 best float64-GEMM candidates, sorted by (distance, index)): the indices
must be equal and the distances equal to 1e-12 relative; and the MLE of those neighbours must equal the same
formula applied to the engine's output.

    .venv/bin/python bench/gpu_mle.py                      # on a CUDA machine: writes bench/results_gpu.md
    .venv/bin/python bench/gpu_mle.py --n 20000 --device cpu --out /tmp/gpu_dry.md   # dry run of the script
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from id_bench import mle_from_distances  # noqa: E402  (bench/ is on the path when this script runs)

from estimators.id.mle import mle_id  # noqa: E402
from estimators.id.twonn import twonn_id  # noqa: E402
from estimators.knn import kneighbors  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_images() -> np.ndarray:
    """All 70,000 Fashion-MNIST images, (70000, 28, 28) float32 in [0, 1]."""
    parts = []
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        path = FMNIST / name
        if not path.exists():
            sys.exit(f"{path} is missing: run bench/setup.sh (apt-get install -y dataset-fashion-mnist)")
        with gzip.open(path) as f:
            parts.append(np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28))
    return np.concatenate(parts).astype(np.float32) / 255


def big_data(n: int, seed: int = 0) -> np.ndarray:
    """(n, 784) float32: the real images first, then augmented copies (module docstring)."""
    imgs = fashion_images()
    out = np.empty((n, 784), dtype=np.float32)
    m = min(n, imgs.shape[0])
    out[:m] = imgs[:m].reshape(m, 784)
    rng = np.random.default_rng(seed)
    step = 50_000
    for s in range(m, n, step):
        e = min(n, s + step)
        src = imgs[rng.integers(0, imgs.shape[0], e - s)]
        shifted = np.zeros_like(src)
        dy, dx = rng.integers(-2, 3, size=2)  # one shift per batch: vectorised; batches differ
        ys, yd = (slice(dy, 28), slice(0, 28 - dy)) if dy >= 0 else (slice(0, 28 + dy), slice(-dy, 28))
        xs, xd = (slice(dx, 28), slice(0, 28 - dx)) if dx >= 0 else (slice(0, 28 + dx), slice(-dx, 28))
        shifted[:, yd, xd] = src[:, ys, xs]
        shifted *= rng.uniform(0.8, 1.2, size=(e - s, 1, 1)).astype(np.float32)
        shifted += rng.normal(0, 0.01, size=shifted.shape).astype(np.float32)
        out[s:e] = shifted.reshape(e - s, 784)
    return out


def brute_check(
    X: torch.Tensor, rows: torch.Tensor, dist: torch.Tensor, idx: torch.Tensor, k: int, device: torch.device
) -> dict:
    """The engine's neighbours of ``rows`` (``dist``/``idx``: its (len(rows), k) output for them) against a float64
    brute force on ``device``: the 64 best float64-GEMM candidates, then difference-based distances."""
    Xd = X.to(device, torch.float64)
    q = Xd.index_select(0, rows.to(device))
    qn = (q * q).sum(1, keepdim=True)
    best_v = torch.full((q.shape[0], 0), 0.0, dtype=torch.float64, device=device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
    for s in range(0, Xd.shape[0], 65536):
        x = Xd[s : s + 65536]
        g = qn + (x * x).sum(1).unsqueeze(0) - 2 * q @ x.T
        v, i = torch.topk(g, min(64, g.shape[1]), dim=1, largest=False)
        best_v = torch.cat([best_v, v], 1)
        best_i = torch.cat([best_i, i + s], 1)
        keep = torch.topk(best_v, min(64, best_v.shape[1]), dim=1, largest=False).indices
        best_v, best_i = best_v.gather(1, keep), best_i.gather(1, keep)
    ok_i = ok_d = 0
    worst = 0.0
    for r in range(q.shape[0]):
        cand = best_i[r][best_i[r] != rows[r].item()]
        d = torch.linalg.vector_norm(Xd.index_select(0, cand) - q[r], dim=1)
        order = sorted(zip(d.tolist(), cand.tolist()))[:k]
        want_d = torch.tensor([v for v, _ in order], dtype=torch.float64)
        want_i = [c for _, c in order]
        ok_i += want_i == idx[r].tolist()
        rel = float(((dist[r] - want_d).abs() / want_d.clamp_min(1e-300)).max())
        worst = max(worst, rel)
        ok_d += rel <= 1e-12
    return {"rows": int(q.shape[0]), "indices_equal": ok_i, "distances_equal_1e-12": ok_d, "worst_rel": worst}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="points of the big case (default 1,000,000)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--check-rows", type=int, default=1000)
    ap.add_argument("--small-repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_gpu.md"))
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or pass --device cpu for a dry run at small --n")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    started = datetime.now(UTC)
    fig: dict = {"device": name, "n": args.n, "D": 784, "torch": torch.__version__}

    t = time.perf_counter()
    X = big_data(args.n)
    fig["data_s"] = round(time.perf_counter() - t, 2)
    print(f"data {X.shape} in {fig['data_s']} s", flush=True)

    # warm the device (CUDA context, kernels' first load) on a small slice: not part of the figure
    mle_id(torch.from_numpy(X[:5000]), k=20, device=device)
    sync(device)
    t = time.perf_counter()
    res = mle_id(torch.from_numpy(X), k=20, device=device)
    sync(device)
    fig["mle_s"] = round(time.perf_counter() - t, 2)
    fig["mle_value"] = res.value
    fig["mle_duplicates_removed"] = res.details["duplicates_removed"]
    if device.type == "cuda":
        fig["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(f"mle on {args.n} x 784: {fig['mle_s']} s, value {res.value:.10g}", flush=True)

    t = time.perf_counter()
    knn = kneighbors(torch.from_numpy(X), 20, device=device)
    sync(device)
    fig["knn_s"] = round(time.perf_counter() - t, 2)
    fig["knn_stats"] = {k: v for k, v in knn.stats.items() if k != "seconds"}
    fig["knn_phases_s"] = knn.stats.get("seconds")
    fig["mle_from_knn"] = mle_from_distances(knn.distances.numpy(), 20)
    fig["mle_rel_diff"] = abs(fig["mle_from_knn"] - res.value) / abs(res.value)
    rows = torch.from_numpy(np.sort(np.random.default_rng(1).choice(args.n, args.check_rows, replace=False)))
    fig["check"] = brute_check(torch.from_numpy(X), rows, knn.distances[rows], knn.indices[rows], 20, device)
    print(f"check: {fig['check']}", flush=True)
    del knn, X

    small = torch.from_numpy(np.random.default_rng(0).standard_normal((20000, 50)).astype(np.float32))
    for label, fn in (
        ("mle", lambda: mle_id(small, k=20, device=device).value),
        ("twonn", lambda: twonn_id(small, decimation=False, device=device).value),
    ):
        fn()
        times = []
        for _ in range(args.small_repeats):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        fig[f"small_{label}_ms"] = round(1000 * statistics.median(times), 1)
    print(json.dumps(fig, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")

    c = fig["check"]
    L = [
        "# GPU figures (issue 3)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; command: `python bench/gpu_mle.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- device: {name}; torch {torch.__version__}",
        "- data: Fashion-MNIST's 70,000 images and augmented copies (shift ±2 px, brightness ×U(0.8, 1.2), N(0, 0.01²)"
        " noise), float32 on the host; the call moves them to the device. A warm-up call on 5,000 rows precedes it.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| `mle` (k=20) on all {args.n:,} × 784 points, whole call | **{fig['mle_s']} s** (value {fig['mle_value']:.10g}) |",
        f"| the kNN step alone (k=20, exact float64) | {fig['knn_s']} s; method {fig['knn_stats'].get('method')}, "
        f"pruned fraction {fig['knn_stats'].get('pruned_fraction')} |",
        f"| peak GPU memory allocated | {fig.get('gpu_peak_gib', '—')} GiB |",
        f"| check: {c['rows']} random rows vs a float64 brute force | indices equal {c['indices_equal']}/{c['rows']}, "
        f"distances equal to 1e-12 {c['distances_equal_1e-12']}/{c['rows']} (worst rel {c['worst_rel']:.1e}); "
        f"MLE of the kNN output {fig['mle_from_knn']:.10g} (relative difference to the call's "
        f"{fig['mle_rel_diff']:.1e}; {fig['mle_duplicates_removed']} duplicates removed by the call) |",
        f"| `mle` / `twonn`, n=20,000, D=50 iid Gaussian, warm, median of {args.small_repeats} | "
        f"{fig['small_mle_ms']} ms / {fig['small_twonn_ms']} ms (torchid's published H100: 12.9 ms / 12.9 ms) |",
    ]
    Path(args.out).write_text("\n".join(L) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
