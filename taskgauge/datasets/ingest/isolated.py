"""Ingestion in a subprocess with an address-space limit: where a bomb can only kill itself.

The upload endpoint never parses untrusted files in its own process. :func:`ingest_isolated` runs
``python -m taskgauge.datasets.ingest.isolated`` on the received file (``nice`` lower than the API first, so that on a
busy CPU the API's answers come before the imports and parsing of uploads); the child imports the readers, then limits
its own address space (``RLIMIT_AS`` = what the imports took + ``memory_bytes``), runs :func:`ingest_file` and
streams the canonical ``.npz`` straight into ``out_path`` (:func:`write_canonical`). Back on its stdout comes one
JSON line: the dataset's summary (shape, dtype, classes, meta — all capped by the ingest options) or the
:class:`IngestError` it raised. A child that runs out of its address space (``MemoryError`` → 413), is killed
(the kernel's OOM killer, a C library aborting on a failed allocation) or runs past ``timeout_s`` ends in a 413
problem too; the API process itself only ever holds the summary.

Memory: a child holds at most ``memory_bytes`` on top of its imports (about 350 MB of mostly shared, read-only
pages), so ``MAX_CONCURRENT_INGESTS`` children bound what ingestion can take on a host.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from taskgauge.datasets.ingest.errors import IngestError, IngestOptions

_MODULE = "taskgauge.datasets.ingest.isolated"
# ``python -c`` with this, then the niceness increment: the priority drops before the first heavy import (numpy,
# pydantic: about half a CPU-second), then the module runs as ``python -m`` would run it.
_BOOT = f"import os, runpy, sys; os.nice(int(sys.argv[1])); runpy.run_module({_MODULE!r}, run_name='__main__')"
log = logging.getLogger("taskgauge.ingest")


@dataclass(frozen=True)
class IngestSummary:
    """What the API stores about a dataset ingested in the child (the canonical file holds the arrays)."""

    n_samples: int
    shape: list[int]
    dtype: str
    n_classes: int | None
    classes: list[str] | None
    meta: dict[str, Any]
    canonical_size: int
    child_peak_rss: int  # bytes, the child's own peak resident set (getrusage)
    child_nice: int = 0  # the child's niceness (TASKGAUGE_INGEST_NICE above the API's)


def _too_large(filename: str, why: str) -> IngestError:
    return IngestError(
        "Data too large",
        f"'{filename}': {why}; upload a smaller subset (or, for images, pass a smaller resize), or raise the "
        "limit on the server (TASKGAUGE_INGEST_MEMORY_MB)",
        413,
    )


def ingest_isolated(
    path: Path,
    filename: str,
    options: IngestOptions,
    out_path: Path,
    *,
    memory_bytes: int,
    timeout_s: float | None = None,
    nice: int = 0,
) -> IngestSummary:
    """Ingest ``path`` (named ``filename``) in a memory-limited child that runs ``nice`` steps below this process
    (``TASKGAUGE_INGEST_NICE``); the canonical ``.npz`` lands in ``out_path``. Raises :class:`IngestError`
    (422/413) for bad or too large data."""
    request = {
        "kind": "dataset",
        "path": str(path),
        "filename": filename,
        "options": options.model_dump(mode="json"),
        "out": str(out_path),
        "memory_bytes": int(memory_bytes),
    }
    return IngestSummary(**_run_child(request, filename, memory_bytes, timeout_s, nice))


def inspect_weights_isolated(
    path: Path,
    filename: str,
    form: Any,
    out_path: Path,
    *,
    memory_bytes: int,
    timeout_s: float | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """Check uploaded model weights (:func:`taskgauge.weights.inspect_weights`, ``form`` a
    :class:`taskgauge.weights.WeightsForm`) in a memory-limited child; the blob's bytes land in ``out_path``.
    Returns the check's summary; raises :class:`IngestError` (422, 413 when the child runs out of memory)."""
    request = {
        "kind": "weights",
        "path": str(path),
        "filename": filename,
        "form": form.model_dump(mode="json"),
        "out": str(out_path),
        "memory_bytes": int(memory_bytes),
    }
    return _run_child(request, filename, memory_bytes, timeout_s, nice)


