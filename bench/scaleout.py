"""Scale-out of one analysis (issue 17): the same analysis on 1 and on 2 real `taskgauge worker` processes, on
PostgreSQL + Redis, with fan-out on (TASKGAUGE_FANOUT=true). Each worker has concurrency 1 and one torch/BLAS
thread, so on a 2-core machine two workers are two cores. Rounds alternate 1 and 2 workers; values must be
identical. Writes bench/results_scaleout.md (then run bench/collect_results.py), with the shard timings and an
Amdahl/list-scheduling model of 8 and 32 workers built from them.

    .venv/bin/python bench/scaleout.py [--n 20000] [--rounds 3]

Needs Fashion-MNIST (bench/setup.sh), PostgreSQL on 127.0.0.1:5432 and redis-server.
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
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT)]

import service_stack  # noqa: E402

FM = Path("/usr/share/datasets/fashion-mnist")
ESTIMATORS = {"mle": {}, "twonn": {}, "gride": {}, "label_sharpness": {}}


def fashion(n: int, out: Path) -> Path:
    with gzip.open(FM / "train-images-idx3-ubyte.gz") as fh:
        X = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784)[:n].astype(np.float32) / 255.0
    with gzip.open(FM / "train-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read(), np.uint8, offset=8)[:n].astype(np.int64)
    np.savez(out, X=X, y=y)
    return out


def run_once(stack, key: str, dataset_id: str) -> dict:
    with stack.client(key) as c:
        t0 = time.perf_counter()
        aid = c.post("/analyses", json={"dataset_id": dataset_id, "estimators": ESTIMATORS}).json()["id"]
        state = service_stack.wait_for(c, aid, timeout=1800)
        wall = time.perf_counter() - t0
        if state["status"] != "succeeded":
            raise RuntimeError(f"analysis {aid} {state['status']}: {state.get('error')}\n{stack.tail()}")
        report = c.get(f"/reports/{state['report_id']}").json()
    return {
        "wall": wall,
        "values": {k: v["value"] for k, v in report["results"].items()},
        "shards": report["environment"].get("shards", []),
        "seconds_total": report["environment"]["seconds_total"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results_scaleout.md"))
    args = ap.parse_args()
    if not (FM / "train-images-idx3-ubyte.gz").exists():
        sys.exit("Fashion-MNIST is missing: run bench/setup.sh")
    tmp = Path(tempfile.mkdtemp(prefix="tg-scaleout-"))
    data = fashion(args.n, tmp / f"fashion{args.n}.npz")
    env = {
        "TASKGAUGE_FANOUT": "true",
        "TASKGAUGE_MAX_UPLOAD_MB": "1024",
        "TASKGAUGE_WORKER_THREADS": "1",
        "TASKGAUGE_LEASE_S": "120",
        "TASKGAUGE_HEARTBEAT_S": "2",
        "TASKGAUGE_VISIBILITY_TIMEOUT_S": "3600",
    }
    stack = service_stack.build("pg-redis", tmp / "stack", extra_env=env)
    workers: list = []
    rows: list[dict] = []
    try:
        stack.start_api()
        key = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", "bench"],
            env=stack.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.strip()
        with stack.client(key) as c:
            ds = service_stack.upload(c, data, name=f"fashion-{args.n}").json()
        for r in range(args.rounds):
            for n_workers in (1, 2) if r % 2 == 0 else (2, 1):
                workers = [stack.start_worker() for _ in range(n_workers)]
                res = run_once(stack, key, ds["id"])
                for w in workers:
                    service_stack.kill_group(w)
                workers = []
                res.update(round=r + 1, workers=n_workers, load=os.getloadavg()[0])
                rows.append(res)
                print(f"round {r + 1}: {n_workers} worker(s) {res['wall']:.1f} s", flush=True)
    finally:
        for w in workers:
            service_stack.kill_group(w)
        stack.stop()
    write(args, rows)


def write(args, rows: list[dict]) -> None:
    ones = [r for r in rows if r["workers"] == 1]
    twos = [r for r in rows if r["workers"] == 2]
    same = all(r["values"] == rows[0]["values"] for r in rows)
    ratios = [o["wall"] / t["wall"] for o, t in zip(ones, twos)]
    shard_s = {}
    for r in ones:
        for s in r["shards"]:
            shard_s.setdefault(s["key"], []).append(s["seconds"])
    med = {k: statistics.median(v) for k, v in shard_s.items()}
    t1 = statistics.median(o["wall"] for o in ones)
    work = sum(med.values())
    serial = max(0.0, t1 - work)
    longest = max(med.values())

    def model(n: int) -> float:  # list scheduling of the shards on n workers, plus the serial part
        loads = [0.0] * n
        for s in sorted(med.values(), reverse=True):
            loads[loads.index(min(loads))] += s
        return serial + max(loads)

    lines = [
        "# Scale-out: one analysis on 1 and 2 workers (fan-out)",
        "",
        f"`bench/scaleout.py --n {args.n} --rounds {args.rounds}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; PostgreSQL + Redis, real `taskgauge worker` processes (concurrency 1, one thread "
        "each), TASKGAUGE_FANOUT=true. Analysis: " + ", ".join(ESTIMATORS) + f" on Fashion-MNIST {args.n}×784. "
        "Wall time from POST /analyses to `succeeded`; rounds alternate the order.",
        "",
        "| round | workers | wall s | load (1 min) |",
        "|---|---|---|---|",
        *[f"| {r['round']} | {r['workers']} | {r['wall']:.1f} | {r['load']:.1f} |" for r in rows],
        "",
        f"Speed-up 2 vs 1 worker per round: {', '.join(f'{x:.2f}×' for x in ratios)} "
        f"(median {statistics.median(ratios):.2f}×). Values identical in every run: **{same}**.",
        "",
        "Shard seconds (1-worker runs, median): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(med.items())) + ".",
        "",
        "## Model of more workers (from these timings)",
        "",
        f"Serial part ≈ {serial:.1f} s (1-worker wall {t1:.1f} s − shard work {work:.1f} s): the upload's dataset "
        "load in each shard's worker, the claim/dispatch round trips, and the report assembly (dataset summary with "
        f"its duplicate check). With one shard per estimator the longest shard ({longest:.1f} s) bounds any number "
        "of workers:",
        "",
        "| workers | modelled wall s | speed-up |",
        "|---|---|---|",
        *[f"| {n} | {model(n):.1f} | {t1 / model(n):.2f}× |" for n in (1, 2, 4, 8, 32)],
        "",
        "Beyond 4 workers nothing more is gained until a single estimator is split: the kNN of one estimator by "
        "query blocks, and the subspace sweep by trials (issue 17's other shard kinds, not built yet).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
