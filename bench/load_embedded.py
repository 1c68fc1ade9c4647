"""Load check of the embedded default (issue 15): `taskgauge serve` with no settings (SQLite + the filesystem broker +
its supervised worker), on loopback. In parallel: 30 uploads, 30 analyses, 120 reads and 50 SSE streams. Every
response must be below 500, and the p95 latency of the reads is reported (target: under 1 s).

    PYTHONPATH=. .venv/bin/python bench/load_embedded.py     # writes bench/results_load_embedded.md

Three API keys share the load (10 analyses each, under the default per-owner quota of 20 active analyses). Six
datasets are uploaded first (the analyses and reads use them); then every request of the parallel phase is started
at once from its own thread. Reads are GET /datasets, GET /datasets/{id}, GET /analyses and GET /analyses/{id}; an
SSE stream follows one analysis until its `end` event (or 120 s). The machine's load average (`uptime`) is recorded
before and after, because the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import embedded_server  # noqa: E402

lat: dict[str, list[float]] = defaultdict(list)
codes: Counter = Counter()
errors: list[str] = []
lock = threading.Lock()


def record(kind: str, t: float, resp: httpx.Response | None, err: str | None = None) -> None:
    with lock:
        lat[kind].append(time.perf_counter() - t)
        if resp is not None:
            codes[(kind, resp.status_code)] += 1
            if resp.status_code >= 500:
                errors.append(f"{kind}: {resp.status_code} {resp.text[:300]}")
        else:
            codes[(kind, "error")] += 1
            errors.append(f"{kind}: {err}")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=30)
    ap.add_argument("--analyses", type=int, default=30)
    ap.add_argument("--reads", type=int, default=120)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_load_embedded.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tg-load-emb-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.uploads + 6):
        Z = rng.normal(size=(400, 5))
        p = tmp / f"d{i:02d}.npz"
        np.savez(p, X=(Z @ rng.normal(size=(5, 16))).astype(np.float32), y=(Z[:, 0] > 0).astype(np.int64))
        paths.append(p)
    load_before = uptime()
    server = embedded_server.start(tmp / "srv")
    try:
        keys = [server.key]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGAUGE_")}
        env["TASKGAUGE_DATA_DIR"] = str(server.data_dir)
        for name in ("bob", "carol"):
            keys.append(
                subprocess.run(
                    [sys.executable, "-m", "app", "keys", "create", name],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
            )
        clients = [
            httpx.Client(
                base_url=server.url + "/api/v1",
                headers={"Authorization": f"Bearer {k}"},
                timeout=180,
                limits=httpx.Limits(max_connections=400, max_keepalive_connections=400),
            )
            for k in keys
        ]
        for _ in range(120):  # the worker is up
            if httpx.get(server.url + "/readyz").status_code == 200:
                break
            time.sleep(0.5)
        datasets = []  # two per owner, uploaded first
        for i in range(6):
            c = clients[i % 3]
            with open(paths[args.uploads + i], "rb") as fh:
                r = c.post("/datasets", files={"file": (paths[args.uploads + i].name, fh)})
            assert r.status_code == 201, r.text
            datasets.append((c, r.json()["id"]))
        # one analysis per owner beforehand, so reads and streams have something to read from the start
        seed_ids = []
        for c, ds in datasets[:3]:
            r = c.post("/analyses", json={"dataset_id": ds, "estimators": {"twonn": {"decimation": False}}})
            assert r.status_code == 202, r.text
            seed_ids.append((c, r.json()["id"]))

        created: list[tuple[httpx.Client, str]] = []
        start = threading.Event()

        def upload(i: int) -> None:
            c = clients[i % 3]
            start.wait()
            t = time.perf_counter()
            try:
                with open(paths[i], "rb") as fh:
                    r = c.post("/datasets", files={"file": (paths[i].name, fh)})
                record("POST /datasets (upload)", t, r)
            except httpx.HTTPError as exc:
                record("POST /datasets (upload)", t, None, repr(exc))

        def analyse(i: int) -> None:
            c, ds = datasets[i % 6]
            start.wait()
            t = time.perf_counter()
            try:
                r = c.post(
                    "/analyses", json={"dataset_id": ds, "estimators": {"mle": {}, "twonn": {"decimation": False}}}
                )
                record("POST /analyses", t, r)
                if r.status_code == 202:
                    with lock:
                        created.append((c, r.json()["id"]))
            except httpx.HTTPError as exc:
                record("POST /analyses", t, None, repr(exc))

        def read(i: int) -> None:
            c, ds = datasets[i % 6]
            sc, aid = seed_ids[i % 3]
            kind, url = [
                ("GET /datasets", "/datasets"),
                ("GET /datasets/{id}", f"/datasets/{ds}"),
                ("GET /analyses", "/analyses"),
                ("GET /analyses/{id}", f"/analyses/{aid}"),
            ][i % 4]
            client = sc if kind == "GET /analyses/{id}" else c
            start.wait()
            time.sleep(0.02 * (i % 50))  # spread over the first second of the burst
            t = time.perf_counter()
            try:
                r = client.get(url)
                record("read", t, r)
                record(kind, t, r)
            except httpx.HTTPError as exc:
                record("read", t, None, repr(exc))

        def stream(i: int) -> None:
            c, aid = seed_ids[i % 3]
            start.wait()
            t = time.perf_counter()
            try:
                with c.stream("GET", f"/analyses/{aid}/events", timeout=180) as r:
                    if r.status_code != 200:
                        r.read()
                        record("SSE stream (to its end event)", t, r)
                        return
                    deadline = time.monotonic() + 120
                    for line in r.iter_lines():
                        if line.startswith("event: end") or time.monotonic() > deadline:
                            break
                    record("SSE stream (to its end event)", t, r)
            except httpx.HTTPError as exc:
                record("SSE stream (to its end event)", t, None, repr(exc))

        threads = [
            threading.Thread(target=f, args=(i,))
            for f, n in ((upload, args.uploads), (analyse, args.analyses), (read, args.reads), (stream, args.streams))
            for i in range(n)
        ]
        for th in threads:
            th.start()
        t0 = time.perf_counter()
        start.set()
        for th in threads:
            th.join()
        burst_wall = time.perf_counter() - t0
        load_mid = uptime()

        # every analysis finishes (nothing stuck)
        deadline = time.monotonic() + 900
        pending = list(created) + seed_ids
        states = Counter()
        while pending and time.monotonic() < deadline:
            c, aid = pending[0]
            s = c.get(f"/analyses/{aid}").json()["status"]
            if s in ("succeeded", "failed", "cancelled"):
                states[s] += 1
                pending.pop(0)
            else:
                time.sleep(0.5)
        for c in clients:
            c.close()
    finally:
        embedded_server.stop(server)

    five = sum(n for (k, code), n in codes.items() if code == "error" or (isinstance(code, int) and code >= 500))
    reads = lat["read"]
    lines = [
        "# Load check of the embedded default (bench/load_embedded.py)",
        "",
        f"`taskgauge serve` with no settings (SQLite, filesystem broker, its supervised worker with "
        f"`--concurrency 2`), loopback. In parallel: {args.uploads} uploads (400×16 .npz), {args.analyses} analyses "
        f"(mle + twonn), {args.reads} reads and {args.streams} SSE streams, from three API keys.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, shared with other work; Python "
        f"{platform.python_version()}.",
        f"- load before: `{load_before}`",
        f"- load after the burst: `{load_mid}`",
        "",
        f"**Responses 5xx (or transport errors): {five}.** p95 of the reads: **{1000 * pct(reads, 0.95):.0f} ms** "
        f"(target < 1000 ms). Burst wall time {burst_wall:.1f} s. Analyses afterwards: {dict(states)}"
        f"{'; unfinished: ' + str(len(pending)) if pending else ''}.",
        "",
        "| request | n | p50 (ms) | p95 (ms) | max (ms) | status codes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for kind, xs in lat.items():
        cs = ", ".join(f"{code}×{n}" for (k, code), n in sorted(codes.items(), key=str) if k == kind)
        lines.append(
            f"| {kind} | {len(xs)} | {1000 * statistics.median(xs):.0f} | {1000 * pct(xs, 0.95):.0f} | "
            f"{1000 * max(xs):.0f} | {cs} |"
        )
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors[:20]]]
    lines += ["", "Reproduce: `PYTHONPATH=. .venv/bin/python bench/load_embedded.py`."]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0 if five == 0 and not pending else 1


if __name__ == "__main__":
    raise SystemExit(main())
