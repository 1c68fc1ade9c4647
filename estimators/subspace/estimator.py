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

The sweep is four pure pieces (:mod:`estimators.subspace.trials`): prepare the problem, plan a round of trials,
run one trial group, aggregate the records. This function runs them in one process, one trial at a time; a
fanned-out analysis (``TASKGAUGE_FANOUT``) runs each trial group as its own task on the same pieces, with the same
result.

Example::

    >>> est = registry.get("subspace")
    >>> p = est.parse_params({"model": {"arch": "mlp", "hidden": [32], "train": {"epochs": 2}}, "d_min": 8})
    >>> est.fn(X, y, p, device=torch.device("cpu"), progress=no_progress).value   # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

import torch

from estimators.base import ProgressFn, Result
from estimators.models.text_classifier import clear_prefix_stores
from estimators.registry import register
from estimators.subspace.params import LR_CANDIDATES, SubspaceParams, TrainOverrides, effective_train
from estimators.subspace.trials import aggregate, decode, plan_round, prepare, run_trial

VERSION = "2.0.0"  # 2.0: trials train to a plateau (epochs = cap), lr range test per d, bounds for unconverged

__all__ = ["LR_CANDIDATES", "VERSION", "SubspaceParams", "TrainOverrides", "effective_train", "subspace"]


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
    problem = prepare(X, y, params, device=device)
    expected = params.seeds * problem.config.expected_trials
    records: dict[str, dict[str, Any]] = {}
    done = 0
    try:
        while trials := plan_round(problem.config, records):
            for trial in trials:
                base = done
                record = run_trial(
                    problem,
                    trial,
                    progress=lambda k, stage, _b=base: progress(min(0.99, (_b + k) / expected), stage),
                )
                records[trial.key] = decode(record)
                done += params.seeds
    finally:
        # the frozen-block states a text model cached for this sweep's trials; a worker keeps no text between analyses
        clear_prefix_stores()
    return aggregate(problem, records, total_s=time.perf_counter() - t_start)
