"""A split kNN (workers/fanout_knn.py) driven shard by shard in this process, without Celery: the messages the
fan-out would send are collected and delivered by the test (in order, twice, or never), on SQLite and the file
blob store. The values equal the one-process pipeline's bit for bit; re-delivered shards add nothing; a cancel
stops every shard; a worker that dies mid-part costs a re-run of that part only; no blob is left behind.
(tests/integration/test_fanout_knn_stack.py runs the same on PostgreSQL + Redis with real worker processes.)"""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update

import estimators.knn.engine as knn
from taskgauge import db
from taskgauge.context import Context
from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.migrate import upgrade
from taskgauge.pipeline import DatasetInfo, run_pipeline
from taskgauge.services.analyses import cancel_analysis
from taskgauge.services.datasets import delete_dataset, load_dataset, store_dataset
from taskgauge.settings import Settings
from workers import fanout, fanout_knn
from workers.tasks import execute_analysis

REQUESTS = {"mle": {"k": 10}, "twonn": {}, "gride": {"range_max": 16}, "label_sharpness": {}}
N = 620  # 600 distinct rows and 20 exact duplicates


def _data(seed: int = 0) -> CanonicalDataset:
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(600, 5)) @ rng.normal(size=(5, 24))
    X = np.concatenate([Z, Z[:20]])
    X = X[rng.permutation(len(X))]
    y = (X[:, 0] > 0).astype(np.int64)
    return CanonicalDataset(X=X, y=y, classes=["a", "b"], meta={"source": "test"})


class World:
    def __init__(self, tmp_path, monkeypatch, **settings):
        self.settings = Settings(
            **{
                "DATA_DIR": tmp_path,
                "FANOUT": True,
                "KNN_SHARD_ROWS": 250,  # 620 rows: 3 parts
                "LEASE_S": 30,
                "HEARTBEAT_S": 0.2,
                "PROGRESS_INTERVAL_S": 0,
                **settings,
            }
        )
        upgrade(self.settings.DATABASE_URL)
        self.ctx = Context.build(self.settings, lambda aid, q: self.sent.append(("analysis", aid)))
        self.sent: list[tuple[str, str]] = []
        monkeypatch.setattr(
            fanout, "_send", lambda ctx, aid, queue, keys, queues=None: self.sent.extend((aid, k) for k in keys)
        )
        with self.ctx.sessions() as s, s.begin():
            owner = db.Owner(id=db.new_id(), name="o")
            s.add(owner)
        self.owner = owner.id
        self.dataset = store_dataset(self.ctx, owner.id, _data(), name="d", filename="d.npz", sha256="1" * 64, size=1)
        self.dataset_blob = self.dataset.blob_sha256

    def analysis(self, requests=None) -> str:
        with self.ctx.sessions() as s, s.begin():
            a = db.Analysis(
                id=db.new_id(),
                owner_id=self.owner,
                dataset_id=self.dataset.id,
                estimators=requests or REQUESTS,
                queue="default",
                status=db.QUEUED,
            )
            s.add(a)
        assert execute_analysis(a.id, self.ctx) == "fanned out"
        return a.id

    def deliver(self, times: int = 1) -> list[tuple[str, str]]:
        """Deliver every message sent so far (and those they send) ``times`` times each; returns what ran."""
        ran = []
        while self.sent:
            aid, key = self.sent.pop(0)
            for _ in range(times):
                ran.append((key, fanout.execute_shard(aid, key, self.ctx)))
        return ran

    def rows(self, model, aid):
        with self.ctx.sessions() as s:
            return list(s.scalars(select(model).where(model.analysis_id == aid)))

    def shards(self, aid) -> dict[str, db.AnalysisShard]:
        return {r.key: r for r in self.rows(db.AnalysisShard, aid)}

    def analysis_row(self, aid) -> db.Analysis:
        with self.ctx.sessions() as s:
            return s.get(db.Analysis, aid)

    def report(self, aid) -> dict:
        (row,) = self.rows(db.Report, aid)
        return row.document

    def blob_rows(self) -> list[str]:
        with self.ctx.sessions() as s:
            return sorted(s.scalars(select(db.Blob.sha256)))

    def assert_only_the_dataset_blob(self) -> None:
        assert self.ctx.blobs.keys() == [self.dataset_blob] and self.blob_rows() == [self.dataset_blob]
        with self.ctx.sessions() as s:
            named = s.scalar(
                select(func.count()).select_from(db.AnalysisShard).where(db.AnalysisShard.blob_sha256.is_not(None))
            )
        assert named == 0


