"""Subspace reparameterisation of any module (Li et al. 2018; Aghajanyan et al. 2021; docs/methods.md §4.1, §4.5).

DID (Li):   θ = θ₀ + P·θ_d,             θ_d ∈ R^d trained, θ₀ (the module's own init) frozen.
SAID:       θ_i = θ₀,i + λ_t(i)·[P·θ_{d−m}]_i,  λ ∈ R^m (one scalar per parameter tensor, init 1) and
            θ_{d−m} trained, so the total number of trained numbers is exactly d (the paper's d−m, not the
            reference code's off-by-one d−m−1).

The module is never mutated: its parameters are replaced at call time with ``torch.func.functional_call``. S
independent copies (one per seed, each with its own θ₀ and its own projection) are evaluated at once with
``torch.func.vmap``, or by the module's own ``forward_rows(params, x, shared_input=…)`` when its ``rows_ready()``
says so (the pretrained text classifier with frozen lower blocks), or one call per seed when the module sets
``vmap_safe = False``; with S = 1 the module is called directly, so θ_d = 0 reproduces the module's outputs bit for
bit. Only parameters with ``requires_grad`` on are reparameterised (D counts those); the others stay at the
module's own values, which every seed must share (a pretrained encoder frozen below its last blocks). Modules whose
buffers change in training (BatchNorm running stats) are not supported with S > 1; the model
builders use GroupNorm for that reason.

Example::

    >>> nets = [build_model({"arch": "mlp", "hidden": [32]}, (64,), 10, seed=s) for s in (0, 1)]
    >>> P = make_projection("fastfood", count_params(nets[0]), 50, seeds=[10, 11])
    >>> model = SubspaceModel(nets, P)
    >>> model(torch.randn(2, 8, 64)).shape      # (S, batch, classes)
    torch.Size([2, 8, 10])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from estimators.base import EstimatorError
from estimators.subspace.projections import Projection


def trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters that subspace training reparameterises: those with ``requires_grad`` on (all of
    them for a spec model; a pretrained classifier with ``train_blocks`` freezes the rest at θ₀)."""
    return [n for n, p in module.named_parameters() if p.requires_grad]


def subspace_size(module: nn.Module) -> tuple[int, int]:
    """(D, m) of the subspace parameterisation of ``module``: trainable numbers and trainable tensors (SAID's m)."""
    ps = [p for p in module.parameters() if p.requires_grad]
    return int(sum(p.numel() for p in ps)), len(ps)