def _run_child(
    request: dict[str, Any], filename: str, memory_bytes: int, timeout_s: float | None, nice: int
) -> dict[str, Any]:
    """Run the child on ``request`` ``nice`` steps below this process; its ``ok`` reply, or the IngestError it reported or that its death means."""
    env = dict(os.environ)
    # One thread per library and two malloc arenas: threads' stacks and arenas are address space too.
    root = str(Path(__file__).resolve().parents[3])  # the folder holding the taskgauge package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",
            "ARROW_DEFAULT_MEMORY_POOL": "system",
        }
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _BOOT, str(max(0, int(nice)))],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _too_large(
            filename, f"reading it took longer than {timeout_s:g} s (TASKGAUGE_INGEST_TIMEOUT_S)"
        ) from None
    reply = None
    for line in reversed(proc.stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            break
    if reply is not None and "error" in reply:
        e = reply["error"]
        raise IngestError(str(e["title"]), str(e["detail"]), int(e["status"]))
    if reply is not None and "ok" in reply and proc.returncode == 0:
        return dict(reply["ok"])
    stderr = proc.stderr.decode("utf-8", "replace")[-4000:]
    if proc.returncode < 0 or (reply is not None and "killed" in reply):
        # killed (the OOM killer, a C library aborting on a failed allocation under the address-space limit)
        how = f"killed by signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else "out of memory"
        log.warning("ingest of %s: the reader was %s; stderr: %s", filename, how, stderr)
        raise _too_large(
            filename,
            f"reading it needed more memory than an ingest may use "
            f"({memory_bytes / 2**20:,.0f} MB; the reader was {how})",
        )
    # A Python exception in the reader that is not an IngestError is a bug, as it would be in-process.
    log.error("ingest subprocess for %s failed (exit status %s):\n%s", filename, proc.returncode, stderr)
    last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "no output")
    raise RuntimeError(f"the ingest subprocess failed: {last}")


# ------------------------------------------------------------------------------------------------ the child


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory figure (``VmSize``, ``VmHWM``) in bytes; 0 where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _vm_size() -> int:
    return _status_bytes("VmSize")


def _limit_address_space(extra: int) -> None:
    """RLIMIT_AS = the address space the imports took + ``extra``. Where the current size is unknown (no /proc)
    or the limit cannot be set (macOS does not enforce RLIMIT_AS), the child runs unlimited: it still keeps the
    data out of the API process."""
    now = _vm_size()
    if extra <= 0 or now <= 0:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = now + extra
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ValueError, OSError):
        pass


def _weights_child(request: dict[str, Any]) -> dict[str, Any]:
    """The child's work for a weights upload (:func:`inspect_weights_isolated`)."""
    import safetensors.torch  # noqa: F401 - imported before the limit, as the readers below are
    import torch

    from taskgauge.weights import HF_ZIP, WeightsForm, inspect_weights, weights_format

    try:
        if weights_format(request["filename"]) == HF_ZIP:
            from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401
    except IngestError:
        pass  # reported by inspect_weights below
    torch.set_num_threads(1)
    _limit_address_space(int(request["memory_bytes"]))
    try:
        summary = inspect_weights(
            Path(request["path"]), request["filename"], WeightsForm(**request["form"]), Path(request["out"])
        )
        return {"ok": {**summary, "child_peak_rss": _status_bytes("VmHWM")}}
    except IngestError as exc:
        return {"error": {"title": exc.title, "detail": exc.detail, "status": exc.status}}
    except MemoryError:
        return {
            "error": {
                "title": "Model too large",
                "status": 413,
                "detail": (
                    f"'{request['filename']}': checking it needed more memory than an upload may use "
                    f"({int(request['memory_bytes']) / 2**20:,.0f} MB); upload a smaller model, or raise the limit "
                    "on the server (TASKGAUGE_INGEST_MEMORY_MB)"
                ),
            }
        }


def _child() -> int:
    request = json.loads(sys.stdin.read())
    if request.get("kind") == "weights":
        sys.stdout.write(json.dumps(_weights_child(request)) + "\n")
        sys.stdout.flush()
        return 0
    from taskgauge.datasets.canonical import write_canonical
    from taskgauge.datasets.ingest import ingest_file, reader_for

    # Import what this file's reader needs before the limit is set (the limit is on top of the imports).
    ext = PurePath(str(request["filename"]).replace("\\", "/")).suffix.lower()
    reader_for(ext)
    if ext == ".parquet":
        import pyarrow
        import pyarrow.parquet  # noqa: F401

        pyarrow.set_cpu_count(1)
        pyarrow.set_io_thread_count(1)
    _limit_address_space(int(request["memory_bytes"]))
    out: dict[str, Any]
    try:
        options = IngestOptions(**request["options"])
        ds = ingest_file(Path(request["path"]), request["filename"], options)
        size = write_canonical(Path(request["out"]), ds)
        out = {
            "ok": {
                "n_samples": ds.n_samples,
                "shape": [int(s) for s in ds.X.shape],
                "dtype": str(ds.X.dtype),
                "n_classes": ds.n_classes,
                "classes": ds.classes,
                "meta": ds.meta,
                "canonical_size": size,
                # VmHWM, not getrusage: ru_maxrss survives exec, so it would report the parent's peak at fork time
                "child_peak_rss": _status_bytes("VmHWM"),
                "child_nice": os.nice(0),
            }
        }
    except IngestError as exc:
        out = {"error": {"title": exc.title, "detail": exc.detail, "status": exc.status}}
    except MemoryError:
        out = {
            "error": {
                "title": "Data too large",
                "status": 413,
                "detail": (
                    f"'{request['filename']}': reading it needed more memory than an ingest may use "
                    f"({int(request['memory_bytes']) / 2**20:,.0f} MB); upload a smaller subset (or, for images, pass a "
                    "smaller resize), or raise the limit on the server (TASKGAUGE_INGEST_MEMORY_MB)"
                ),
            }
        }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