PG_ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path, monkeypatch):
    """On SQLite, and on a fresh PostgreSQL database (whose drivers report some things differently: an
    ``ON CONFLICT DO NOTHING`` insert's rowcount is -1 there)."""
    extra, name = {}, None
    if request.param == "postgresql":
        psycopg = pytest.importorskip("psycopg")
        try:
            psycopg.connect(PG_ADMIN, connect_timeout=2).close()
        except Exception:  # noqa: BLE001
            pytest.skip("PostgreSQL on 127.0.0.1:5432 is needed for the postgresql variant")
        name = f"tg_fanout_knn_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        extra["DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    w = World(tmp_path, monkeypatch, **extra)
    yield w
    w.ctx.engine.dispose()
    if name:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["row-blocks", "symmetric"])
def plan_kind(request, monkeypatch):
    """The plan of small inputs (blocks of query rows) and, with the engine's size gates lowered, the pruned
    symmetric search's (ranges of k-means groups)."""
    if request.param == "symmetric":
        for name, v in (("_PRUNE_MIN_PAIRS", 0), ("_PRUNE_MIN_REF", 200), ("_PRUNE_MIN_DIM", 8), ("_CLUSTER_SIZE", 32)):
            monkeypatch.setattr(knn, name, v)
    return request.param


def unsharded(world) -> dict:
    data = load_dataset(world.ctx.blobs, world.dataset)
    return run_pipeline(data, REQUESTS, info=DatasetInfo(name="d"), device="cpu")


def assert_same_results(report: dict, reference: dict) -> None:
    assert set(report["results"]) == set(reference["results"])
    for name, entry in reference["results"].items():
        got = report["results"][name]
        # bit for bit: the value and every detail (curves, quantiles, counts, warnings), but the search's timings
        assert got["value"] == entry["value"], name
        assert got["warnings"] == entry["warnings"], name
        timings = ("search",) if name == "label_sharpness" else ()
        assert {k: v for k, v in got["details"].items() if k not in timings} == {
            k: v for k, v in entry["details"].items() if k not in timings
        }, name


def knn_keys(plan_kind: str) -> list[str]:
    """The kNN shards of a split analysis (3 parts): the bounds stage only for a grouping."""
    bounds = [f"knn:bounds:{i}/3" for i in range(3)] if plan_kind == "symmetric" else []
    return ["knn:plan", *bounds, "knn:0/3", "knn:1/3", "knn:2/3"]


def test_split_knn_gives_the_unsharded_values_bit_for_bit(world, plan_kind):
    aid = world.analysis()
    assert sorted(k for _, k in world.sent) == ["est:label_sharpness", "knn:plan"]
    ran = world.deliver()
    keys = [k for k, _ in ran]
    stages = knn_keys(plan_kind)
    # plan (sent first: the chain of stages is the longest), label_sharpness beside it, then the bounds stage (a
    # grouping's), the three parts, then the three estimators that read the table, twonn first (its decimation
    # levels search subsets on their own)
    assert keys[:2] == ["knn:plan", "est:label_sharpness"] and keys[2 : len(stages) + 1] == stages[1:]
    assert keys[len(stages) + 1] == "est:twonn" and sorted(keys[len(stages) + 2 :]) == ["est:gride", "est:mle"]
    # the plan sends the bounds stage or the parts, the last of a stage the next one, the last estimator assembles
    last_of_stage = {"knn:plan", "knn:bounds:2/3", "knn:2/3"}
    assert dict(ran[:-1]) == {
        "est:label_sharpness": "done",
        **{k: "done, sent 3 shards" if k in last_of_stage else "done" for k in stages},
        **{k: "done" for k, _ in ran[len(stages) + 1 : -1]},
    }
    assert ran[-1][1] == "assembled: succeeded"
    row = world.analysis_row(aid)
    assert row.status == db.SUCCEEDED and row.progress == 1.0
    report = world.report(aid)
    assert_same_results(report, unsharded(world))
    assert report["results"]["mle"]["details"]["duplicates_removed"] == 20
    shards = {s["key"]: s for s in report["environment"]["shards"]}
    assert set(shards) == {*stages, *(f"est:{n}" for n in REQUESTS)}
    assert all(
        s["worker"] and s["seconds"] is not None and s["device"] == "cpu" and s["attempts"] == 1
        for s in shards.values()
    )
    assert len(world.rows(db.AnalysisResult, aid)) == 4
    world.assert_only_the_dataset_blob()  # the plan's and the parts' blobs went with the analysis


