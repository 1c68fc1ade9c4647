"""Scale-out of one analysis (issue 17): the same analysis on 1 and on 2 real `taskgauge worker` processes, on
PostgreSQL + Redis, with fan-out on (TASKGAUGE_FANOUT=true). Each worker has concurrency 1 and one torch/BLAS
thread, so on a 2-core machine two workers are two cores. Rounds alternate 1 and 2 workers; values must be
identical. Writes bench/results_scaleout.md (then run bench/collect_results.py), with the shard timings and an
Amdahl/list-scheduling model of 8 and 32 workers built from them.

    .venv/bin/python bench/scaleout.py [--n 20000] [--rounds 3]
    .venv/bin/python bench/scaleout.py --case subspace [--rounds 3]
    .venv/bin/python bench/scaleout.py --case knn [--knn-n 70000] [--rounds 3]

``--case subspace``: a subspace sweep on sklearn digits (1,797 × 64; MLP spec hidden [64], the README's example;
default protocol, 3 seeds) fanned out by trials (workers/fanout_subspace.py: each finished trial sends the next,
speculative trials up to as many in flight as live workers); writes bench/results_scaleout_subspace.md with the trial timings and a model of 8
and 32 workers replayed with the sweep's own planner. ``--spec`` / ``--params`` (JSON) shrink it for a smoke run.

``--case knn``: the split kNN (TASKGAUGE_KNN_SHARD_ROWS, workers/fanout_knn.py) of ``mle`` on Fashion-MNIST train +
test (70000 × 784): unsplit on 1 worker, split in 2 parts on 1 and on 2 workers; values must be identical. Writes
bench/results_scaleout_knn.md with the shard timings and the model of more workers.

Needs Fashion-MNIST (bench/setup.sh; not for ``--case subspace``), PostgreSQL on 127.0.0.1:5432 and redis-server.
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


DIGITS_SPEC = {"arch": "mlp", "hidden": [64]}


def digits(out: Path) -> Path:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.savez(out, X=(X / 16.0).astype(np.float32), y=y.astype(np.int64))
    return out


def run_once(stack, key: str, dataset_id: str, body: dict | None = None) -> dict:
    with stack.client(key) as c:
        t0 = time.perf_counter()
        body = body or {"estimators": ESTIMATORS}
        aid = c.post("/analyses", json={"dataset_id": dataset_id, **body}).json()["id"]
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
        "analysis_id": aid,
        "results": report["results"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="default bench/results_scaleout[_subspace].md")
    ap.add_argument("--case", choices=("estimators", "subspace", "knn"), default="estimators")
    ap.add_argument("--knn-n", type=int, default=70000, help="--case knn: rows of Fashion-MNIST train + test")
    ap.add_argument("--spec", type=json.loads, default=DIGITS_SPEC, help="model spec (JSON), --case subspace")
    ap.add_argument("--params", type=json.loads, default={}, help="subspace params (JSON), --case subspace")
    args = ap.parse_args()
    if args.case == "knn":
        if not (FM / "train-images-idx3-ubyte.gz").exists():
            sys.exit("Fashion-MNIST is missing: run bench/setup.sh")
        args.out = args.out or str(HERE / "results_scaleout_knn.md")
        knn_main(args)
        return
    args.out = args.out or str(
        HERE / ("results_scaleout.md" if args.case == "estimators" else "results_scaleout_subspace.md")
    )
    tmp = Path(tempfile.mkdtemp(prefix="tg-scaleout-"))
    if args.case == "subspace":
        data, name = digits(tmp / "digits.npz"), "digits"
    else:
        if not (FM / "train-images-idx3-ubyte.gz").exists():
            sys.exit("Fashion-MNIST is missing: run bench/setup.sh")
        data, name = fashion(args.n, tmp / f"fashion{args.n}.npz"), f"fashion-{args.n}"
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
        body = None
        with stack.client(key) as c:
            ds = service_stack.upload(c, data, name=name).json()
            if args.case == "subspace":
                spec = c.post("/model-specs", json={"name": "mlp", "spec": args.spec}).json()
                body = {"estimators": {"subspace": args.params}, "model_spec_id": spec["id"]}
        for r in range(args.rounds):
            for n_workers in (1, 2) if r % 2 == 0 else (2, 1):
                if args.case == "subspace":  # rounds as wide as the workers, whatever stale presence rows say
                    stack.env["TASKGAUGE_FANOUT_TRIALS"] = str(n_workers)
                workers = [stack.start_worker() for _ in range(n_workers)]
                res = run_once(stack, key, ds["id"], body)
                if args.case == "subspace":
                    res["trials"] = trial_rows(stack, res["analysis_id"])
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
    (write_subspace if args.case == "subspace" else write)(args, rows)


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
        "Beyond 4 workers nothing more is gained at this size: one shard per estimator. Past TASKGAUGE_KNN_SHARD_ROWS "
        "rows the kNN of mle/twonn/gride is computed once, in parts (`--case knn`), and a subspace sweep is split by "
        "trials (`--case subspace`).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(rows, indent=1))


# -- the subspace sweep ----------------------------------------------------------------------------------------


def trial_rows(stack, analysis_id: str) -> list[dict]:
    """The sweep's trial shards of one run: key, round (rows created together), seconds, and the trial's record."""
    from sqlalchemy import select

    from taskgauge import db

    engine = db.make_engine(stack.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            S = db.AnalysisShard
            rows = list(s.scalars(select(S).where(S.analysis_id == analysis_id, S.key.startswith("sub:"))))
    finally:
        engine.dispose()
    starts = sorted({r.created_at for r in rows})
    return [
        {
            "key": r.key,
            "round": starts.index(r.created_at) + 1,
            "seconds": r.seconds,
            "status": r.status,
            "record": r.result,  # a dropped trial's holds what it showed before it stopped, if anything
        }
        for r in sorted(rows, key=lambda r: (r.created_at, r.key))
    ]


def model_sweep(entry: dict, trials: list[dict], overhead_per_round: float, n_workers: int) -> tuple[float, int, int]:
    """Replay the fan-out's dispatch on ``n_workers`` workers with the sweep's own planner on the trials of a 1-worker
    run: whenever a trial finishes, the planner is asked again with the trials sent and not yet finished as
    ``pending`` (workers/fanout_subspace.py), free workers take the sent trials in order, and trials the planner
    lists off the path are dropped (a running one frees its worker). A trial the run did not have (a speculative
    trial) takes the median trial time and the curve's metric at the d below; each plan adds
    ``overhead_per_round`` before its trials can start. Not modelled: what running trials show before they end (the
    lr of their range test, and best scores that already reach the level, which plan the next trials early): the
    rows do not say when that happened, so this errs slow. Ends when the path is complete. Returns (modelled
    seconds, plans that sent trials, trial groups run)."""
    from estimators.subspace.trials import SweepConfig, Trial, decode, sweep_path

    p, det = entry["params"], entry["details"]
    config = SweepConfig(
        d_min=det["evaluation_order"][0],
        max_d=min(p["max_d"] or det["D"], det["D"]),
        grid_factor=p["grid_factor"],
        bisect_steps=p["bisect_steps"],
        threshold=p["threshold"],
        baseline=p["baseline"],
        baseline_value=p["baseline_value"],
        lr_rule=p["subspace_lr"] if isinstance(p["subspace_lr"], str) else "fixed",
        seeds=p["seeds"],
    )
    known = {t["key"].removeprefix("sub:"): (decode(t["record"]), t["seconds"]) for t in trials}
    typical = statistics.median(sec for _, sec in known.values())
    curve = sorted((c["d"], c["seeds"]) for c in det["curve"])

    def guess(trial: Trial) -> tuple[dict, float]:
        below = [c for c in curve if c[0] <= trial.d] or curve[:1]
        return {"trial": trial.key, "d": trial.d, "lr": -1.0, "lr_source": "model", "metric": below[-1][1]}, typical

    records: dict = {}
    queue: list[tuple[float, Trial]] = []  # (ready at, trial): sent, waiting for a worker
    running: dict[str, tuple[float, Trial]] = {}  # key → (finishes at, trial)
    now, plans, runs = 0.0, 0, 0
    while True:
        pending = [t.key for _, t in queue] + list(running)
        path = sweep_path(config, records, width=n_workers, pending=pending)
        if path.complete:
            return now, plans, runs
        queue = [(r, t) for r, t in queue if t.key not in path.off_path]
        for key in path.off_path:
            running.pop(key, None)
        plans += bool(path.round)
        queue += [(now + overhead_per_round, t) for t in path.round]
        while queue and len(running) < n_workers:
            ready, t = queue.pop(0)
            running[t.key] = (max(now, ready) + (known.get(t.key) or guess(t))[1], t)
            runs += 1
        if not running:
            return now, plans, runs
        key = min(running, key=lambda k: running[k][0])
        now, t = running.pop(key)
        records[key] = (known.get(key) or guess(t))[0]


def write_subspace(args, rows: list[dict]) -> None:
    ones = [r for r in rows if r["workers"] == 1]
    twos = [r for r in rows if r["workers"] == 2]

    def key_values(r: dict) -> tuple:
        e = r["results"]["subspace"]
        return e["value"], e["ci"], [(c["d"], c["seeds"], c["lr"]) for c in e["details"]["curve"]]

    same = all(key_values(r) == key_values(rows[0]) for r in rows)
    ratios = [o["wall"] / t["wall"] for o, t in zip(ones, twos)]
    entry = ones[0]["results"]["subspace"]
    det = entry["details"]
    t1 = statistics.median(o["wall"] for o in ones)
    base_run = min(ones, key=lambda r: abs(r["wall"] - t1))
    trials = base_run["trials"]
    n_rounds_1 = max(t["round"] for t in trials)
    work = sum(t["seconds"] for t in trials)
    overhead = max(0.0, t1 - work) / n_rounds_1
    model = {n: model_sweep(entry, trials, overhead, n) for n in (1, 2, 4, 8, 32)}
    two = min(twos, key=lambda r: abs(r["wall"] - statistics.median(t["wall"] for t in twos))) if twos else None
    lines = [
        "# Scale-out: a subspace sweep on 1 and 2 workers (fan-out by trials)",
        "",
        f"`bench/scaleout.py --case subspace --rounds {args.rounds}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; PostgreSQL + Redis, real `taskgauge worker` processes (concurrency 1, one thread "
        f"each), TASKGAUGE_FANOUT=true. sklearn digits 1,797 × 64, model spec `{json.dumps(args.spec)}`, params "
        f"`{json.dumps(args.params)}` (D = {det['D']:,}, {entry['params']['seeds']} seeds). Each trial shard trains "
        "all seeds of one d (or the baseline) at once; each finished trial sends the next ones, with at most as many "
        "trial groups in flight as live workers (TASKGAUGE_FANOUT_TRIALS = the number of workers; speculative trials, "
        "the likeliest needed first; a trial whose seeds' best scores reach the level sends the next ones while it "
        "runs; trials off the path are dropped; the result is read off the sequential path only). Wall time from "
        "POST /analyses to `succeeded`; rounds alternate the order.",
        "",
        "| round | workers | wall s | sweep rounds | trial groups run | load (1 min) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['round']} | {r['workers']} | {r['wall']:.1f} | {max(t['round'] for t in r['trials'])} | "
            f"{len(r['trials'])} | {r['load']:.1f} |"
            for r in rows
        ],
        "",
        f"Speed-up 2 vs 1 worker per round: {', '.join(f'{x:.2f}×' for x in ratios)}"
        + (f" (median {statistics.median(ratios):.2f}×)" if ratios else "")
        + f". d_int90 {entry['value']} {entry['ci']}, curve over d = {det['evaluation_order']}; value, CI and curve "
        f"identical in every run: **{same}**.",
        "",
        "Trial shards of the 1-worker run closest to the median (round: key seconds; the shard's seconds include its "
        "dataset load and preparation): "
        + "; ".join(f"{t['round']}: {t['key']} {t['seconds']:.1f}" for t in trials)
        + ".",
    ]
    if two is not None:
        used = {f"sub:{d}" for d in det["evaluation_order"]} | {"sub:baseline"}
        spare = [
            f"{t['key']} ({t['status']})"
            for t in two["trials"]
            if t["key"].split("@")[0] not in used or t["status"] != "succeeded"
        ]
        lines += [
            "",
            f"2-worker run: {max(t['round'] for t in two['trials'])} rounds; speculative trials not on the sweep's "
            f"path (run or started, not used): {', '.join(spare) or 'none'}.",
        ]
    lines += [
        "",
        "## Model of more workers (from these timings)",
        "",
        "The sweep is sequential at heart: a bisection step needs the one before it. Replayed with the planner "
        "itself on n workers as the fan-out dispatches (each finished trial plans again with the trials in flight "
        "pending, trials off the path dropped; speculative trials it did not run here take the median trial time; "
        "early plans from running trials' scores are not modelled, so it errs slow); per plan a serial part of "
        f"{overhead:.1f} s ((1-worker wall {t1:.1f} s − trial work {work:.1f} s) / {n_rounds_1} rounds: planning and "
        "sending, a worker picking it up, each shard's dataset load and preparation, and once the start and the "
        "report assembly). The serial parts that remain at any n: the chain of bisection steps (one d per step) and "
        "that per-plan overhead; the trials of one d never split (its seeds train together).",
        "",
        "| workers | plans | trial groups run | modelled wall s | speed-up |",
        "|---|---|---|---|---|",
        *[f"| {n} | {m[1]} | {m[2]} | {m[0]:.1f} | {model[1][0] / m[0]:.2f}× |" for n, m in model.items()],
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))


# ------------------------------------------------------------------------------------------------ split kNN

KNN_ESTIMATORS = {"mle": {}}
#: (label, workers, split): the unsplit analysis (one task), and the split one on 1 and on 2 workers
KNN_CONFIGS = (("unsplit", 1, False), ("split, 1 worker", 1, True), ("split, 2 workers", 2, True))


def fashion_all(n: int, out: Path) -> Path:
    """Fashion-MNIST train then test (70000 × 784 in all), pixels / 255 as float32; the first ``n`` rows."""
    parts = []
    for name in ("train", "t10k"):
        with gzip.open(FM / f"{name}-images-idx3-ubyte.gz") as fh:
            parts.append(np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784))
    X = np.concatenate(parts)[:n].astype(np.float32) / 255.0
    np.savez(out, X=X)
    return out


def knn_main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tg-scaleout-knn-"))
    data = fashion_all(args.knn_n, tmp / f"fashion-all-{args.knn_n}.npz")
    half = -(-args.knn_n // 2)  # KNN_SHARD_ROWS for two parts
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
            ds = service_stack.upload(c, data, name=f"fashion-all-{args.knn_n}").json()
        for r in range(args.rounds):
            for label, n_workers, split in KNN_CONFIGS if r % 2 == 0 else KNN_CONFIGS[::-1]:
                # the split is the workers' setting (the worker that fans the analysis out reads it)
                stack.env["TASKGAUGE_KNN_SHARD_ROWS"] = str(half if split else 0)
                workers = [stack.start_worker() for _ in range(n_workers)]
                res = run_once(stack, key, ds["id"], {"estimators": KNN_ESTIMATORS})
                for w in workers:
                    service_stack.kill_group(w)
                workers = []
                res.update(round=r + 1, config=label, workers=n_workers, split=split, load=os.getloadavg()[0])
                rows.append(res)
                print(f"round {r + 1}: {label} {res['wall']:.1f} s, mle {res['values']['mle']!r}", flush=True)
    finally:
        for w in workers:
            service_stack.kill_group(w)
        stack.stop()
    write_knn(args, rows)


def write_knn(args, rows: list[dict]) -> None:
    by = {label: [r for r in rows if r["config"] == label] for label, _, _ in KNN_CONFIGS}
    same = all(r["values"] == rows[0]["values"] for r in rows)
    wall = {label: statistics.median(r["wall"] for r in rs) for label, rs in by.items()}
    ratios = [u["wall"] / t["wall"] for u, t in zip(by["unsplit"], by["split, 2 workers"])]
    shard_s: dict[str, list[float]] = {}
    for r in by["split, 2 workers"]:
        for sh in r["shards"]:
            shard_s.setdefault(sh["key"], []).append(sh["seconds"])
    med = {k: statistics.median(v) for k, v in shard_s.items()}
    parts = {k: v for k, v in med.items() if k.startswith("knn:") and k != "knn:plan" and "bounds" not in k}
    bounds = {k: v for k, v in med.items() if k.startswith("knn:bounds:")}
    plan_s, est_s, part_work = med.get("knn:plan", 0.0), med.get("est:mle", 0.0), sum(parts.values())
    bounds_work = sum(bounds.values())
    t2 = wall["split, 2 workers"]
    rest = max(0.0, t2 - plan_s - max(bounds.values(), default=0.0) - max(parts.values(), default=0.0) - est_s)

    def model(w: int) -> float:  # the bounds stage's and the parts' work shared by w workers; everything else serial
        return plan_s + bounds_work / w + part_work / w + est_s + rest

    lines = [
        "# Scale-out: the split kNN of mle on 1 and 2 workers",
        "",
        f"`bench/scaleout.py --case knn --knn-n {args.knn_n} --rounds {args.rounds}` on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; PostgreSQL + Redis, real `taskgauge "
        "worker` processes (concurrency 1, one thread each), TASKGAUGE_FANOUT=true. Analysis: `mle` (k = 20) on "
        f"Fashion-MNIST train + test, the first {args.knn_n} rows × 784 (pixels / 255, float32). *unsplit*: "
        "TASKGAUGE_KNN_SHARD_ROWS=0 (one task); *split*: KNN_SHARD_ROWS = ⌈rows / 2⌉, two parts (knn:plan, "
        "knn:bounds:0/2 and 1/2, knn:0/2 and 1/2, then est:mle reads the merged table). Wall time from POST /analyses to `succeeded`; rounds "
        "alternate the order.",
        "",
        "| round | configuration | workers | wall s | mle | load (1 min) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['round']} | {r['config']} | {r['workers']} | {r['wall']:.1f} | {r['values']['mle']!r} | "
            f"{r['load']:.1f} |"
            for r in rows
        ],
        "",
        "Median wall s: " + ", ".join(f"{k} {v:.1f}" for k, v in wall.items()) + ".",
        f"Speed-up of the split kNN on 2 workers over the unsplit analysis, per round: "
        f"{', '.join(f'{x:.2f}×' for x in ratios)} (median {statistics.median(ratios):.2f}×). "
        f"Values identical in every run (bit for bit): **{same}**.",
        "",
        "Shard seconds (split on 2 workers, median): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(med.items()))
        + ".",
        "",
        "## Model of more workers (from these timings)",
        "",
        f"Serial: the plan {plan_s:.1f} s (data load, duplicate check, projection, k-means), `est:mle` {est_s:.1f} s "
        f"(data load, duplicate check, merge of the parts, the estimator on the table), and {rest:.1f} s of "
        "dispatch, claims and the report's assembly (its dataset summary checks duplicates again). Parallel: the "
        f"rows' first bounds, {bounds_work:.1f} s of work in all, and the parts (each choosing the rank, then its "
        f"blocks), {part_work:.1f} s. With one part per worker:",
        "",
        "| workers | modelled wall s | speed-up over unsplit |",
        "|---|---|---|",
        *[f"| {w} | {model(w):.1f} | {wall['unsplit'] / model(w):.2f}× |" for w in (1, 2, 4, 8, 32)],
        "",
        "Optimistic beyond 2: each part also loads the data and the plan's embedding, checks duplicates and "
        "chooses the rank on the same sample blocks, costs that more parts repeat rather than share, and "
        "the pair work of the parts is only as even as the pruning lets it be.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
