"""Subspace wrapper θ = θ₀ + Pθ_d (docs/methods.md §4.1) and SAID (§4.5)."""

import pytest
import torch

from estimators.models import build_model, count_params
from estimators.models.spec import TrainSpec
from estimators.subspace.projections import PROJECTIONS, make_projection
from estimators.subspace.sweep import train_models
from estimators.subspace.wrapper import DirectModel, SubspaceModel


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: a single thread is faster and immune to other processes competing for the 2 cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SPECS = [
    ({"arch": "mlp", "hidden": [20, 20]}, (30,)),
    ({"arch": "lenet"}, (1, 16, 16)),
    ({"arch": "cnn", "channels": [4, 8]}, (3, 8, 8)),
    ({"arch": "resnet", "depth": 8, "width": 4, "groups": 2}, (1, 8, 8)),
]


@pytest.mark.parametrize("spec, shape", SPECS, ids=[s["arch"] for s, _ in SPECS])
@pytest.mark.parametrize("kind", PROJECTIONS)
def test_zero_theta_reproduces_initial_outputs_exactly(spec, shape, kind):
    net = build_model(spec, shape, 5, seed=3)
    D = count_params(net)
    model = SubspaceModel([net], make_projection(kind, D, 16, seeds=[0]))
    x = torch.randn(6, *shape)
    with torch.no_grad():
        assert torch.equal(model(x, shared_input=True)[0], net(x))


@pytest.mark.parametrize("spec, shape", SPECS[::3], ids=["mlp", "resnet"])
def test_zero_theta_vmapped_seeds_match_each_network(spec, shape):
    nets = [build_model(spec, shape, 5, seed=s) for s in range(3)]
    model = SubspaceModel(nets, make_projection("fastfood", count_params(nets[0]), 16, seeds=[0, 1, 2]))
    x = torch.randn(3, 4, *shape)
    with torch.no_grad():
        out = model(x)
        for s in range(3):
            torch.testing.assert_close(out[s], nets[s](x[s]), rtol=1e-5, atol=1e-5)


def test_only_theta_d_receives_gradients():
    net = build_model({"arch": "lenet"}, (1, 16, 16), 4, seed=0)
    model = SubspaceModel([net], make_projection("fastfood", count_params(net), 32, seeds=[0]))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["theta_d"]
    model(torch.randn(1, 3, 1, 16, 16)).square().sum().backward()
    assert model.theta_d.grad is not None and torch.count_nonzero(model.theta_d.grad) > 0
    assert all(p.grad is None for p in model.net.parameters())
    assert all(p.grad is None for p in net.parameters())  # the caller's module is untouched
    assert not model.theta0.requires_grad


def test_effective_parameters_are_theta0_plus_P_theta():
    net = build_model({"arch": "mlp", "hidden": [7]}, (5,), 3, seed=1)
    P = make_projection("dense", count_params(net), 4, seeds=[2])
    model = SubspaceModel([net], P)
    with torch.no_grad():
        model.theta_d.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.25]]))
    flat0 = torch.cat([p.reshape(-1) for p in net.parameters()])
    expected = flat0 + P.M[0].T @ model.theta_d[0].detach()
    got = torch.cat([v.reshape(-1) for v in model.parameters_of_seed(0).values()])
    torch.testing.assert_close(got, expected)
    # and the forward pass uses exactly those parameters
    x = torch.randn(4, 5)
    ref = torch.func.functional_call(net, model.parameters_of_seed(0), (x,))
    torch.testing.assert_close(model(x, shared_input=True)[0], ref)


def test_said_trains_d_numbers_with_one_scale_per_tensor():
    net = build_model({"arch": "mlp", "hidden": [10, 10]}, (6,), 3, seed=0)
    m = SubspaceModel.n_scalars(net)
    assert m == 6
    d = 20
    model = SubspaceModel([net], make_projection("fastfood", count_params(net), d - m, seeds=[0]), said=True)
    assert model.d == d
    assert sum(p.numel() for p in model.trainable()) == d
    assert torch.equal(model.lam, torch.ones(1, m))
    with torch.no_grad():
        model.theta_d.normal_()
        model.lam[0, 2] = 3.0  # scale the 2nd layer's weight offset
    off = model.offset()[0]
    plain = model.projection(model.theta_d)[0]
    sizes = [p.numel() for p in net.parameters()]
    start = sum(sizes[:2])
    torch.testing.assert_close(off[start : start + sizes[2]], 3.0 * plain[start : start + sizes[2]])
    torch.testing.assert_close(off[: sizes[0]], plain[: sizes[0]])
    model(torch.randn(1, 4, 6)).sum().backward()
    assert model.lam.grad is not None and torch.count_nonzero(model.lam.grad) > 0


def test_seeds_trained_together_equal_seeds_trained_alone():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 12, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    spec = TrainSpec(epochs=2, batch_size=16, lr=0.05, stop="fixed")
    nets = [build_model({"arch": "mlp", "hidden": [8]}, (12,), 3, seed=s) for s in (0, 1)]
    D = count_params(nets[0])

    both = SubspaceModel(nets, make_projection("fastfood", D, 10, seeds=[5, 6]))
    res_both = train_models(both, both.trainable(), X, y, X, y, spec, order_seeds=[7, 8])
    for s in (0, 1):
        alone = SubspaceModel([nets[s]], make_projection("fastfood", D, 10, seeds=[[5, 6][s]]))
        res = train_models(alone, alone.trainable(), X, y, X, y, spec, order_seeds=[[7, 8][s]])
        torch.testing.assert_close(alone.theta_d[0], both.theta_d[s], rtol=1e-4, atol=1e-5)
        assert res.metric[0] == pytest.approx(res_both.metric[s])
    assert torch.count_nonzero(both.theta_d) > 0

    direct = DirectModel(nets)
    out = train_models(direct, [direct.theta], X, y, X, y, spec, order_seeds=[1, 2])
    assert out.steps == 2 * 5 and all(0 <= a <= 1 for a in out.metric)
    assert not torch.equal(direct.theta, direct.theta0)
