"""Inductive-bias complexity Ĩ in bits (Boopathy et al. 2023 and 2024; docs/methods.md §3).

``mode="closed_form"`` (default, docs/methods.md §3.1): the 2023 closed form (:mod:`estimators.inductive_bias.closed_form`)

    Ĩ = dimΘ_q · [log₂B + ½log₂D_out + ½log₂P − log₂ε + log₂L_f + ln W / ln 2]   bits,

with every input derived from the data and reported in ``details.inputs`` (with its source):

* m = the MLE intrinsic dimension with k = 5 (k−1 normaliser, MacKay–Ghahramani pooling, 10,000 seeded
  anchors against all points, as the authors' ``intrinsic_dim``), rounded to an integer;
* R = max ‖x‖ (raw data, not centred);
* δ = the exact minimum distance between differently labelled points (``delta_method="exact"``; equals
  1/K_F of ``label_sharpness``), or the authors' ``sample`` / ``evt`` estimators (:mod:`estimators.inductive_bias.delta`);
* n = number of samples, C = number of classes (D_out = C − 1, P = C, B = 1), ε = ``epsilon`` (0.01).

Any of m, R, delta, n, n_classes can be overridden by params, so a paper's numbers are reproducible from its
inputs: m=14, R=17.179, delta=2.3987, n=60000, n_classes=10, epsilon=0.001 gives MNIST's 1.485e16 bits.
Overridden inputs are not computed at all.

``mode="sampled"`` (docs/methods.md §3.2): Ĩ = −log₂ P(test MSE ≤ ε) over hypotheses drawn from an RBF Gaussian
process posterior (``space="kernel"``) or from independently trained MLPs (``space="mlp"``), through the scaled
non-central χ² fit of :mod:`estimators.inductive_bias.sampled`. The data are split (seeded) into ``n_train`` training and
``n_test`` test points. Defaults are chosen to run on a CPU in seconds: kernel: 500/200 points, 10,000 GP
samples (≈2 s); mlp: 100 trials of a 32-wide, depth-2 ReLU MLP, 50 epochs, batch 64 (≈10 s on 2 cores for
784 features; the ncx2 fit then rests on 100 losses, so raise mlp_trials for a tighter estimate). ε in this mode is a threshold on the test MSE to one-hot targets.

Example
-------
>>> import torch
>>> from estimators.device import resolve_device
>>> X = torch.zeros(4, 2); y = torch.tensor([0, 1, 0, 1])
>>> p = InductiveBiasParams(m=14, R=17.179045827183984, delta=2.3987084824335305, n=60000, n_classes=10, epsilon=0.001)
>>> r = inductive_bias(X, y, p, device=resolve_device("cpu"), progress=no_progress)
>>> f"{r.value:.4g}"
'1.485e+16'
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from estimators.base import (  # parameter bounds
    MAX_MEMORY_BUDGET_MB,
    MAX_NEIGHBOURS,
    MAX_SEED,
    MAX_SUBSAMPLE,
    EstimatorError,
    Params,
    ProgressFn,
    Result,
    no_progress,
    scaled_progress,
)
from estimators.inductive_bias.closed_form import classification_bits
from estimators.knn.pairs import exact_interclass
from estimators.registry import register
from estimators.validation import as_labelled

VERSION = "1.0.0"


class InductiveBiasParams(Params):
    """Params of ``inductive_bias`` (defaults per docs/methods.md §3)."""

    mode: Literal["closed_form", "sampled"] = Field("closed_form", description="2023 closed form or 2024 sampling")
    epsilon: float = Field(0.01, gt=0.0, description="target error ε (closed form) / test-MSE threshold (sampled)")
    # closed-form inputs: None = derive from the data
    m: float | None = Field(None, gt=0.0, description="override: intrinsic dimension of the data manifold")
    R: float | None = Field(None, gt=0.0, description="override: radius, max ‖x‖")
    delta: float | None = Field(None, gt=0.0, description="override: minimum distance between classes")
    n: float | None = Field(None, gt=0.0, description="override: number of training samples")
    n_classes: int | None = Field(None, ge=2, description="override: number of classes C")
    # how the inputs are derived
    id_k: int = Field(5, ge=3, le=MAX_NEIGHBOURS, description="k of the MLE intrinsic dimension (the authors use 5)")
    id_anchors: int = Field(
        10000, ge=1, le=MAX_SUBSAMPLE, description="anchor points of the MLE (the authors use 10,000)"
    )
    delta_method: Literal["exact", "sample", "evt"] = Field("exact", description="how δ is estimated")
    delta_sample_size: int = Field(30000, ge=2, le=1_000_000, description="delta_method='sample': subsample size")
    delta_min_distance: float = Field(1.0, ge=0.0, description="delta_method='sample': ignore distances below this")
    evt_pairs: int = Field(
        4_000_000, ge=100, le=MAX_SUBSAMPLE, description="delta_method='evt': random different-label pairs"
    )
    evt_k: int = Field(2000, ge=2, le=1_000_000, description="delta_method='evt': order statistics used")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of every subsample, split and sample")
    # sampled mode
    space: Literal["kernel", "mlp"] = Field("kernel", description="sampled: hypothesis space")
    n_train: int = Field(500, ge=2, le=10_000, description="sampled: training points")
    n_test: int = Field(200, ge=1, le=10_000, description="sampled: test points")
    kernel_sigma: float = Field(1.0, gt=0.0, description="sampled kernel: RBF length scale σ (the paper: 1)")
    n_samples: int = Field(10000, ge=10, le=1_000_000, description="sampled kernel: GP functions drawn")
    mlp_trials: int = Field(100, ge=10, le=100_000, description="sampled mlp: independently trained nets")
    mlp_width: int = Field(32, ge=1, le=4096, description="sampled mlp: hidden width")
    mlp_depth: int = Field(2, ge=1, le=16, description="sampled mlp: hidden layers")
    mlp_epochs: int = Field(50, ge=1, le=10_000, description="sampled mlp: training epochs")
    mlp_batch_size: int = Field(64, ge=1, le=1_000_000, description="sampled mlp: batch size")
    mlp_lr: float = Field(1e-3, gt=0.0, description="sampled mlp: Adam learning rate")
    memory_budget_mb: int = Field(1024, ge=16, le=MAX_MEMORY_BUDGET_MB, description="memory the pair search may use")


def _mle_m(X: torch.Tensor, p: InductiveBiasParams, device, progress: ProgressFn) -> tuple[float, dict]:
    from estimators.id.mle import mle_id  # noqa: PLC0415 - keeps the registry import light

    n = X.shape[0]
    anchors = p.id_anchors if p.id_anchors < n else None
    r = mle_id(
        X, k=p.id_k, normalizer="k-1", pooling="mg", anchors=anchors, seed=p.seed, device=device, progress=progress
    )
    if r.value is None or not math.isfinite(r.value):
        raise EstimatorError("inductive_bias: the MLE intrinsic dimension is undefined for this data; pass m=...")
    m = float(max(1, round(r.value)))
    info = {"mle_value": float(r.value), "k": p.id_k, "anchors": anchors or n, "pooling": "mg", "normalizer": "k-1"}
    return m, info


def _delta(X, y, p: InductiveBiasParams, device, progress: ProgressFn) -> tuple[float, dict, list[str]]:
    from estimators.inductive_bias.delta import evt_delta, sample_delta  # noqa: PLC0415

    warnings: list[str] = []
    if p.delta_method == "exact":
        res, reps, _, conflicts = exact_interclass(
            X, y, top_k=1, device=device, memory_budget_mb=p.memory_budget_mb, progress=progress
        )
        info: dict[str, Any] = {"method": "exact minimum over all pairs (= 1/K_F)"}
        if res.top_pairs:
            i, j, d = res.top_pairs[0]
            info["pair"] = [int(reps[i]), int(reps[j])]
        if conflicts["groups"]:
            warnings.append(
                f"{conflicts['groups']} groups of identical samples carry different labels, so δ = 0 and the "
                "closed form is infinite; fix the labels or pass delta=..."
            )
        info["search"] = res.stats
        return res.delta, info, warnings
    if p.delta_method == "sample":
        d = sample_delta(
            X, y, sample_size=p.delta_sample_size, min_distance=p.delta_min_distance, seed=p.seed, device=device
        )
        info = {
            "method": "sample (Boopathy et al.)",
            "sample_size": min(p.delta_sample_size, X.shape[0]),
            "min_distance": p.delta_min_distance,
        }
        if math.isinf(d):
            raise EstimatorError(
                f"delta_method='sample' found no differently labelled pair at distance >= {p.delta_min_distance}; "
                "lower delta_min_distance or use delta_method='exact'"
            )
        return d, info, warnings
    d, info = evt_delta(X, y, n_pairs=p.evt_pairs, k=p.evt_k, seed=p.seed, device=device)
    info["method"] = "evt (Boopathy et al.)"
    return d, info, warnings


def _closed_form(X, y, p: InductiveBiasParams, device, progress: ProgressFn) -> Result:
    warnings: list[str] = []
    sources: dict[str, str] = {}
    details: dict = {"mode": "closed_form"}
    n_labels = int(torch.unique(y).numel())
    n = p.n if p.n is not None else float(X.shape[0])
    sources["n"] = "param" if p.n is not None else "data: number of samples"
    C = p.n_classes if p.n_classes is not None else n_labels
    sources["n_classes"] = "param" if p.n_classes is not None else "data: distinct labels"
    if C < 2:
        raise EstimatorError("inductive_bias needs at least 2 classes (D_out = C − 1); pass n_classes=... to override")
    if p.R is not None:
        R, sources["R"] = p.R, "param"
    else:
        R = float(torch.linalg.vector_norm(X.to(torch.float64), dim=1).max())
        sources["R"] = "data: max ‖x‖"
        if R <= 0:
            raise EstimatorError("inductive_bias: every sample is the zero vector (R = 0); pass R=...")
    if p.m is not None:
        m, sources["m"] = p.m, "param"
    else:
        m, details["mle"] = _mle_m(X, p, device, scaled_progress(progress, 0.0, 0.6))
        sources["m"] = f"data: MLE k={p.id_k}, rounded"
    if p.delta is not None:
        delta, sources["delta"] = p.delta, "param"
    else:
        delta, details["delta_estimate"], w = _delta(X, y, p, device, scaled_progress(progress, 0.6, 1.0))
        warnings += w
        sources["delta"] = f"data: {p.delta_method}"
    inputs = {
        "epsilon": p.epsilon,
        "n": n,
        "m": m,
        "R": R,
        "delta": delta,
        "n_classes": C,
        "d_out": C - 1,
        "P": C,
        "B": 1.0,
    }
    details["inputs"] = inputs
    details["input_sources"] = sources
    if delta == 0.0:
        details["label_sharpness_equivalent"] = math.inf
        progress(1.0, "done")
        return Result(value=math.inf, details=details, warnings=warnings)
    cf = classification_bits(epsilon=p.epsilon, n=n, m=m, R=R, n_classes=C, delta=delta)
    details["label_sharpness_equivalent"] = 1.0 / delta
    details["intermediates"] = cf.as_dict()
    details["log10_bits"] = cf.log10_abs_bits if cf.sign > 0 else None
    if cf.sign < 0:
        warnings.append(
            "Ĩ came out negative: n·D_out exceeds dimΘ (the data alone pin down the band-limited hypothesis) or the "
            "bracket is negative (ε large); the closed form is vacuous for these inputs (docs/methods.md §3.1)"
        )
    if math.isinf(cf.bits):
        warnings.append(f"Ĩ exceeds the float range; log10 Ĩ = {cf.log10_abs_bits:.4f} (details.log10_bits)")
    progress(1.0, "done")
    return Result(value=cf.bits, details=details, warnings=warnings)


def _split(n: int, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    warnings = []
    if n_train + n_test > n:
        scale = n / (n_train + n_test)
        n_train, n_test = max(1, int(n_train * scale)), max(1, n - max(1, int(n_train * scale)))
        warnings.append(f"sampled mode: only {n} samples, split {n_train} train / {n_test} test")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_train], perm[n_train : n_train + n_test], warnings


def _sampled(X, y, p: InductiveBiasParams, device, progress: ProgressFn) -> Result:
    from estimators.inductive_bias.sampled import kernel_losses, mlp_losses, ncx2_bits, one_hot  # noqa: PLC0415

    labels, y_idx = torch.unique(y, return_inverse=True)
    C = int(labels.numel())
    tr, te, warnings = _split(X.shape[0], p.n_train, p.n_test, p.seed)
    tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
    Ytr, Yte = one_hot(y_idx[tr_t], C), one_hot(y_idx[te_t], C)
    sub = scaled_progress(progress, 0.0, 0.9)
    details: dict = {
        "mode": "sampled",
        "space": p.space,
        "n_train": int(tr.size),
        "n_test": int(te.size),
        "n_classes": C,
        "epsilon": p.epsilon,
        "units": "bits (nats / ln 2)",
        "loss": "test MSE to one-hot targets, mean over test points and classes",
    }
    if p.space == "kernel":
        losses, info = kernel_losses(
            X[tr_t], Ytr, X[te_t], Yte, sigma=p.kernel_sigma, n_samples=p.n_samples, seed=p.seed, progress=sub
        )
        details.update({"kernel": "RBF", "kernel_sigma": p.kernel_sigma, "n_samples": p.n_samples, "gp": info})
    else:
        losses = mlp_losses(
            X[tr_t],
            Ytr,
            X[te_t],
            Yte,
            trials=p.mlp_trials,
            width=p.mlp_width,
            depth=p.mlp_depth,
            epochs=p.mlp_epochs,
            batch_size=p.mlp_batch_size,
            lr=p.mlp_lr,
            seed=p.seed,
            device=device,
            progress=sub,
        )
        details.update(
            {
                "mlp": {
                    "trials": p.mlp_trials,
                    "width": p.mlp_width,
                    "depth": p.mlp_depth,
                    "epochs": p.mlp_epochs,
                    "batch_size": p.mlp_batch_size,
                    "lr": p.mlp_lr,
                }
            }
        )
    fit = ncx2_bits(losses, p.epsilon)
    details["fit"] = fit
    if fit["method"].startswith("normal"):
        warnings.append("P(loss ≤ ε) underflowed the ncx2 CDF; Ĩ uses the Sankaran normal approximation")
    progress(1.0, "done")
    return Result(value=fit["bits"], details=details, warnings=warnings)


@register(
    name="inductive_bias",
    version=VERSION,
    params=InductiveBiasParams,
    summary="Inductive-bias complexity in bits (Boopathy et al. 2023 closed form; 2024 sampled mode)",
    needs_labels=True,
    min_samples=2,
)
def inductive_bias(
    X: torch.Tensor,
    y: torch.Tensor | None,
    params: InductiveBiasParams,
    *,
    device: torch.device,
    progress: ProgressFn = no_progress,
) -> Result:
    """Ĩ in bits (docs/methods.md §3); see the module docstring for the modes, inputs and overrides."""
    X, y = as_labelled(X, y, "inductive_bias")
    if params.mode == "sampled":
        return _sampled(X, y, params, torch.device(device), progress)
    return _closed_form(X, y, params, torch.device(device), progress)