def test_the_estimators_read_the_merged_table_and_search_nothing_themselves(world, monkeypatch):
    """The full self-queries of mle, twonn and gride come from the table (only twonn's decimation, which searches
    subsets, runs the engine), so the parts are the only full search."""
    aid = world.analysis({"mle": {"k": 10}, "twonn": {"decimation": False}, "gride": {"range_max": 16}})
    searched = []
    real = knn._search
    monkeypatch.setattr(knn, "_search", lambda *a, **kw: searched.append(a[2]) or real(*a, **kw))
    while world.sent:
        aid_, key = world.sent.pop(0)
        before = len(searched)
        assert fanout.execute_shard(aid_, key, world.ctx).startswith(("done", "assembled: succeeded"))
        if key.startswith("est:"):
            assert len(searched) == before, key
    assert world.analysis_row(aid).status == db.SUCCEEDED


def test_a_redelivered_shard_adds_nothing(world, plan_kind):
    aid = world.analysis()
    ran = world.deliver(times=2)  # every message arrives twice (Redis' visibility timeout, a broker restart, …)
    outcomes = {}
    for key, outcome in ran:
        outcomes.setdefault(key, []).append(outcome)
    assert all(o[1] == "skipped" for o in outcomes.values()), outcomes
    for key in knn_keys(plan_kind):  # and once more after the analysis ended
        assert fanout.execute_shard(aid, key, world.ctx) == "skipped"
    assert world.analysis_row(aid).status == db.SUCCEEDED
    assert len(world.rows(db.Report, aid)) == 1
    assert sorted(r.estimator for r in world.rows(db.AnalysisResult, aid)) == sorted(REQUESTS)
    assert sorted(world.shards(aid)) == sorted([*knn_keys(plan_kind), *(f"est:{n}" for n in REQUESTS)])
    assert all(r.attempts == 1 for r in world.shards(aid).values())
    assert_same_results(world.report(aid), unsharded(world))
    world.assert_only_the_dataset_blob()


def test_cancel_during_the_parts_stops_every_shard(world, monkeypatch):
    aid = world.analysis()
    ran = []
    while world.sent and world.sent[0][1] != "knn:0/3":
        a, key = world.sent.pop(0)
        ran.append(fanout.execute_shard(a, key, world.ctx))
    assert ran == ["done, sent 3 shards", "done"]  # the plan and label_sharpness; the parts are queued
    assert world.shards(aid)["knn:plan"].blob_sha256 is not None
    # the user cancels while part 0 runs: it stops at its next progress report
    real = fanout_knn.kneighbors_part

    def cancelled_midway(*args, progress, **kw):
        cancel_analysis(world.ctx, world.owner, aid)
        progress(0.5, "knn")
        raise AssertionError("the part went on after the cancel")

    monkeypatch.setattr(fanout_knn, "kneighbors_part", cancelled_midway)
    a, key = world.sent.pop(0)
    assert fanout.execute_shard(a, key, world.ctx) == "cancelled"
    monkeypatch.setattr(fanout_knn, "kneighbors_part", real)
    # the other parts never start
    assert [k for _, k in world.sent] == ["knn:1/3", "knn:2/3"]
    assert [o for _, o in world.deliver()] == ["skipped", "skipped"]
    shards = world.shards(aid)
    assert shards["knn:0/3"].status == db.CANCELLED
    assert {k: s.status for k, s in shards.items() if k in ("knn:1/3", "knn:2/3")} == {
        "knn:1/3": "queued",
        "knn:2/3": "queued",
    }
    assert not any(s.status == db.RUNNING for s in shards.values())
    assert world.analysis_row(aid).status == db.CANCELLED and world.rows(db.Report, aid) == []
    assert "est:mle" not in shards  # the estimators that read the table were never written
    world.assert_only_the_dataset_blob()  # the plan's blob went when the part noticed the cancel
    # the sweeper re-sends nothing of a cancelled analysis
    assert fanout.sweep_shards(world.ctx) == [] and world.sent == []


