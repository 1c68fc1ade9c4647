"""Model specs (docs/methods.md §4) and builders: parameter counts against Li et al.'s published D (docs/methods.md §4.3)."""

import pytest
import torch

from estimators.base import EstimatorError
from estimators.models import build_model, count_params, parse_model_spec


@pytest.mark.parametrize(
    "spec, shape, D",
    [
        pytest.param({"arch": "mlp", "hidden": [200, 200]}, (784,), 199_210, id="mnist-fc"),
        pytest.param({"arch": "mlp", "hidden": [200, 200]}, (1, 28, 28), 199_210, id="mnist-fc-images"),
        pytest.param({"arch": "lenet"}, (1, 28, 28), 44_426, id="mnist-lenet"),
        pytest.param({"arch": "lenet"}, (3, 32, 32), 62_006, id="cifar-lenet"),
        pytest.param({"arch": "mlp", "hidden": [400] * 5}, (784,), 959_610, id="mnist-fc5-400"),
        pytest.param({"arch": "mlp", "hidden": [200, 200]}, (3072,), 656_810, id="cifar-fc"),
    ],
)
def test_parameter_counts_match_li_table(spec, shape, D):
    assert count_params(build_model(spec, shape, 10, seed=0)) == D


@pytest.mark.parametrize(
    "spec, shape",
    [
        ({"arch": "mlp", "hidden": [16]}, (2, 5, 5)),
        ({"arch": "lenet", "activation": "tanh"}, (1, 16, 16)),
        ({"arch": "cnn", "channels": [4, 8], "hidden": [12]}, (3, 9, 7)),
        ({"arch": "resnet", "depth": 8, "width": 4, "groups": 2}, (1, 8, 8)),
        ({"arch": "resnet", "depth": 10, "width": 4, "groups": 2, "norm": "none"}, (3, 8, 8)),
    ],
)
def test_forward_shapes(spec, shape):
    net = build_model(spec, shape, 7, seed=1)
    out = net(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()


def test_resnet18_layout():
    net = build_model({"arch": "resnet", "depth": 18, "width": 8, "groups": 4}, (3, 16, 16), 10)
    n_blocks = sum(1 for m in net.modules() if type(m).__name__ == "_BasicBlock")
    assert n_blocks == 8
    n_cifar = sum(
        1
        for m in build_model({"arch": "resnet", "depth": 20}, (3, 8, 8), 10).modules()
        if type(m).__name__ == "_BasicBlock"
    )
    assert n_cifar == 9  # (20 - 2) / 6 = 3 blocks in each of 3 stages


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model({"arch": "mlp", "hidden": [8]}, (4,), 3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model({"arch": "mlp", "hidden": [8]}, (4,), 3, seed=5)
    c = build_model({"arch": "mlp", "hidden": [8]}, (4,), 3, seed=6)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_train_block_defaults_and_overrides():
    spec = parse_model_spec({"arch": "mlp"})
    assert spec.hidden == [200, 200]
    assert (spec.train.optimizer, spec.train.lr, spec.train.epochs, spec.train.batch_size, spec.train.weight_decay) == (
        "adam",
        1e-3,
        500,
        128,
        0.0,
    )
    assert (spec.train.stop, spec.train.patience, spec.train.lr_drops) == ("plateau", 5, 1)  # epochs is a cap
    spec = parse_model_spec({"arch": "lenet", "train": {"optimizer": "sgd", "lr": 0.1, "epochs": 3}})
    assert spec.train.optimizer == "sgd" and spec.train.lr == 0.1 and spec.train.epochs == 3


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"hidden": [3]}, "no 'arch'"),
        ({"arch": "transformer"}, "arch"),
        ({"arch": "mlp", "hiden": [3]}, "hiden"),
        ({"arch": "mlp", "hidden": [0]}, "hidden"),
        ({"arch": "cnn", "kernel_size": 4}, "odd"),
        ({"arch": "resnet", "depth": 9}, r"6n\+2"),
        ({"arch": "mlp", "train": {"lr": -1}}, "train.lr"),
        ({"arch": "mlp", "train": {"optimizer": "rmsprop"}}, "optimizer"),
        ("import os", "JSON object"),
    ],
)
def test_invalid_specs_are_rejected_with_a_message(raw, fragment):
    with pytest.raises(EstimatorError, match=fragment):
        parse_model_spec(raw)


def test_conv_architectures_need_images():
    with pytest.raises(EstimatorError, match="N×C×H×W"):
        build_model({"arch": "lenet"}, (64,), 10)
    with pytest.raises(EstimatorError, match="16×16"):
        build_model({"arch": "lenet"}, (1, 8, 8), 10)
    with pytest.raises(EstimatorError, match="groups"):
        build_model({"arch": "resnet", "width": 6, "groups": 4}, (1, 8, 8), 10)
