"""Trial shards without Celery: where they are sent (gpu when a GPU worker exists), how many a round holds (live
worker slots), the analysis' progress with a sweep's shards as one estimator, the recovery sweep re-sending a
dead trial to its own queue, speculative trials dropped once off the sweep's path, and a trial that passes for
sure planning the next one while it still runs."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from seeding import seed_analysis
from sqlalchemy import select, update

from estimators.subspace.trials import SweepConfig, Trial
from taskgauge import db
from taskgauge.migrate import upgrade
from taskgauge.settings import Settings
from workers import fanout, fanout_subspace
from workers.leases import Cancelled


@pytest.fixture
def world(tmp_path):
    settings = Settings(DATA_DIR=tmp_path, LEASE_S=30, GPU_WORKERS="no")
    upgrade(settings.DATABASE_URL)
    engine = db.make_engine(settings.DATABASE_URL)
    factory = db.make_session_factory(engine)
    with factory() as s, s.begin():
        aid = seed_analysis(s, status=db.RUNNING, attempts=1)
    yield SimpleNamespace(settings=settings, sessions=factory), aid
    engine.dispose()


def _worker(name, queues, concurrency, age_s=0.0):
    now = db.utcnow() - timedelta(seconds=age_s)
    return db.WorkerHeartbeat(
        name=name,
        hostname="h",
        pid=1,
        queues=queues,
        concurrency=concurrency,
        device="cpu",
        version="t",
        active=[],
        started_at=now,
        heartbeat_at=now,
    )


def test_trials_go_to_the_gpu_queue_only_when_a_gpu_worker_exists_and_the_analysis_may_use_it(world):
    ctx, aid = world
    with ctx.sessions() as s:
        analysis = s.get(db.Analysis, aid)
    for device, gpu, want in [
        ("auto", "no", "default"),
        ("auto", "yes", "gpu"),
        ("cuda", "yes", "gpu"),
        ("cpu", "yes", "default"),
    ]:
        ctx.settings = Settings(DATA_DIR=ctx.settings.DATA_DIR, GPU_WORKERS=gpu)
        analysis.device = device
        assert fanout_subspace.trial_queue(ctx, analysis) == want, (device, gpu)


def test_a_round_holds_as_many_trials_as_live_workers_have_slots_on_its_queue(world):
    ctx, _ = world
    with ctx.sessions() as s, s.begin():
        assert fanout_subspace.round_width(ctx, s, "default") == 1  # nobody reported yet: one at a time
        s.add_all(
            [
                _worker("a", ["default"], 1),
                _worker("b", ["default", "gpu"], 2),
                _worker("gone", ["default"], 8, age_s=ctx.settings.LEASE_S + 5),  # stopped heart-beating
            ]
        )
        s.flush()
        assert fanout_subspace.round_width(ctx, s, "default") == 3
        assert fanout_subspace.round_width(ctx, s, "gpu") == 2
        ctx.settings = Settings(DATA_DIR=ctx.settings.DATA_DIR, FANOUT_TRIALS=5)
        assert fanout_subspace.round_width(ctx, s, "default") == 5  # the setting wins


def test_a_sweeps_shards_count_as_one_estimator_in_the_analysis_progress(world):
    ctx, aid = world
    now = db.utcnow()
    with ctx.sessions() as s, s.begin():
        for key, weight, progress in [
            ("est:mle", 1.0, 0.5),
            ("sub:baseline", 0.2, 1.0),
            ("sub:4", 0.2, 1.0),
            ("sub:16", 0.2, 0.5),
        ]:
            s.execute(
                db.insert_ignore(
                    db.AnalysisShard.__table__, "sqlite", fanout.new_shard(aid, now, key=key, weight=weight), ["id"]
                )
            )
            s.execute(
                update(db.AnalysisShard)
                .where(db.AnalysisShard.analysis_id == aid, db.AnalysisShard.key == key)
                .values(progress=progress)
            )
    with ctx.sessions() as s:
        # mle 0.5, the sweep 0.2·(1 + 1 + 0.5) = 0.5 → 0.5; a new round's rows do not pull it back
        assert fanout.analysis_progress(s, aid) == pytest.approx(0.5)


def test_the_recovery_sweep_re_sends_a_dead_trial_to_its_own_queue(world, monkeypatch):
    ctx, aid = world
    sent = []
    monkeypatch.setattr(fanout, "_send", lambda ctx, a, q, keys, queues=None: sent.append((a, q, keys)))
    stale = db.utcnow() - timedelta(seconds=ctx.settings.LEASE_S + 5)
    with ctx.sessions() as s, s.begin():
        for key, queue in [("sub:40", "gpu"), ("est:mle", None)]:
            row = fanout.new_shard(aid, stale, key=key, queue=queue)
            s.execute(db.insert_ignore(db.AnalysisShard.__table__, "sqlite", row, ["id"]))
        s.execute(update(db.AnalysisShard).values(status=db.RUNNING, heartbeat_at=stale, lease_token="t"))
    assert sorted(fanout.sweep_shards(ctx)) == sorted([f"{aid}/sub:40", f"{aid}/est:mle"])
    assert sorted(sent) == sorted([(aid, "gpu", ["sub:40"]), (aid, "default", ["est:mle"])])


# -- speculation: trials the path no longer needs are dropped; an early pass plans the next trial at once ----------

SWEEP = SweepConfig(d_min=10, max_d=160, grid_factor=2, bisect_steps=3, threshold=0.9, seeds=3, lr_rule="spec")


def _record(d, mean):
    return {"trial": Trial(d).key, "d": d, "lr": 0.1, "lr_source": "spec", "metric": [mean] * 3}


def _sweep_rows(ctx, aid, rows):
    """Trial rows {d or "baseline": (status, mean or None)}; running ones hold the lease token "t"."""
    now = db.utcnow()
    with ctx.sessions() as s, s.begin():
        for key, (status, mean) in rows.items():
            row = fanout.new_shard(aid, now, key=f"sub:{key}", queue="default")
            s.execute(db.insert_ignore(db.AnalysisShard.__table__, "sqlite", row, ["id"]))
            if key == "baseline":
                result = {"trial": "baseline", "d": None, "lr": 1e-3, "lr_source": "spec", "metric": [1.0] * 3}
            else:
                result = _record(key, mean) if mean is not None else None
            s.execute(
                update(db.AnalysisShard)
                .where(db.AnalysisShard.analysis_id == aid, db.AnalysisShard.key == f"sub:{key}")
                .values(
                    status=status,
                    result=result if status == db.SUCCEEDED else None,
                    lease_token="t" if status == db.RUNNING else None,
                    heartbeat_at=now,
                )
            )


def _statuses(ctx, aid):
    S = db.AnalysisShard
    with ctx.sessions() as s:
        return {k: st for k, st in s.execute(select(S.key, S.status).where(S.analysis_id == aid))}


def _problem():
    return SimpleNamespace(config=SWEEP)


def test_trials_off_the_path_are_dropped_never_start_stop_running_and_count_as_finished(world, monkeypatch):
    ctx, aid = world
    ctx.settings = Settings(DATA_DIR=ctx.settings.DATA_DIR, FANOUT_TRIALS=2)
    done = {d: (db.SUCCEEDED, m) for d, m in [(10, 0.2), (20, 0.4), (40, 0.6), (80, 0.8), (160, 0.99), (113, 0.95)]}
    # 113 passed: the walk goes to 95; 134 (running) and 123 (queued), speculated above 113, are of no use now
    _sweep_rows(ctx, aid, {"baseline": (db.SUCCEEDED, None), **done, 134: (db.RUNNING, None), 123: (db.QUEUED, None)})
    with ctx.sessions() as s, s.begin():
        analysis = s.get(db.Analysis, aid)
        sent = fanout_subspace._advance(ctx, s, analysis, None, _problem())
    assert list(sent)[0] == "sub:95" and len(sent) == 2  # both slots are free again: 95 and one of its children
    st = _statuses(ctx, aid)
    assert st["sub:134"] == st["sub:123"] == db.DROPPED and st["sub:95"] == db.QUEUED
    assert fanout._claim(ctx, aid, "sub:123") is None  # a dropped trial's message is skipped
    with pytest.raises(Cancelled):  # a running one stops at its next progress report
        fanout.ShardLease(ctx, aid, "sub:134", "t").progress(0.5, "subspace: d=134")
    # the last trial that finishes assembles: dropped trials count as finished
    assembled = []
    monkeypatch.setattr(fanout, "_assemble", lambda ctx, a, token: assembled.append(a) or "assembled")
    other = next(k for k in sent if k != "sub:95")
    with ctx.sessions() as s, s.begin():
        s.execute(update(db.AnalysisShard).where(db.AnalysisShard.key == other).values(status=db.DROPPED))
    token = fanout._claim(ctx, aid, "sub:95")
    assert fanout._succeed(ctx, aid, "sub:95", token, 1.0, "cpu", result=_record(95, 0.7)) == "assembled"
    assert assembled == [aid]


def test_a_trial_whose_best_scores_reach_the_level_plans_the_next_one_while_it_runs(world, monkeypatch):
    ctx, aid = world
    ctx.settings = Settings(DATA_DIR=ctx.settings.DATA_DIR, FANOUT_TRIALS=2)
    sent = []
    monkeypatch.setattr(fanout, "_send", lambda ctx, a, q, keys, queues=None: sent.append(keys))
    done = {d: (db.SUCCEEDED, m) for d, m in [(10, 0.2), (20, 0.4), (40, 0.6), (80, 0.8), (160, 0.99)]}
    _sweep_rows(ctx, aid, {"baseline": (db.SUCCEEDED, None), **done, 113: (db.RUNNING, None), 134: (db.QUEUED, None)})
    with ctx.sessions() as s:
        analysis = s.get(db.Analysis, aid)
    lease = fanout.ShardLease(ctx, aid, "sub:113", "t")
    report = fanout_subspace._Reporter(ctx, lease, analysis, None, _problem())
    report({"lr": 0.1})  # the lr its range test chose, kept in its row
    report({"lr": 0.1, "best": [0.85, 0.9, 0.9]})  # mean 0.883: not yet
    assert sent == [] and _statuses(ctx, aid)["sub:134"] == db.QUEUED
    with ctx.sessions() as s:
        row = s.scalar(select(db.AnalysisShard).where(db.AnalysisShard.key == "sub:113"))
        assert row.result == {"lr": 0.1} and row.status == db.RUNNING
    report({"lr": 0.1, "best": [0.88, 0.92, 0.93]})  # mean 0.91 ≥ 0.9: 113 passes for sure
    assert sent == [["sub:95"]]  # the walk goes below 113 at once; 134, above it, is dropped
    st = _statuses(ctx, aid)
    assert st["sub:134"] == db.DROPPED and st["sub:113"] == db.RUNNING and st["sub:95"] == db.QUEUED
    report({"lr": 0.1, "best": [0.9, 0.95, 0.95]})  # once is enough
    assert sent == [["sub:95"]]
