"""Model spec → ``nn.Module`` (docs/methods.md §4). Pure: no I/O, no downloads, no pickles.

The input shape comes from the data: ``(D,)`` for vectors or ``(C, H, W)`` for images. An MLP flattens whatever
it gets; the convolutional architectures need images. Initialisation is PyTorch's default (Kaiming-uniform
weights, uniform biases), drawn from ``seed`` so that a seed fixes θ₀ on every device (Li et al. used Keras'
Glorot init; docs/methods.md §4.1).

    >>> net = build_model({"arch": "mlp", "hidden": [200, 200]}, (784,), 10, seed=0)
    >>> count_params(net)
    199210
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from estimators.base import EstimatorError
from estimators.models.spec import CNNSpec, LeNetSpec, MLPSpec, ResNetSpec, parse_model_spec

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def count_params(module: nn.Module) -> int:
    """D: the number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def _image_shape(input_shape: Sequence[int], arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise EstimatorError(
            f"arch '{arch}' needs images of shape N×C×H×W but the data has per-sample shape {tuple(input_shape)}; "
            'upload images (or a 4-d array), or use {"arch": "mlp"}'
        )
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


def _mlp(spec: MLPSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
    width = int(math.prod(input_shape))
    layers: list[nn.Module] = [nn.Flatten()]
    for h in spec.hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[spec.activation]()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def _lenet(spec: LeNetSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
    C, H, W = _image_shape(input_shape, "lenet")
    h, w = (H - 4) // 2, (W - 4) // 2
    h, w = (h - 4) // 2, (w - 4) // 2
    if h < 1 or w < 1:
        raise EstimatorError(
            f"lenet needs images of at least 16×16 (two 5×5 'valid' convs and two 2×2 pools), got {H}×{W}; "
            'use {"arch": "cnn"} for small images'
        )
    act = _ACTIVATIONS[spec.activation]
    return nn.Sequential(
        nn.Conv2d(C, 6, 5),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h * w, 120),
        act(),
        nn.Linear(120, 84),
        act(),
        nn.Linear(84, n_classes),
    )


def _cnn(spec: CNNSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
    C, H, W = _image_shape(input_shape, "cnn")
    act = _ACTIVATIONS[spec.activation]
    layers: list[nn.Module] = []
    for c in spec.channels:
        layers += [nn.Conv2d(C, c, spec.kernel_size, padding=spec.kernel_size // 2), act()]
        if H >= 2 and W >= 2:
            layers.append(nn.MaxPool2d(2))
            H, W = H // 2, W // 2
        C = c
    layers.append(nn.Flatten())
    width = C * H * W
    for h in spec.hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int, act: type[nn.Module]) -> None:
        super().__init__()

        def nrm(c: int) -> nn.Module:
            return nn.GroupNorm(groups, c) if norm == "group" else nn.Identity()

        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
        self.n1 = nrm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none")
        self.n2 = nrm(cout)
        self.act = act()
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=norm == "none"), nrm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return self.act(out + self.short(x))


def _resnet(spec: ResNetSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
    C, _, _ = _image_shape(input_shape, "resnet")
    if spec.depth in (10, 18):
        blocks = [1, 1, 1, 1] if spec.depth == 10 else [2, 2, 2, 2]
    else:
        blocks = [(spec.depth - 2) // 6] * 3
    widths = [spec.width * 2**i for i in range(len(blocks))]
    if spec.norm == "group" and any(w % spec.groups for w in widths):
        raise EstimatorError(
            f"resnet groups={spec.groups} must divide every stage width {widths}; change width or groups"
        )
    act = _ACTIVATIONS[spec.activation]
    layers: list[nn.Module] = [nn.Conv2d(C, widths[0], 3, padding=1, bias=spec.norm == "none")]
    if spec.norm == "group":
        layers.append(nn.GroupNorm(spec.groups, widths[0]))
    layers.append(act())
    cin = widths[0]
    for stage, (n, w) in enumerate(zip(blocks, widths)):
        for b in range(n):
            layers.append(_BasicBlock(cin, w, 2 if (b == 0 and stage > 0) else 1, spec.norm, spec.groups, act))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes)]
    return nn.Sequential(*layers)


_BUILDERS = {"mlp": _mlp, "lenet": _lenet, "cnn": _cnn, "resnet": _resnet}


def build_model(spec: Any, input_shape: Sequence[int], n_classes: int, *, seed: int = 0) -> nn.Module:
    """Build the network of ``spec`` for per-sample ``input_shape`` and ``n_classes`` outputs, initialised from
    ``seed`` (the global RNG is left untouched)."""
    spec = parse_model_spec(spec)
    if spec.arch == "pretrained":  # a pretrained encoder + new head (estimators/models/text_classifier.py)
        from estimators.models.text_classifier import build_text_classifier

        return build_text_classifier(spec, n_classes, seed=seed, input_shape=input_shape)
    if n_classes < 1:
        raise EstimatorError(f"n_classes must be ≥ 1, got {n_classes}")
    if not input_shape or any(int(s) < 1 for s in input_shape):
        raise EstimatorError(f"bad input shape {tuple(input_shape)}; expected (D,) or (C, H, W)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _BUILDERS[spec.arch](spec, tuple(int(s) for s in input_shape), int(n_classes))


# ------------------------------------------------------------------------------ size before building


def spec_param_count(spec: Any, input_shape: Sequence[int], n_classes: int) -> int:
    """D of the network :func:`build_model` would build, computed from the spec alone (Python ints: exact at any
    size, and nothing is allocated), so a too-large spec is refused before a single tensor exists.

    >>> spec_param_count({"arch": "mlp", "hidden": [200, 200]}, (784,), 10)
    199210
    >>> spec_param_count({"arch": "mlp", "hidden": [65536] * 64}, (1000,), 10) > 2 * 10**11
    True
    """
    spec = parse_model_spec(spec)
    n = int(n_classes)
    if n < 1:
        raise EstimatorError(f"n_classes must be ≥ 1, got {n_classes}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise EstimatorError(f"bad input shape {shape}; expected (D,) or (C, H, W)")

    def linear(i: int, o: int) -> int:
        return i * o + o

    if isinstance(spec, MLPSpec):
        width, total = math.prod(shape), 0
        for h in spec.hidden:
            total, width = total + linear(width, h), h
        return total + linear(width, n)
    if isinstance(spec, LeNetSpec):
        C, H, W = _image_shape(shape, "lenet")
        h, w = ((H - 4) // 2 - 4) // 2, ((W - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise EstimatorError(f'lenet needs images of at least 16×16, got {H}×{W}; use {{"arch": "cnn"}}')
        return (C * 6 * 25 + 6) + (6 * 16 * 25 + 16) + linear(16 * h * w, 120) + linear(120, 84) + linear(84, n)
    if isinstance(spec, CNNSpec):
        C, H, W = _image_shape(shape, "cnn")
        k, total = spec.kernel_size, 0
        for c in spec.channels:
            total += C * c * k * k + c
            if H >= 2 and W >= 2:
                H, W = H // 2, W // 2
            C = c
        width = C * H * W
        for h in spec.hidden:
            total, width = total + linear(width, h), h
        return total + linear(width, n)
    if isinstance(spec, ResNetSpec):
        C, _, _ = _image_shape(shape, "resnet")
        blocks = (
            ([1, 1, 1, 1] if spec.depth == 10 else [2, 2, 2, 2])
            if spec.depth in (10, 18)
            else [(spec.depth - 2) // 6] * 3
        )
        widths = [spec.width * 2**i for i in range(len(blocks))]
        group = spec.norm == "group"

        def conv(i: int, o: int, k: int) -> int:  # bias only without normalisation; GroupNorm adds 2 per channel
            return i * o * k * k + (2 * o if group else o)

        total, cin = conv(C, widths[0], 3), widths[0]
        for stage, (nb, w) in enumerate(zip(blocks, widths)):
            for b in range(nb):
                stride = 2 if (b == 0 and stage > 0) else 1
                total += conv(cin, w, 3) + conv(w, w, 3)
                if stride != 1 or cin != w:
                    total += conv(cin, w, 1)
                cin = w
        return total + linear(cin, n)
    raise EstimatorError(f"unknown architecture {spec.arch!r}")  # pragma: no cover - the spec union is closed
