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
