"""The public Python API: scikit-learn style estimators and :func:`analyse`, for notebooks and scripts.

Every class here is a thin shell around one registered estimator (:mod:`estimators.registry`): its constructor
takes exactly the keyword arguments of that estimator's params model, with the same names and defaults, and
stores them unchanged (so ``get_params``/``set_params`` and :func:`sklearn.base.clone` work); ``fit`` validates
them with the params model and runs the registered pure function once — the very function the service's pipeline
runs, so a notebook and a report give the same number on the same data. The math of each estimator, its defaults
and the reference it is tested against are in docs/methods.md.

>>> import numpy as np
>>> X = np.random.default_rng(0).standard_normal((500, 4)) @ np.random.default_rng(1).standard_normal((4, 12))
>>> est = MLE(k=10).fit(X)
>>> 3.0 < est.dimension_ < 5.0
True
>>> TwoNN(discard=0.2).get_params()["discard"]
0.2
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from estimators import registry
from estimators.base import Result, no_progress

__all__ = [
    "MLE",
    "TwoNN",
    "Gride",
    "LabelSharpness",
    "InductiveBias",
    "RegisteredEstimator",
    "Report",
    "analyse",
]

#: constructor argument (not a param of any estimator) that picks the device: "auto", "cpu" or "cuda"
_DEVICE = "device"


def _as_array(X: Any) -> Any:
    """X as the estimators take it: a torch tensor stays as it is; anything else becomes a C-contiguous numpy
    array (float64 data stays float64; integer data becomes float64 in the estimator's input check)."""
    import torch

    if isinstance(X, torch.Tensor):
        return X
    arr = np.asarray(X)
    if arr.dtype == object:
        raise ValueError("X must be numeric (an array of numbers of shape (N, D), or (N, C, H, W) for images)")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _encode_labels(y: Any) -> tuple[Any, np.ndarray]:
    """Any label vector (ints, strings, …) as int64 class indices 0..C−1, and the sorted class values."""
    import torch

    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    classes, index = np.unique(arr, return_inverse=True)
    return torch.from_numpy(index.astype(np.int64).reshape(-1)), classes


class RegisteredEstimator(BaseEstimator):
    """Base of the estimator classes: runs the registered estimator named ``_estimator_name``.

    Subclasses get their constructor from :func:`_build_class`; this base class only implements ``fit``.
    Fitted attributes: ``result_`` (the :class:`estimators.base.Result`: value, ci, details, warnings),
    ``value_`` (the headline number) and the class's own name for it (``dimension_``, ``sharpness_`` …).
    """

    _estimator_name: ClassVar[str] = ""
    #: constructor-only spellings of params: {alias: params-model field}
    _aliases: ClassVar[dict[str, str]] = {}
    #: name of the fitted attribute that holds the headline value, besides ``value_``
    _headline: ClassVar[str] = "value_"
    #: whether ``fit`` also sets ``dimension_pw_`` when the result carries one estimate per point
    _pointwise: ClassVar[bool] = False

    def _params(self) -> dict[str, Any]:
        """The params model's arguments from the stored constructor arguments (aliases mapped explicitly)."""
        est = registry.get(self._estimator_name)
        raw = {name: getattr(self, name) for name in est.params_model.model_fields}
        for alias, field in self._aliases.items():
            given = getattr(self, alias)
            if given is None:
                continue
            default = est.params_model.model_fields[field].get_default(call_default_factory=True)
            if raw[field] != default and raw[field] != given:
                raise ValueError(
                    f"{type(self).__name__}: {alias}={given!r} and {field}={raw[field]!r} disagree; "
                    f"give only one of them ({alias} is another name for {field})"
                )
            raw[field] = given
        return raw

    def _run(self, X: Any, y: Any) -> Result:
        from estimators.device import resolve_device

        est = registry.get(self._estimator_name)
        params = est.parse_params(self._params())
        labels = None
        if y is not None:
            labels, self.classes_ = _encode_labels(y)
        elif est.needs_labels:
            raise ValueError(f"{type(self).__name__} needs class labels: call fit(X, y)")
        Xt = _as_array(X)
        self.n_features_in_ = int(np.prod(tuple(Xt.shape[1:]))) if Xt.dim() > 1 else 1
        return est.fn(Xt, labels, params, device=resolve_device(getattr(self, _DEVICE)), progress=no_progress)

    def fit(self, X: Any, y: Any = None) -> RegisteredEstimator:
        """Run the estimator once on ``X`` (N×D, or N×C×H×W for images) and, where it uses them, labels ``y``."""
        result = self._run(X, y)
        self.result_ = result
        self.value_ = result.value
        if self._headline != "value_":
            setattr(self, self._headline, result.value)
        if self._pointwise:
            pw = result.details.get("pointwise")
            # only a per-point array counts; the ID estimators report quantiles (a dict), not one value per point
            if isinstance(pw, (list, tuple, np.ndarray)) and len(pw) == self.result_.details.get("n_used", len(pw)):
                self.dimension_pw_ = np.asarray(pw, dtype=np.float64)
        return self


def _build_class(
    class_name: str,
    estimator_name: str,
    *,
    headline: str,
    summary: str,
    aliases: Mapping[str, str] | None = None,
    pointwise: bool = False,
) -> type[RegisteredEstimator]:
    """A :class:`RegisteredEstimator` subclass whose keyword-only constructor mirrors the params model of the
    registered estimator ``estimator_name`` (names, defaults), plus any ``aliases`` (default None) and
    ``device="auto"``. The signature is real (``inspect.signature``), which is what scikit-learn's
    ``get_params`` reads."""
    est = registry.get(estimator_name)
    fields = est.params_model.model_fields
    aliases = dict(aliases or {})
    clash = ({_DEVICE} | set(aliases)) & set(fields)
    if clash:
        raise RuntimeError(f"{estimator_name}: params {sorted(clash)} clash with constructor-only arguments")
    for field in aliases.values():
        if field not in fields:
            raise RuntimeError(f"{estimator_name}: alias target {field!r} is not a param")

    params = []
    defaults: dict[str, Any] = {}
    for name, info in fields.items():
        if info.is_required():
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY))
        else:
            defaults[name] = info.get_default(call_default_factory=True)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name]))
    for alias in aliases:
        defaults[alias] = None
        params.append(inspect.Parameter(alias, inspect.Parameter.KEYWORD_ONLY, default=None))
    defaults[_DEVICE] = "auto"
    params.append(inspect.Parameter(_DEVICE, inspect.Parameter.KEYWORD_ONLY, default="auto"))
    names = [p.name for p in params]
    signature = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params])

    def __init__(self: RegisteredEstimator, **kwargs: Any) -> None:  # noqa: N807 - the generated constructor
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"{class_name}() got unexpected keyword arguments {unknown}; allowed: {', '.join(names)}")
        missing = [n for n in names if n not in kwargs and n not in defaults]
        if missing:
            raise TypeError(f"{class_name}() missing required keyword arguments {missing}")
        for n in names:  # stored unchanged, validated in fit (scikit-learn's convention)
            setattr(self, n, kwargs[n] if n in kwargs else defaults[n])

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{class_name}.__init__"

    lines = [f"{summary}", "", f"Runs the registered estimator ``{estimator_name}`` (docs/methods.md). Parameters:", ""]
    for name, info in fields.items():
        default = "required" if info.is_required() else f"default {defaults[name]!r}"
        lines.append(f"* ``{name}`` ({default}): {info.description or ''}")
    for alias, field in aliases.items():
        lines.append(f"* ``{alias}`` (default None): another name for ``{field}``")
    lines.append("* ``device`` (default 'auto'): 'auto' (CUDA when present), 'cpu' or 'cuda'")
    lines += ["", f"After ``fit``: ``result_`` (value, ci, details, warnings), ``value_`` and ``{headline}``."]
    namespace = {
        "__init__": __init__,
        "__doc__": "\n".join(lines),
        "__module__": __name__,
        "__qualname__": class_name,
        "_estimator_name": estimator_name,
        "_aliases": aliases,
        "_headline": headline,
        "_pointwise": pointwise,
    }
    return type(class_name, (RegisteredEstimator,), namespace)