def test_a_cancel_while_every_shard_waits_is_cleaned_by_the_sweeper(world):
    aid = world.analysis()
    a, key = world.sent.pop(0)
    world.sent.pop(0)  # label_sharpness, never delivered
    assert key == "knn:plan" and fanout.execute_shard(a, key, world.ctx) == "done, sent 3 shards"
    cancel_analysis(world.ctx, world.owner, aid)  # nothing runs: no shard notices
    assert world.shards(aid)["knn:plan"].blob_sha256 is not None and len(world.ctx.blobs.keys()) == 2
    assert fanout.sweep_shards(world.ctx) == []
    world.assert_only_the_dataset_blob()


def _stale(world, aid, key) -> None:
    with world.ctx.sessions() as s, s.begin():
        s.execute(
            update(db.AnalysisShard)
            .where(db.AnalysisShard.analysis_id == aid, db.AnalysisShard.key == key)
            .values(heartbeat_at=db.utcnow() - timedelta(seconds=world.settings.LEASE_S + 5))
        )


class WorkerKilled(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs (no except Exception, no status write)."""


@pytest.mark.parametrize("when", ["during the search", "after publishing its blob"])
@pytest.mark.parametrize("victim", ["knn:1/3", "knn:bounds:1/3"])
def test_a_worker_dying_mid_part_reruns_that_part_only(world, monkeypatch, when, victim):
    if victim.startswith("knn:bounds:"):  # the bounds stage is a grouping's: the symmetric plan
        for name, v in (("_PRUNE_MIN_PAIRS", 0), ("_PRUNE_MIN_REF", 200), ("_PRUNE_MIN_DIM", 8), ("_CLUSTER_SIZE", 32)):
            monkeypatch.setattr(knn, name, v)
    aid = world.analysis()
    while world.sent[0][1] != victim:
        a, key = world.sent.pop(0)
        fanout.execute_shard(a, key, world.ctx)
    search = "bounds_part" if victim.startswith("knn:bounds:") else "kneighbors_part"
    real_part, real_succeed = getattr(fanout_knn, search), fanout._succeed

    def die_searching(*args, **kw):
        raise WorkerKilled()

    def die_before_done(ctx, analysis_id, key, *a, **kw):
        if key == victim:
            raise WorkerKilled()
        return real_succeed(ctx, analysis_id, key, *a, **kw)

    if when == "during the search":
        monkeypatch.setattr(fanout_knn, search, die_searching)
    else:
        monkeypatch.setattr(fanout, "_succeed", die_before_done)
    a, key = world.sent.pop(0)
    with pytest.raises(WorkerKilled):
        fanout.execute_shard(a, key, world.ctx)
    monkeypatch.setattr(fanout_knn, search, real_part)
    monkeypatch.setattr(fanout, "_succeed", real_succeed)
    row = world.shards(aid)[victim]
    assert row.status == db.RUNNING and (row.blob_sha256 is not None) == (when == "after publishing its blob")
    world.deliver()  # the others of its stage: the next stage waits for it
    assert world.analysis_row(aid).status == db.RUNNING and "est:mle" not in world.shards(aid)
    if victim.startswith("knn:bounds:"):
        assert "knn:0/3" not in world.shards(aid)
    assert fanout.sweep_shards(world.ctx) == []  # its heartbeat is still fresh: not stolen
    _stale(world, aid, victim)  # LEASE_S later, no heartbeat: the worker is gone
    assert fanout.sweep_shards(world.ctx) == [f"{aid}/{victim}"]
    ran = world.deliver()
    assert ran[0] == (victim, "done, sent 3 shards") and ran[-1][1] == "assembled: succeeded"
    shards = world.shards(aid)
    assert shards[victim].attempts == 2
    assert all(s.attempts == 1 for k, s in shards.items() if k != victim)
    assert len(world.rows(db.Report, aid)) == 1 and len(world.rows(db.AnalysisResult, aid)) == 4
    assert_same_results(world.report(aid), unsharded(world))
    world.assert_only_the_dataset_blob()


def test_two_analyses_of_the_same_data_share_the_parts_blobs_until_both_end(world):
    """Content addressing: the same data and plan give the same part blobs; one analysis ending does not delete a
    blob the other still names."""
    first = world.analysis({"mle": {"k": 10}})
    second = world.analysis({"mle": {"k": 10}})
    est = []
    while world.sent:  # both plans and both sets of parts, interleaved; the estimators wait
        a, k = world.sent.pop(0)
        if k.startswith("est:"):
            est.append((a, k))
        else:
            fanout.execute_shard(a, k, world.ctx)
    mine = {r.key: r.blob_sha256 for r in world.rows(db.AnalysisShard, first) if r.blob_sha256}
    theirs = {r.key: r.blob_sha256 for r in world.rows(db.AnalysisShard, second) if r.blob_sha256}
    assert mine == theirs and len(mine) == 4  # the plan and three parts, the same bytes
    assert sorted(k for _, k in est) == ["est:mle", "est:mle"]
    a, k = next(x for x in est if x[0] == first)
    assert fanout.execute_shard(a, k, world.ctx) == "assembled: succeeded"
    assert set(world.ctx.blobs.keys()) == {world.dataset_blob, *mine.values()}  # still named by the second
    a, k = next(x for x in est if x[0] == second)
    assert fanout.execute_shard(a, k, world.ctx) == "assembled: succeeded"
    assert world.report(first)["results"]["mle"]["value"] == world.report(second)["results"]["mle"]["value"]
    world.assert_only_the_dataset_blob()


def test_deleting_the_dataset_mid_analysis_deletes_the_shard_blobs(world):
    world.analysis()
    while world.sent and world.sent[0][1] != "knn:1/3":
        a, key = world.sent.pop(0)
        fanout.execute_shard(a, key, world.ctx)
    assert len(world.ctx.blobs.keys()) == 3  # dataset, plan, part 0
    delete_dataset(world.ctx, world.owner, world.dataset.id)
    assert world.ctx.blobs.keys() == [] and world.blob_rows() == []
    assert world.deliver() == [("knn:1/3", "skipped"), ("knn:2/3", "skipped")]  # their rows went with it


def test_small_datasets_and_other_estimators_are_not_split(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, KNN_SHARD_ROWS=1000)  # 620 rows: not split
    aid = w.analysis()
    assert sorted(k for _, k in w.sent) == sorted(f"est:{n}" for n in REQUESTS)
    w.deliver()
    assert not any(fanout_knn.is_knn(k) for k in w.shards(aid))
    assert_same_results(w.report(aid), unsharded(w))
    w.ctx.engine.dispose()
    # split, but mle with anchors queries a subset: it runs on its own, beside the plan of the others
    w2 = World(tmp_path / "two", monkeypatch)
    requests = {"mle": {"k": 10, "anchors": 100}, "gride": {"range_max": 16}}
    aid = w2.analysis(requests)
    assert sorted(k for _, k in w2.sent) == ["est:mle", "knn:plan"]
    w2.deliver()
    assert w2.analysis_row(aid).status == db.SUCCEEDED
    assert {s["key"] for s in w2.report(aid)["environment"]["shards"]} == {
        "est:mle",
        "knn:plan",
        "knn:0/3",
        "knn:1/3",
        "knn:2/3",
        "est:gride",
    }
    local = run_pipeline(load_dataset(w2.ctx.blobs, w2.dataset), requests, info=DatasetInfo(name="d"), device="cpu")
    assert_same_results(w2.report(aid), local)
    w2.ctx.engine.dispose()


def test_the_fan_out_reads_the_data_ahead_of_a_split_knn(world, monkeypatch):
    """The worker that fans a split kNN out reads the data into its cache (while another worker plans), so the
    part it takes next, or the plan, reads nothing; a fan-out without a split kNN leaves the data to the shards."""
    loads = []
    real = fanout.load_dataset
    monkeypatch.setattr(fanout, "load_dataset", lambda *a, **kw: loads.append(1) or real(*a, **kw))
    fanout._last.clear()
    aid = world.analysis()
    assert loads == [1] and len(fanout._last) == 1
    world.deliver()
    assert loads == [1] and world.analysis_row(aid).status == db.SUCCEEDED and fanout._last == {}
    monkeypatch.setattr(world.settings, "KNN_SHARD_ROWS", 0)
    world.analysis()
    assert loads == [1] and fanout._last == {}


def test_the_number_of_parts_is_bounded():
    assert fanout_knn.parts_for(70000, 35000) == 2 and fanout_knn.parts_for(70001, 35000) == 3
    assert fanout_knn.parts_for(70000, 1) == fanout_knn.MAX_PARTS
    assert fanout_knn.parts_for(70000, 0) == 1  # another worker decided to split; this one's setting is 0