class _FlatModel(nn.Module):
    """Common part: S flat parameter vectors (S, D) → per-tensor views → functional_call on one skeleton."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        if not modules:
            raise EstimatorError("need at least one module")
        names = trainable_names(modules[0])
        all_names = [n for n, _ in modules[0].named_parameters()]
        if not names:
            raise EstimatorError("the module has no trainable parameters (every requires_grad is off)")
        frozen0 = {n: p for n, p in modules[0].named_parameters() if not p.requires_grad}
        for m in modules[1:]:
            if [n for n, _ in m.named_parameters()] != all_names or trainable_names(m) != names:
                raise EstimatorError("all seeds' modules must have the same architecture and trainable subset")
            for n, p in m.named_parameters():
                # frozen weights live once, in the skeleton: every seed must share them (pretrained θ₀)
                if not p.requires_grad and not torch.equal(p, frozen0[n]):
                    raise EstimatorError(f"frozen parameter {n} differs between seeds; only trained ones may")
        skeleton = copy.deepcopy(modules[0])
        for p in skeleton.parameters():
            p.requires_grad_(False)
        self.net = skeleton
        self.names = names
        params0 = dict(modules[0].named_parameters())
        self.shapes = [tuple(params0[n].shape) for n in names]
        self.sizes = [int(params0[n].numel()) for n in names]
        self.D = int(sum(self.sizes))
        self.n_seeds = len(modules)
        theta0 = torch.stack(
            [torch.cat([p.detach().reshape(-1) for n, p in m.named_parameters() if p.requires_grad]) for m in modules]
        )
        self.register_buffer("theta0", theta0)

    def split(self, theta: Tensor) -> dict[str, Tensor]:
        """(S, D) flat parameters → {name: (S, *shape)} views, in ``named_parameters`` order."""
        # one split (its backward is a single cat) rather than D-sized zero tensors per sliced tensor
        pieces = theta.split(self.sizes, dim=1)
        return {
            name: piece.reshape(theta.shape[0], *shape) for name, shape, piece in zip(self.names, self.shapes, pieces)
        }

    def call(self, theta: Tensor, x: Tensor, *, shared_input: bool = False) -> Tensor:
        """Evaluate the S networks with flat parameters ``theta`` (S, D).

        ``x`` is (S, B, …) — one batch per seed — or, with ``shared_input=True``, one batch (B, …) for all seeds.
        Returns (S, B, outputs).
        """
        params = self.split(theta)
        if self.n_seeds == 1:
            xb = x if shared_input else x[0]
            return functional_call(self.net, {k: v[0] for k, v in params.items()}, (xb,), strict=False).unsqueeze(0)
        if getattr(self.net, "rows_ready", lambda: False)():
            # the module evaluates S rows itself (the pretrained text classifier: batched matmuls, packed tokens)
            return self.net.forward_rows(params, x, shared_input=shared_input)
        if not getattr(self.net, "vmap_safe", True):
            # modules with data-dependent control flow (transformers' mask helpers) cannot be vmapped: one call
            # per seed, stacked — the same arithmetic as vmap, just not fused
            return torch.stack(
                [
                    functional_call(
                        self.net, {k: v[s] for k, v in params.items()}, (x if shared_input else x[s],), strict=False
                    )
                    for s in range(self.n_seeds)
                ]
            )
        fn = lambda p, xb: functional_call(self.net, p, (xb,), strict=False)  # noqa: E731
        return vmap(fn, in_dims=(0, None if shared_input else 0))(params, x)

    def parameters_of_seed(self, s: int) -> dict[str, Tensor]:
        """The effective parameters θ of seed ``s`` as a state-dict-like mapping (detached)."""
        with torch.no_grad():
            theta = self.effective_theta()
        return {k: v[s].clone() for k, v in self.split(theta).items()}

    def effective_theta(self) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, *, shared_input: bool = False) -> Tensor:
        return self.call(self.effective_theta(), x, shared_input=shared_input)


class DirectModel(_FlatModel):
    """Direct (full-D) training of S seeds at once: the baseline of the sweep. θ (S, D) is the trained tensor."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__(modules)
        self.theta = nn.Parameter(self.theta0.clone())

    def effective_theta(self) -> Tensor:
        return self.theta


class SubspaceModel(_FlatModel):
    """θ = θ₀ + P·θ_d (or SAID's θ₀ + λ⊙P·θ_{d−m}) for S seeds; only ``theta_d`` (and ``lam``) are trainable.

    ``projection`` must map R^{d'} → R^D for S seeds, where d' = d (DID) or d − m (SAID, m = number of
    parameter tensors). :attr:`d` is the number of trained numbers per seed.
    """

    def __init__(self, modules: Sequence[nn.Module], projection: Projection, *, said: bool = False) -> None:
        super().__init__(modules)
        if projection.D != self.D:
            raise EstimatorError(f"projection has D={projection.D} rows but the module has {self.D} parameters")
        if projection.n_seeds != self.n_seeds:
            raise EstimatorError(f"projection holds {projection.n_seeds} seeds but {self.n_seeds} modules were given")
        self.projection = projection
        self.said = bool(said)
        self.theta_d = nn.Parameter(
            torch.zeros(self.n_seeds, projection.d, dtype=self.theta0.dtype, device=self.theta0.device)
        )
        if self.said:
            m = len(self.sizes)
            self.lam = nn.Parameter(torch.ones(self.n_seeds, m, dtype=self.theta0.dtype, device=self.theta0.device))
            self.register_buffer(
                "tensor_index", torch.repeat_interleave(torch.arange(m), torch.tensor(self.sizes)), persistent=False
            )
        self.d = projection.d + (len(self.sizes) if self.said else 0)

    @staticmethod
    def n_scalars(module: nn.Module) -> int:
        """m for SAID: the number of trainable parameter tensors (each gets one λ)."""
        return subspace_size(module)[1]

    def offset(self) -> Tensor:
        """θ − θ₀, shape (S, D)."""
        off = self.projection(self.theta_d)
        if self.said:
            off = off * self.lam[:, self.tensor_index.to(off.device)]
        return off

    def effective_theta(self) -> Tensor:
        return self.theta0 + self.offset()

    def trainable(self) -> list[nn.Parameter]:
        return [self.theta_d] + ([self.lam] if self.said else [])
