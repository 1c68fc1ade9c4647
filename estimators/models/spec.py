"""Model specs (docs/methods.md §4): JSON validated by pydantic, never code, never pickles.

Examples::

    {"arch": "mlp", "hidden": [200, 200]}
    {"arch": "lenet"}
    {"arch": "cnn", "channels": [16, 32]}
    {"arch": "resnet", "depth": 8}
    {"arch": "pretrained", "source": "minilm"}

each optionally with ``"train": {"optimizer": "adam", "lr": 1e-3, "epochs": 10, "batch_size": 128,
"weight_decay": 0}``. :func:`parse_model_spec` turns a dict into one of the typed specs below; the ``arch`` key
selects the type. Unknown keys are errors (a typo must not silently fall back to a default).

    >>> parse_model_spec({"arch": "mlp", "hidden": [64]}).train.lr
    0.001
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from estimators.base import EstimatorError

Activation = Literal["relu", "tanh", "gelu", "sigmoid", "elu", "leaky_relu"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrainSpec(_Strict):
    """How a model is trained: the same block drives direct (baseline) and subspace training.

    ``weight_decay`` is the optimizer's L2 term on the *trained* parameters (θ for direct training, θ_d for
    subspace training). Li et al. used Adam, lr 1e−3, batch 128 (docs/methods.md §4.2).

    Training runs to convergence (``stop="plateau"``): every ``eval_every`` steps (default one epoch, 50–1000
    steps) the validation metric and loss are scored; after ``patience`` scores with neither the metric up by
    more than ``min_delta`` nor the loss down by more than ``loss_tol`` the lr drops ×0.1 (``lr_drops`` times),
    then training stops. ``epochs`` is only the cap; a run that reaches it is marked unconverged.
    ``stop="fixed"`` trains exactly ``epochs`` (the protocol of subspace 1.x).
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    epochs: int = Field(500, ge=1, le=10_000, description="maximum epochs (a cap unless stop='fixed')")
    batch_size: int = Field(128, ge=1, le=1_000_000)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    stop: Literal["plateau", "fixed"] = "plateau"
    patience: int = Field(5, ge=1, le=1000, description="scores without improvement before an lr drop / the stop")
    min_delta: float = Field(0.002, ge=0, le=1, description="metric gain that counts as improvement")
    loss_tol: float = Field(0.01, ge=0, description="loss decrease (nats) that counts as improvement")
    eval_every: int | None = Field(None, ge=1, description="steps between scores; default one epoch, 50–1000")
    lr_drops: int = Field(1, ge=0, le=10, description="lr ×0.1 on a plateau this many times before stopping")


class MLPSpec(_Strict):
    """Fully connected network: flatten → [Linear → activation] × len(hidden) → Linear(n_classes)."""

    arch: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(default_factory=lambda: [200, 200], max_length=64)
    activation: Activation = "relu"
    train: TrainSpec = Field(default_factory=TrainSpec)


class LeNetSpec(_Strict):
    """LeNet-5 as in Li et al.: conv(6,5×5)-pool-conv(16,5×5)-pool-fc120-fc84-fc(n_classes), 'valid' convs.

    On 1×28×28 inputs with 10 classes D = 44,426 (Li et al. Table 1).
    """

    arch: Literal["lenet"] = "lenet"
    activation: Activation = "relu"
    train: TrainSpec = Field(default_factory=TrainSpec)


class CNNSpec(_Strict):
    """Plain CNN: [conv k×k ('same') → activation → 2×2 max-pool] per entry of ``channels`` → flatten →
    [Linear → activation] × len(hidden) → Linear(n_classes). Pooling stops once the feature map is 1×1."""

    arch: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=32
    )
    kernel_size: int = Field(3, ge=1, le=15)
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(default_factory=list, max_length=16)
    activation: Activation = "relu"
    train: TrainSpec = Field(default_factory=TrainSpec)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("kernel_size must be odd so that 'same' padding keeps the image size")
        return v