MLE = _build_class(
    "MLE",
    "mle",
    headline="dimension_",
    pointwise=True,
    summary="Levina–Bickel MLE intrinsic dimension with MacKay–Ghahramani pooling (= skdim.id.MLE() by default).",
)
TwoNN = _build_class(
    "TwoNN",
    "twonn",
    headline="dimension_",
    pointwise=True,
    aliases={"discard": "discard_fraction"},
    summary="TwoNN intrinsic dimension, least squares with the largest 10% of ratios discarded (= skdim.id.TwoNN()).",
)
Gride = _build_class(
    "Gride",
    "gride",
    headline="dimension_",
    pointwise=True,
    summary="Gride multiscale intrinsic dimension (= DADApy return_id_scaling_gride(range_max=64)).",
)
LabelSharpness = _build_class(
    "LabelSharpness",
    "label_sharpness",
    headline="sharpness_",
    summary="Label sharpness K_F = 1 / (smallest distance between differently labelled samples); needs y.",
)
InductiveBias = _build_class(
    "InductiveBias",
    "inductive_bias",
    headline="bits_",
    summary="Inductive-bias complexity in bits (Boopathy et al. 2023 closed form, or the 2024 sampled mode); needs y.",
)


# --------------------------------------------------------------------------------------------------- analyse


