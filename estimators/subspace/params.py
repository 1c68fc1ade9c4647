"""Params of the ``subspace`` estimator (docs/methods.md §4.2): the sweep, the training overrides, the lr rule."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from estimators.base import MAX_MEMORY_BUDGET_MB, MAX_SEED, MAX_SUBSAMPLE, Params
from estimators.models.spec import ModelSpec, TrainSpec, _Strict

LR_CANDIDATES = (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316, 1.0)


class TrainOverrides(_Strict):
    """Fields that replace the model spec's ``train`` block for this analysis (unset fields keep the spec's)."""

    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    stop: Literal["plateau", "fixed"] | None = None
    patience: int | None = Field(None, ge=1, le=1000)
    min_delta: float | None = Field(None, ge=0, le=1)
    loss_tol: float | None = Field(None, ge=0)
    eval_every: int | None = Field(None, ge=1)
    lr_drops: int | None = Field(None, ge=0, le=10)


class SubspaceParams(Params):
    """Params of the ``subspace`` estimator; defaults follow docs/methods.md §4.2 (3 seeds, 0.9, individual baseline)."""

    model: ModelSpec = Field(description="model spec (docs/methods.md §4); the pipeline injects the user's spec here")
    projection: Literal["dense", "sparse", "fastfood"] = "fastfood"
    said: bool = Field(False, description="SAID (Aghajanyan et al. 2021): one trained scale λ per parameter tensor")
    seeds: int = Field(3, ge=1, le=64)
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="base seed: init, projections, batch order and split all derive from it"
    )
    d_min: int = Field(10, ge=1, le=MAX_SUBSAMPLE)
    grid_factor: float = Field(2.0, gt=1.0, le=100.0)
    bisect_steps: int = Field(3, ge=0, le=30)
    max_d: int | None = Field(None, ge=1, le=MAX_SUBSAMPLE, description="largest d tried; default D")
    threshold: float = Field(0.9, gt=0.0, le=1.0)
    baseline: Literal["individual", "global"] = "individual"
    baseline_value: float = Field(1.0, gt=0.0, le=1.0, description="the baseline when baseline='global'")
    metric: Literal["val_accuracy", "train_accuracy"] = "val_accuracy"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_samples: int | None = Field(
        None, ge=10, le=MAX_SUBSAMPLE, description="seeded subsample of the data before the split"
    )
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    subspace_lr: Literal["range_test", "spec"] | Annotated[float, Field(gt=0, le=100)] = Field(
        "range_test", description="lr of θ_d: a range test per d (default), the spec's lr, or a fixed value"
    )
    lr_candidates: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: list(LR_CANDIDATES), min_length=1, max_length=32
    )
    lr_range_steps: int | None = Field(None, ge=1, description="steps per range-test candidate; default 2 scores")
    n_bootstrap: int = Field(1000, ge=10, le=100_000)
    memory_budget_mb: int = Field(2048, ge=16, le=MAX_MEMORY_BUDGET_MB)

    @field_validator("model", mode="before")
    @classmethod
    def _spec(cls, v: Any) -> Any:
        if v is None:
            raise ValueError('a model spec is required, e.g. {"arch": "mlp", "hidden": [200, 200]}')
        return v


def effective_train(params: SubspaceParams) -> TrainSpec:
    over = {k: v for k, v in params.train.model_dump().items() if v is not None}
    return params.model.train.model_copy(update=over)
