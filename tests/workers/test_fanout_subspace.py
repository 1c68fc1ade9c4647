"""Trial shards without Celery: where they are sent (gpu when a GPU worker exists), how many a round holds (live
worker slots), the analysis' progress with a sweep's shards as one estimator, and the recovery sweep re-sending a
dead trial to its own queue."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from seeding import seed_analysis
from sqlalchemy import update

from taskgauge import db
from taskgauge.migrate import upgrade
from taskgauge.settings import Settings
from workers import fanout, fanout_subspace


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
