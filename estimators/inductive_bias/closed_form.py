"""Boopathy et al. (ICML 2023) closed-form inductive-bias complexity, in bits (docs/methods.md §3.1).

The task's hypothesis space is the set of band-limited functions on an m-sphere of radius R (the data manifold):
combinations of Laplace–Beltrami eigenfunctions up to frequency M = 2πR/δ, δ the minimum distance between classes.
With ε the target error, n training points, C classes (D_out = C − 1 outputs, P = C, B = 1):

    K      = [√((m−1)² + 4M²) − (m−1)] / 2                 (largest harmonic degree, K(K+m−1) ≤ M², not rounded)
    E      = binom(m+K, m) + binom(m+K−1, m)                (sphere harmonics up to degree K, Gamma binomials)
    dimΘ   = 2·D_out·P·E,   dimΘ_q = dimΘ − n·D_out
    L_f    = K·√D_out / R
    ln W   = ½ln(m/6) + [ln 2 + ((m+1)/2)ln π + ln P − lnΓ((m+1)/2)]/m + ln R − (ln n)/m
    Ĩ      = dimΘ_q · [log₂B + ½log₂D_out + ½log₂P − log₂ε + log₂L_f + ln W / ln 2]      bits

Everything is evaluated in log space (``gammaln``), so m up to several hundred and astronomically large E never
overflow; :func:`classification_bits` returns the bits as a float (``inf`` only when Ĩ itself exceeds the float
range, ~1.8e308 bits) together with ``log10`` of |Ĩ|.

>>> r = classification_bits(epsilon=0.001, n=60000, m=14, R=17.179045827183984, n_classes=10, delta=2.3987084824335305)
>>> f"{r.bits:.3e}"      # MNIST inputs of docs/methods.md §3.1
'1.485e+16'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import gammaln

LN2 = math.log(2.0)


def _log_binom(a: float, b: float) -> float:
    """ln binom(a, b) = lnΓ(a+1) − lnΓ(b+1) − lnΓ(a−b+1) (real arguments, a ≥ b ≥ 0)."""
    return float(gammaln(a + 1.0) - gammaln(b + 1.0) - gammaln(a - b + 1.0))


def harmonic_degree(m: float, M: float) -> float:
    """K = [√((m−1)² + 4M²) − (m−1)]/2, the (non-integer) degree with K(K+m−1) = M² (docs/methods.md §3.1)."""
    return (math.sqrt((m - 1.0) ** 2 + 4.0 * M * M) - (m - 1.0)) / 2.0


def log_num_harmonics(m: float, K: float) -> float:
    """ln E, E = binom(m+K, m) + binom(m+K−1, m): the number of m-sphere harmonics of degree ≤ K."""
    a = _log_binom(m + K, m)
    if m + K - 1.0 < m:  # K < 1: binom(m+K−1, m) with a negative lower-complement; Gamma form is still defined
        b = float(gammaln(m + K) - gammaln(m + 1.0) - gammaln(K)) if K > 0 else -math.inf
    else:
        b = _log_binom(m + K - 1.0, m)
    return float(np.logaddexp(a, b))


def log_wasserstein(n: float, m: float, R: float, P: float) -> float:
    """ln W, the Wasserstein-distance term of docs/methods.md §3.1."""
    return (
        0.5 * math.log(m / 6.0)
        + (math.log(2.0) + (m + 1.0) / 2.0 * math.log(math.pi) + math.log(P) - float(gammaln((m + 1.0) / 2.0))) / m
        + math.log(R)
        - math.log(n) / m
    )


@dataclass(frozen=True)
class ClosedForm:
    """The closed form's result and every intermediate (all reported in ``details``)."""

    bits: float  # Ĩ (may be negative when n·D_out > dimΘ; inf only past the float range)
    log10_abs_bits: float  # log10 |Ĩ|
    sign: int  # sign of Ĩ
    max_frequency: float  # M = 2πR/δ
    harmonic_degree: float  # K
    log10_num_harmonics: float  # log10 E
    log10_dim_theta: float  # log10 dimΘ
    dim_theta_q_sign: int
    log10_abs_dim_theta_q: float
    bracket_bits_per_dim: float  # the bracket [...] of Ĩ, bits per parameter
    lipschitz_f: float  # L_f
    log_wasserstein: float  # ln W

    def as_dict(self) -> dict:
        return asdict(self)


def _combine(log_dim_q: float, dim_q_sign: int, bracket: float) -> tuple[float, float, int]:
    """Ĩ = dimΘ_q · bracket from ln|dimΘ_q| (sign separate); returns (bits, log10|Ĩ|, sign)."""
    if bracket == 0.0 or dim_q_sign == 0:
        return 0.0, -math.inf, 0
    sign = dim_q_sign * (1 if bracket > 0 else -1)
    log_abs = log_dim_q + math.log(abs(bracket))
    log10_abs = log_abs / math.log(10.0)
    bits = sign * math.exp(log_abs) if log_abs < 709.0 else sign * math.inf
    return bits, log10_abs, sign


