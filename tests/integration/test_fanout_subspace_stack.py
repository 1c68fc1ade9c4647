"""A subspace sweep fanned out by trials (issue 17) on PostgreSQL + Redis with two real workers: rounds of trial
shards give exactly the in-process estimator's d_int90, CI and curve; duplicate deliveries of trial shards add
nothing; cancelling mid-sweep stops every shard and no round follows."""

from __future__ import annotations

import time

import numpy as np
import pytest
import service_stack
from service_stack import kill_group, upload, wait_for
from sqlalchemy import select

from taskgauge import db

pytestmark = pytest.mark.integration

SPEC = {"arch": "mlp", "hidden": [16], "train": {"epochs": 6, "eval_every": 10}}
SWEEP = {
    "seeds": 2,
    "d_min": 4,
    "grid_factor": 4,
    "bisect_steps": 2,
    "n_bootstrap": 200,
    "lr_candidates": [0.1, 0.3, 1.0],
}


@pytest.fixture(scope="module")
def subfan(tmp_path_factory):
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("subfan")
    # one torch thread per worker child, as in this process: the in-process reference does the same arithmetic
    env = {"TASKGAUGE_FANOUT": "true", "TASKGAUGE_WORKER_THREADS": "1"}
    with service_stack.running("pg-redis", tmp / "stack", extra_env=env) as stack:
        X, y = load_digits(return_X_y=True)
        stack.digits = tmp / "digits400.npz"
        np.savez(stack.digits, X=(X[:400] / 16.0).astype(np.float32), y=y[:400].astype(np.int64))
        yield stack


@pytest.fixture
def alice(subfan):
    with subfan.client(subfan.alice_key) as c:
        yield c


