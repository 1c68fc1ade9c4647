"""Leases without Celery: a poison analysis (its worker dies on every claim) ends ``failed`` after MAX_ATTEMPTS,
through the sweeper and through the claim, and is never re-queued again; ``requeue_queued`` re-sends queued ones."""

from __future__ import annotations

from datetime import timedelta

import pytest
from seeding import seed_analysis
from sqlalchemy import update

from taskgauge import db
from taskgauge.migrate import upgrade
from taskgauge.settings import Settings
from workers.leases import claim, requeue_queued, sweep_stale


@pytest.fixture
def world(tmp_path):
    settings = Settings(DATA_DIR=tmp_path, LEASE_S=30, MAX_ATTEMPTS=3)
    upgrade(settings.DATABASE_URL)
    engine = db.make_engine(settings.DATABASE_URL)
    factory = db.make_session_factory(engine)
    with factory() as s, s.begin():
        aid = seed_analysis(s, status=db.QUEUED, attempts=0)
    yield settings, factory, aid
    engine.dispose()


def _die(factory, aid, settings):
    """The worker holding the lease dies: its heartbeat goes stale."""
    with factory() as s, s.begin():
        s.execute(
            update(db.Analysis)
            .where(db.Analysis.id == aid)
            .values(heartbeat_at=db.utcnow() - timedelta(seconds=settings.LEASE_S + 5))
        )


def _row(factory, aid):
    with factory() as s:
        return s.get(db.Analysis, aid)


def test_poison_analysis_fails_after_max_attempts_via_the_sweeper(world):
    settings, factory, aid = world
    sent = []
    for attempt in range(1, settings.MAX_ATTEMPTS + 1):
        assert claim(factory, aid, settings) is not None
        assert _row(factory, aid).attempts == attempt
        _die(factory, aid, settings)
        requeued = sweep_stale(factory, settings, lambda i, q: sent.append(i))
        row = _row(factory, aid)
        if attempt < settings.MAX_ATTEMPTS:
            assert requeued == [aid] and row.status == db.QUEUED
        else:
            assert requeued == [] and row.status == db.FAILED
    assert sent == [aid] * (settings.MAX_ATTEMPTS - 1)
    assert row.error["status"] == 500 and row.error["type"].endswith("/worker-died")
    assert "worker died (probably out of memory)" in row.error["detail"] and row.error["attempts"] == 3
    assert row.lease_token is None and row.finished_at is not None
    # nothing brings it back: no claim, no sweep
    assert claim(factory, aid, settings) is None
    assert sweep_stale(factory, settings, lambda i, q: sent.append(i)) == []
    assert _row(factory, aid).status == db.FAILED and len(sent) == settings.MAX_ATTEMPTS - 1


def test_a_delivery_that_finds_the_attempts_used_up_fails_it(world):
    settings, factory, aid = world
    for _ in range(settings.MAX_ATTEMPTS):
        assert claim(factory, aid, settings) is not None
        _die(factory, aid, settings)
    # a redelivered message (Redis' visibility timeout) arrives before any sweep
    assert claim(factory, aid, settings) is None
    row = _row(factory, aid)
    assert row.status == db.FAILED and row.attempts == settings.MAX_ATTEMPTS
    assert "worker died" in row.error["detail"]


def test_a_live_lease_is_neither_stolen_nor_failed(world):
    settings, factory, aid = world
    for _ in range(settings.MAX_ATTEMPTS - 1):
        assert claim(factory, aid, settings) is not None
        _die(factory, aid, settings)
    assert claim(factory, aid, settings) is not None  # the last attempt, alive
    assert claim(factory, aid, settings) is None and _row(factory, aid).status == db.RUNNING
    assert sweep_stale(factory, settings, lambda i, q: None) == [] and _row(factory, aid).status == db.RUNNING


def test_requeue_queued_resends_only_queued(world):
    settings, factory, aid = world
    sent = []
    assert requeue_queued(factory, lambda i, q: sent.append((i, q))) == [aid]
    assert sent == [(aid, "default")]
    claim(factory, aid, settings)
    assert requeue_queued(factory, lambda i, q: sent.append((i, q))) == []