def _log_sub(log_a: float, b: float) -> tuple[float, int]:
    """ln|e^{log_a} − b| and its sign, for b ≥ 0, without forming e^{log_a}."""
    if b <= 0.0:
        return log_a, 1
    log_b = math.log(b)
    if log_a > log_b:
        return log_a + math.log1p(-math.exp(log_b - log_a)), 1
    if log_a < log_b:
        return log_b + math.log1p(-math.exp(log_a - log_b)), -1
    return -math.inf, 0


def classification_bits(
    *,
    epsilon: float,
    n: float,
    m: float,
    R: float,
    n_classes: int,
    delta: float,
    d_out: float | None = None,
    P: float | None = None,
    B: float = 1.0,
) -> ClosedForm:
    """Ĩ in bits for a C-class classification task (docs/methods.md §3.1, `difficulty()` of the authors' code).

    ``d_out`` defaults to C − 1 and ``P`` to C, as the authors do for classification.

    >>> r = classification_bits(epsilon=0.1, n=1280901, m=48, R=943.5923, n_classes=1000, delta=65)
    >>> f"{r.bits:.3e}"   # ImageNet inputs of docs/methods.md §3.1
    '3.583e+41'
    """
    for name, v in (("epsilon", epsilon), ("n", n), ("m", m), ("R", R), ("delta", delta), ("B", B)):
        if not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    if n_classes < 2:
        raise ValueError(f"the closed form needs at least 2 classes (D_out = C − 1 ≥ 1), got C = {n_classes}")
    D = float(n_classes - 1 if d_out is None else d_out)
    Pv = float(n_classes if P is None else P)
    M = 2.0 * math.pi * R / delta
    K = harmonic_degree(m, M)
    lnE = log_num_harmonics(m, K)
    ln_dim = math.log(2.0 * D * Pv) + lnE
    ln_dim_q, sign_q = _log_sub(ln_dim, n * D)
    Lf = K * math.sqrt(D) / R
    lnW = log_wasserstein(n, m, R, Pv)
    bracket = math.log2(B) + 0.5 * math.log2(D) + 0.5 * math.log2(Pv) - math.log2(epsilon) + math.log2(Lf) + lnW / LN2
    bits, log10_abs, sign = _combine(ln_dim_q, sign_q, bracket)
    ln10 = math.log(10.0)
    return ClosedForm(
        bits=bits,
        log10_abs_bits=log10_abs,
        sign=sign,
        max_frequency=M,
        harmonic_degree=K,
        log10_num_harmonics=lnE / ln10,
        log10_dim_theta=ln_dim / ln10,
        dim_theta_q_sign=sign_q,
        log10_abs_dim_theta_q=ln_dim_q / ln10,
        bracket_bits_per_dim=bracket,
        lipschitz_f=Lf,
        log_wasserstein=lnW,
    )


def cartpole_bits(T: int, *, n: float = 1e4, delta: float = 1e-3, epsilon: float = 1e-3) -> float:
    """Simplified Cartpole with T observations (docs/methods.md §3.1, "Other task forms"):

    Ĩ = (2(2π/δ)^{2T} π^T / Γ(T+1) − n) · (log₂(4π²/√3) + ½log₂T − log₂δ − log₂n/(2T) − log₂ε).

    >>> f"{cartpole_bits(1):.3e}"
    '4.415e+09'
    """
    ln_first = math.log(2.0) + 2 * T * math.log(2 * math.pi / delta) + T * math.log(math.pi) - float(gammaln(T + 1))
    ln_q, s = _log_sub(ln_first, n)
    bracket = (
        math.log2(4 * math.pi**2 / math.sqrt(3))
        + 0.5 * math.log2(T)
        - math.log2(delta)
        - math.log2(n) / (2 * T)
        - math.log2(epsilon)
    )
    return _combine(ln_q, s, bracket)[0]


def mujoco_bits(m: int, D: int, *, n: float = 1e6, delta: float = 1e-3, epsilon: float = 1e-3) -> float:
    """MuJoCo control with m observation dims and D action dims (docs/methods.md §3.1):

    Ĩ = D·(2(2π/δ)^m π^{m/2} / Γ(m/2+1) − n) · (log₂(4π²/√6) + log₂D + ½log₂m − log₂δ − log₂n/m − log₂ε).

    >>> f"{mujoco_bits(6, 2):.3e}"   # Reacher
    '2.914e+25'
    """
    ln_first = (
        math.log(2.0) + m * math.log(2 * math.pi / delta) + (m / 2) * math.log(math.pi) - float(gammaln(m / 2 + 1))
    )
    ln_q, s = _log_sub(ln_first, n)
    bracket = (
        math.log2(4 * math.pi**2 / math.sqrt(6))
        + math.log2(D)
        + 0.5 * math.log2(m)
        - math.log2(delta)
        - math.log2(n) / m
        - math.log2(epsilon)
    )
    return _combine(ln_q + math.log(D), s, bracket)[0]
