"""The ``subspace`` estimator: d_int90 of a model spec on a dataset (Li et al. 2018; docs/methods.md §4).

Protocol (docs/methods.md §4.2, "service recommendation"):

1. Split the data (seeded) into train/validation (metric ``val_accuracy``), or train on everything and score the
   training set (``train_accuracy``, for memorisation studies such as shuffled labels).
2. Baseline: the same network trained directly in all D parameters, ``seeds`` seeds, with the spec's lr. The
   threshold is τ = ``threshold`` × baseline, with baseline = the mean direct accuracy ("individual", default)
   or a fixed ``baseline_value`` ("global", e.g. 1.0 for MNIST as in Li's Table 1 FC entry).
3. Subspace training θ = θ₀ + Pθ_d (projection ``fastfood`` by default; ``said=true`` for SAID) on a coarse log
   grid d_min·f^k until the mean over seeds reaches τ, then ``bisect_steps`` geometric bisections.
4. value = interpolated d_int90 (integer), CI = percentile bootstrap over seeds at every d.

Convergence (issue 14; :mod:`estimators.subspace.training`): every trial (d, seed) and every baseline seed trains
until its validation metric and loss plateau (the spec's ``epochs`` is only a cap). A trial that hits the cap is
*unconverged*; when the crossing rests on such trials, ``details.bound`` says which way the value is a bound
("upper": d_int90 ≤ value; "lower"; "unknown") and a warning says so. The lr of θ_d (whose scale differs from
the weights' and changes with d) comes from a short lr range test at each d (``subspace_lr="range_test"``): the
candidate with the lowest training loss after ``lr_range_steps`` steps; a bisection midpoint whose two
neighbours chose the same lr reuses it. Per trial the details record steps, stop reason, lr, and the final
train/validation metrics.

The S seeds of one d (and of the baseline) train at once as one vmapped model, in groups that fit
``memory_budget_mb``. Seed i uses init seed ``seed+i`` at every d (and in the baseline), so curves are paired.

Example::

    >>> est = registry.get("subspace")
    >>> p = est.parse_params({"model": {"arch": "mlp", "hidden": [32], "train": {"epochs": 2}}, "d_min": 8})
    >>> est.fn(X, y, p, device=torch.device("cpu"), progress=no_progress).value   # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from estimators.base import (  # parameter bounds
    MAX_MEMORY_BUDGET_MB,
    MAX_SEED,
    MAX_SUBSAMPLE,
    EstimatorError,
    Params,
    ProgressFn,
    Result,
)
from estimators.models.builders import build_model, count_params
from estimators.models.spec import ModelSpec, TrainSpec, _Strict, parse_model_spec
from estimators.registry import register
from estimators.subspace.projections import (
    make_projection,
    projection_bytes,
)
from estimators.subspace.sweep import (
    assess_bound,
    bootstrap_ci,
    coarse_grid,
    crossing,
    resolve_protocol,
    run_sweep,
)
from estimators.subspace.training import RowOutcome, lr_range_test, train_classifier
from estimators.subspace.wrapper import DirectModel, SubspaceModel
from estimators.validation import as_labelled

VERSION = "2.0.0"  # 2.0: trials train to a plateau (epochs = cap), lr range test per d, bounds for unconverged

LR_CANDIDATES = (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316, 1.0)


class TrainOverrides(_Strict):
    """Fields that replace the model spec's ``train`` block for this analysis (unset fields keep the spec's)."""

    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    stop: Literal["plateau", "fixed"] | None = None
    patience: int | None = Field(None, ge=1, le=1000)
    min_delta: float | None = Field(None, ge=0, le=1)
    loss_tol: float | None = Field(None, ge=0)
    eval_every: int | None = Field(None, ge=1)
    lr_drops: int | None = Field(None, ge=0, le=10)


class SubspaceParams(Params):
    """Params of the ``subspace`` estimator; defaults follow docs/methods.md §4.2 (3 seeds, 0.9, individual baseline)."""

    model: ModelSpec = Field(description="model spec (docs/methods.md §4); the pipeline injects the user's spec here")
    projection: Literal["dense", "sparse", "fastfood"] = "fastfood"
    said: bool = Field(False, description="SAID (Aghajanyan et al. 2021): one trained scale λ per parameter tensor")
    seeds: int = Field(3, ge=1, le=64)
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="base seed: init, projections, batch order and split all derive from it"
    )
    d_min: int = Field(10, ge=1, le=MAX_SUBSAMPLE)
    grid_factor: float = Field(2.0, gt=1.0, le=100.0)
    bisect_steps: int = Field(3, ge=0, le=30)
    max_d: int | None = Field(None, ge=1, le=MAX_SUBSAMPLE, description="largest d tried; default D")
    threshold: float = Field(0.9, gt=0.0, le=1.0)
    baseline: Literal["individual", "global"] = "individual"
    baseline_value: float = Field(1.0, gt=0.0, le=1.0, description="the baseline when baseline='global'")
    metric: Literal["val_accuracy", "train_accuracy"] = "val_accuracy"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_samples: int | None = Field(
        None, ge=10, le=MAX_SUBSAMPLE, description="seeded subsample of the data before the split"
    )
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    subspace_lr: Literal["range_test", "spec"] | Annotated[float, Field(gt=0, le=100)] = Field(
        "range_test", description="lr of θ_d: a range test per d (default), the spec's lr, or a fixed value"
    )
    lr_candidates: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: list(LR_CANDIDATES), min_length=1, max_length=32
    )
    lr_range_steps: int | None = Field(None, ge=1, description="steps per range-test candidate; default 2 scores")
    n_bootstrap: int = Field(1000, ge=10, le=100_000)
    memory_budget_mb: int = Field(2048, ge=16, le=MAX_MEMORY_BUDGET_MB)

    @field_validator("model", mode="before")
    @classmethod
    def _spec(cls, v: Any) -> Any:
        if v is None:
            raise ValueError('a model spec is required, e.g. {"arch": "mlp", "hidden": [200, 200]}')
        return v


def effective_train(params: SubspaceParams) -> TrainSpec:
    over = {k: v for k, v in params.train.model_dump().items() if v is not None}
    return params.model.train.model_copy(update=over)


def _check_inputs(X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = as_labelled(X, y, "subspace", images=True)
    if y.numel() and int(y.min()) < 0:
        raise EstimatorError("subspace: class indices in y must be ≥ 0")
    return X.to(torch.float32), y


def _groups(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _trial(
    d: int | None, seed: int, row: RowOutcome, train_m: float, train_l: float, lr_source: str, seconds: float
) -> dict:
    return {
        "d": d,
        "seed": seed,
        "lr": row.lr,
        "lr_final": row.lr_final,
        "lr_source": lr_source,
        "steps": row.steps,
        "best_step": row.best_step,
        "stop_reason": row.stop_reason,
        "converged": row.converged,
        "metric": row.metric,
        "eval_loss": row.loss,
        "train_accuracy": train_m,
        "train_loss": train_l,
        "seconds": seconds,  # the group's wall time split evenly over the seeds trained with it
    }


@register(
    name="subspace",
    version=VERSION,
    params=SubspaceParams,
    summary="d_int90: smallest random-subspace dimension reaching 90% of direct training (Li et al. 2018)",
    needs_labels=True,
    needs_model=True,
    min_samples=10,
)
def subspace(X: Any, y: Any, params: SubspaceParams, *, device: torch.device, progress: ProgressFn) -> Result:
    """Estimate d_int90 (docs/methods.md §4.2) of ``params.model`` on (X, y). See the module docstring."""
    t_start = time.perf_counter()
    X, y = _check_inputs(X, y)
    spec = parse_model_spec(params.model)
    train = effective_train(params)
    warnings: list[str] = []
    N_all = X.shape[0]

    gen = torch.Generator().manual_seed(params.seed + 7_777)
    if params.max_samples is not None and params.max_samples < N_all:
        keep = torch.randperm(N_all, generator=gen)[: params.max_samples]
        X, y = X[keep], y[keep]
    N = X.shape[0]
    n_classes = int(y.max()) + 1
    if torch.unique(y).numel() < 2:
        raise EstimatorError("subspace training needs at least two classes in y")
    if params.metric == "val_accuracy":
        perm = torch.randperm(N, generator=gen)
        n_val = max(1, int(round(params.val_fraction * N)))
        if N - n_val < 2:
            raise EstimatorError(f"{N} samples leave no training set after a {params.val_fraction} validation split")
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        X_tr, y_tr, X_ev, y_ev = X[tr_idx], y[tr_idx], X[val_idx], y[val_idx]
    else:
        X_tr, y_tr, X_ev, y_ev = X, y, X, y
    X_tr, y_tr, X_ev, y_ev = (t.to(device) for t in (X_tr, y_tr, X_ev, y_ev))
    if params.metric == "train_accuracy":
        X_ev, y_ev = X_tr, y_tr  # the same tensors: train scores are the eval scores
    input_shape = tuple(X.shape[1:])
    protocol = resolve_protocol(train, int(X_tr.shape[0]), int(X_ev.shape[0]))
    range_steps = min(protocol.max_steps, params.lr_range_steps or 2 * protocol.eval_every)

    def net(i: int) -> torch.nn.Module:
        return build_model(spec, input_shape, n_classes, seed=params.seed + i).to(device)

    D = count_params(build_model(spec, input_shape, n_classes, seed=params.seed))
    m = sum(1 for _ in build_model(spec, input_shape, n_classes, seed=params.seed).parameters())
    max_d = min(params.max_d or D, D)
    d_min = params.d_min
    if params.said and d_min <= m:
        d_min = m + 1
        warnings.append(f"SAID needs d > m = {m} (one λ per parameter tensor); d_min raised to {d_min}")
    if d_min > max_d:
        raise EstimatorError(f"d_min={d_min} exceeds max_d={max_d} (D={D}); lower d_min or raise max_d")

    S = params.seeds
    budget = params.memory_budget_mb * 2**20
    sample_bytes = 4 * int(math.prod(input_shape))

    def rows_per_group(proj_bytes_one: int, want: int) -> int:
        per_row = proj_bytes_one + 32 * D + 64 * train.batch_size * sample_bytes
        if per_row > budget:
            raise EstimatorError(
                f"one model needs about {per_row / 2**20:.0f} MiB but memory_budget_mb={params.memory_budget_mb}; "
                "raise memory_budget_mb, lower max_d, or use projection='fastfood' (O(D) memory)"
            )
        return max(1, min(want, budget // per_row))

    n_grid = len(coarse_grid(d_min, max_d, params.grid_factor))
    expected = S * (1 + n_grid + params.bisect_steps)
    done = {"models": 0}

    def report(extra: float, stage: str) -> None:
        progress(min(0.99, (done["models"] + extra) / expected), stage)

    trials: list[dict] = []

    def train_group(make, seeds_idx: Sequence[int], d: int | None, label: str, lr: float, lr_source: str):
        model, trainable = make(seeds_idx)
        k = len(seeds_idx)
        order = [(params.seed + i) * 7_919 + (d or 0) for i in seeds_idx]
        out = train_classifier(
            model,
            trainable,
            X_tr,
            y_tr,
            X_ev,
            y_ev,
            protocol,
            [lr] * k,
            batch_size=train.batch_size,
            order_seeds=order,
            progress=lambda f: report(
                k * f,
                f"{label}: seeds {seeds_idx[0]}–{seeds_idx[-1]} step {round(f * protocol.max_steps)} (cap {protocol.max_steps})",
            ),
        )
        done["models"] += k
        report(0.0, f"{label}: {done['models']} models trained")
        for i, row, tm, tl in zip(seeds_idx, out.rows, out.train_metric, out.train_loss):
            trials.append(_trial(d, i, row, tm, tl, lr_source, out.seconds / k))
        return out

    # -- baseline -----------------------------------------------------------------------------------------
    def make_direct(idx: Sequence[int]):
        model = DirectModel([net(i) for i in idx]).to(device)
        return model, [model.theta]

    t = time.perf_counter()
    direct: list[float] = []
    steps_direct, sec_direct = 0, 0.0
    for grp in _groups(S, rows_per_group(0, S)):
        out = train_group(make_direct, grp, None, "baseline (direct training)", train.lr, "spec")
        direct += out.metric
        sec_direct += out.seconds
        steps_direct += out.steps
    baseline_seconds = time.perf_counter() - t
    direct_conv = [tr["converged"] for tr in trials if tr["d"] is None]
    direct_mean = float(np.mean(direct))
    base = direct_mean if params.baseline == "individual" else params.baseline_value
    level = params.threshold * base
    chance = float(torch.bincount(y_ev.cpu(), minlength=n_classes).max()) / y_ev.numel()
    if direct_mean < chance + 0.5 * (1.0 - chance) * 0.2:
        warnings.append(
            f"the directly trained network reaches only {direct_mean:.3f} (majority class {chance:.3f}); "
            "d_int90 relative to such a baseline says little — train longer or use a better model"
        )

    # -- sweep --------------------------------------------------------------------------------------------
    steps_by_d: dict[int, tuple[float, int]] = {}
    lr_by_d: dict[int, float] = {}
    range_tests: dict[str, list[dict[str, float]]] = {}
    range_seconds = {"total": 0.0}

    def choose_lr(d: int, d_proj: int) -> tuple[float, str]:
        if params.subspace_lr == "spec":
            return train.lr, "spec"
        if not isinstance(params.subspace_lr, str):
            return float(params.subspace_lr), "fixed"
        below = [e for e in lr_by_d if e < d]
        above = [e for e in lr_by_d if e > d]
        if below and above and lr_by_d[max(below)] == lr_by_d[min(above)]:
            return lr_by_d[max(below)], f"neighbours d={max(below)} and d={min(above)} chose it"

        def make_rows(k: int):
            P = make_projection(params.projection, D, d_proj, seeds=[params.seed * 1_000_003 + d] * k, device=device)
            model = SubspaceModel([net(0)] * k, P, said=params.said).to(device)
            return model, model.trainable()

        t0 = time.perf_counter()
        report(0.0, f"d={d}: lr range test ({len(params.lr_candidates)} candidates × {range_steps} steps)")
        lr, table = lr_range_test(
            make_rows,
            X_tr,
            y_tr,
            params.lr_candidates,
            steps=range_steps,
            protocol=protocol,
            batch_size=train.batch_size,
            order_seed=params.seed * 7_919 + d + 1,
            max_rows=rows_per_group(projection_bytes(params.projection, D, d_proj, 1), len(params.lr_candidates)),
        )
        range_seconds["total"] += time.perf_counter() - t0
        range_tests[str(d)] = table
        return lr, "range_test"

    def evaluate(d: int) -> list[float]:
        d_proj = d - m if params.said else d
        lr, source = choose_lr(d, d_proj)
        lr_by_d[d] = lr

        def make(idx: Sequence[int]):
            seeds = [(params.seed + i) * 1_000_003 + d for i in idx]
            P = make_projection(params.projection, D, d_proj, seeds=seeds, device=device)
            model = SubspaceModel([net(i) for i in idx], P, said=params.said).to(device)
            return model, model.trainable()

        vals: list[float] = []
        sec_total, steps_total = 0.0, 0
        for grp in _groups(S, rows_per_group(projection_bytes(params.projection, D, d_proj, 1), S)):
            out = train_group(make, grp, d, f"d={d}", lr, source)
            vals += out.metric
            sec_total += out.seconds
            steps_total += out.steps
        steps_by_d[d] = (sec_total, steps_total)
        return vals

    sweep = run_sweep(
        evaluate, level, d_min=d_min, max_d=max_d, grid_factor=params.grid_factor, bisect_steps=params.bisect_steps
    )
    cross = sweep.crossing
    assert cross is not None  # set by run_sweep
    ci = bootstrap_ci(sweep.curve, level, n_boot=params.n_bootstrap, seed=params.seed)
    d100 = crossing(sweep.curve, base)

    conv_by_d: dict[int, list[bool | None]] = {}
    for tr in trials:
        if tr["d"] is not None:
            conv_by_d.setdefault(tr["d"], []).append(tr["converged"])
    # a global baseline fixes the level whatever the direct training did: its convergence does not matter
    bound, rests_on = assess_bound(cross, conv_by_d, direct_conv if params.baseline == "individual" else [])
    value = cross.value
    n_unconv = sum(1 for tr in trials if tr["converged"] is False)
    if cross.censored == "above":
        warnings.append(
            f"no d up to max_d={max_d} reached {params.threshold:g} × baseline = {level:.4f}; d_int90 > {max_d}. "
            "Raise max_d (up to D) or the epochs cap"
            + (
                " (some trials hit the cap unconverged, so even this is not a bound)"
                if bound in ("upper", "unknown")
                else ""
            )
        )
    elif cross.censored == "below":
        warnings.append(f"already the smallest d tried ({d_min}) reached the threshold; d_int90 ≤ {d_min}. Lower d_min")
    if bound == "upper" and value is not None:
        warnings.append(
            f"d_int90 ≤ {value:.0f} is an upper bound, not an exact value: trials at d = {rests_on} reached the cap "
            f"of {train.epochs} epochs ({protocol.max_steps} steps) without converging; more training could lower "
            "it. Raise train.epochs"
        )
    elif bound == "lower":
        warnings.append(
            f"d_int90 ≥ {value:.0f} is a lower bound: the direct baseline did not converge within {train.epochs} epochs "
            f"({protocol.max_steps} steps), so the level {level:.4f} may be too low. Raise train.epochs"
        )
    elif bound == "unknown" and value is not None:
        warnings.append(
            f"d_int90 = {value:.0f} is neither exact nor a bound: the baseline and trials at d = {rests_on} reached "
            f"the cap of {train.epochs} epochs unconverged. Raise train.epochs"
        )

    curve = []
    for d in sorted(sweep.curve):
        rows = [tr for tr in trials if tr["d"] == d]
        curve.append(
            {
                "d": d,
                "seeds": sweep.curve[d],
                "mean": float(np.mean(sweep.curve[d])),
                "std": float(np.std(sweep.curve[d], ddof=1)) if len(sweep.curve[d]) > 1 else 0.0,
                "lr": lr_by_d[d],
                "converged": all(tr["converged"] is not False for tr in rows),
                "seeds_converged": [tr["converged"] for tr in sorted(rows, key=lambda tr: tr["seed"])],
                "n_unconverged": sum(tr["converged"] is False for tr in rows),
                "train_accuracy_mean": float(np.mean([tr["train_accuracy"] for tr in rows])),
                "steps_mean": float(np.mean([tr["steps"] for tr in rows])),
            }
        )
    steps_used = sum(tr["steps"] for tr in trials)
    details = {
        "d_int90": value,
        "bound": bound,
        "d_int90_display": (
            f"≤ {value:.0f}"
            if bound == "upper" or cross.censored == "below"
            else f"≥ {value:.0f}"
            if bound == "lower"
            else f"{value:.0f}"
        )
        if value is not None
        else f"> {max_d}",
        "unconverged_d": rests_on,
        "d_int90_grid": cross.d_grid,
        "bracket": [cross.d_below, cross.d_grid],
        "censored": cross.censored,
        "d_int100_grid": d100.d_grid,
        "curve": curve,
        "trials": trials,
        "evaluation_order": sweep.order,
        "baseline": {
            "type": params.baseline,
            "value": base,
            "direct_seeds": direct,
            "direct_mean": direct_mean,
            "direct_std": float(np.std(direct, ddof=1)) if len(direct) > 1 else 0.0,
            "converged": all(c is not False for c in direct_conv),
            "threshold": params.threshold,
            "level": level,
        },
        "protocol": {
            "stop": protocol.stop,
            "max_steps": protocol.max_steps,
            "eval_every": protocol.eval_every,
            "patience": protocol.patience,
            "min_delta": protocol.min_delta,
            "loss_tol": protocol.loss_tol,
            "lr_drops": protocol.lr_drops,
            "lr_drop_factor": protocol.lr_drop_factor,
            "checkpoint": "best score" if protocol.stop == "plateau" else "last step",
            "subspace_lr": params.subspace_lr,
            "lr_candidates": params.lr_candidates if params.subspace_lr == "range_test" else None,
            "lr_range_steps": range_steps if params.subspace_lr == "range_test" else None,
            "baseline_lr": train.lr,
        },
        "lr_range_tests": range_tests,
        # d whose range test chose the largest / smallest candidate (the best lr may lie beyond the grid)
        "lr_at_grid_edge": {
            "top": [int(d) for d, tb in range_tests.items() if lr_by_d[int(d)] == max(params.lr_candidates)],
            "bottom": [int(d) for d, tb in range_tests.items() if lr_by_d[int(d)] == min(params.lr_candidates)],
        },
        "n_unconverged": n_unconv,
        "D": D,
        "n_tensors": m,
        "compression": (D / value) if value else None,
        "model": spec.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "projection": params.projection,
        "said": params.said,
        "metric": params.metric,
        "n_samples": N,
        "n_samples_given": N_all,
        "n_train": int(X_tr.shape[0]),
        "n_eval": int(X_ev.shape[0]),
        "n_classes": n_classes,
        "input_shape": list(input_shape),
        "timings": {
            "total_s": time.perf_counter() - t_start,
            "baseline_s": baseline_seconds,
            "lr_range_test_s": range_seconds["total"],
            "baseline_step_ms": 1e3 * sec_direct / max(1, steps_direct),
            "per_d_s": {str(d): s for d, s in sweep.seconds.items()},
            "per_d_step_ms": {str(d): 1e3 * s / max(1, n) for d, (s, n) in steps_by_d.items()},
            "steps_used": steps_used,
            "steps_if_fixed": len(trials) * protocol.max_steps,
        },
    }
    return Result(
        value=value,
        ci=ci,
        ci_method=f"percentile bootstrap over seeds at every d ({params.n_bootstrap} draws, 95%)",
        details=details,
        warnings=warnings,
    )
