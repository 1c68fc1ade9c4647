"""The sweep as pieces (issue 17): the planner replays the sequential sweep (run_sweep's order), look-ahead rounds
never change the path the result is read from, lr reuse across look-ahead, and the real trial runner driven with
look-ahead gives the estimator's exact result."""

import copy
import math

import numpy as np
import pytest
import torch

from estimators import registry
from estimators.base import EstimatorError, no_progress
from estimators.subspace.sweep import run_sweep
from estimators.subspace.trials import (
    SweepConfig,
    Trial,
    aggregate,
    decode,
    encode,
    plan_round,
    prepare,
    run_trial,
    sweep_path,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- a synthetic runner: the record of a trial is a function of (d, lr) only, as the real one's is ------------------


def _curves():
    logistic = lambda d: 1 / (1 + math.exp(-(math.log(d) - math.log(90)) * 3))  # noqa: E731
    step = lambda d: 1.0 if d >= 37 else 0.0  # noqa: E731
    bumpy = lambda d: min(1.0, 0.2 + 0.15 * math.log2(d) + 0.08 * math.sin(d))  # noqa: E731 - not monotone
    return {"logistic": logistic, "step": step, "bumpy": bumpy}


def _own_lr(d):
    """What a range test 'chooses' at d: varies with d, so neighbours sometimes agree and sometimes not."""
    return 0.316 if (d // 7) % 2 else 1.0


def _fake(curve, seeds=3):
    def run(trial):
        if trial.d is None:
            return {"trial": "baseline", "d": None, "lr": 0.001, "lr_source": "spec", "metric": [0.98, 0.97, 0.99]}
        lr = trial.lr if trial.lr is not None else _own_lr(trial.d)
        # the metric depends on the lr too, so a trial run with the wrong lr would show in the result
        metric = [curve(trial.d) + 1e-3 * lr + 1e-4 * s for s in range(seeds)]
        source = "given" if trial.lr is not None else "range_test"
        return {"trial": trial.key, "d": trial.d, "lr": lr, "lr_source": source, "metric": metric}

    return run


def _drive(config, run, width):
    records, rounds = {}, []
    while trials := plan_round(config, records, width=width):
        keys = [t.key for t in trials]
        assert len(set(keys)) == len(keys) and not set(keys) & set(records), "a trial planned twice"
        rounds.append(keys)
        for t in trials:
            records[t.key] = run(t)
    return records, rounds


CONFIG = SweepConfig(d_min=4, max_d=2000, grid_factor=2, bisect_steps=4, threshold=0.9, seeds=3)


def test_trial_keys_round_trip_and_bad_keys_are_refused():
    for t in (Trial(), Trial(40), Trial(95, 0.316), Trial(7, 3.16e-3)):
        assert Trial.from_key(t.key) == t
    assert (Trial().key, Trial(40).key, Trial(95, 0.316).key) == ("baseline", "40", "95@0.316")
    for bad in ("", "x", "0", "-3", "40@", "40@-1", "40@nan", "040", "4.0"):
        with pytest.raises(EstimatorError):
            Trial.from_key(bad)


@pytest.mark.parametrize("name", ["logistic", "step", "bumpy"])
def test_width_one_replays_run_sweep_exactly(name):
    curve = _curves()[name]
    config = SweepConfig(**{**CONFIG.__dict__, "lr_rule": "spec"})  # lr plays no part: compare with run_sweep
    records, rounds = _drive(config, _fake(curve), width=1)
    assert rounds[0] == ["baseline", "4"]  # the baseline runs beside the first round
    assert all(len(r) == 1 for r in rounds[1:])
    level = 0.9 * np.mean(records["baseline"]["metric"])
    ref = run_sweep(
        lambda d: _fake(curve)(Trial(d))["metric"], level, d_min=4, max_d=2000, grid_factor=2, bisect_steps=4
    )
    path = sweep_path(config, records)
    assert path.complete and [s.d for s in path.steps] == ref.order
    assert [r[-1] for r in rounds] == ["4", *[str(d) for d in ref.order[1:]]]
    assert path.crossing == ref.crossing


@pytest.mark.parametrize("name", ["logistic", "step", "bumpy"])
@pytest.mark.parametrize("width", [2, 3, 5])
def test_look_ahead_never_changes_the_path(name, width):
    curve = _curves()[name]
    run = _fake(curve)
    seq, seq_rounds = _drive(CONFIG, run, 1)
    wide, rounds = _drive(CONFIG, run, width)
    a, b = sweep_path(CONFIG, seq), sweep_path(CONFIG, wide)
    # what the result reads off a step (a look-ahead record may stand in for a reused-lr one: same lr, same training)
    assert [(s.d, s.lr_source, s.record["lr"], s.record["metric"]) for s in a.steps] == [
        (s.d, s.lr_source, s.record["lr"], s.record["metric"]) for s in b.steps
    ]
    assert a.crossing == b.crossing and b.complete
    assert all(len(r) <= max(width, 2) for r in rounds)
    assert len(rounds) <= len(seq_rounds)  # look-ahead never adds a round


def test_look_ahead_saves_rounds_on_a_smooth_curve():
    run = _fake(_curves()["logistic"])
    _, seq = _drive(CONFIG, run, 1)
    _, two = _drive(CONFIG, run, 2)
    assert len(two) < len(seq) and sum(map(len, two)) >= sum(map(len, seq))


def _drive_async(config, run, workers, durations):
    """Event-driven dispatch on ``workers`` workers taking sent trials in order (a queue): whenever a trial
    finishes, plan with the trials sent and not yet recorded ``pending``; stop when the path is complete (leftover
    look-ahead trials are dropped). Returns the records, the keys in the order sent, and the finishing time."""
    records, sent, queue, running, now = {}, [], [], {}, 0.0
    while not sweep_path(config, records, pending=[*queue, *running]).complete:
        for t in plan_round(config, records, width=workers, pending=[*queue, *running]):
            assert t.key not in records and t.key not in sent, "a trial planned twice"
            sent.append(t.key)
            queue.append(t.key)
        while queue and len(running) < workers:
            key = queue.pop(0)
            running[key] = now + durations(Trial.from_key(key))
        assert running, "nothing running and nothing planned, yet the path is not complete"
        key = min(running, key=running.get)
        now = running.pop(key)
        records[key] = run(Trial.from_key(key))
    return records, sent, now


@pytest.mark.parametrize("name", ["logistic", "step", "bumpy"])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("jitter", [0, 1, 2])
def test_trials_in_flight_are_not_planned_again_and_the_path_is_the_sequential_one(name, workers, jitter):
    curve = _curves()[name]
    run = _fake(curve)
    seq, _ = _drive(CONFIG, run, 1)
    durations = lambda t: 1.0 + 0.37 * jitter * (((t.d or 3) * 7919) % 11) / 11  # noqa: E731 - uneven, fixed
    records, sent, _ = _drive_async(CONFIG, run, workers, durations)
    a, b = sweep_path(CONFIG, seq), sweep_path(CONFIG, records)
    assert [(s.d, s.lr_source, s.record["lr"], s.record["metric"]) for s in a.steps] == [
        (s.d, s.lr_source, s.record["lr"], s.record["metric"]) for s in b.steps
    ]
    assert a.crossing == b.crossing and len(sent) == len(set(sent))


def test_a_round_leaves_the_slots_of_trials_in_flight_but_always_holds_the_trial_the_path_needs():
    run = _fake(_curves()["logistic"])
    records = {"baseline": run(Trial()), "4": run(Trial(4))}
    assert [t.key for t in plan_round(CONFIG, records, width=3)] == ["8", "16", "32"]
    # 8 and 16 in flight: one slot left, for the next trial past them on the predicted path
    assert [t.key for t in plan_round(CONFIG, records, width=3, pending={"8", "16"})] == ["32"]
    # every slot taken by look-ahead, but the path's next trial (8) is not in flight: it is planned anyway
    assert [t.key for t in plan_round(CONFIG, records, width=2, pending={"16", "32"})] == ["8"]
    # the path waits on a trial in flight: nothing to send, and the sweep is not done
    path = sweep_path(CONFIG, records, width=1, pending={"8"})
    assert path.round == [] and not path.complete
    assert not sweep_path(CONFIG, {}, width=2, pending={"baseline", "4"}).complete


def test_a_midpoint_reuses_its_neighbours_lr_and_a_look_ahead_record_stands_in_only_with_that_lr():
    config = SweepConfig(d_min=8, max_d=64, grid_factor=8, bisect_steps=1, threshold=0.9, seeds=1)
    run = _fake(lambda d: 1.0 if d >= 20 else 0.0, seeds=1)
    base = run(Trial())
    # 8 and 64 chose the same lr → the midpoint 23 must train with it
    recs = {"baseline": base, "8": {**run(Trial(8)), "lr": 0.5}, "64": {**run(Trial(64)), "lr": 0.5}}
    assert plan_round(config, recs) == [Trial(23, 0.5)]
    # a record of d=23 from its own range test with the same lr stands in for it (same training) ...
    path = sweep_path(config, {**recs, "23": {**run(Trial(23)), "lr": 0.5}})
    assert path.complete and [s.d for s in path.steps] == [8, 64, 23]
    assert path.steps[-1].lr_source == "neighbours d=8 and d=64 chose it"
    # ... one with another lr does not: the midpoint is planned again, with the neighbours' lr
    assert plan_round(config, {**recs, "23": {**run(Trial(23)), "lr": 0.1}}) == [Trial(23, 0.5)]


def test_a_global_baseline_plans_without_waiting_for_the_direct_training():
    config = SweepConfig(d_min=4, max_d=64, grid_factor=2, bisect_steps=0, threshold=0.9, baseline="global")
    run = _fake(lambda d: 1.0 if d >= 16 else 0.0)
    recs = {"4": run(Trial(4)), "8": run(Trial(8))}
    assert plan_round(config, recs) == [Trial(), Trial(16)]
    recs = {**recs, "16": run(Trial(16))}
    assert plan_round(config, recs) == [Trial()]  # the walk is over; only the baseline is missing
    assert plan_round(config, {**recs, "baseline": run(Trial())}) == []


def test_the_planner_is_pure():
    run = _fake(_curves()["bumpy"])
    records, _ = _drive(CONFIG, run, 1)
    partial = {k: records[k] for k in list(records)[:4]}
    before = copy.deepcopy(partial)
    first = plan_round(CONFIG, partial, width=3)
    assert plan_round(CONFIG, partial, width=3) == first and partial == before


# -- speculation: both children of an open midpoint, the likelier first; what trials in flight show -----------------

GRID = SweepConfig(d_min=10, max_d=160, grid_factor=2, bisect_steps=3, threshold=0.9, seeds=3, lr_rule="spec")


def _rec(d, mean, lr=0.1, source="spec"):
    return {"trial": Trial(d).key, "d": d, "lr": lr, "lr_source": source, "metric": [mean - 0.01, mean, mean + 0.01]}


def _bracketed(hi_mean, lo_mean=0.8):
    """Baseline 1.0 (level 0.9); the grid 10..80 fails (80 with ``lo_mean``), 160 passes with ``hi_mean``: the
    bisection starts at 113, then 95 (113 passed) or 134 (failed)."""
    recs = {"baseline": {"trial": "baseline", "d": None, "lr": 0.001, "lr_source": "spec", "metric": [1.0] * 3}}
    recs.update({str(d): _rec(d, m) for d, m in [(10, 0.2), (20, 0.4), (40, 0.6), (80, lo_mean)]})
    recs["160"] = _rec(160, hi_mean)
    return recs


def _needed_chances(config, records, level, chance):
    """Brute force, independent of the planner: follow every outcome of the d without a record through
    bisection_walk itself, and add up for each such d the chance of the outcomes that lead to it."""
    from estimators.subspace.sweep import bisection_walk

    out = {}

    def go(outcomes, p):
        walk = bisection_walk(config.grid(), config.bisect_steps)
        d, i = next(walk), 0
        while d is not None:
            rec = records.get(str(d))
            if rec is not None:
                passed = float(np.mean(rec["metric"])) >= level
            elif i < len(outcomes):
                passed, i = outcomes[i], i + 1
            else:
                out[d] = out.get(d, 0.0) + p
                q = chance(d)
                go(outcomes + [True], p * q)
                go(outcomes + [False], p * (1 - q))
                return
            try:
                d = walk.send(passed)
            except StopIteration:
                d = None

    go([], 1.0)
    return out


@pytest.mark.parametrize(("lo_mean", "hi_mean", "first"), [(0.8, 0.91, 134), (0.88, 0.99, 95)])
def test_while_a_midpoint_is_in_flight_both_its_children_go_next_the_likelier_first(lo_mean, hi_mean, first):
    config = SweepConfig(**{**GRID.__dict__, "bisect_steps": 2})  # 113, then one of its children, and done
    recs = _bracketed(hi_mean, lo_mean)
    # 113 in flight, two free slots: both its children, the likelier first — 113 guessed at 0.855 (likely to fail:
    # 134 above it next) or 0.935 (likely to pass: 95 below it next) against the level 0.9
    got = [t.d for t in plan_round(config, recs, width=3, pending={"113"})]
    assert got == [first, 229 - first]
    # one free slot: the likelier child alone; none: nothing (the path waits on 113)
    assert [t.d for t in plan_round(config, recs, width=2, pending={"113"})] == [first]
    assert plan_round(config, recs, width=1, pending={"113"}) == []


@pytest.mark.parametrize("width", [2, 3, 4, 6])
@pytest.mark.parametrize("n_known", [1, 3, 5])
def test_speculative_trials_are_the_likeliest_needed_by_brute_force(width, n_known):
    from estimators.subspace.trials import _chance

    config = SweepConfig(d_min=4, max_d=2000, grid_factor=2, bisect_steps=4, threshold=0.9, seeds=3, lr_rule="spec")
    run = _fake(_curves()["logistic"])
    seq, _ = _drive(config, run, 1)
    order = [s.d for s in sweep_path(config, seq).steps]
    records = {"baseline": seq["baseline"], **{str(d): seq[str(d)] for d in order[:n_known]}}
    pending = {str(order[n_known])}  # the path's next d is in flight
    level = 0.9 * float(np.mean(records["baseline"]["metric"]))
    means = {int(k): float(np.mean(r["metric"])) for k, r in records.items() if k != "baseline"}
    ref = _needed_chances(config, records, level, lambda d: _chance(d, means, level))
    ref.pop(order[n_known])
    got = plan_round(config, records, width=width, pending=pending)
    assert len(got) == min(width - 1, len(ref))
    chances = sorted(ref.values(), reverse=True)
    # the chosen d are the likeliest (ties may go either way), listed likeliest first
    assert [ref[t.d] for t in got] == pytest.approx(chances[: len(got)])


def test_trials_in_flight_off_the_path_are_listed_to_stop():
    recs = _bracketed(0.99)
    recs["113"] = _rec(113, 0.95)  # passes: the walk goes below it, to 95
    path = sweep_path(GRID, recs, width=3, pending={"95", "134", "123"})
    # 134 and 123 (above 113) stop, and their slots go to 95's children: 104 first (95 is guessed at 0.875, below
    # the level 0.9: likelier to fail), then 87
    assert path.off_path == ["123", "134"] and path.round == [Trial(104), Trial(87)]
    path = sweep_path(GRID, recs, width=3, pending={"95", "134", "87", "104"})
    assert path.off_path == ["134"] and path.round == []  # 87 and 104, both children of 95, may still be needed
    recs.update({"95": _rec(95, 0.7), "104": _rec(104, 0.93)})  # the path is complete: everything in flight stops
    path = sweep_path(GRID, recs, pending={"87", "134"})
    assert path.complete and path.off_path == ["134", "87"]


def test_a_trial_in_flight_whose_seeds_best_scores_reach_the_level_passes_before_it_ends():
    recs = _bracketed(0.99)
    base = sweep_path(GRID, recs, width=2, pending={"113"})
    # 113's seeds reach 0.92 on average so far: it passes for sure, 95 is needed next; 134 no longer can be
    early = {"113": {"lr": 0.1, "best": [0.90, 0.92, 0.94]}}
    path = sweep_path(GRID, recs, width=2, pending={"113", "134"}, partial=early)
    assert path.round == [Trial(95)] and path.off_path == ["134"] and not path.complete
    assert [s.d for s in path.steps] == [10, 20, 40, 80, 160]  # no record of 113 yet: the path's steps stop there
    # below the level so far, or a seed without a score yet: nothing is known
    for best in ([0.80, 0.85, 0.90], [0.95, 0.95]):
        got = sweep_path(GRID, recs, width=2, pending={"113"}, partial={"113": {"best": best}})
        assert got.round == base.round and got.off_path == []
    # a record of 113 that passes leads the same way (its slot is free now: one of 95's children joins)
    done = sweep_path(GRID, {**recs, "113": _rec(113, 0.92)}, width=2, pending={"134"})
    assert done.round[0] == Trial(95) and len(done.round) == 2 and done.off_path == ["134"]


def test_the_lr_a_trial_in_flight_chose_gives_its_midpoint_neighbour_the_final_key():
    config = SweepConfig(d_min=8, max_d=64, grid_factor=8, bisect_steps=2, threshold=0.9, seeds=1)
    base = {"trial": "baseline", "d": None, "lr": 0.001, "lr_source": "spec", "metric": [1.0]}
    recs = {"baseline": base, "8": {**_rec(8, 0.1), "metric": [0.1], "lr": 0.5, "lr_source": "range_test"}}
    recs["64"] = {**_rec(64, 0.99), "metric": [0.99], "lr": 0.5, "lr_source": "range_test"}
    # the midpoint 23 takes the neighbours' lr; in flight, its children are 38 (if it fails: likelier, 23 is guessed
    # at 0.55) and 14 (if it passes), each between a neighbour of lr 0.5 and 23, whose lr (0.5) is in its key
    assert plan_round(config, recs, width=3, pending={"23@0.5"}) == [Trial(38, 0.5), Trial(14, 0.5)]
    # an own range test of 23 in flight that chose 0.5 serves 23@0.5: it is neither planned again nor stopped, and
    # its children get their final keys as well
    path = sweep_path(config, recs, width=3, pending={"23"}, partial={"23": {"lr": 0.5}})
    assert path.round == [Trial(38, 0.5), Trial(14, 0.5)] and path.off_path == []
    # its lr not known yet: 23@0.5 is planned anyway (the test may choose another lr) and the own test stops (a
    # duplicate at best); the children run their own range tests
    path = sweep_path(config, recs, width=3, pending={"23"})
    assert path.round == [Trial(23, 0.5), Trial(38), Trial(14)] and path.off_path == ["23"]
    # it chose another lr: it cannot serve 23@0.5, which is planned, and it stops
    path = sweep_path(config, recs, width=3, pending={"23"}, partial={"23": {"lr": 0.1}})
    assert path.round == [Trial(23, 0.5), Trial(38), Trial(14)] and path.off_path == ["23"]


def _drive_speculating(config, run, workers, durations, shows):
    """As _drive_async, and as the fan-out does: trials in flight report their lr after a fifth of their time and,
    when they pass, their best scores (here the final ones) at ``shows`` of it, which plans again at once; trials
    the path can no longer use stop (a queued one is dropped, a running one frees its worker)."""
    records, sent, queue, running, now = {}, [], [], {}, 0.0
    started: dict = {}
    level = None

    def partial():
        out = {}
        for key, end in running.items():
            t = Trial.from_key(key)
            if t.d is None:
                continue
            frac = (now - started[key]) / (end - started[key])
            rec = run(t)
            if frac >= 0.2:
                out[key] = {"lr": rec["lr"]}
            if level is not None and frac >= shows and np.mean(rec["metric"]) >= level:
                out[key]["best"] = rec["metric"]
        return out

    while True:
        level = 0.9 * float(np.mean(records["baseline"]["metric"])) if "baseline" in records else None
        pending = [*queue, *running]
        path = sweep_path(config, records, width=workers, pending=pending, partial=partial())
        if path.complete:
            return records, sent, now
        for key in path.off_path:
            assert key in pending
            queue = [k for k in queue if k != key]
            running.pop(key, None)
        for t in path.round:
            assert t.key not in records and t.key not in pending, "a trial planned twice"
            sent.append(t.key)
            queue.append(t.key)
        while queue and len(running) < workers:
            key = queue.pop(0)
            started[key] = now
            running[key] = now + durations(Trial.from_key(key))
        assert running, "nothing running and nothing planned, yet the path is not complete"
        key = min(running, key=running.get)
        shown = [
            started[k] + shows * (e - started[k])
            for k, e in running.items()
            if started[k] + shows * (e - started[k]) > now
        ]
        if shown and min(shown) < running[key]:
            now = min(shown)  # a trial shows its scores: plan again
            continue
        now = running.pop(key)
        records[key] = run(Trial.from_key(key))


@pytest.mark.parametrize("name", ["logistic", "step", "bumpy"])
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("jitter", [0, 2])
@pytest.mark.parametrize("shows", [0.3, 0.9])
def test_speculation_with_partial_reports_and_stops_reproduces_the_sequential_path(name, workers, jitter, shows):
    curve = _curves()[name]
    run = _fake(curve)
    seq, _ = _drive(CONFIG, run, 1)
    durations = lambda t: 1.0 + 0.37 * jitter * (((t.d or 3) * 7919) % 11) / 11  # noqa: E731 - uneven, fixed
    records, sent, _ = _drive_speculating(CONFIG, run, workers, durations, shows)
    a, b = sweep_path(CONFIG, seq), sweep_path(CONFIG, records)
    assert [(s.d, s.lr_source, s.record["lr"], s.record["metric"]) for s in a.steps] == [
        (s.d, s.lr_source, s.record["lr"], s.record["metric"]) for s in b.steps
    ]
    assert a.crossing == b.crossing and len(sent) == len(set(sent))


# -- the real runner ---------------------------------------------------------------------------------------------


def _digits(n=400):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


TINY = {
    "model": {"arch": "mlp", "hidden": [16], "train": {"epochs": 6, "eval_every": 10}},
    "seeds": 2,
    "d_min": 4,
    "grid_factor": 4,
    "bisect_steps": 2,
    "n_bootstrap": 200,
    "lr_candidates": [0.1, 0.3, 1.0],
}


def _strip(result):
    det = {k: v for k, v in result.details.items() if k != "timings"}
    det["trials"] = [{k: v for k, v in t.items() if k != "seconds"} for t in det["trials"]]
    return result.value, result.ci, result.warnings, det


def test_trials_run_with_look_ahead_in_any_order_give_the_estimators_exact_result():
    X, y = _digits()
    est = registry.get("subspace")
    params = est.parse_params(TINY)
    ref = est.fn(X, y, params, device=torch.device("cpu"), progress=no_progress)

    problem = prepare(X, y, params, device=torch.device("cpu"))
    records = {}
    n_run = 0
    while trials := plan_round(problem.config, records, width=4):
        for t in reversed(trials):  # any order within a round
            records[t.key] = decode(run_trial(problem, t))
            n_run += 1
    got = aggregate(problem, records)
    assert _strip(got) == _strip(ref)
    assert n_run > len(ref.details["curve"]) + 1  # some look-ahead trials were off the path, and unused
    with pytest.raises(EstimatorError, match="not finished"):
        aggregate(problem, {k: v for k, v in records.items() if k != "baseline"})


@pytest.mark.parametrize("budget", [None, 3])
def test_a_trial_reports_its_lr_and_lower_bounds_of_its_seeds_metrics_while_it_runs(budget):
    X, y = _digits(300)
    params = registry.get("subspace").parse_params({**TINY, "seeds": 3})
    problem = prepare(X, y, params, device=torch.device("cpu"))
    if budget is not None:  # below the params' floor, to train one seed at a time on this tiny problem
        problem.params = problem.params.model_copy(update={"memory_budget_mb": budget})
        assert problem.rows_per_group(0, 3) == 1  # the earlier seeds' final metrics join the last one's scores
    reports = []
    rec = run_trial(problem, Trial(problem.config.d_min * 4), partial=lambda info: reports.append(copy.deepcopy(info)))
    assert reports[0] == {"lr": rec["lr"]} and all(r["lr"] == rec["lr"] for r in reports)
    best = [r["best"] for r in reports if "best" in r]
    assert len(best) >= 3 and all(len(b) == 3 for b in best)
    for b in best:  # under the plateau protocol a seed ends at its best score: what it showed is a lower bound
        assert all(v <= m for v, m in zip(b, rec["metric"]))
    assert best[-1] == rec["metric"]  # the last evaluation is the final one
    assert not any("best" in r for r in reports[: len(reports) - len(best)])
    n = len(reports)
    assert run_trial(problem, Trial(), partial=reports.append)["d"] is None and len(reports) == n  # the baseline


def test_a_record_survives_strict_json_with_its_infinities():
    import json

    X, y = _digits(200)
    problem = prepare(X, y, registry.get("subspace").parse_params(TINY), device=torch.device("cpu"))
    rec = run_trial(problem, Trial(problem.config.d_min))
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec  # strict JSON: PostgreSQL's jsonb takes it
    odd = {**decode(rec), "range_test": [{"lr": 1.0, "loss": math.inf, "metric": 0.1}, {"lr": 0.1, "loss": math.nan}]}
    back = decode(json.loads(json.dumps(encode(odd), allow_nan=False)))
    assert back["range_test"][0]["loss"] == math.inf and math.isnan(back["range_test"][1]["loss"])
    assert back["metric"] == rec["metric"] and back["trials"] == rec["trials"]
