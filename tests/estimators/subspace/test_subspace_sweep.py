"""The d_int90 sweep (docs/methods.md §4.2): crossing arithmetic, Li's §2 toy problem, digits, the pipeline contract."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from estimators import registry
from estimators.base import EstimatorError, no_progress
from estimators.subspace.projections import make_projection
from estimators.subspace.sweep import bootstrap_ci, coarse_grid, crossing, run_sweep
from estimators.subspace.wrapper import SubspaceModel


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- crossing and grid ------------------------------------------------------------------------------------


def test_crossing_interpolates_in_log_d_and_rounds_up():
    curve = {10: [0.2, 0.4], 40: [0.8, 1.0]}  # means 0.3 and 0.9
    c = crossing(curve, 0.6)  # halfway in log d: √(10·40) = 20
    assert (c.d_grid, c.d_below, c.censored) == (40, 10, None)
    assert c.value == 20.0
    assert crossing(curve, 0.61).value == math.ceil(math.exp(math.log(10) + 0.31 / 0.6 * math.log(4)))
    assert crossing({9: [0.0], 10: [0.9998]}, 0.9).value == 10.0  # adjacent integers → the grid answer
    assert crossing(curve, 0.95).censored == "above" and crossing(curve, 0.95).value is None
    below = crossing(curve, 0.1)
    assert below.censored == "below" and below.value == 10.0


def test_crossing_uses_the_smallest_passing_d_on_a_non_monotone_curve():
    curve = {10: [0.1], 20: [0.95], 40: [0.5], 80: [0.99]}
    c = crossing(curve, 0.9)
    assert (c.d_below, c.d_grid) == (10, 20)


def test_bootstrap_ci_collapses_without_seed_noise_and_widens_with_it():
    flat = {10: [0.3, 0.3, 0.3], 40: [0.9, 0.9, 0.9]}
    assert bootstrap_ci(flat, 0.6, n_boot=200) == (20.0, 20.0)
    noisy = {10: [0.1, 0.3, 0.5], 40: [0.7, 0.9, 1.1]}
    lo, hi = bootstrap_ci(noisy, 0.6, n_boot=500)
    assert lo < 20 < hi


def test_coarse_grid():
    assert coarse_grid(10, 1000, 2.0) == [10, 20, 40, 80, 160, 320, 640, 1000]
    assert coarse_grid(1, 16, 2.0) == [1, 2, 4, 8, 16]
    assert coarse_grid(1, 5, 1.1) == [1, 2, 3, 4, 5]
    with pytest.raises(EstimatorError):
        coarse_grid(10, 5, 2.0)


def test_run_sweep_bisects_to_a_known_step():
    # a step function at d = 37: the sweep must find exactly 37 with enough bisection steps
    calls = []

    def evaluate(d):
        calls.append(d)
        return [1.0 if d >= 37 else 0.0] * 3

    out = run_sweep(evaluate, 0.9, d_min=4, max_d=1000, grid_factor=2, bisect_steps=10)
    assert out.crossing.d_grid == 37 and out.crossing.d_below == 36 and out.crossing.value == 37
    assert calls[:5] == [4, 8, 16, 32, 64]  # coarse grid stops at the first pass
    assert len(calls) == len(set(calls)) <= 5 + 6


# -- Li et al. §2 toy problem --------------------------------------------------------------------------------


class _Vector(nn.Module):
    """θ ∈ R^1000 returned as the 'output'."""

    def __init__(self, seed):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(1000, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return self.theta


def _toy_performance(d, seeds=(0, 1, 2)):
    """Li §2: 10 groups of 100 parameters whose sums must equal 1, 2, …, 10. Performance = exp(−loss)."""
    target = torch.arange(1.0, 11.0)
    model = SubspaceModel(
        [_Vector(s) for s in seeds], make_projection("fastfood", 1000, d, seeds=[100 + s for s in seeds])
    )
    opt = torch.optim.LBFGS(
        model.trainable(),
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def losses():
        theta = model(torch.zeros(1), shared_input=True)  # (S, 1000)
        return (theta.view(len(seeds), 10, 100).sum(-1) - target).square().sum(-1)

    def closure():
        opt.zero_grad()
        loss = losses().sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        return torch.exp(-losses()).tolist()


def test_li_toy_problem_has_intrinsic_dimension_10():
    out = run_sweep(_toy_performance, 0.9, d_min=1, max_d=1000, grid_factor=2, bisect_steps=10)
    assert out.crossing.d_grid == 10 and out.crossing.value == 10  # d_int90
    assert crossing(out.curve, 0.99).d_grid == 10  # d_int100 (within 1% of the perfect 1.0)
    assert max(np.mean(out.curve[d]) for d in out.curve if d < 10) < 0.01
    assert np.mean(out.curve[10]) > 0.999


# -- real data: digits ---------------------------------------------------------------------------------------


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def test_digits_mlp_dint90_with_seeds_and_ci():
    X, y = _digits()
    est = registry.get("subspace")
    assert est.needs_model and est.needs_labels
    params = est.parse_params(
        {
            "model": {"arch": "mlp", "hidden": [32], "train": {"lr": 0.01, "eval_every": 25}},
            "max_samples": 1000,
            "d_min": 8,
            "grid_factor": 4,
            "bisect_steps": 2,
            "seeds": 3,
            "n_bootstrap": 300,
            "lr_candidates": [0.01, 0.0316, 0.1, 0.316, 1.0],
        }
    )
    stages = []
    res = est.fn(X, y, params, device=torch.device("cpu"), progress=lambda f, s: stages.append((f, s)))
    det = res.details
    assert det["D"] == 64 * 32 + 32 + 32 * 10 + 10
    base = det["baseline"]
    assert base["type"] == "individual" and len(base["direct_seeds"]) == 3 and base["direct_mean"] > 0.9
    assert base["level"] == pytest.approx(0.9 * base["direct_mean"])
    curve = {c["d"]: c for c in det["curve"]}
    assert all(len(c["seeds"]) == 3 for c in curve.values())
    assert all(c["mean"] == pytest.approx(np.mean(c["seeds"])) for c in curve.values())
    # the headline lies in the final bracket: below it the mean is under the level, at its top above
    lo, hi = det["bracket"]
    assert curve[lo]["mean"] < base["level"] <= curve[hi]["mean"]
    assert lo < res.value <= hi and res.value < det["D"]
    assert res.ci[0] <= res.value <= res.ci[1]
    assert det["compression"] == pytest.approx(det["D"] / res.value)
    # converged protocol: every trial stopped on a plateau, so the value is exact and carries no warning
    assert det["bound"] == "exact" and det["d_int90_display"] == f"{res.value:.0f}" and not res.warnings
    trials = det["trials"]
    assert len(trials) == 3 * (1 + len(curve))
    assert {t["stop_reason"] for t in trials} == {"plateau"} and det["n_unconverged"] == 0
    for t in trials:
        assert 0 < t["steps"] < det["protocol"]["max_steps"] and 0 <= t["best_step"] <= t["steps"]
        assert 0 <= t["train_accuracy"] <= 1 and math.isfinite(t["train_loss"]) and math.isfinite(t["eval_loss"])
        if t["d"] is None:
            assert t["lr"] == 0.01 and t["lr_source"] == "spec"
        else:
            assert t["lr"] == curve[t["d"]]["lr"] and t["lr"] in params.lr_candidates
    assert set(det["lr_range_tests"]) <= {str(d) for d in curve}
    # no trial at d ≥ d_int90 sits at chance in training accuracy; accuracy grows over the coarse grid
    assert all(t["train_accuracy"] > 0.5 for t in trials if t["d"] is not None and t["d"] >= res.value)
    coarse = [d for d in (8, 32, 128, 512) if d in curve]
    assert len(coarse) >= 2 and all(curve[a]["mean"] < curve[b]["mean"] for a, b in zip(coarse, coarse[1:]))
    # early stopping used fewer steps than the cap would have
    assert det["timings"]["steps_used"] < det["timings"]["steps_if_fixed"]
    # progress: one report per trained model group, monotone, inside [0, 1)
    fr = [f for f, _ in stages]
    assert fr == sorted(fr) and 0 <= fr[0] and fr[-1] < 1
    assert sum("models trained" in s for _, s in stages) == 1 + len(curve)
    assert set(det["timings"]["per_d_s"]) == {str(d) for d in curve}


def test_said_global_baseline_and_train_accuracy_metric_run():
    X, y = _digits()
    est = registry.get("subspace")
    params = est.parse_params(
        {
            "model": {"arch": "mlp", "hidden": [16]},
            "train": {"epochs": 3, "lr": 0.02, "stop": "fixed"},  # overrides of the spec's train block
            "said": True,
            "projection": "sparse",
            "baseline": "global",
            "baseline_value": 1.0,
            "metric": "train_accuracy",
            "seeds": 2,
            "d_min": 4,
            "grid_factor": 8,
            "bisect_steps": 1,
            "max_samples": 400,
            "n_bootstrap": 50,
        }
    )
    res = est.fn(X, y, params, device=torch.device("cpu"), progress=no_progress)
    det = res.details
    assert det["train"]["epochs"] == 3 and det["train"]["lr"] == 0.02 and det["train"]["batch_size"] == 128
    assert {t["stop_reason"] for t in det["trials"]} == {"fixed"} and det["bound"] == "unassessed"
    assert all(t["steps"] == 3 * math.ceil(400 / 128) for t in det["trials"])
    assert det["n_samples"] == 400 and det["n_train"] == det["n_eval"] == 400
    assert det["baseline"]["value"] == 1.0 and det["baseline"]["level"] == pytest.approx(0.9)
    assert min(c["d"] for c in det["curve"]) == det["n_tensors"] + 1 == 5  # SAID needs d > m = 4
    assert any("SAID needs d > m" in w for w in res.warnings)


def test_params_validation_and_pipeline_injection():
    from taskgauge.datasets.canonical import CanonicalDataset
    from taskgauge.pipeline import plan

    est = registry.get("subspace")
    with pytest.raises(EstimatorError, match="model"):
        est.parse_params({})
    with pytest.raises(EstimatorError, match="projection"):
        est.parse_params({"model": {"arch": "mlp"}, "projection": "gaussian"})
    with pytest.raises(EstimatorError, match="hiden"):
        est.parse_params({"model": {"arch": "mlp", "hiden": [3]}})
    ds = CanonicalDataset(X=np.zeros((20, 4), np.float32), y=np.arange(20) % 2)
    with pytest.raises(EstimatorError, match="model spec"):
        plan({"subspace": {}}, ds)
    planned = plan({"subspace": {"seeds": 2}}, ds, model_spec={"arch": "mlp", "hidden": [8]})
    p = planned["subspace"].params
    assert p.model.hidden == [8] and p.seeds == 2
    assert p.model_dump(mode="json")["model"]["arch"] == "mlp"


def test_bad_inputs_raise_clear_errors():
    est = registry.get("subspace")
    p = est.parse_params({"model": {"arch": "lenet"}})
    X = torch.randn(30, 64)
    y = torch.arange(30) % 3
    with pytest.raises(EstimatorError, match="labels"):
        est.fn(X, None, p, device=torch.device("cpu"), progress=no_progress)
    with pytest.raises(EstimatorError, match="N×C×H×W"):
        est.fn(X, y, p, device=torch.device("cpu"), progress=no_progress)
    X[3, 5] = float("nan")
    with pytest.raises(EstimatorError, match="sample 3"):
        est.fn(X, y, p, device=torch.device("cpu"), progress=no_progress)
    dense = est.parse_params(
        {"model": {"arch": "mlp", "hidden": [64]}, "projection": "dense", "d_min": 4000, "memory_budget_mb": 16}
    )
    with pytest.raises(EstimatorError, match="memory_budget_mb"):
        est.fn(torch.randn(30, 4000), y, dense, device=torch.device("cpu"), progress=no_progress)