class ResNetSpec(_Strict):
    """Small residual network with basic blocks (He et al. 2016).

    ``depth`` = 6n+2 (8, 14, 20, 26, 32, …) gives the CIFAR-style three-stage net with n blocks per stage and
    widths (w, 2w, 4w); ``depth`` 10 or 18 gives the four-stage [1,1,1,1] / [2,2,2,2] net with widths
    (w, 2w, 4w, 8w) and a 3×3 stem suited to small images. Normalisation is GroupNorm (or none) rather than
    BatchNorm: it keeps no running statistics, so several seeds can be trained at once as one vmapped model and
    θ₀ + Pθ_d fully determines the network.
    """

    arch: Literal["resnet"] = "resnet"
    depth: int = Field(8, ge=8, le=110)
    width: int = Field(16, ge=1, le=512)
    norm: Literal["group", "none"] = "group"
    groups: int = Field(4, ge=1, le=64, description="GroupNorm groups; must divide every stage width")
    activation: Activation = "relu"
    train: TrainSpec = Field(default_factory=TrainSpec)

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int) -> int:
        if v in (10, 18) or (v - 2) % 6 == 0:
            return v
        raise ValueError("resnet depth must be 6n+2 (8, 14, 20, 26, 32, …) or 10/18")


class PretrainedSpec(_Strict):
    """A pretrained text encoder plus a new linear classification head (docs/methods.md §4, §4.5, issue 16).

    ``source``: ``"minilm"`` (the packaged all-MiniLM-L6-v2) or ``"local"`` with ``path`` the directory of an
    uploaded Hugging Face-style model (the service sets ``path`` after resolving an upload; a spec submitted by a
    user must not carry a path of its own). The input X is the (N, L) token-id matrix of
    :func:`estimators.text.tokenize_texts`. The head reads the ``pooling`` of the last hidden states.
    ``train_blocks``: ``None`` trains (and projects into) every weight; L trains only the last L transformer
    blocks and the head, the embeddings and earlier blocks staying at their pretrained values. Dropout is off
    (the encoder stays in eval mode), so θ₀ + Pθ_d fully determines the network.
    """

    arch: Literal["pretrained"] = "pretrained"
    source: Literal["minilm", "local"] = "minilm"
    path: str | None = Field(None, description="directory of an uploaded model (source='local'); set by the service")
    train_blocks: int | None = Field(None, ge=0, le=1024, description="None: all weights; L: last L blocks + head")
    max_length: int = Field(128, ge=2, le=4096, description="tokens per text (longer texts are truncated)")
    pooling: Literal["mean", "cls"] = "mean"
    init: Literal["pretrained", "random"] = Field(
        "pretrained",
        description="'random': the same architecture freshly initialised (fixed seed 2021), the control of Aghajanyan et al.",
    )
    train: TrainSpec = Field(default_factory=TrainSpec)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("path must be a directory")
        return v

    def model_post_init(self, __context: Any) -> None:
        if (self.source == "local") != (self.path is not None):
            raise ValueError("source='local' needs the model directory in 'path'; source='minilm' takes no path")


ModelSpec = Annotated[MLPSpec | LeNetSpec | CNNSpec | ResNetSpec | PretrainedSpec, Field(discriminator="arch")]
ARCHITECTURES = ("mlp", "lenet", "cnn", "resnet", "pretrained")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelSpec)


def parse_model_spec(raw: Any) -> MLPSpec | LeNetSpec | CNNSpec | ResNetSpec | PretrainedSpec:
    """Validate a model spec (dict or an already-typed spec); raises EstimatorError naming the bad field."""
    if isinstance(raw, (MLPSpec, LeNetSpec, CNNSpec, ResNetSpec, PretrainedSpec)):
        return raw
    if not isinstance(raw, dict):
        raise EstimatorError(
            f'a model spec must be a JSON object such as {{"arch": "mlp", "hidden": [200, 200]}}, got {type(raw).__name__}'
        )
    if "arch" not in raw:
        raise EstimatorError(f"model spec has no 'arch'; use one of {', '.join(ARCHITECTURES)}")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(spec)'}: {e['msg']}" for e in exc.errors())
        raise EstimatorError(f"invalid model spec: {problems}") from None
