"""The ``subspace`` estimator: d_int90 of a model spec on a dataset (Li et al. 2018; docs/methods.md §4).

Protocol (docs/methods.md §4.2, "service recommendation"):

1. Split the data (seeded) into train/validation (metric ``val_accuracy``), or train on everything and score the
   training set (``train_accuracy``, for memorisation studies such as shuffled labels).
2. Baseline: the same network trained directly in all D parameters, ``seeds`` seeds. The threshold is
   τ = ``threshold`` × baseline, with baseline = the mean direct accuracy ("individual", default) or a fixed
   ``baseline_value`` ("global", e.g. 1.0 for MNIST as in Li's Table 1 FC entry).
3. Subspace training θ = θ₀ + Pθ_d (projection ``fastfood`` by default; ``said=true`` for SAID) on a coarse log
   grid d_min·f^k until the mean over seeds reaches τ, then ``bisect_steps`` geometric bisections.
4. value = interpolated d_int90 (integer), CI = percentile bootstrap over seeds at every d.

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
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field, field_validator

from estimators.base import EstimatorError, Params, ProgressFn, Result
from estimators.base import MAX_MEMORY_BUDGET_MB, MAX_SEED, MAX_SUBSAMPLE  # parameter bounds
from estimators.models.builders import build_model, count_params
from estimators.models.spec import ModelSpec, TrainSpec, _Strict, parse_model_spec
from estimators.registry import register
from estimators.validation import as_labelled
from estimators.subspace.projections import PROJECTIONS, make_projection, projection_bytes
from estimators.subspace.sweep import bootstrap_ci, coarse_grid, crossing, run_sweep, train_models
from estimators.subspace.wrapper import DirectModel, SubspaceModel

VERSION = "1.0.0"


class TrainOverrides(_Strict):
    """Fields that replace the model spec's ``train`` block for this analysis (unset fields keep the spec's)."""

    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)


class SubspaceParams(Params):
    """Params of the ``subspace`` estimator; defaults follow docs/methods.md §4.2 (3 seeds, 0.9, individual baseline)."""

    model: ModelSpec = Field(description="model spec (docs/methods.md §4); the pipeline injects the user's spec here")
    projection: Literal["dense", "sparse", "fastfood"] = "fastfood"
    said: bool = Field(False, description="SAID (Aghajanyan et al. 2021): one trained scale λ per parameter tensor")
    seeds: int = Field(3, ge=1, le=64)
    seed: int = Field(0, ge=0, le=MAX_SEED,
        description="base seed: init, projections, batch order and split all derive from it")
    d_min: int = Field(10, ge=1, le=MAX_SUBSAMPLE)
    grid_factor: float = Field(2.0, gt=1.0, le=100.0)
    bisect_steps: int = Field(3, ge=0, le=30)
    max_d: int | None = Field(None, ge=1, le=MAX_SUBSAMPLE, description="largest d tried; default D")
    threshold: float = Field(0.9, gt=0.0, le=1.0)
    baseline: Literal["individual", "global"] = "individual"
    baseline_value: float = Field(1.0, gt=0.0, le=1.0, description="the baseline when baseline='global'")
    metric: Literal["val_accuracy", "train_accuracy"] = "val_accuracy"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_samples: int | None = Field(None, ge=10, le=MAX_SUBSAMPLE,
        description="seeded subsample of the data before the split")
    train: TrainOverrides = Field(default_factory=TrainOverrides)
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
    input_shape = tuple(X.shape[1:])

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

    def group_size(proj_bytes_one: int) -> int:
        per_seed = proj_bytes_one + 32 * D + 64 * train.batch_size * sample_bytes
        if per_seed > budget:
            raise EstimatorError(
                f"one model needs about {per_seed / 2**20:.0f} MiB but memory_budget_mb={params.memory_budget_mb}; "
                "raise memory_budget_mb, lower max_d, or use projection='fastfood' (O(D) memory)"
            )
        return max(1, min(S, budget // per_seed))

    n_grid = len(coarse_grid(d_min, max_d, params.grid_factor))
    expected = S * (1 + n_grid + params.bisect_steps)
    done = {"models": 0}

    def report(extra: float, stage: str) -> None:
        progress(min(0.99, (done["models"] + extra) / expected), stage)

    def train_group(make, seeds_idx: Sequence[int], d: int | None, label: str) -> tuple[list[float], float, int]:
        model, trainable = make(seeds_idx)
        k = len(seeds_idx)
        order = [(params.seed + i) * 7_919 + (d or 0) for i in seeds_idx]
        out = train_models(
            model, trainable, X_tr, y_tr, X_ev, y_ev, train, order_seeds=order,
            progress=lambda f: report(k * f, f"{label}: seeds {seeds_idx[0]}–{seeds_idx[-1]} epoch {round(f * train.epochs)}/{train.epochs}"),
        )
        done["models"] += k
        report(0.0, f"{label}: {done['models']} models trained")
        return out.metric, out.seconds, out.steps

    # -- baseline -----------------------------------------------------------------------------------------
    def make_direct(idx: Sequence[int]):
        model = DirectModel([net(i) for i in idx]).to(device)
        return model, [model.theta]

    t = time.perf_counter()
    direct: list[float] = []
    steps_direct, sec_direct = 0, 0.0
    for grp in _groups(S, group_size(0)):
        metric, sec, steps = train_group(make_direct, grp, None, "baseline (direct training)")
        direct += metric
        sec_direct += sec
        steps_direct += steps
    baseline_seconds = time.perf_counter() - t
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

    def evaluate(d: int) -> list[float]:
        d_proj = d - m if params.said else d

        def make(idx: Sequence[int]):
            seeds = [(params.seed + i) * 1_000_003 + d for i in idx]
            P = make_projection(params.projection, D, d_proj, seeds=seeds, device=device)
            model = SubspaceModel([net(i) for i in idx], P, said=params.said).to(device)
            return model, model.trainable()

        vals: list[float] = []
        sec_total, steps_total = 0.0, 0
        for grp in _groups(S, group_size(projection_bytes(params.projection, D, d_proj, 1))):
            metric, sec, steps = train_group(make, grp, d, f"d={d}")
            vals += metric
            sec_total += sec
            steps_total += steps
        steps_by_d[d] = (sec_total, steps_total)
        return vals

    sweep = run_sweep(
        evaluate, level, d_min=d_min, max_d=max_d, grid_factor=params.grid_factor, bisect_steps=params.bisect_steps
    )
    cross = sweep.crossing
    assert cross is not None  # set by run_sweep
    ci = bootstrap_ci(sweep.curve, level, n_boot=params.n_bootstrap, seed=params.seed)
    d100 = crossing(sweep.curve, base)

    if cross.censored == "above":
        warnings.append(
            f"no d up to max_d={max_d} reached {params.threshold:g} × baseline = {level:.4f}; d_int90 > {max_d}. "
            "Raise max_d (up to D) or train longer"
        )
    elif cross.censored == "below":
        warnings.append(
            f"already the smallest d tried ({d_min}) reached the threshold; d_int90 ≤ {d_min}. Lower d_min"
        )
    if params.bisect_steps > 0 and cross.d_below is not None and cross.d_grid is not None and cross.d_grid - cross.d_below > 1:
        pass  # the bracket width is reported in details; the CI covers the seed noise only

    curve = [
        {"d": d, "seeds": sweep.curve[d], "mean": float(np.mean(sweep.curve[d])), "std": float(np.std(sweep.curve[d], ddof=1)) if len(sweep.curve[d]) > 1 else 0.0}
        for d in sorted(sweep.curve)
    ]
    value = cross.value
    details = {
        "d_int90": value,
        "d_int90_grid": cross.d_grid,
        "bracket": [cross.d_below, cross.d_grid],
        "censored": cross.censored,
        "d_int100_grid": d100.d_grid,
        "curve": curve,
        "evaluation_order": sweep.order,
        "baseline": {
            "type": params.baseline,
            "value": base,
            "direct_seeds": direct,
            "direct_mean": direct_mean,
            "direct_std": float(np.std(direct, ddof=1)) if len(direct) > 1 else 0.0,
            "threshold": params.threshold,
            "level": level,
        },
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
            "baseline_step_ms": 1e3 * sec_direct / max(1, steps_direct),
            "per_d_s": {str(d): s for d, s in sweep.seconds.items()},
            "per_d_step_ms": {str(d): 1e3 * s / max(1, n) for d, (s, n) in steps_by_d.items()},
        },
    }
    return Result(
        value=value,
        ci=ci,
        ci_method=f"percentile bootstrap over seeds at every d ({params.n_bootstrap} draws, 95%)",
        details=details,
        warnings=warnings,
    )
