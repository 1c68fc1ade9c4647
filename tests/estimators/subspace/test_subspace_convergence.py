"""Training to convergence (issue 14; docs/methods.md §4.2): the per-row optimizer, plateau stopping, the lr range test,
bounds when the crossing rests on unconverged trials, and Li's §2 toy problem under the converged protocol."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from estimators import registry
from estimators.base import no_progress
from estimators.subspace.projections import make_projection
from estimators.subspace.sweep import Crossing, assess_bound, crossing, run_sweep
from estimators.subspace.training import Protocol, RowOptimizer, range_test, train_rows
from estimators.subspace.wrapper import SubspaceModel


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the per-row optimizer against torch.optim ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, torch_opt, wd",
    [
        ("adam", torch.optim.Adam, 0.0),
        ("adam", torch.optim.Adam, 0.01),
        ("adamw", torch.optim.AdamW, 0.05),
        ("sgd", lambda p, lr, weight_decay: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=weight_decay), 0.01),
    ],
    ids=["adam", "adam-l2", "adamw", "sgd-momentum"],
)
def test_row_optimizer_matches_torch_optim_row_by_row(kind, torch_opt, wd):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 6, 5, generator=g)
    lrs = [0.3, 0.01, 0.0]  # the last row is frozen
    theta = nn.Parameter(torch.randn(3, 5, generator=g))
    refs = [nn.Parameter(theta[s].detach().clone()) for s in range(3)]
    ours = RowOptimizer([theta], kind, torch.tensor(lrs, dtype=torch.float64), weight_decay=wd, momentum=0.9)
    theirs = [torch_opt([refs[s]], lr=lrs[s], weight_decay=wd) for s in range(3)]
    for _ in range(25):
        ours.zero_grad()
        torch.einsum("sij,sj->si", A, theta).square().sum().backward()  # rows independent
        ours.step()
        for s in range(3):
            theirs[s].zero_grad()
            (A[s] @ refs[s]).square().sum().backward()
            theirs[s].step()
    for s in range(3):
        torch.testing.assert_close(theta[s].detach(), refs[s].detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(theta[0], theta[1])


# -- plateau stopping on scripted scores ----------------------------------------------------------------------


def _scripted(metrics, losses):
    """A 1-row 'training' whose scores follow the scripts (one entry per evaluation, step 0 first)."""
    w = nn.Parameter(torch.zeros(1, 1))
    calls = {"n": 0}
    seen = []

    def step_loss(k):
        return (w - 1.0).square().sum()

    def evaluate():
        i = min(calls["n"], len(metrics) - 1)
        calls["n"] += 1
        seen.append(float(w.detach()))
        return torch.tensor([metrics[i]], dtype=torch.float64), torch.tensor([losses[i]], dtype=torch.float64)

    evaluate.seen = seen
    return w, step_loss, evaluate


def test_plateau_drops_the_lr_then_stops_and_keeps_the_best_score():
    metrics = [0.1, 0.5, 0.8, 0.9, 0.9, 0.89, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    losses = [2.3, 1.0, 0.5, 0.3, 0.3, 0.31, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    w, sl, ev = _scripted(metrics, losses)
    P = Protocol(max_steps=10_000, eval_every=10, patience=3, min_delta=0.01, loss_tol=0.01, lr_drops=1)
    (row,) = train_rows([w], sl, ev, [0.1], P)
    # improvements up to the score at step 30; 3 flat scores → drop at 60; 3 more → stop at 90
    assert row.stop_reason == "plateau" and row.converged is True
    assert row.steps == 90 and row.best_step == 30 and row.metric == 0.9
    assert float(w.detach()) == ev.seen[3] != ev.seen[-1]  # the parameters are back at the best score's state
    assert row.lr_final == pytest.approx(0.01)


def test_a_falling_loss_keeps_a_row_at_chance_training_and_the_cap_marks_it_unconverged():
    n = 40
    metrics = [0.1] * n  # accuracy flat at chance
    losses = [2.3 - 0.02 * i for i in range(n)]  # but the loss still falls by 0.02 per score
    w, sl, ev = _scripted(metrics, losses)
    P = Protocol(max_steps=200, eval_every=10, patience=3, min_delta=0.01, loss_tol=0.01)
    (row,) = train_rows([w], sl, ev, [0.1], P)
    assert row.stop_reason == "cap" and row.converged is False and row.steps == 200
    # slow drifts accumulate: 0.004 per score passes the 0.01 tolerance every third score, so no stop either
    w, sl, ev = _scripted(metrics, [2.3 - 0.004 * i for i in range(n)])
    (row,) = train_rows([w], sl, ev, [0.1], P)
    assert row.stop_reason == "cap"


def test_non_finite_loss_stops_a_row_as_diverged_and_fixed_budget_is_not_assessed():
    w, sl, ev = _scripted([0.1, 0.2, 0.3], [2.0, float("nan"), 1.0])
    (row,) = train_rows([w], sl, ev, [0.1], Protocol(max_steps=100, eval_every=10))
    assert row.stop_reason == "diverged" and row.converged is False and row.steps == 10
    w, sl, ev = _scripted([0.4], [1.0])
    (row,) = train_rows([w], sl, ev, [0.1], Protocol(max_steps=7, eval_every=2, stop="fixed"))
    assert row.stop_reason == "fixed" and row.converged is None and row.steps == 7


def test_range_test_picks_the_fastest_stable_lr_on_a_quadratic():
    # f(w) = Σ (w − 3)² per row; Adam moves w by ≈ lr per step: after 20 steps only lr ≥ 0.15 can reach 3, and
    # lr = 10 overshoots by ±10. The winner is the candidate whose 20th iterate is closest to 3.
    def build(k):
        w = nn.Parameter(torch.zeros(k, 4))

        def evaluate():
            with torch.no_grad():
                loss = (w - 3.0).square().sum(1)
            return -loss, loss

        return [w], lambda step: (w - 3.0).square().sum(), evaluate

    cands = [1e-3, 1e-2, 0.1, 0.3, 1.0, 10.0]
    lr, table = range_test(build, cands, steps=20, protocol=Protocol(), max_rows=4)
    assert [t["lr"] for t in table] == cands  # two groups (4 + 2 rows)
    losses = {t["lr"]: t["loss"] for t in table}
    assert lr == min(losses, key=losses.get) and lr in (0.3, 1.0)
    assert losses[1e-3] > losses[0.1] > losses[lr] and losses[10.0] > losses[lr]


# -- bounds --------------------------------------------------------------------------------------------------


def test_assess_bound_cases():
    cross = Crossing(value=30.0, d_grid=40, d_below=20)
    ok, bad = [True, True], [True, False]
    assert assess_bound(cross, {20: ok, 40: ok, 80: bad}, [True]) == ("exact", [])  # above d_grid: irrelevant
    assert assess_bound(cross, {10: bad, 20: ok, 40: ok}, [True]) == ("upper", [10])
    assert assess_bound(cross, {20: ok, 40: bad}, [True]) == ("upper", [40])
    assert assess_bound(cross, {20: ok, 40: ok}, [True, False]) == ("lower", [])
    assert assess_bound(cross, {20: bad, 40: ok}, [False]) == ("unknown", [20])
    assert assess_bound(cross, {20: [None], 40: [None]}, [None])[0] == "unassessed"
    above = Crossing(value=None, d_grid=None, d_below=80, censored="above")
    assert assess_bound(above, {40: ok, 80: bad}, [True]) == ("unknown", [80])
    below = Crossing(value=10.0, d_grid=10, d_below=None, censored="below")
    assert assess_bound(below, {10: bad}, [True]) == ("exact", [10])


# -- Li et al. §2 toy problem, converged protocol ----------------------------------------------------------------


class _Vector(nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(1000, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return self.theta


TOY_PROTOCOL = Protocol(max_steps=4000, eval_every=50, patience=4, min_delta=1e-3, loss_tol=1e-3, lr_drops=2)


def _toy_rows(d, seeds):
    """Li §2: 10 groups of 100 parameters whose sums must be 1…10; performance exp(−loss). Returns the
    (trainable, step_loss, evaluate) triple of :func:`train_rows` for one row per seed (full batch)."""
    target = torch.arange(1.0, 11.0)
    model = SubspaceModel(
        [_Vector(s) for s in seeds], make_projection("fastfood", 1000, d, seeds=[100 + s for s in seeds])
    )

    def losses():
        theta = model(torch.zeros(1), shared_input=True)
        return (theta.view(len(seeds), 10, 100).sum(-1) - target).square().sum(-1)

    def evaluate():
        with torch.no_grad():
            lo = losses()
        return torch.exp(-lo), lo

    return model.trainable(), lambda step: losses().sum(), evaluate


def test_li_toy_problem_gives_10_under_the_converged_protocol():
    record = {}

    def evaluate(d):
        lr, _ = range_test(lambda k: _toy_rows(d, [0] * k), [1e-3, 1e-2, 0.1, 1.0], steps=100, protocol=TOY_PROTOCOL)
        rows = train_rows(*_toy_rows(d, [0, 1, 2]), [lr] * 3, TOY_PROTOCOL, keep_history=False)
        record[d] = rows
        return [r.metric for r in rows]

    out = run_sweep(evaluate, 0.9, d_min=1, max_d=1000, grid_factor=2, bisect_steps=10)
    conv = {d: [r.converged for r in rows] for d, rows in record.items()}
    assert out.crossing.d_grid == 10 and out.crossing.value == 10
    assert assess_bound(out.crossing, conv, [True])[0] == "exact"  # every trial it rests on reached a plateau
    assert crossing(out.curve, 0.99).d_grid == 10
    assert max(np.mean(out.curve[d]) for d in out.curve if d < 10) < 0.01
    assert np.mean(out.curve[10]) > 0.99


# -- the estimator: tiny budget → a bound and its warning, never a bare number -------------------------------------


def _digits(n=500):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


FAST = {
    "seeds": 2,
    "d_min": 8,
    "grid_factor": 4,
    "bisect_steps": 1,
    "n_bootstrap": 100,
    "lr_candidates": [0.01, 0.1, 1.0],
}


def test_tiny_budget_gives_an_upper_bound_with_a_warning():
    X, y = _digits()
    est = registry.get("subspace")
    p = est.parse_params(
        {
            **FAST,
            "model": {"arch": "mlp", "hidden": [16], "train": {"epochs": 2}},
            "baseline": "global",
            "baseline_value": 0.5,
        }
    )
    res = est.fn(X, y, p, device=torch.device("cpu"), progress=no_progress)
    det = res.details
    assert det["protocol"]["max_steps"] == 2 * math.ceil(400 / 128) == 8
    stops = {t["stop_reason"] for t in det["trials"]}
    assert stops == {"cap"} and det["n_unconverged"] == len(det["trials"])
    assert res.value is not None and det["bound"] == "upper"
    assert det["d_int90_display"] == f"≤ {res.value:.0f}" and det["unconverged_d"]
    assert any("upper bound" in w and "without converging" in w for w in res.warnings)
    assert all(not c["converged"] for c in det["curve"])
    # with its own (unconverged) baseline the value is not even a bound, and says so
    p = est.parse_params({**FAST, "model": {"arch": "mlp", "hidden": [16], "train": {"epochs": 2}}})
    res = est.fn(X, y, p, device=torch.device("cpu"), progress=no_progress)
    assert res.details["bound"] in ("unknown", "lower") and res.details["bound"] != "exact"
    assert any("epochs" in w for w in res.warnings)
