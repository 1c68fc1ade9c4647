"""Model specs (docs/methods.md §4) and the builders that turn them into ``nn.Module``s."""

from estimators.models.builders import build_model, count_params, spec_param_count
from estimators.models.spec import (
    ARCHITECTURES,
    CNNSpec,
    LeNetSpec,
    MLPSpec,
    ModelSpec,
    PretrainedSpec,
    ResNetSpec,
    TrainSpec,
    parse_model_spec,
)

__all__ = [
    "ARCHITECTURES",
    "CNNSpec",
    "LeNetSpec",
    "MLPSpec",
    "ModelSpec",
    "PretrainedSpec",
    "ResNetSpec",
    "TrainSpec",
    "build_model",
    "count_params",
    "parse_model_spec",
    "spec_param_count",
]
