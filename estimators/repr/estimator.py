"""The ``repr_id`` estimator: intrinsic dimension of a model's representations (docs/methods.md §1.4, §0).

d_repr is the ID (``twonn`` as Konz's experiments and Ansuini use, or ``mle`` k=20 as Konz's helper defaults to)
of the activations at one named layer, computed by the same functions — and the same exact kNN engine — as the
``twonn`` and ``mle`` estimators. ``layer: "all"`` gives the per-layer profile (Ansuini et al. 2019), one point
per block (:func:`estimators.repr.activations.spec_blocks`; every transformer block for a text encoder).

Models:

* a spec model (mlp/lenet/cnn/resnet) with ``weights``, the path of a ``.safetensors`` file (the service sets
  it for an uploaded model; without weights the network is randomly initialised from ``seed`` and a warning
  says so). X is the data as the model takes it; d_data, the ID of X itself by the same estimator on the same
  points, is reported and every layer with d_repr > d_data is flagged (Konz's d_repr ≤ d_data is a soft check:
  flagged, never an error);
* ``{"arch": "pretrained", "source": "minilm"}`` (or an uploaded directory): X is the (N, L) token-id matrix of
  :func:`estimators.text.tokenize_texts`; each layer's hidden states are mean-pooled over the tokens. There is
  no numeric input to compare with, so no d_data and no flag.

``value`` is the ID at the chosen layer, or for ``"all"`` at the last hidden layer (the input of the classifier
for a spec model: Ansuini's "last hidden layer", Konz's "penultimate"; the last block for a text encoder).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from estimators.base import EstimatorError, Params, ProgressFn, Result, scaled_progress
from estimators.models.spec import ModelSpec, PretrainedSpec, parse_model_spec
from estimators.registry import register
from estimators.repr.activations import (
    layer_kinds,
    spec_activations,
    spec_blocks,
    text_activations,
    text_layer_names,
)
from estimators.validation import as_matrix

VERSION = "1.0.0"
ALL = "all"
PENULTIMATE = "penultimate"


class ReprIDParams(Params):
    """Params of ``repr_id``; defaults follow docs/methods.md §1.4 (TwoNN, 2000 points as in Ansuini's scripts)."""

    model: ModelSpec = Field(description="model spec (docs/methods.md §4); the pipeline injects the user's spec here")
    weights: str | None = Field(None, description="path of the spec model's .safetensors weights (set by the service)")
    n_classes: int | None = Field(None, ge=1, description="output size of a spec model; default: read from the weights")
    layer: str = Field(ALL, description="a layer name, 'penultimate', or 'all' for the per-layer profile")
    estimator: Literal["twonn", "mle"] = "twonn"
    k: int = Field(20, ge=3, description="neighbours for mle")
    max_samples: int | None = Field(2000, ge=10, description="seeded subsample of the data (Ansuini used 2000)")
    seed: int = Field(0, ge=0)
    batch_size: int = Field(128, ge=1, le=65_536)
    memory_budget_mb: int = Field(1024, ge=16)


def _id_of(A: torch.Tensor, params: ReprIDParams, device: torch.device) -> tuple[float, dict[str, Any]]:
    from estimators.id.mle import mle_id
    from estimators.id.twonn import twonn_id

    if params.estimator == "mle":
        r = mle_id(A, k=params.k, device=device, memory_budget_mb=params.memory_budget_mb)
    else:
        r = twonn_id(A, decimation=False, device=device, memory_budget_mb=params.memory_budget_mb)
    extra = {"n_unique": r.details.get("n_unique"), "duplicates_removed": r.details.get("duplicates_removed")}
    return float(r.value), extra


def _bad_layer(layer: str, valid: list[str], blocks: list[str]) -> EstimatorError:
    shown = valid if len(valid) <= 60 else valid[:60] + [f"… ({len(valid) - 60} more)"]
    return EstimatorError(
        f"repr_id: unknown layer {layer!r}. Valid layers: {ALL!r} (the profile over the blocks {', '.join(blocks)}), "
        f"{PENULTIMATE!r}, or one of: {', '.join(shown)}"
    )


def _subsample(n: int, params: ReprIDParams) -> torch.Tensor | None:
    if params.max_samples is None or params.max_samples >= n:
        return None
    g = torch.Generator().manual_seed(params.seed + 4_242)
    return torch.sort(torch.randperm(n, generator=g)[: params.max_samples]).values


@register(
    name="repr_id",
    version=VERSION,
    params=ReprIDParams,
    summary="d_repr: intrinsic dimension of a model's activations at a layer, or the per-layer profile",
    needs_model=True,
    min_samples=10,
)
def repr_id(X: Any, y: Any, params: ReprIDParams, *, device: torch.device, progress: ProgressFn) -> Result:
    """Estimate d_repr (docs/methods.md §1.4); see the module docstring."""
    t0 = time.perf_counter()
    spec = parse_model_spec(params.model)
    warnings: list[str] = []
    if isinstance(spec, PretrainedSpec):
        X = _token_ids(X)
    else:
        X = as_matrix(X, "repr_id", images=True).to(torch.float32)
    N_given = int(X.shape[0])
    keep = _subsample(N_given, params)
    if keep is not None:
        X = X[keep]
        if y is not None:
            y = torch.as_tensor(y).reshape(-1)[keep]
    N = int(X.shape[0])
    act_progress = scaled_progress(progress, 0.0, 0.5)

    d_data: float | None = None
    if isinstance(spec, PretrainedSpec):
        from estimators.models.pretrained import MINILM, get_pretrained

        pm = get_pretrained(MINILM if spec.source == "minilm" else spec.path)
        vocab = int(pm.config.vocab_size)
        if int(X.max()) >= vocab:
            raise EstimatorError(
                f"repr_id: token id {int(X.max())} is outside the model's vocabulary of {vocab}; "
                "tokenize the texts with this model's tokenizer"
            )
        blocks = text_layer_names(pm.n_layers)
        valid = list(blocks)
        last_hidden = blocks[-1]
        kinds = {n: ("embeddings" if n == "embeddings" else "transformer block") for n in blocks}
        layers = _resolve_layer(params.layer, valid, blocks, last_hidden)
        encoder = pm.model if device.type == "cpu" else _copy_to(pm.model, device)
        pad_id = pm.tokenizer.pad_token_id if pm.tokenizer.pad_token_id is not None else 0
        acts = text_activations(
            encoder, X, layers, pad_id=pad_id, batch_size=params.batch_size, device=device, progress=act_progress
        )
        model_info: dict[str, Any] = {**pm.info(), "input": "token ids, hidden states mean-pooled over tokens"}
    else:
        from estimators.models.builders import build_model

        n_classes = params.n_classes
        if params.weights is not None:
            from estimators.models.pretrained import cached_sha256, get_spec_model

            # loaded once per process and shared (never modified here: moved to another device as a copy)
            model = get_spec_model(spec, tuple(X.shape[1:]), n_classes, params.weights)
            n_classes = int(list(model.state_dict().values())[-1].shape[0])  # the classifier's bias
            if device.type != "cpu":
                model = _copy_to(model, device)
            weights_sha = cached_sha256(Path(params.weights))
        else:
            if n_classes is None:
                n_classes = int(torch.as_tensor(y).max()) + 1 if y is not None else 10
            model = build_model(spec, tuple(X.shape[1:]), n_classes, seed=params.seed)
            weights_sha = None
            warnings.append(
                "no weights were given: the network is randomly initialised (seed "
                f"{params.seed}); upload trained weights (safetensors) to measure a trained model"
            )
        kinds_all = layer_kinds(model)
        blocks = spec_blocks(model)
        valid = list(kinds_all)
        last_hidden = blocks[-2] if len(blocks) >= 2 else blocks[-1]
        kinds = {n: kinds_all[n] for n in valid}
        layers = _resolve_layer(params.layer, valid, blocks, last_hidden)
        acts = spec_activations(
            model,
            X,
            layers,
            batch_size=params.batch_size,
            device=device,
            memory_budget_mb=params.memory_budget_mb,
            progress=act_progress,
        )
        model_info = {"spec": spec.model_dump(mode="json"), "weights_sha256": weights_sha, "n_classes": n_classes}
        progress(0.5, "repr_id: d_data")
        d_data, _ = _id_of(X.reshape(N, -1), params, device)

    profile = []
    for i, name in enumerate(layers):
        progress(0.5 + 0.5 * i / len(layers), f"repr_id: ID of layer {name}")
        A = acts.pop(name)
        row: dict[str, Any] = {"layer": name, "kind": kinds.get(name), "width": int(A.shape[1])}
        try:
            value, extra = _id_of(A, params, device)
            row.update({"id": value, **extra})
        except EstimatorError as exc:
            row.update({"id": None, "error": str(exc)})
            warnings.append(f"layer {name}: no estimate ({exc})")
        row["exceeds_d_data"] = bool(d_data is not None and row["id"] is not None and row["id"] > d_data)
        profile.append(row)
        del A

    over = [r["layer"] for r in profile if r["exceeds_d_data"]]
    if over:
        warnings.append(
            f"d_repr > d_data = {d_data:.2f} at {', '.join(over)}: a smooth network cannot raise manifold "
            "dimension (Konz), so read this as estimator noise or a data set too small for the width; a soft check"
        )
    head = layers[0] if params.layer not in (ALL,) else last_hidden
    head_row = next(r for r in profile if r["layer"] == head)
    details = {
        "layer": params.layer,
        "headline_layer": head,
        "estimator": params.estimator,
        "k": params.k if params.estimator == "mle" else None,
        "profile": profile,
        "d_data": d_data,
        "layers_exceeding_d_data": over,
        "blocks": blocks,
        "model": model_info,
        "n_samples": N,
        "n_samples_given": N_given,
        "seconds": time.perf_counter() - t0,
    }
    progress(1.0, "repr_id: done")
    return Result(value=head_row["id"], details=details, warnings=warnings)


def _resolve_layer(layer: str, valid: list[str], blocks: list[str], last_hidden: str) -> list[str]:
    if layer == ALL:
        return list(blocks)
    if layer == PENULTIMATE:
        return [last_hidden]
    if layer not in valid:
        raise _bad_layer(layer, valid, blocks)
    return [layer]


def _copy_to(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(device)


def _token_ids(X: Any) -> torch.Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise EstimatorError(
            "repr_id with a pretrained text model needs X = (N, L) token ids "
            "(estimators.text.tokenize_texts), not embeddings or images"
        )
    if X.is_floating_point():
        if not bool(torch.all(X == torch.round(X))):
            raise EstimatorError(
                "repr_id with a pretrained text model needs integer token ids, got non-integer "
                "values (are these embeddings? pass the tokenized texts)"
            )
        X = X.to(torch.long)
    if X.numel() and int(X.min()) < 0:
        raise EstimatorError("repr_id: token ids must be ≥ 0")
    return X.to(torch.long).cpu()
