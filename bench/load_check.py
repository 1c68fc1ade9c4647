"""A small load check of the production deployment on loopback (PostgreSQL + Redis + a real API process + a real
Celery worker): 50 concurrent uploads, then 20 analyses queued at once; every call must succeed. Latencies of
the API calls (p50/p95 per kind) go to ``bench/results_load.md``.

    .venv/bin/python bench/load_check.py            # needs PostgreSQL on 127.0.0.1:5432 and redis-server

It builds the same stack as the integration tests (``tests/integration/service_stack.py``: a fresh database
``taskgauge_test_<random>`` migrated with Alembic, a private redis-server on a free port), and removes it after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))

import service_stack  # noqa: E402

latencies: dict[str, list[float]] = defaultdict(list)


def timed(kind: str, fn, *args, **kwargs):
    t = time.perf_counter()
    r = fn(*args, **kwargs)
    latencies[kind].append(time.perf_counter() - t)
    return r


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=50)
    ap.add_argument("--analyses", type=int, default=20)
    ap.add_argument("--worker-concurrency", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_load.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tg-load-"))
    files = tmp / "files"
    files.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.uploads):
        Z = rng.normal(size=(400, 5))
        X = (Z @ rng.normal(size=(5, 16))).astype(np.float32)
        p = files / f"d{i:02d}.npz"
        np.savez(p, X=X, y=(Z[:, 0] > 0).astype(np.int64))
        paths.append(p)

    stack = service_stack.build("pg-redis", tmp / "stack")
    try:
        stack.start_api()
        stack.n_workers += 1
        stack.worker = stack._spawn(["worker", "--concurrency", str(args.worker_concurrency)], "worker1.log")
        import subprocess

        key = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", "load"],
            env=stack.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        client = stack.client(key)
        client.timeout = 120

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.uploads) as pool:
            ups = list(pool.map(lambda p: timed("POST /datasets (upload)", service_stack.upload, client, p), paths))
        upload_wall = time.perf_counter() - t0
        bad = [r.text for r in ups if r.status_code != 201]
        assert not bad, bad[:3]
        ids = [r.json()["id"] for r in ups]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.analyses) as pool:
            created = list(
                pool.map(
                    lambda i: timed(
                        "POST /analyses",
                        client.post,
                        "/analyses",
                        json={"dataset_id": i, "estimators": {"mle": {}, "twonn": {}}},
                    ),
                    ids[: args.analyses],
                )
            )
        assert all(r.status_code == 202 for r in created), [r.text for r in created if r.status_code != 202][:3]
        pending = {r.json()["id"] for r in created}
        done: dict[str, dict] = {}
        deadline = time.monotonic() + 600
        while pending and time.monotonic() < deadline:
            for aid in list(pending):
                s = timed("GET /analyses/{id}", client.get, f"/analyses/{aid}").json()
                if s["status"] in ("succeeded", "failed", "cancelled"):
                    done[aid] = s
                    pending.discard(aid)
            time.sleep(0.5)
        analyses_wall = time.perf_counter() - t0
        assert not pending, f"{len(pending)} analyses unfinished:\n{stack.tail()}"
        failed = {a: s for a, s in done.items() if s["status"] != "succeeded"}
        assert not failed, failed
        for s in done.values():
            r = timed("GET /reports/{id}", client.get, f"/reports/{s['report_id']}")
            assert r.status_code == 200 and set(r.json()["results"]) == {"mle", "twonn"}
        timed("GET /datasets (list)", client.get, "/datasets", params={"limit": 100})
        for _ in range(20):
            timed("GET /datasets (list)", client.get, "/datasets", params={"limit": 100})
    finally:
        stack.stop()

    lines = [
        "# Load check (bench/load_check.py)",
        "",
        f"{args.uploads} concurrent uploads, then {args.analyses} analyses (mle + twonn on 400×16) queued at once, "
        "against the production stack on loopback: PostgreSQL, a private Redis, one API process (uvicorn), one "
        f"Celery worker (`--concurrency {args.worker_concurrency}`). Every call succeeded "
        f"({args.uploads}/{args.uploads} uploads 201, {args.analyses}/{args.analyses} analyses succeeded with "
        "reports).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other work), Python "
        f"{platform.python_version()}. Reproduce: `.venv/bin/python bench/load_check.py`.",
        "",
        f"- wall time of the {args.uploads} concurrent uploads: {upload_wall:.2f} s",
        f"- wall time from queuing the {args.analyses} analyses to the last one finished: {analyses_wall:.2f} s",
        "",
        "| API call | n | p50 (ms) | p95 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, xs in latencies.items():
        lines.append(
            f"| {kind} | {len(xs)} | {1000 * statistics.median(xs):.1f} | {1000 * pct(xs, 0.95):.1f} | "
            f"{1000 * max(xs):.1f} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
