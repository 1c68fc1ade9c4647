"""Fixtures of the service integration tests: one running stack per backend (``pg-redis``, ``pg-redis-s3`` —
blobs in a bucket of a local S3 server — and ``embedded``), each with a real API process and a real Celery worker
process; see ``service_stack.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import service_stack


@pytest.fixture(scope="session", params=["pg-redis", "pg-redis-s3", "embedded"])
def svc(request, tmp_path_factory):
    kind = request.param
    if kind.startswith("pg-redis") and not (service_stack.postgres_up() and service_stack.redis_available()):
        pytest.skip("PostgreSQL on 127.0.0.1:5432 and redis-server are needed for the pg-redis stacks")
    if kind == "pg-redis-s3":
        import s3_server

        s3_server.endpoint()  # skips when no local S3 server can be had
    stack = service_stack.build(kind, tmp_path_factory.mktemp(f"svc-{kind}"))
    try:
        # the API and the worker start side by side; `taskgauge keys create NAME` (it prints the key once on stdout)
        # makes alice's and bob's keys meanwhile
        stack.start(1, keys=("alice", "bob"))
        yield stack
    except BaseException:
        print(stack.tail(), file=sys.stderr)
        raise
    finally:
        stack.stop()


@pytest.fixture
def alice(svc):
    with svc.client(svc.alice_key) as c:
        yield c


@pytest.fixture
def bob(svc):
    with svc.client(svc.bob_key) as c:
        yield c


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    """Small datasets: 300 points on a 4-D linear subspace of R^12 plus a little noise, two classes."""
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(7)
    Z = rng.normal(size=(300, 4))
    X = (Z @ rng.normal(size=(4, 12)) + 0.01 * rng.normal(size=(300, 12))).astype(np.float32)
    y = (Z[:, 0] > 0).astype(np.int64)
    np.savez(d / "good.npz", X=X, y=y)
    lines = ["a,b,c,d,species"] + [
        f"{r[0]},{r[1]},{r[2]},{r[3]},{'setosa' if c else 'virginica'}" for r, c in zip(X[:, :4].tolist(), y.tolist())
    ]
    (d / "good.csv").write_text("\n".join(lines) + "\n")
    return {"npz": d / "good.npz", "csv": d / "good.csv", "dir": d}
