"""Report assembly helpers (docs/methods.md §0) and the plain-language interpretation notes (docs/methods.md §5)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from estimators.base import Params, Result, json_number

REPORT_SCHEMA_VERSION = 1


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy/torch scalars and arrays into JSON types; non-finite floats become strings
    ("inf", "-inf", "nan") because JSON has no infinities (see :func:`estimators.base.json_number`)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return json_number(float(obj))
    return obj


def result_to_json(estimator: Any, params: Params, result: Result, *, seconds: float) -> dict[str, Any]:
    return to_jsonable(
        {
            "version": estimator.version,
            "params": params.model_dump(mode="json"),
            "value": result.value,
            "ci": list(result.ci) if result.ci is not None else None,
            "ci_method": result.ci_method,
            "details": result.details,
            "warnings": list(result.warnings),
            "seconds": seconds,
        }
    )


_NOTES = {
    "mle": "MLE intrinsic dimension (Levina–Bickel, MacKay–Ghahramani pooling) assumes the data lie on a manifold "
    "that is locally uniform at the scale of the k nearest neighbours; it tends to underestimate high dimensions "
    "and grows with k under noise or curvature. It is a descriptive property of this dataset under its stated "
    "preprocessing, not a prediction of test error.",
    "twonn": "TwoNN uses only the two nearest neighbours of each point, so it is the most local estimator and noise "
    "inflates it; the decimation curve shows how it depends on scale.",
    "gride": "Gride reports the intrinsic dimension at several neighbourhood scales; read the plateau, since small "
    "scales are biased by noise and large scales by curvature.",
    "label_sharpness": "Label sharpness K_F = 1 / (smallest distance between two differently labelled samples) is a "
    "lower estimate of the labelling function's Lipschitz constant; it depends on resolution, channels and value "
    "range, so compare only datasets preprocessed identically. Konz & Mazurowski (2024) found higher K_F "
    "correlated with worse generalisation and robustness for their models; that is an empirical finding, not a "
    "guarantee for this dataset.",
    "inductive_bias": "Inductive-bias complexity (Boopathy et al.) is the information, in bits, needed to pick a "
    "well-generalising model from a broad band-limited hypothesis space; it assumes a manifold of dimension m and "
    "radius R, so it ranks tasks relative to each other rather than predicting test error.",
    "subspace": "d_int90 is the smallest random-subspace dimension in which this model reaches 90% of its directly "
    "trained performance (Li et al. 2018); it depends on the architecture, optimiser and baseline stated in params.",
}


def interpretation_notes(results: dict[str, Any], dataset: dict[str, Any]) -> list[str]:
    notes = [_NOTES[name] for name in results if name in _NOTES]
    dup = dataset.get("duplicates", {})
    if dup.get("exact"):
        notes.append(
            f"The dataset contains {dup['exact']} exact duplicate rows; they were removed before any "
            "nearest-neighbour computation."
        )
    if dup.get("conflicting_labels"):
        notes.append(
            f"{dup['conflicting_labels']} groups of identical inputs carry different labels; label sharpness is "
            "infinite for such data. Check these samples for labelling errors."
        )
    notes.append(
        "Rankings are meaningful only between datasets processed identically (same resolution, channels, value "
        "range and normalisation)."
    )
    return notes


def finite(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
