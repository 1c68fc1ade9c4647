"""Subspace training (Li et al. 2018; Aghajanyan et al. 2021; docs/methods.md §4): projections, the θ₀ + Pθ_d
wrapper, the d_int90 sweep. The registered estimator lives in :mod:`estimators.subspace.estimator`; the sweep's
pieces (plan a round, run a trial, aggregate), which a fanned-out analysis runs on many workers, in
:mod:`estimators.subspace.trials`."""

from estimators.subspace.projections import PROJECTIONS, fwht, make_projection
from estimators.subspace.sweep import bootstrap_ci, crossing, run_sweep
from estimators.subspace.wrapper import DirectModel, SubspaceModel

__all__ = [
    "PROJECTIONS",
    "DirectModel",
    "SubspaceModel",
    "bootstrap_ci",
    "crossing",
    "fwht",
    "make_projection",
    "run_sweep",
]
