"""The analysis pipeline: one function that the Celery task and the CLI's local mode both call.

``run_pipeline`` validates the requested estimators against the registry and the dataset, runs each one,
reports progress, and assembles the report of docs/methods.md §0. It does no I/O of its own: the caller loads the
dataset and persists what comes back (``on_result`` is called after each estimator so a worker can write one
result row per estimator as it goes, and ``done`` lets a re-run skip the results already stored).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from estimators import registry
from estimators.base import EstimatorError, Params, ProgressFn, no_progress, scaled_progress
from estimators.device import describe_device, resolve_device
from estimators.knn import Duplicates, exact_duplicates, known_duplicates
from estimators.registry import DEFAULT_ESTIMATORS
from taskgauge.datasets.canonical import CanonicalDataset

if TYPE_CHECKING:
    from taskgauge.datasets.ingest import IngestOptions
from taskgauge.report import REPORT_SCHEMA_VERSION, interpretation_notes, result_to_json, to_jsonable
from taskgauge.version import taskgauge_version


@dataclass(frozen=True)
class DatasetInfo:
    """What the report says about the dataset beyond its arrays."""

    name: str
    id: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PlannedEstimator:
    estimator: registry.Estimator
    params: Params


@dataclass(frozen=True)
class DataFacts:
    """What request validation needs to know of a dataset without loading it (a dataset row has these)."""

    has_labels: bool
    n_samples: int
    input_shape: tuple[int, ...] | None = None  # per-sample shape (X.shape[1:]); sizes the models before building
    n_classes: int | None = None

    @classmethod
    def of(cls, dataset: CanonicalDataset | DataFacts) -> DataFacts:
        if isinstance(dataset, DataFacts):
            return dataset
        return cls(
            has_labels=dataset.y is not None,
            n_samples=dataset.n_samples,
            input_shape=tuple(int(s) for s in dataset.X.shape[1:]),
            n_classes=dataset.n_classes,
        )


@dataclass(frozen=True)
class Limits:
    """The operator's limits on what a request may ask for (issue 15), from the settings:

    * ``max_model_params``: the largest model (parameters counted from the spec and the dataset's shape,
      :func:`estimators.models.spec_param_count`, before anything is built);
    * ``memory_budget_mb``: ``TASKGAUGE_MEMORY_BUDGET_MB`` when set. It is every estimator's default
      ``memory_budget_mb``, and a request's value is clamped to it; when unset, a request's value is clamped to
      the estimator's own default (a request may lower its memory, never raise it past what the operator allows).
    """

    max_model_params: int = 50_000_000
    memory_budget_mb: int | None = None

    @classmethod
    def from_settings(cls, settings: Any = None) -> Limits:
        if settings is None:
            from taskgauge.settings import get_settings

            settings = get_settings()
        return cls(max_model_params=settings.MAX_MODEL_PARAMS, memory_budget_mb=settings.memory_budget_cap())


def validate_requests(
    requests: Mapping[str, Mapping[str, Any] | None] | None,
    dataset: CanonicalDataset | DataFacts,
    *,
    model_spec: Mapping[str, Any] | None = None,
    model_weights: str | None = None,
    limits: Limits | None = None,
) -> dict[str, dict[str, Any]]:
    """The one request validation (API analyses, schedules, CLI): names and params checked against the registry
    and the dataset; returns the normalised request ``{name: params}`` (the defaults when none were asked for).
    ``model_spec``/``model_weights`` are the stored model spec's (see :func:`plan`): a request itself may not name
    a file or a directory on the server. Raises :class:`EstimatorError` (a 422 problem in the API)."""
    normalised = {name: dict(params or {}) for name, params in (requests or {}).items()}
    normalised = normalised or {name: {} for name in DEFAULT_ESTIMATORS}
    for name, params in normalised.items():
        if params.get("weights") is not None:
            raise EstimatorError(
                f"{name}: 'weights' names a file on the server and cannot be set in a request; upload the weights "
                "(POST /model-specs with the .safetensors file, `taskgauge upload-model`) and pass model_spec_id"
            )
        model = params.get("model")
        if (
            isinstance(model, Mapping)
            and model.get("arch") == "pretrained"
            and (model.get("source", "minilm") != "minilm" or model.get("path") is not None)
        ):
            raise EstimatorError(
                f'{name}: a pretrained spec may name the packaged model only ("source": "minilm"); a model '
                "directory on the server cannot be named in a request: upload it (`taskgauge upload-model`) and "
                "pass model_spec_id"
            )
    planned = plan(normalised, dataset, model_spec=model_spec, model_weights=model_weights, limits=limits)
    for name, item in planned.items():  # a clamped memory_budget_mb is stored as clamped (the request shows it)
        if "memory_budget_mb" in normalised[name]:
            normalised[name]["memory_budget_mb"] = item.params.memory_budget_mb  # type: ignore[attr-defined]  # checked above
    return normalised


def plan(
    requests: Mapping[str, Mapping[str, Any] | None] | None,
    dataset: CanonicalDataset | DataFacts | None = None,
    *,
    model_spec: Mapping[str, Any] | None = None,
    model_weights: str | None = None,
    memory_budget_mb: int | None = None,
    limits: Limits | None = None,
) -> dict[str, PlannedEstimator]:
    """Validate estimator names and params (and, given the dataset, labels, sample counts and model sizes).

    ``model_spec`` is the model of every estimator that needs one and was not given its own ``model``;
    ``model_weights`` (the local path of an uploaded arch spec's ``.safetensors``, :mod:`taskgauge.weights`) goes
    with it to the estimators that read weights (a ``weights`` param: ``repr_id``). An estimator that trains its
    network from a random initialisation (``subspace``) refuses a spec with weights rather than ignore them.

    ``limits`` bounds what may be asked for: a model spec larger than ``max_model_params`` is refused, and
    ``memory_budget_mb`` is clamped (see :class:`Limits`). The service (API, schedules, workers) always passes the
    operator's (:meth:`Limits.from_settings`); None (the CLI's local mode, the library) applies none beyond the
    params' own bounds: there the user is the operator.
    ``memory_budget_mb`` (the TASKGAUGE_MEMORY_BUDGET_MB setting, when set) becomes the default
    ``memory_budget_mb`` of every estimator that has that param.

    Raises :class:`EstimatorError` with a message that names the problem and the fix; nothing runs until
    every request is valid.
    """
    if not requests:
        requests = {name: {} for name in DEFAULT_ESTIMATORS}
    cap = limits.memory_budget_mb if limits is not None and limits.memory_budget_mb is not None else memory_budget_mb
    planned: dict[str, PlannedEstimator] = {}
    for name, raw in requests.items():
        est = registry.get(name)
        raw = dict(raw or {})
        if est.needs_model:
            if model_spec is None and "model" not in raw:
                raise EstimatorError(
                    f"estimator '{name}' trains a model and needs a model spec; pass --model-spec FILE "
                    '(CLI) or model_spec_id (API), e.g. {"arch": "mlp", "hidden": [200, 200]}'
                )
            if "model" not in raw:
                raw["model"] = dict(model_spec) if model_spec is not None else None
                if model_weights is not None:
                    if "weights" not in est.params_model.model_fields:
                        raise EstimatorError(
                            f"estimator '{name}' trains its network from a random initialisation and cannot start "
                            "from the uploaded weights of this model spec; use a model spec without weights for "
                            f"'{name}' (the weights are read by repr_id)"
                        )
                    raw["weights"] = model_weights
        field = est.params_model.model_fields.get("memory_budget_mb")
        if field is not None and memory_budget_mb is not None:
            raw.setdefault("memory_budget_mb", memory_budget_mb)
        if field is not None and limits is not None:
            limit = cap if cap is not None else field.default
            asked = raw.get("memory_budget_mb")
            if (
                isinstance(asked, (int, float))
                and not isinstance(asked, bool)
                and isinstance(limit, int)
                and asked > limit
            ):
                raw["memory_budget_mb"] = limit  # the operator's limit, not the request, bounds memory
        params = est.parse_params(raw)
        if dataset is not None:
            facts = DataFacts.of(dataset)
            if est.needs_labels and not facts.has_labels:
                raise EstimatorError(
                    f"estimator '{name}' needs class labels but the dataset has none; upload labels "
                    "(an array 'y' in the .npz, or a label column in the table) or drop this estimator"
                )
            if facts.n_samples < est.min_samples:
                raise EstimatorError(
                    f"estimator '{name}' needs at least {est.min_samples} samples but the dataset has "
                    f"{facts.n_samples}; upload more data"
                )
            model = getattr(params, "model", None)
            if est.needs_model and model is not None and facts.input_shape and limits is not None:
                _check_model_size(name, model, facts, limits.max_model_params)
        planned[name] = PlannedEstimator(est, params)
    return planned


def _check_model_size(name: str, spec: Any, facts: DataFacts, limit: int) -> None:
    """Refuse a model larger than ``limit`` parameters, counted from the spec (nothing is built). A pretrained
    model's size is its weights' (checked when they were uploaded), not the data's."""
    from estimators.models import spec_param_count

    if getattr(spec, "arch", None) == "pretrained":
        return

    n_params = spec_param_count(spec, facts.input_shape or (), max(1, facts.n_classes or 2))
    if n_params > limit:
        raise EstimatorError(
            f"estimator '{name}': the model spec has {n_params:,} parameters on this dataset (per-sample shape "
            f"{list(facts.input_shape or ())}), over the limit of {limit:,} (TASKGAUGE_MAX_MODEL_PARAMS); use "
            "fewer or narrower layers"
        )