@dataclass(frozen=True)
class Report:
    """A report (the same JSON document the service stores and the CLI prints with ``--json``)."""

    data: dict[str, Any]

    @property
    def results(self) -> dict[str, Any]:
        return dict(self.data.get("results") or {})

    @property
    def values(self) -> dict[str, Any]:
        """Headline value of each estimator: ``{"mle": 6.8, …}`` (non-finite values as "inf"/"nan" strings)."""
        return {name: r.get("value") for name, r in self.results.items()}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (strict JSON: non-finite numbers are already the strings "inf"/"nan")."""
        return json.dumps(self.data, indent=indent, allow_nan=False)

    def table(self) -> str:
        """A plain-text table: estimator, version, value, CI, seconds, warning count."""
        from taskgauge.render import report_text

        return report_text(self.data)

    def __str__(self) -> str:
        return self.table()


def analyse(
    X: Any,
    y: Any = None,
    estimators: str | Iterable[str] = ("mle", "twonn", "gride"),
    params: Mapping[str, Mapping[str, Any] | None] | None = None,
    device: str = "auto",
    *,
    name: str = "array",
    model_spec: Mapping[str, Any] | None = None,
) -> Report:
    """Run several estimators on ``X`` (and labels ``y``) through the service's pipeline and return the report.

    ``estimators``: names, or one comma-separated string ("mle,twonn"), as the CLI's ``-e`` reads them.
    ``params``: ``{estimator: {param: value}}`` for some of them. ``model_spec`` is needed by ``subspace``.
    The report is the document of the REST API and the CLI (dataset summary, results, interpretation).
    """
    from taskgauge.datasets.canonical import CanonicalDataset
    from taskgauge.pipeline import DatasetInfo, run_pipeline

    names = [e.strip() for e in estimators.split(",")] if isinstance(estimators, str) else [str(e) for e in estimators]
    names = [n for n in names if n]
    if not names:
        raise ValueError("give at least one estimator name, e.g. estimators=('mle', 'twonn')")
    params = dict(params or {})
    stray = sorted(set(params) - set(names))
    if stray:
        raise ValueError(f"params given for {stray}, which are not among the requested estimators {names}")

    import torch

    Xa = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if not np.issubdtype(Xa.dtype, np.floating):
        Xa = Xa.astype(np.float64)
    labels = classes = None
    if y is not None:
        index, values = _encode_labels(y)
        labels, classes = index.numpy(), [str(v) for v in values]
    dataset = CanonicalDataset(X=Xa, y=labels, classes=classes, meta={"source": "python", "dtype": str(Xa.dtype)})
    requests = {n: dict(params.get(n) or {}) for n in names}
    report = run_pipeline(dataset, requests, info=DatasetInfo(name=name), device=device, model_spec=model_spec)
    return Report(report)
