"""inductive_bias (docs/methods.md §3): the 2023 closed form against docs/methods.md §3.1's computed table, its orderings
(docs/methods.md §6), inputs derived from data against independent references (skdim MLE, brute-force distances),
and the 2024 sampled mode's ncx2 machinery against known distributions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import ncx2

from estimators import registry
from estimators.base import EstimatorError
from estimators.inductive_bias import InductiveBiasParams, inductive_bias
from estimators.inductive_bias.closed_form import cartpole_bits, classification_bits, mujoco_bits
from estimators.inductive_bias.delta import evt_delta, sample_delta
from estimators.inductive_bias.sampled import kernel_losses, mlp_losses, ncx2_bits, one_hot
from estimators.label_sharpness import LabelSharpnessParams, label_sharpness

CPU = torch.device("cpu")

# docs/methods.md §3.1 table: (n, R, m, C, δ, ε) -> Ĩ bits
PAPER = {
    "MNIST": ((60000, 17.179045827183984, 14, 10, 2.3987084824335305, 0.001), 1.485e16),
    "SVHN": ((73257, 53.86932485133339, 19, 10, 1.5766998174969105, 0.01), 1.213e31),
    "CIFAR-10": ((50000, 54.9156786783691, 27, 10, 2.7506414616587023, 0.01), 3.438e32),
    "ImageNet": ((1280901, 943.5923, 48, 1000, 65, 0.1), 3.583e41),
}


def bits(n, R, m, C, delta, eps):
    return classification_bits(epsilon=eps, n=n, m=m, R=R, n_classes=C, delta=delta).bits


@pytest.mark.parametrize("name", list(PAPER))
def test_closed_form_reproduces_methods_table(name):
    (n, R, m, C, delta, eps), expected = PAPER[name]
    assert bits(n, R, m, C, delta, eps) == pytest.approx(expected, rel=1e-3)
    # the same through the estimator, every input overridden (the data are ignored)
    p = InductiveBiasParams(n=n, R=R, m=m, n_classes=C, delta=delta, epsilon=eps)
    r = inductive_bias(torch.zeros(3, 2), torch.tensor([0, 1, 0]), p, device=CPU)
    assert r.value == pytest.approx(expected, rel=1e-3)
    assert set(r.details["input_sources"].values()) == {"param"}
    assert r.details["inputs"]["d_out"] == C - 1


def test_closed_form_intermediates_match_table():
    cf = classification_bits(epsilon=0.001, n=60000, m=14, R=17.179045827183984, n_classes=10, delta=2.3987084824335305)
    assert cf.max_frequency == pytest.approx(45.0, abs=0.05)
    assert cf.harmonic_degree == pytest.approx(38.97, abs=0.01)
    assert 10**cf.log10_num_harmonics == pytest.approx(4.13e12, rel=2e-3)
    assert cf.bracket_bits_per_dim == pytest.approx(19.98, abs=0.01)
    # K is the root of K(K+m−1) = M²
    K, m, M = cf.harmonic_degree, 14, cf.max_frequency
    assert K * (K + m - 1) == pytest.approx(M * M, rel=1e-12)


@pytest.mark.parametrize("T,expected", [(1, 4.415e9), (2, 3.326e17), (3, 1.464e25), (4, 4.689e32), (5, 1.187e40)])
def test_cartpole_form(T, expected):
    assert cartpole_bits(T) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("m,D,expected", [(6, 2, 2.914e25), (15, 4, 7.613e58), (17, 6, 1.718e66)])
def test_mujoco_form(m, D, expected):
    assert mujoco_bits(m, D) == pytest.approx(expected, rel=1e-3)


def test_orderings_of_methods_section_6():
    values = [bits(*PAPER[k][0]) for k in ("MNIST", "SVHN", "CIFAR-10", "ImageNet")]
    assert values == sorted(values) and len(set(values)) == 4
    base = dict(n=50000, R=54.9, m=27, C=10, delta=2.75, eps=0.01)

    def at(**kw):
        a = {**base, **kw}
        return bits(a["n"], a["R"], a["m"], a["C"], a["delta"], a["eps"])

    ns = [at(n=v) for v in (1e3, 1e4, 1e5, 1e6)]
    assert all(a > b for a, b in zip(ns, ns[1:])), "decreasing in n"
    eps = [at(eps=v) for v in (1e-4, 1e-3, 1e-2, 1e-1)]
    assert all(a > b for a, b in zip(eps, eps[1:])), "decreasing in ε"
    ms = [at(m=v) for v in (10, 20, 27, 40)]
    assert all(a < b for a, b in zip(ms, ms[1:])), "increasing in m"
    inv_delta = [at(delta=v) for v in (5.0, 2.75, 1.0, 0.5)]
    assert all(a < b for a, b in zip(inv_delta, inv_delta[1:])), "increasing in 1/δ"


def test_log_space_no_overflow_up_to_m_200():
    from scipy.special import binom, gammaln

    def direct(m, M, n, R, C, eps):  # the formula evaluated naively in float64 (overflows for large inputs)
        K = (math.sqrt((m - 1) ** 2 + 4 * M * M) - (m - 1)) / 2
        E = binom(m + K, m) + binom(m + K - 1, m)
        D, P = C - 1, C
        lnW = (
            0.5 * math.log(m / 6)
            + (math.log(2) + (m + 1) / 2 * math.log(math.pi) + math.log(P) - gammaln((m + 1) / 2)) / m
            + math.log(R)
            - math.log(n) / m
        )
        br = (
            0.5 * math.log2(D)
            + 0.5 * math.log2(P)
            - math.log2(eps)
            + math.log2(K * math.sqrt(D) / R)
            + lnW / math.log(2)
        )
        return (2 * D * P * E - n * D) * br

    for m in range(10, 201):
        for delta in (2.4, 0.3):
            cf = classification_bits(epsilon=0.01, n=60000, m=m, R=17.18, n_classes=10, delta=delta)
            assert math.isfinite(cf.log10_abs_bits) and cf.sign == 1
            ref = direct(m, 2 * math.pi * 17.18 / delta, 60000, 17.18, 10, 0.01)
            if math.isfinite(ref):
                assert cf.bits == pytest.approx(ref, rel=1e-9)
            else:  # past the float range the log-space value is still there
                assert cf.log10_abs_bits > 300
    huge = classification_bits(epsilon=0.01, n=1000, m=200, R=100, n_classes=10, delta=0.01)
    assert math.isinf(huge.bits) and 500 < huge.log10_abs_bits < 700  # beyond float: reported in log10


def clustered(n, d, c, seed):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 4))
    X = latent @ rng.normal(size=(4, d)) + 0.01 * rng.normal(size=(n, d)) + 3.0
    y = (latent[:, 0] > 0).astype(np.int64) + 2 * (latent[:, 1] > 0.5)
    return X, y[:n] % c


def test_inputs_derived_from_data_match_independent_references():
    skdim = pytest.importorskip("skdim")
    X, y = clustered(800, 30, 3, 0)
    r = inductive_bias(torch.from_numpy(X), torch.from_numpy(y), InductiveBiasParams(), device=CPU)
    inp = r.details["inputs"]
    assert inp["n"] == 800 and inp["n_classes"] == 3 and inp["epsilon"] == 0.01
    assert inp["R"] == pytest.approx(np.linalg.norm(X, axis=1).max(), rel=1e-12)
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    assert inp["delta"] == pytest.approx(D[y[:, None] != y[None]].min(), rel=1e-12)
    ref_m = skdim.id.MLE().fit(X, n_neighbors=5).dimension_  # k=5, k−1 normaliser, MacKay–Ghahramani
    assert r.details["mle"]["mle_value"] == pytest.approx(ref_m, rel=1e-9)
    assert inp["m"] == round(ref_m)
    assert r.value == pytest.approx(bits(800, inp["R"], round(ref_m), 3, inp["delta"], 0.01), rel=1e-12)
    # δ ≡ 1/K_F
    kf = label_sharpness(torch.from_numpy(X), torch.from_numpy(y), LabelSharpnessParams(), device=CPU).value
    assert r.details["label_sharpness_equivalent"] == pytest.approx(kf, rel=1e-12)
    # a partial override computes only what is missing
    r2 = inductive_bias(torch.from_numpy(X), torch.from_numpy(y), InductiveBiasParams(m=7, delta=0.5), device=CPU)
    assert r2.details["input_sources"]["m"] == "param" and "mle" not in r2.details
    assert r2.details["inputs"]["R"] == inp["R"]


def test_delta_estimators_of_the_authors():
    X, y = clustered(600, 10, 3, 1)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    inter = D[y[:, None] != y[None]]
    # sample: the whole set, no guard -> the exact δ; with a guard -> the smallest distance above it
    assert sample_delta(Xt, yt, sample_size=600, min_distance=0.0, block=128) == pytest.approx(inter.min(), rel=1e-12)
    guard = float(np.quantile(inter, 0.01))
    assert sample_delta(Xt, yt, sample_size=600, min_distance=guard, block=128) == pytest.approx(
        inter[inter >= guard].min(), rel=1e-12
    )
    d, info = evt_delta(Xt, yt, n_pairs=20000, k=200, seed=0)
    assert 0 < d <= info["sampled_min_distance"] + 1e-12
    assert info["sampled_min_distance"] >= inter.min() - 1e-12
    r = inductive_bias(Xt, yt, InductiveBiasParams(delta_method="evt", evt_pairs=20000, evt_k=200, m=5), device=CPU)
    assert r.details["inputs"]["delta"] == pytest.approx(d, rel=1e-12)


@pytest.mark.parametrize(
    "df,nc,scale,q",
    [(20.0, 5.0, 0.05, 1e-3), (200.0, 30.0, 0.01, 1e-3), (5.0, 1.0, 1.0, 1e-3), (50.0, 100.0, 0.002, 1e-2)],
)
def test_ncx2_fit_recovers_inductive_bias(df, nc, scale, q):
    rng = np.random.default_rng(42)
    losses = ncx2.rvs(df, nc, scale=scale, size=10_000, random_state=rng)
    eps = float(ncx2.ppf(q, df, nc, scale=scale))  # a threshold with P(loss <= eps) = q
    truth = -ncx2.logcdf(eps, df, nc, scale=scale) / math.log(2)
    r = ncx2_bits(losses, eps)
    assert r["bits"] == pytest.approx(truth, rel=0.05)
    assert r["nats"] == pytest.approx(r["bits"] * math.log(2), rel=1e-12)
    assert r["method"] == "ncx2 logcdf"


def test_normal_approximation_when_cdf_underflows():
    losses = ncx2.rvs(2000.0, 200.0, scale=0.0005, size=10_000, random_state=np.random.default_rng(0))
    r = ncx2_bits(losses, 0.01)
    assert r["method"].startswith("normal")
    # −ln Φ(z) ≈ z²/2 far in the tail (the reference code's form), within the log term
    assert r["nats"] == pytest.approx(r["reference_code_nats_if_normal"], rel=0.01)
    assert r["bits"] > 1000


def test_kernel_sampler_matches_gp_posterior_moments():
    g = torch.Generator().manual_seed(0)
    Xtr, Xte = torch.randn(60, 6, generator=g), torch.randn(40, 6, generator=g)
    ytr, yte = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (40,), generator=g)
    Ytr, Yte = one_hot(ytr, 3), one_hot(yte, 3)
    losses, info = kernel_losses(Xtr, Ytr, Xte, Yte, sigma=1.5, n_samples=20000, seed=1)
    # E[MSE] = mean((μ − Y)²) + tr(Σ)/n_te for f = μ + Σ^{1/2} z, independent per output
    k = lambda A, B: torch.exp(-(torch.cdist(A.double(), B.double()) ** 2) / (2 * 1.5**2))  # noqa: E731
    Ktr, Kx, Kte = k(Xtr, Xtr), k(Xte, Xtr), k(Xte, Xte)
    sol = torch.linalg.solve(Ktr, Kx.T)
    mu, Sigma = sol.T @ Ytr, Kte - Kx @ sol
    expected = float(((mu - Yte) ** 2).mean() + torch.trace(Sigma) / 40)
    se = losses.std() / math.sqrt(losses.size)
    assert abs(losses.mean() - expected) < 5 * se
    assert info["posterior_mean_test_mse"] == pytest.approx(float(((mu - Yte) ** 2).mean()), rel=1e-6)


def test_sampled_modes_through_the_estimator():
    X, y = clustered(300, 8, 3, 2)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    r = inductive_bias(
        Xt,
        yt,
        InductiveBiasParams(mode="sampled", n_train=100, n_test=50, n_samples=2000, kernel_sigma=3.0, epsilon=0.5),
        device=CPU,
    )
    assert r.details["space"] == "kernel" and r.details["n_train"] == 100
    assert math.isfinite(r.value) and r.value >= 0
    assert r.details["fit"]["loss_quantiles"]["0.0"] > 0
    m = inductive_bias(
        Xt,
        yt,
        InductiveBiasParams(
            mode="sampled", space="mlp", n_train=100, n_test=50, mlp_trials=20, mlp_epochs=5, epsilon=0.2
        ),
        device=CPU,
    )
    assert m.details["mlp"]["trials"] == 20 and math.isfinite(m.value) and m.value >= 0


def test_batched_mlp_training_equals_one_network():
    """The batched trainer trains each trial exactly like a lone nn.Sequential with the same init and batches."""
    g = torch.Generator().manual_seed(3)
    Xtr, Xte = torch.randn(40, 5, generator=g), torch.randn(10, 5, generator=g)
    Ytr, Yte = one_hot(torch.randint(0, 2, (40,), generator=g), 2), one_hot(torch.randint(0, 2, (10,), generator=g), 2)
    batched = mlp_losses(Xtr, Ytr, Xte, Yte, trials=3, width=4, depth=2, epochs=3, batch_size=16, seed=5)
    # rebuild trial 1 by hand: same generator draws as mlp_losses
    g = torch.Generator().manual_seed(5)
    dims = [5, 4, 4, 2]
    Ws, bs = [], []
    for li, (fi, fo) in enumerate(zip(dims[:-1], dims[1:])):
        bound = 1 / math.sqrt(fi)
        shape = (fi, 3, fo) if li == 0 else (3, fi, fo)
        W = (torch.rand(*shape, generator=g) * 2 - 1) * bound
        b = (torch.rand(3, 1, fo, generator=g) * 2 - 1) * bound
        Ws.append(W[:, 1] if li == 0 else W[1])
        bs.append(b[1, 0])
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
    )
    with torch.no_grad():
        for lin, W, b in zip([net[0], net[2], net[4]], Ws, bs):
            lin.weight.copy_(W.T)
            lin.bias.copy_(b)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):
        perm = torch.randperm(40, generator=g)
        for s in range(0, 40, 16):
            idx = perm[s : s + 16]
            opt.zero_grad()
            ((net(Xtr[idx]) - Ytr[idx].float()) ** 2).mean().backward()
            opt.step()
    with torch.no_grad():
        lone = float(((net(Xte) - Yte.float()) ** 2).mean())
    assert batched[1] == pytest.approx(lone, rel=1e-4)


def test_registration_and_errors():
    est = registry.get("inductive_bias")
    assert est.needs_labels and est.version == "1.0.0"
    with pytest.raises(EstimatorError, match="needs class labels"):
        inductive_bias(torch.zeros(3, 2), None, InductiveBiasParams(), device=CPU)
    with pytest.raises(EstimatorError, match="at least 2 classes"):
        inductive_bias(torch.rand(10, 2), torch.zeros(10, dtype=torch.long), InductiveBiasParams(m=3), device=CPU)
    with pytest.raises(EstimatorError, match="bad params"):
        est.parse_params({"delta_method": "magic"})
    with pytest.raises(EstimatorError, match="bad params"):
        est.parse_params({"epsilon": 0})


def test_conflicting_duplicates_make_closed_form_infinite():
    X, y = clustered(200, 6, 2, 4)
    X[5] = X[6]
    y[5], y[6] = 0, 1
    r = inductive_bias(torch.from_numpy(X), torch.from_numpy(y), InductiveBiasParams(m=4), device=CPU)
    assert r.value == math.inf and r.details["inputs"]["delta"] == 0.0
    assert any("δ = 0" in w for w in r.warnings)


def test_cli_analyse_writes_both_results(tmp_path):
    cli_mod = pytest.importorskip("app.cli")
    from typer.testing import CliRunner

    X, y = clustered(300, 12, 3, 5)
    path = tmp_path / "data.npz"
    np.savez(path, X=X.astype(np.float32), y=y)
    res = CliRunner().invoke(
        cli_mod.cli,
        ["analyse", str(path), "-e", "label_sharpness", "-e", "inductive_bias", "--json", "-", "--device", "cpu"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    ks = report["results"]["label_sharpness"]
    ib = report["results"]["inductive_bias"]
    assert ks["version"] == ib["version"] == "1.0.0"
    X32 = X.astype(np.float32).astype(np.float64)
    D = np.sqrt(((X32[:, None] - X32[None]) ** 2).sum(-1))
    delta = D[y[:, None] != y[None]].min()
    assert ks["value"] == pytest.approx(1 / delta, rel=1e-9)
    assert ib["details"]["inputs"]["delta"] == pytest.approx(delta, rel=1e-9)
    assert ib["value"] > 0