def dataset_summary(dataset: CanonicalDataset, info: DatasetInfo, dup: Duplicates | None = None) -> dict[str, Any]:
    """The report's dataset section; ``dup`` is ``exact_duplicates`` of the flat X when already computed."""
    if dup is None:
        dup = exact_duplicates(dataset.flat())
    conflicting = 0
    if dataset.y is not None:
        for group in dup.groups:
            if np.unique(dataset.y[group]).size > 1:
                conflicting += 1
    return {
        "id": info.id,
        "name": info.name,
        "sha256": info.sha256,
        "n_samples": dataset.n_samples,
        "shape": list(dataset.X.shape),
        "dtype": str(dataset.X.dtype),
        "n_classes": dataset.n_classes,
        "classes": dataset.classes,
        "duplicates": {"exact": dup.n_removed, "conflicting_labels": conflicting},
        "preprocessing": dataset.meta.get("preprocessing", {}),
        "source": {k: v for k, v in dataset.meta.items() if k not in ("preprocessing", "embedding", "embeddings")},
        # a text dataset: the model that turned its texts into X (name, version, weights sha256, pooling)
        "embedding": dataset.meta.get("embedding"),
    }


def _pretrained_spec(params: Params) -> Any | None:
    """The ``{"arch": "pretrained"}`` model spec of an estimator's params (subspace, repr_id), if any."""
    spec = getattr(params, "model", None)
    return spec if getattr(spec, "arch", None) == "pretrained" else None