def _query(stack, stmt):
    engine = db.make_engine(stack.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            return list(s.scalars(stmt))
    finally:
        engine.dispose()


def _shards(stack, aid):
    S = db.AnalysisShard
    return {r.key: r for r in _query(stack, select(S).where(S.analysis_id == aid))}


def _start(alice, stack, spec, sweep):
    ds = upload(alice, stack.digits).json()
    spec_id = alice.post("/model-specs", json={"name": "mlp16", "spec": spec}).json()["id"]
    r = alice.post(
        "/analyses", json={"dataset_id": ds["id"], "estimators": {"subspace": sweep}, "model_spec_id": spec_id}
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _comparable(entry):
    det = {k: v for k, v in entry["details"].items() if k != "timings"}
    det["trials"] = [{k: v for k, v in t.items() if k != "seconds"} for t in det["trials"]]
    return {"value": entry["value"], "ci": entry["ci"], "warnings": entry["warnings"], "details": det}


def test_the_sweep_runs_as_rounds_of_trial_shards_and_equals_the_in_process_estimator(subfan, alice):
    import torch

    from taskgauge.pipeline import analyse_file

    aid = _start(alice, subfan, SPEC, SWEEP)
    state = wait_for(alice, aid, timeout=120)
    assert state["status"] == "succeeded", (state, subfan.tail())
    report = alice.get(f"/reports/{state['report_id']}").json()
    got = report["results"]["subspace"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = analyse_file(subfan.digits, requests={"subspace": SWEEP}, model_spec=SPEC, device="cpu")
    finally:
        torch.set_num_threads(threads)
    ref = local["results"]["subspace"]
    assert got["params"] == ref["params"] and got["version"] == ref["version"]
    assert _comparable(got) == _comparable(ref)  # d_int90, CI, curve, bound, warnings, every trial: identical
    assert got["value"] is not None and len(got["details"]["curve"]) >= 4  # a real bracket and bisection

    shards = _shards(subfan, aid)
    used = {"sub:baseline"} | {f"sub:{c['d']}" for c in ref["details"]["curve"]}
    assert {k.split("@")[0] for k in shards} >= used  # (a midpoint may run as d@lr, with its neighbours' lr)
    assert all(k.startswith("sub:") for k in shards)  # no est:subspace: the sweep itself fanned out
    # speculative trials the path turned away from were dropped (stopped, unused); every other one ran once
    done = {k: r for k, r in shards.items() if r.status == "succeeded"}
    assert all(r.status in ("succeeded", "dropped") for r in shards.values()), {k: r.status for k, r in shards.items()}
    assert all(r.result is not None and r.attempts == 1 for r in done.values())
    assert {k.split("@")[0] for k in done} >= used
    # rounds: the baseline beside the first d; then each finished trial (or one that passes for sure while it
    # runs) sends what the free slots should run next (two live workers: never more than two sent at once)
    rounds: dict = {}
    for key, r in shards.items():
        rounds.setdefault(r.created_at, []).append(key)
    first = rounds[min(rounds)]
    assert set(first) == {"sub:baseline", "sub:4"}, rounds
    later = [keys for t, keys in rounds.items() if t != min(rounds)]
    assert len(later) >= 2 and max(map(len, rounds.values())) <= 2, rounds
    assert {s["key"] for s in report["environment"]["shards"]} == set(shards)
    assert len(_query(subfan, select(db.AnalysisResult).where(db.AnalysisResult.analysis_id == aid))) == 1
    assert len(_query(subfan, select(db.Report).where(db.Report.analysis_id == aid))) == 1

    # duplicate deliveries of every trial shard, through the broker: each is skipped, nothing changes
    from celery import Celery

    before = {k: (r.status, r.attempts, r.result, r.finished_at) for k, r in shards.items()}
    app = Celery(broker=subfan.env["TASKGAUGE_BROKER_URL"])
    try:
        for key in shards:
            app.send_task("taskgauge.run_shard", args=[aid, key], queue="default")
    finally:
        app.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        logs = subfan.tail(10**7)
        if all(f"run_shard {aid} {k}: skipped" in logs for k in shards):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"duplicates not all consumed:\n{subfan.tail()}")
    after = _shards(subfan, aid)
    assert {k: (r.status, r.attempts, r.result, r.finished_at) for k, r in after.items()} == before
    assert len(_query(subfan, select(db.AnalysisResult).where(db.AnalysisResult.analysis_id == aid))) == 1
    assert [r.id for r in _query(subfan, select(db.Report).where(db.Report.analysis_id == aid))] == [state["report_id"]]
    assert alice.get(f"/analyses/{aid}").json()["status"] == "succeeded"


def test_cancel_mid_sweep_stops_every_trial_shard(subfan, alice):
    slow = {**SPEC, "train": {"epochs": 500, "stop": "fixed"}}  # seconds per trial
    aid = _start(alice, subfan, slow, {**SWEEP, "lr_candidates": [0.3]})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the first round is done and a later one is training
        shards = _shards(subfan, aid)
        if shards.get("sub:baseline") is not None and shards["sub:baseline"].status == "succeeded":
            if any(r.status == "running" for k, r in shards.items() if k not in ("sub:baseline", "sub:4")):
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the sweep never reached its second round: {shards}\n{subfan.tail()}")
    assert alice.post(f"/analyses/{aid}/cancel").status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shards = _shards(subfan, aid)
        if all(r.status != "running" for r in shards.values()):
            break
        time.sleep(0.2)
    assert all(r.status in ("succeeded", "cancelled", "queued") for r in shards.values()), shards
    assert any(r.status == "cancelled" for r in shards.values())
    time.sleep(3)  # no round follows a cancelled one, and nothing queued ever starts
    later = _shards(subfan, aid)
    assert set(later) == set(shards) and all(later[k].status == shards[k].status for k in shards)
    state = alice.get(f"/analyses/{aid}").json()
    assert state["status"] == "cancelled" and state["report_id"] is None
    assert _query(subfan, select(db.AnalysisResult).where(db.AnalysisResult.analysis_id == aid)) == []


def test_sigkill_of_the_workers_mid_trial_reruns_that_trial_and_the_result_is_unchanged(subfan, alice):
    import signal

    import torch

    from taskgauge.pipeline import analyse_file

    spec = {**SPEC, "train": {"epochs": 60, "stop": "fixed"}}
    sweep = {**SWEEP, "lr_candidates": [0.3]}
    aid = _start(alice, subfan, spec, sweep)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a trial of a later round is training
        shards = _shards(subfan, aid)
        running = [k for k, r in shards.items() if r.status == "running" and k not in ("sub:baseline", "sub:4")]
        if running:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no later round started: {shards}\n{subfan.tail()}")
    for w in subfan.workers:
        kill_group(w, signal.SIGKILL)
    subfan.workers[:] = subfan.start_workers(2)
    state = wait_for(alice, aid, timeout=120)
    assert state["status"] == "succeeded", (state, subfan.tail())
    shards = _shards(subfan, aid)
    assert any(shards[k].attempts >= 2 for k in running), {k: r.attempts for k, r in shards.items()}
    # nothing left running or queued; a speculative trial the path turned away from after the restart is dropped
    assert all(r.status in ("succeeded", "dropped") for r in shards.values()), {
        k: (r.status, r.attempts) for k, r in shards.items()
    }
    assert len(_query(subfan, select(db.AnalysisResult).where(db.AnalysisResult.analysis_id == aid))) == 1
    assert [r.id for r in _query(subfan, select(db.Report).where(db.Report.analysis_id == aid))] == [state["report_id"]]
    got = alice.get(f"/reports/{state['report_id']}").json()["results"]["subspace"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = analyse_file(subfan.digits, requests={"subspace": sweep}, model_spec=spec, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert _comparable(got) == _comparable(ref["results"]["subspace"])
