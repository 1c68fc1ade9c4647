"""Peak memory of the API process per upload (issue 15): the tiny-file bombs and one accepted file per input kind.

Starts an embedded API (``taskgauge serve --no-worker``) from the source tree given by ``--root`` (default: this
checkout; pass an exported older commit to measure "before"), uploads each case, and reports the status and the API
process's peak RSS above its idle level (``/proc/PID/status`` VmHWM after ``clear_refs`` 5), next to the issue's
line "2 × the upload's materialised size + 256 MB". Default limits (MAX_UPLOAD_MB 512, so 2 GB of expansion).

    .venv/bin/python bench/upload_memory.py                       # this tree
    git archive 5cff301 | tar -x -C /tmp/base-src && .venv/bin/python bench/upload_memory.py --root /tmp/base-src

Writes a markdown table to stdout (and ``--out FILE``). Machine load (``uptime``) goes next to the figures.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

MB = 1024 * 1024
CACHE = Path("/tmp/taskgauge-upload-bench")


def npy_header(descr: str, shape: tuple) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def cases(heavy: bool) -> list[tuple[str, str, bytes, int]]:
    """(label, filename, bytes, materialised bytes if accepted)."""
    CACHE.mkdir(exist_ok=True)
    out = [("npy <U0 header, 128 B", "u0.npy", npy_header("<U0", (2_500_000, 10, 10, 3)), 0)]
    gib_zip = CACHE / "a-png-1.81GiB.zip"
    if heavy and not gib_zip.exists():
        with (
            zipfile.ZipFile(gib_zip, "w", zipfile.ZIP_DEFLATED) as zf,
            zf.open("cls/a.png", "w", force_zip64=True) as fh,
        ):
            block = bytes(64 * MB)
            for _ in range(29):  # 1.81 GiB of zeros
                fh.write(block)
    if heavy:
        out.append(("zip, one 1.81 GiB 'a.png' entry", "big.zip", gib_zip.read_bytes(), 0))
    nbuf = io.BytesIO()
    with zipfile.ZipFile(nbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in (("X", np.zeros((6, 2), np.float32)), ("y", np.arange(6) % 2)):
            b = io.BytesIO()
            np.save(b, arr)
            zf.writestr(name + ".npy", b.getvalue())
        b = io.BytesIO()
        np.save(b, np.zeros(50_000_000, "<U1"))
        zf.writestr("classes.npy", b.getvalue())
    out.append(("npz, 'classes' of 5e7 names", "classes.npz", nbuf.getvalue(), 0))
    row = ",".join(["0"] * 1_000_000)
    out.append(("csv, 1M columns", "wide.csv", ("\n".join([row] * 3) + "\n").encode(), 0))
    z = CACHE / "zeros-1GiB.npz"
    if not z.exists():
        np.savez_compressed(z, X=np.zeros((32768, 8192), np.float32))
    out.append(("npz, 1 GiB of zeros (accepted)", "zeros.npz", z.read_bytes(), 1024 * MB))
    X = np.random.default_rng(0).normal(size=(20000, 1000)).astype(np.float32)
    b = io.BytesIO()
    np.save(b, X)
    out.append(("npy, 80 MB float32 (accepted)", "dense.npy", b.getvalue(), X.nbytes))
    n = 2_000_000
    out.append(
        (
            "csv, 2M rows × 4 int columns (accepted)",
            "ints.csv",
            ("a,b,c,d,label\n" + "0,1,2,3,x\n" * n).encode(),
            n * 4 * 4,
        )
    )
    import pandas as pd

    b = io.BytesIO()
    pd.DataFrame({f"f{i}": np.zeros(4_000_000) for i in range(8)}).to_parquet(b)
    out.append(("parquet, 4M × 8 float64 (accepted)", "zeros.parquet", b.getvalue(), 4_000_000 * 8 * 8))
    from PIL import Image

    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as zf:
        for i in range(2000):
            pb = io.BytesIO()
            Image.new("RGB", (128, 128), (i % 256, (3 * i) % 256, (7 * i) % 256)).save(pb, "PNG")
            zf.writestr(f"c{i % 4}/{i:04d}.png", pb.getvalue())
    out.append(("zip, 2000 RGB 128×128 PNGs (accepted)", "solid.zip", zb.getvalue(), 2000 * 3 * 128 * 128 * 4))
    return out


def status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--light", action="store_true", help="skip the 1.81 GiB zip (takes a minute to build)")
    ap.add_argument("--skip", default="", help="comma-separated filenames not to send")
    args = ap.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(root / "tests" / "integration"))
    sys.path.insert(0, str(root))
    import tempfile

    import httpx
    import service_stack

    tmp = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    stack = service_stack.build("embedded", tmp, extra_env={"TASKGAUGE_MAX_UPLOAD_MB": "512"})
    rows = []
    try:
        stack.start_api()
        key = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", "bench"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
        skip = set(filter(None, args.skip.split(",")))
        with httpx.Client(
            base_url=stack.api_url + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=900
        ) as client:
            for label, filename, payload, materialised in cases(heavy=not args.light):
                if filename in skip:
                    continue
                pid = stack.api.pid
                with open(f"/proc/{pid}/clear_refs", "w") as fh:
                    fh.write("5")
                idle = status(pid, "VmRSS")
                t = time.perf_counter()
                r = client.post("/datasets", files={"file": (filename, payload, "application/octet-stream")})
                secs = time.perf_counter() - t
                peak = status(pid, "VmHWM") - idle
                line = 2 * materialised + 256 * MB
                rows.append((label, len(payload), r.status_code, peak, line, secs))
                print(f"{label}: {r.status_code} peak +{peak / MB:.0f} MB ({secs:.1f} s)", file=sys.stderr)
                if r.status_code == 201:
                    client.delete(f"/datasets/{r.json()['id']}")
    finally:
        stack.stop()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"source tree: `{root}`; {load}",
        "",
        "| upload | size | status | API peak RSS above idle | line (2 × materialised + 256 MB) | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, size, code, peak, line, secs in rows:
        lines.append(
            f"| {label} | {size / 1024:,.1f} KB | {code} | {peak / MB:,.0f} MB | {line / MB:,.0f} MB | {secs:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
