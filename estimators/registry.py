"""The estimator registry (docs/methods.md §0).

Modules register themselves with :func:`register`; :func:`get` and :func:`all_estimators` import the
built-in modules and the plugins (entry-point group ``taskgauge.estimators``) lazily, so that importing the
registry stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from estimators.base import EstimatorError, EstimatorFn, Params

#: Entry-point group through which installed distributions add estimators (plugins).
PLUGIN_GROUP = "taskgauge.estimators"

#: What an analysis runs when no estimator is asked for.
DEFAULT_ESTIMATORS = ("mle", "twonn", "gride")

# Modules that define estimators. Add a module here when it registers a new estimator.
_MODULES = (
    "estimators.id.mle",
    "estimators.id.twonn",
    "estimators.id.gride",
    "estimators.label_sharpness.estimator",
    "estimators.inductive_bias.estimator",
    "estimators.subspace.estimator",
    "estimators.repr.estimator",
)


@dataclass(frozen=True)
class Estimator:
    name: str
    version: str
    params_model: type[Params]
    fn: EstimatorFn
    summary: str
    needs_labels: bool = False
    needs_model: bool = False
    min_samples: int = 3
    #: ``knn_k(params, n_distinct)``: the k of the one full self-query ``kneighbors(X_distinct, k)`` the estimator
    #: makes on its de-duplicated points, when a neighbour table computed beforehand can answer it
    #: (:func:`estimators.knn.known_neighbours`; a fanned-out analysis splits that search over workers); None
    #: (the function, or its answer for these params) when it makes no such search.
    knn_k: Callable[[Any, int], int | None] | None = None
    #: ``cost(params, n, d)``: the expected work on ``n`` rows of ``d`` features, counted as the multiply-adds of its
    #: dominant term (n²·d for one full exact self-query kNN). A fanned-out analysis sends its costliest shards
    #: first (longest processing time first, ``workers.fanout``); None: unknown (sent before the known ones).
    cost: Callable[[Any, int, int], float] | None = None

    def parse_params(self, raw: dict[str, Any] | None) -> Params:
        """Validate user params; raises EstimatorError naming the bad key and the allowed ones."""
        from pydantic import ValidationError

        try:
            return self.params_model(**(raw or {}))
        except ValidationError as exc:
            allowed = ", ".join(sorted(self.params_model.model_fields)) or "(none)"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
            )
            raise EstimatorError(
                f"bad params for estimator '{self.name}': {problems}. Allowed params: {allowed}"
            ) from None


_REGISTRY: dict[str, Estimator] = {}
_loaded = False


def register(
    *,
    name: str,
    version: str,
    params: type[Params],
    summary: str,
    needs_labels: bool = False,
    needs_model: bool = False,
    min_samples: int = 3,
    knn_k: Callable[[Any, int], int | None] | None = None,
    cost: Callable[[Any, int, int], float] | None = None,
):
    """Decorator: ``@register(name="mle", version="1.0.0", params=MLEParams, summary=...)``."""

    def wrap(fn: EstimatorFn) -> EstimatorFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise RuntimeError(f"estimator {name!r} registered twice")
        _REGISTRY[name] = Estimator(
            name=name,
            version=version,
            params_model=params,
            fn=fn,
            summary=summary,
            needs_labels=needs_labels,
            needs_model=needs_model,
            min_samples=min_samples,
            knn_k=knn_k,
            cost=cost,
        )
        return fn

    return wrap


def _load() -> None:
    """Import the built-in estimator modules, then every plugin: a distribution may add estimators through the
    ``taskgauge.estimators`` entry-point group (each entry point names a module that calls :func:`register`)."""
    global _loaded
    if _loaded:
        return
    from importlib.metadata import entry_points

    for mod in _MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()
    _loaded = True


def all_estimators() -> dict[str, Estimator]:
    _load()
    return dict(_REGISTRY)


def get(name: str) -> Estimator:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise EstimatorError(f"unknown estimator {str(name)[:80]!r}; known estimators: {known}") from None