def _token_ids(texts: list[str], spec: Any) -> torch.Tensor:
    """A text dataset as a pretrained text model takes it: (N, L) token ids, as float32 (exact for the ids of any
    real vocabulary; the estimators cast them back)."""
    from estimators.models.pretrained import MINILM
    from estimators.text import tokenize_texts

    source = MINILM if spec.source == "minilm" else spec.path
    return tokenize_texts(texts, source, max_length=spec.max_length).to(torch.float32)


def estimator_inputs(
    dataset: CanonicalDataset,
    item: PlannedEstimator,
    *,
    X_flat: torch.Tensor | None = None,
    X_full: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(X, y) as ``item``'s estimator takes them: X as stored for a model (N×C×H×W images), flat N×D otherwise,
    token ids for a pretrained text model; the one place :func:`run_estimators` and a sweep's trial shards get them.
    ``X_flat`` / ``X_full``: the tensors when the caller already made them."""
    y = torch.from_numpy(np.ascontiguousarray(dataset.y)) if dataset.y is not None else None
    text_model = _pretrained_spec(item.params)
    if dataset.texts is not None and text_model is not None:
        return _token_ids(dataset.texts, text_model), y  # a text model reads tokens, not vectors
    if item.estimator.needs_model:
        return (X_full if X_full is not None else torch.from_numpy(np.ascontiguousarray(dataset.X))), y
    return (X_flat if X_flat is not None else torch.from_numpy(np.ascontiguousarray(dataset.flat()))), y


def run_estimators(
    dataset: CanonicalDataset,
    planned: Mapping[str, PlannedEstimator],
    *,
    device: torch.device,
    progress: ProgressFn = no_progress,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
    done: Mapping[str, dict[str, Any]] | None = None,
    X_flat: torch.Tensor | None = None,
) -> dict[str, dict[str, Any]]:
    """Run each planned estimator not in ``done`` on ``dataset``; returns every result entry by name (``done``'s
    included). ``on_result(name, entry)`` is called as each one finishes. A worker runs one estimator this way in
    each shard of a fanned-out analysis. ``X_flat``: the flat X tensor when the caller already made it (its
    duplicates registered with :func:`estimators.knn.known_duplicates`)."""
    if X_flat is None:
        X_flat = torch.from_numpy(np.ascontiguousarray(dataset.flat()))
    X_full = torch.from_numpy(np.ascontiguousarray(dataset.X))

    results: dict[str, dict[str, Any]] = {}
    n = len(planned)
    for i, (name, item) in enumerate(planned.items()):
        if done and name in done:
            results[name] = dict(done[name])
            continue
        sub = scaled_progress(progress, i / n, (i + 1) / n)
        sub(0.0, name)
        X, y = estimator_inputs(dataset, item, X_flat=X_flat, X_full=X_full)
        t = time.perf_counter()

        def report(f: float, s: str, _n: str = name, _sub: ProgressFn = sub) -> None:
            _sub(f, f"{_n}: {s}")

        result = item.estimator.fn(X, y, item.params, device=device, progress=report)
        entry = result_to_json(item.estimator, item.params, result, seconds=time.perf_counter() - t)
        results[name] = entry
        if on_result is not None:
            on_result(name, entry)
        sub(1.0, name)
    progress(1.0, "done")
    return results


def run_pipeline(
    dataset: CanonicalDataset,
    requests: Mapping[str, Mapping[str, Any] | None] | None = None,
    *,
    info: DatasetInfo,
    device: str | torch.device = "auto",
    model_spec: Mapping[str, Any] | None = None,
    model_weights: str | None = None,
    memory_budget_mb: int | None = None,
    analysis_id: str | None = None,
    progress: ProgressFn = no_progress,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
    done: Mapping[str, dict[str, Any]] | None = None,
    environment: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Run the requested estimators (default: mle, twonn, gride) and return the report (docs/methods.md §0).

    ``done``: results already computed (a re-run, or the shards of a fanned-out analysis), not run again;
    ``environment``: extra members of the report's ``environment`` (the shards of a fanned-out analysis)."""
    t0 = time.perf_counter()
    planned = plan(
        requests,
        dataset,
        model_spec=model_spec,
        model_weights=model_weights,
        memory_budget_mb=memory_budget_mb,
        limits=limits,
    )
    dev = resolve_device(device)
    if dataset.needs_embedding:  # a text dataset analysed in this process (the CLI's local mode)
        from taskgauge.datasets.texts import embed_dataset

        dataset = embed_dataset(dataset, progress=scaled_progress(progress, 0.0, 0.1))
    progress(0.0, "checking data")
    # Duplicates are found once: the report's count, and every estimator through known_duplicates.
    X_flat = torch.from_numpy(np.ascontiguousarray(dataset.flat()))
    dup = exact_duplicates(X_flat)
    summary = dataset_summary(dataset, info, dup)
    with known_duplicates(X_flat, dup):
        results = run_estimators(
            dataset, planned, device=dev, progress=progress, on_result=on_result, done=done, X_flat=X_flat
        )

    return to_jsonable(
        {
            "schema_version": REPORT_SCHEMA_VERSION,
            "report_id": str(uuid.uuid4()),
            "analysis_id": analysis_id,
            "created_at": datetime.now(UTC).isoformat(),
            "taskgauge_version": taskgauge_version(),
            "dataset": summary,
            "environment": {
                "device": describe_device(dev),
                "torch": torch.__version__,
                "seconds_total": time.perf_counter() - t0,
                **(environment or {}),
            },
            "results": results,
            "interpretation": interpretation_notes(results, summary),
        }
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def analyse_file(
    path: Path,
    *,
    requests: dict[str, dict[str, Any]] | None = None,
    model_spec: dict[str, Any] | None = None,
    device: str = "auto",
    ingest_options: IngestOptions | None = None,
    memory_budget_mb: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Ingest the file ``path`` and run the pipeline on it, in this process; returns the report (docs/methods.md §0).
    The CLI's local mode (``taskgauge analyse FILE``).

    Raises :class:`taskgauge.datasets.ingest.IngestError` or :class:`estimators.base.EstimatorError` on bad input.
    """
    from taskgauge.datasets.ingest import ingest_file

    path = Path(path)
    dataset = ingest_file(path, path.name, ingest_options)
    info = DatasetInfo(name=path.name, sha256=file_sha256(path))
    return run_pipeline(
        dataset,
        requests,
        info=info,
        device=device,
        model_spec=model_spec,
        memory_budget_mb=memory_budget_mb,
        progress=progress or no_progress,
    )
