"""Crash loops, time limits and fairness on both deployments (issue 15), with real worker processes:

* a poison analysis (``tg_crash`` SIGKILLs its pool child on every attempt) ends ``failed`` after
  ``TASKGAUGE_MAX_ATTEMPTS`` with "worker died (probably out of memory)", and the worker lives on;
* an analysis past ``TASKGAUGE_TASK_SOFT_TIME_LIMIT_S`` ends ``failed`` with a time-limit problem, and the worker
  lives on;
* with two worker processes, owner B's short analysis completes while owner A's long one runs.
"""

from __future__ import annotations

import sys
import time

import pytest
import service_stack
from service_stack import upload, wait_for

pytestmark = pytest.mark.integration

SOFT_LIMIT_S = 10


@pytest.fixture(scope="module", params=["pg-redis", "embedded"])
def stack(request, tmp_path_factory):
    kind = request.param
    if kind == "pg-redis" and not (service_stack.postgres_up() and service_stack.redis_available()):
        pytest.skip("PostgreSQL on 127.0.0.1:5432 and redis-server are needed for the pg-redis stack")
    st = service_stack.build(
        kind,
        tmp_path_factory.mktemp(f"limits-{kind}"),
        extra_env={
            "TASKGAUGE_LEASE_S": "3",
            "TASKGAUGE_HEARTBEAT_S": "0.5",
            "TASKGAUGE_MAX_ATTEMPTS": "3",
            "TASKGAUGE_TASK_SOFT_TIME_LIMIT_S": str(SOFT_LIMIT_S),
        },
    )
    try:
        st.start(2, keys=("alice", "bob"))  # two worker processes (fairness)
        yield st
    except BaseException:
        print(st.tail(), file=sys.stderr)
        raise
    finally:
        st.stop()


def test_poison_analysis_fails_after_max_attempts(stack, files):
    with stack.client(stack.alice_key) as alice:
        ds = upload(alice, files["npz"]).json()
        aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"tg_crash": {}}}).json()["id"]
        state = wait_for(alice, aid, timeout=120, until=("failed", "succeeded", "cancelled"))
        assert state["status"] == "failed", (state, stack.tail())
        assert state["attempts"] == 3
        err = state["error"]
        assert err["type"].endswith("/worker-died") and "worker died (probably out of memory)" in err["detail"]
        # nothing re-queues it afterwards (the sweepers run every second with LEASE_S=3)
        time.sleep(5)
        again = alice.get(f"/analyses/{aid}").json()
        assert (again["status"], again["attempts"]) == ("failed", 3)
        # the workers live on
        ok = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"mle": {"k": 5}}}).json()["id"]
        assert wait_for(alice, ok, timeout=120)["status"] == "succeeded", stack.tail()


def test_soft_time_limit_fails_the_analysis_not_the_worker(stack, files):
    with stack.client(stack.alice_key) as alice:
        ds = upload(alice, files["npz"]).json()
        t0 = time.monotonic()
        aid = alice.post(
            "/analyses", json={"dataset_id": ds["id"], "estimators": {"tg_slow": {"seconds": 100}}}
        ).json()["id"]
        state = wait_for(alice, aid, timeout=90, until=("failed", "succeeded", "cancelled"))
        assert state["status"] == "failed", (state, stack.tail())
        assert time.monotonic() - t0 < 60
        err = state["error"]
        assert err["type"].endswith("/time-limit") and err["status"] == 422, (err, stack.tail())
        assert "TASKGAUGE_TASK_SOFT_TIME_LIMIT_S" in err["detail"] and err["limit_s"] == SOFT_LIMIT_S
        assert state["attempts"] == 1  # not retried
        ok = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"mle": {"k": 5}}}).json()["id"]
        assert wait_for(alice, ok, timeout=120)["status"] == "succeeded", stack.tail()


def test_owner_b_short_analysis_completes_while_owner_a_long_one_runs(stack, files):
    with stack.client(stack.alice_key) as alice, stack.client(stack.bob_key) as bob:
        ds_a = upload(alice, files["npz"]).json()
        ds_b = upload(bob, files["npz"]).json()
        long_id = alice.post(
            "/analyses", json={"dataset_id": ds_a["id"], "estimators": {"tg_slow": {"seconds": SOFT_LIMIT_S - 2}}}
        ).json()["id"]
        wait_for(alice, long_id, timeout=60, until=("running", "succeeded", "failed"))
        short_id = bob.post(
            "/analyses", json={"dataset_id": ds_b["id"], "estimators": {"tg_slow": {"seconds": 0.5}}}
        ).json()["id"]
        short = wait_for(bob, short_id, timeout=60)
        assert short["status"] == "succeeded", stack.tail()
        assert alice.get(f"/analyses/{long_id}").json()["status"] == "running"  # B did not wait for A
        assert wait_for(alice, long_id, timeout=60)["status"] == "succeeded"
