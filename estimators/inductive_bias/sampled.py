"""Sampled inductive bias (Boopathy et al., IJCAI 2024, "Towards Exact Computation of Inductive Bias";
docs/methods.md §3.2).

Ĩ = −log₂ P_{θ∼H}(test loss ≤ ε | θ fits the training set), estimated from hypotheses sampled from H:

* **kernel** (GP, RBF k(x, x') = exp(−‖x − x'‖²/(2σ²)), σ = 1, one-hot targets): the posterior given the
  training set has mean μ = K_te,tr K_tr⁻¹ Y and covariance Σ = K_te,te − K_te,tr K_tr⁻¹ K_tr,te. Each sampled
  function is f = μ + Σ^{1/2} z (z standard normal, one column per output); its loss is the test MSE
  mean((f − Y_te)²) over test points and outputs. K_tr⁻¹ is applied with a Cholesky solve (jitter 1e−8·mean
  diagonal, raised until it factorises) instead of the reference code's Adam iterations, and Σ^{1/2} comes from
  ``eigh`` with negative eigenvalues clipped to 0 (``sqrtm`` of a near-singular Σ can come back complex).
* **mlp** (ReLU MLP of the given width and depth, fresh random init, Adam lr 1e−3 on the MSE to one-hot targets
  for the given epochs and batch size): one trained net per trial, loss = its final test MSE. All trials are
  trained at once as a batch of independent networks (batched matmuls; Adam is elementwise, so this is the
  same as training them one by one).
* **loss model**: a scaled non-central χ² with loc = 0, fitted by maximum likelihood (``scipy.stats.ncx2.fit``,
  as the authors); Ĩ = −ln CDF(ε; df, nc, scale) / ln 2 bits (the reference code returns nats). When the CDF
  underflows, the Sankaran normal approximation gives z (docs/methods.md §3.2) and Ĩ = −ln Φ(z) / ln 2, computed with
  ``log_ndtr`` (the reference code keeps only the leading term z²/2; both are reported).

>>> import numpy as np
>>> from scipy.stats import ncx2
>>> losses = ncx2.rvs(20, 5, scale=0.05, size=10000, random_state=np.random.default_rng(0))
>>> r = ncx2_bits(losses, 0.5)
>>> abs(r["bits"] / (-ncx2.logcdf(0.5, 20, 5, scale=0.05) / np.log(2)) - 1) < 0.05
True
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import log_ndtr
from scipy.stats import ncx2

from estimators.base import EstimatorError, ProgressFn, no_progress

LN2 = math.log(2.0)


def sankaran_z(epsilon: float, df: float, nc: float, scale: float) -> float:
    """z of the Sankaran normal approximation to the ncx2 CDF at ε (docs/methods.md §3.2)."""
    e = epsilon / scale
    h = 1.0 - 2.0 / 3.0 * (df + nc) * (df + 3.0 * nc) / (df + 2.0 * nc) ** 2
    p = (df + 2.0 * nc) / (df + nc) ** 2
    q = (h - 1.0) * (1.0 - 3.0 * h)
    num = (e / (df + nc)) ** h - (1.0 + h * p * (h - 1.0 - 0.5 * (2.0 - h) * q * p))
    return float(num / (h * math.sqrt(2.0 * p) * (1.0 + 0.5 * q * p)))


def ncx2_bits(losses: np.ndarray, epsilon: float) -> dict:
    """Fit a scaled ncx2 (loc = 0) to the sampled losses and return Ĩ = −log₂ CDF(ε) with the fit.

    Keys: ``bits``, ``nats``, ``df``, ``nc``, ``scale``, ``method`` ("ncx2 logcdf" or "normal approximation"),
    ``sankaran_z``, ``empirical_fraction_below`` (the share of sampled losses ≤ ε, a sanity check).
    """
    losses = np.asarray(losses, dtype=np.float64).ravel()
    if losses.size < 10 or not np.all(np.isfinite(losses)) or np.any(losses <= 0):
        raise EstimatorError(
            f"the ncx2 fit needs at least 10 finite positive losses, got {losses.size} "
            f"(min {losses.min() if losses.size else None}); raise n_samples / mlp_trials"
        )
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise EstimatorError(f"epsilon must be a finite positive loss threshold, got {epsilon}")
    df, nc, _, scale = ncx2.fit(losses, floc=0)
    log_cdf = float(ncx2.logcdf(epsilon, df, nc, loc=0, scale=scale))
    z = sankaran_z(epsilon, df, nc, scale)
    if math.isfinite(log_cdf) and log_cdf < 0.0:
        nats, method = -log_cdf, "ncx2 logcdf"
    elif log_cdf == 0.0:
        nats, method = 0.0, "ncx2 logcdf"
    else:
        nats, method = float(-log_ndtr(z)), "normal approximation (CDF underflowed)"
    return {
        "bits": nats / LN2,
        "nats": nats,
        "df": float(df),
        "nc": float(nc),
        "scale": float(scale),
        "method": method,
        "sankaran_z": z,
        "reference_code_nats_if_normal": z * z / 2.0,
        "empirical_fraction_below": float(np.mean(losses <= epsilon)),
        "loss_quantiles": {str(q): float(np.quantile(losses, q)) for q in (0.0, 0.05, 0.5, 0.95, 1.0)},
    }


def one_hot(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, n_classes).to(torch.float64)


def kernel_losses(
    Xtr: torch.Tensor,
    Ytr: torch.Tensor,
    Xte: torch.Tensor,
    Yte: torch.Tensor,
    *,
    sigma: float = 1.0,
    n_samples: int = 10000,
    seed: int = 0,
    batch: int = 500,
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, dict]:
    """Test MSE of ``n_samples`` functions drawn from the RBF-GP posterior given (Xtr, Ytr) (float64)."""
    Xtr, Xte = Xtr.to(torch.float64), Xte.to(torch.float64)

    def rbf(A, B):
        return torch.exp(-(torch.cdist(A, B, compute_mode="donot_use_mm_for_euclid_dist") ** 2) / (2.0 * sigma**2))

    Ktr, Kte_tr, Kte = rbf(Xtr, Xtr), rbf(Xte, Xtr), rbf(Xte, Xte)
    jitter = 1e-8 * float(Ktr.diagonal().mean())
    eye = torch.eye(Ktr.shape[0], dtype=torch.float64)
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(Ktr + jitter * eye)
        if int(info) == 0:
            break
        jitter *= 10.0
    else:
        raise EstimatorError("the training kernel matrix is singular even with jitter; check for NaNs in X")
    A = torch.cholesky_solve(Kte_tr.T, L)  # K_tr⁻¹ K_tr,te
    mu = A.T @ Ytr
    Sigma = Kte - Kte_tr @ A
    Sigma = (Sigma + Sigma.T) / 2.0
    evals, evecs = torch.linalg.eigh(Sigma)
    clipped = int((evals < 0).sum())
    root = evecs * evals.clamp_min(0.0).sqrt()  # Σ^{1/2} up to rotation: root rootᵀ = Σ (clipped)
    g = torch.Generator().manual_seed(seed)
    out = np.empty(n_samples)
    n_te, c = Yte.shape
    for s in range(0, n_samples, batch):
        b = min(batch, n_samples - s)
        z = torch.randn(b, n_te, c, generator=g, dtype=torch.float64)
        f = mu.unsqueeze(0) + torch.matmul(root, z)
        out[s : s + b] = ((f - Yte) ** 2).mean(dim=(1, 2)).numpy()
        progress((s + b) / n_samples, "sampling GP functions")
    info = {
        "jitter": jitter,
        "eigenvalues_clipped": clipped,
        "min_eigenvalue": float(evals.min()),
        "posterior_mean_test_mse": float(((mu - Yte) ** 2).mean()),
    }
    return out, info


def mlp_losses(
    Xtr: torch.Tensor,
    Ytr: torch.Tensor,
    Xte: torch.Tensor,
    Yte: torch.Tensor,
    *,
    trials: int = 100,
    width: int = 32,
    depth: int = 2,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Final test MSE of ``trials`` independently initialised and trained ReLU MLPs (float32, batched)."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    dims = [Xtr.shape[1]] + [width] * depth + [Ytr.shape[1]]
    params = []
    for li, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):  # nn.Linear's default init, per trial
        bound = 1.0 / math.sqrt(fan_in)
        # the first layer is stored (D, trials, width) so that all trials share one GEMM without copies
        shape = (fan_in, trials, fan_out) if li == 0 else (trials, fan_in, fan_out)
        W = (torch.rand(*shape, generator=g) * 2 - 1) * bound
        b = (torch.rand(trials, 1, fan_out, generator=g) * 2 - 1) * bound
        params += [W.to(dev).requires_grad_(), b.to(dev).requires_grad_()]
    opt = torch.optim.Adam(params, lr=lr)
    Xtr, Ytr = Xtr.to(dev, torch.float32), Ytr.to(dev, torch.float32)
    Xte, Yte = Xte.to(dev, torch.float32), Yte.to(dev, torch.float32)

    def forward(x):  # x: (B, D) shared by all trials -> (trials, B, out)
        W0, b0 = params[0], params[1]
        # the first layer of every trial in one GEMM: (B, D) @ (D, trials·width)
        h = (x @ W0.view(W0.shape[0], -1)).view(x.shape[0], trials, -1).transpose(0, 1) + b0
        for li in range(2, len(params), 2):
            h = torch.baddbmm(params[li + 1], torch.relu(h), params[li])
        return h

    n = Xtr.shape[0]
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g).to(dev)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad(set_to_none=True)
            # sum over trials of each trial's mean MSE: every trial gets exactly its own gradient
            loss = ((forward(Xtr[idx]) - Ytr[idx]) ** 2).mean(dim=(1, 2)).sum()
            loss.backward()
            opt.step()
        progress((ep + 1) / epochs, "training MLPs")
    with torch.no_grad():
        return ((forward(Xte) - Yte) ** 2).mean(dim=(1, 2)).double().cpu().numpy()
