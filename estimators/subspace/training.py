"""Training to convergence for the d_int90 sweep (Li et al. 2018; docs/methods.md §4.2; issue 14).

Li's d_int90 compares a *converged* subspace training with a *converged* direct training. A fixed epoch count
measures the budget instead: small subspaces start slowly, so fewer epochs push d_int90 up. This module trains
S rows at once (the seeds of one d, or the lr candidates of a range test) and stops each row on its own plateau:

* **Rows.** Every trained tensor has the row (seed) as its first axis; :class:`RowOptimizer` applies Adam, AdamW
  or SGD-momentum element-wise with one learning rate per row, so a row behaves exactly as if trained alone and
  a row is frozen by setting its learning rate to 0.
* **Plateau.** Every ``eval_every`` steps the rows are scored (metric and loss on the evaluation set). A row
  *improves* when its metric exceeds its value at the last improvement by more than ``min_delta``, or its loss
  falls below the loss at the last improvement by more than ``loss_tol`` (absolute, nats for cross-entropy). The loss guard keeps a row training while its accuracy still sits at chance but
  the loss falls (the slow start of small d). After ``patience`` evaluations without improvement the row's
  learning rate drops ×``lr_drop_factor`` (``lr_drops`` times), then the row stops: stop reason ``plateau``.
  A row still improving at the cap (``max_steps`` = epochs × batches per epoch) stops with reason ``cap`` and
  counts as *unconverged*; a non-finite loss stops it with ``diverged``.
* **Checkpoint.** Each row ends at its best evaluation (highest metric, earliest on ties).
* **lr range test** (:func:`range_test`, :func:`lr_range_test`): K candidate learning rates train one copy each
  of the same network for a short budget; the candidate with the lowest training loss at the end wins. Adam
  moves every coordinate of θ_d by about lr per step whatever the gradient's scale, and the columns of P have
  unit norm, so one step moves θ by about lr·√d: the lr that suits θ_d depends on d and on the landscape
  (measured on digits, MLP 64: the best of 1e−3…1 was 0.03–0.3 at d = 10…640, while direct training uses 1e−3),
  hence a test per d rather than the spec's lr.

With ``stop="fixed"`` every row runs to the cap and keeps its last state (the protocol of estimator 1.x).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from estimators.base import EstimatorError

STOP_REASONS = ("plateau", "cap", "diverged", "fixed")


# ---------------------------------------------------------------------------------------------------------------
# Per-row optimizer
# ---------------------------------------------------------------------------------------------------------------


class RowOptimizer:
    """Adam / AdamW / SGD-momentum with one learning rate per row (first axis) of every parameter.

    The update formulas are PyTorch's (``torch.optim.Adam`` with L2 ``weight_decay`` added to the gradient,
    ``AdamW`` with decoupled decay ``θ ← θ(1 − lr·wd)``, ``SGD`` with momentum buffer initialised to the first
    gradient), so with equal rows it reproduces ``torch.optim`` to rounding. ``lr`` is a tensor of shape (S,),
    changed in place to drop or freeze a row.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        kind: str,
        lr: Tensor,
        *,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if kind not in ("adam", "adamw", "sgd"):
            raise EstimatorError(f"unknown optimizer {kind!r}; use adam, adamw or sgd")
        self.params = list(params)
        if not self.params or any(p.shape[0] != lr.shape[0] for p in self.params):
            raise EstimatorError("every trained tensor needs the row axis first, with one lr per row")
        self.kind, self.lr, self.wd, self.momentum, self.betas, self.eps = kind, lr, weight_decay, momentum, betas, eps
        self.t = 0
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad
            lr = self.lr.to(p.device, p.dtype).view(-1, *([1] * (p.dim() - 1)))
            if self.kind == "sgd":
                if self.wd:
                    g = g.add(p, alpha=self.wd)
                if self.momentum:
                    buf = st.get("buf")
                    if buf is None:
                        buf = st["buf"] = g.clone()
                    else:
                        buf.mul_(self.momentum).add_(g)
                    g = buf
                p.sub_(lr * g)
                continue
            if self.kind == "adamw" and self.wd:
                p.mul_(1 - lr * self.wd)
            elif self.wd:
                g = g.add(p, alpha=self.wd)
            if not st:
                st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
            m, v = st["m"], st["v"]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.sub_((lr / bc1) * m / denom)


# ---------------------------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """A resolved training protocol (steps, not epochs: the caller converts with its batches per epoch)."""

    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    max_steps: int = 1000
    eval_every: int = 50
    stop: str = "plateau"  # "plateau" or "fixed"
    patience: int = 5
    min_delta: float = 0.002
    loss_tol: float = 0.01
    lr_drops: int = 1
    lr_drop_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.eval_every < 1 or self.patience < 1:
            raise EstimatorError("max_steps, eval_every and patience must be ≥ 1")
        if self.stop not in ("plateau", "fixed"):
            raise EstimatorError(f"stop must be 'plateau' or 'fixed', got {self.stop!r}")


@dataclass
class RowOutcome:
    """How one row (one trial) ended."""

    metric: float  # metric at the kept state (best evaluation for "plateau", last for "fixed")
    loss: float  # evaluation loss at that state
    steps: int  # optimizer steps this row took (frozen steps not counted)
    best_step: int
    stop_reason: str  # one of STOP_REASONS
    lr: float  # the learning rate it started with
    lr_final: float  # after the plateau drops
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, metric, loss) per evaluation

    @property
    def converged(self) -> bool | None:
        """True for a plateau, False for the cap or a divergence, None for a fixed budget (not assessed)."""
        return None if self.stop_reason == "fixed" else self.stop_reason == "plateau"


def train_rows(
    trainable: Sequence[nn.Parameter],
    step_loss: Callable[[int], Tensor],
    evaluate: Callable[[], tuple[Tensor, Tensor]],
    lr: Sequence[float] | Tensor,
    protocol: Protocol,
    *,
    progress: Callable[[float], None] | None = None,
    keep_history: bool = True,
    on_score: Callable[[list[float]], None] | None = None,
) -> list[RowOutcome]:
    """Train S rows to their plateaus (or the cap); see the module docstring.

    ``step_loss(k)`` returns the loss of step k (0-based) summed over rows, each row's term depending on its own
    parameters only; ``evaluate()`` returns per-row (metric, loss) tensors of shape (S,) under ``torch.no_grad``.
    ``on_score``: called after every evaluation of the plateau protocol with each row's best metric so far (what
    the row will report at least: it ends at its best evaluation).
    """
    P = protocol
    lr_t = torch.as_tensor(lr, dtype=torch.float64).clone().reshape(-1)
    S = lr_t.numel()
    opt = RowOptimizer(trainable, P.optimizer, lr_t, weight_decay=P.weight_decay, momentum=P.momentum)
    lr0 = lr_t.tolist()
    active = [True] * S
    reason: list[str | None] = [None] * S
    steps = [0] * S
    best_metric = [-math.inf] * S
    ref_metric = [-math.inf] * S  # metric / loss at the last improvement (slow drifts accumulate until they count)
    ref_loss = [math.inf] * S
    loss_at_best = [math.inf] * S
    best_step = [0] * S
    since = [0] * S
    drops = [0] * S
    history: list[list[tuple[int, float, float]]] = [[] for _ in range(S)]
    snapshot = [p.detach().clone() for p in trainable]
    plateau = P.stop == "plateau"

    def score(step: int) -> None:
        m_t, l_t = evaluate()
        m_all, l_all = m_t.tolist(), l_t.tolist()
        for s in range(S):
            if not active[s]:
                continue
            m, lo = float(m_all[s]), float(l_all[s])
            if keep_history:
                history[s].append((step, m, lo))
            if not math.isfinite(lo):
                active[s], reason[s] = False, "diverged"
                lr_t[s] = 0.0
                continue
            if not plateau:
                continue
            improved = False
            if m > ref_metric[s] + P.min_delta:
                ref_metric[s], improved = m, True
            if lo < ref_loss[s] - P.loss_tol:
                ref_loss[s], improved = lo, True
            if m > best_metric[s]:
                best_metric[s], loss_at_best[s], best_step[s] = m, lo, step
                with torch.no_grad():
                    for snap, p in zip(snapshot, trainable):
                        snap[s].copy_(p[s])
            since[s] = 0 if improved else since[s] + 1
            if since[s] >= P.patience:
                if drops[s] < P.lr_drops:
                    drops[s] += 1
                    since[s] = 0
                    lr_t[s] *= P.lr_drop_factor
                else:
                    active[s], reason[s] = False, "plateau"
                    lr_t[s] = 0.0
        if on_score is not None:
            on_score(list(best_metric))

    if plateau:
        score(0)
    step = 0
    while step < P.max_steps and any(active):
        loss = step_loss(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        for s in range(S):
            steps[s] += active[s]
        if plateau and (step % P.eval_every == 0 or step == P.max_steps):
            score(step)
        if progress is not None and (step % 20 == 0 or step == P.max_steps):
            progress(step / P.max_steps)
    out: list[RowOutcome] = []
    if plateau:
        with torch.no_grad():  # every row ends at its best evaluation
            for snap, p in zip(snapshot, trainable):
                p.copy_(snap)
    else:
        m_t, l_t = evaluate()
        for s in range(S):
            if active[s] and not math.isfinite(float(l_t[s])):
                active[s], reason[s] = False, "diverged"
        best_metric, loss_at_best = [float(v) for v in m_t.tolist()], [float(v) for v in l_t.tolist()]
        best_step = [step] * S
        if keep_history:
            for s in range(S):
                history[s].append((step, best_metric[s], loss_at_best[s]))
    for s in range(S):
        r = reason[s] or ("cap" if plateau else "fixed")
        out.append(
            RowOutcome(
                metric=best_metric[s],
                loss=loss_at_best[s],
                steps=steps[s],
                best_step=best_step[s],
                stop_reason=r,
                lr=lr0[s],
                lr_final=lr0[s] * P.lr_drop_factor ** drops[s],
                history=history[s],
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Classification: minibatches per row, evaluation
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_classifier(model: nn.Module, X: Tensor, y: Tensor, *, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Per-row (accuracy, mean cross-entropy) of a batched model (``model(x, shared_input=True)`` → (S, B, C))."""
    if X.shape[0] == 0:
        raise EstimatorError("no samples to evaluate the accuracy on; lower val_fraction or add data")
    was = model.training
    model.eval()
    correct: Tensor | None = None
    loss: Tensor | None = None
    for start in range(0, X.shape[0], chunk):
        logits = model(X[start : start + chunk], shared_input=True).double()
        yb = y[start : start + chunk]
        hit = (logits.argmax(-1) == yb).sum(dim=1).double()
        ce = (
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), yb.repeat(logits.shape[0]), reduction="none"
            )
            .reshape(logits.shape[0], -1)
            .sum(dim=1)
        )
        correct = hit if correct is None else correct + hit
        loss = ce if loss is None else loss + ce
    model.train(was)
    assert correct is not None and loss is not None
    return (correct / X.shape[0]).cpu(), (loss / X.shape[0]).cpu()


def minibatch_loss(
    model: nn.Module, X: Tensor, y: Tensor, batch_size: int, order_seeds: Sequence[int]
) -> Callable[[int], Tensor]:
    """``step_loss`` for :func:`train_rows`: row s reshuffles with its own generator every epoch; the loss is the
    sum over rows of each row's mean batch cross-entropy (so each row's gradient is the one it gets alone)."""
    N = X.shape[0]
    B = min(batch_size, N)
    n_batches = math.ceil(N / B)
    gens = [torch.Generator().manual_seed(int(s)) for s in order_seeds]
    state: dict[str, Tensor] = {}

    def step_loss(k: int) -> Tensor:
        b = k % n_batches
        if b == 0 or "perm" not in state:
            state["perm"] = torch.stack([torch.randperm(N, generator=g) for g in gens]).to(X.device)
        idx = state["perm"][:, b * B : (b + 1) * B]
        logits = model(X[idx])
        return (
            nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1), reduction="sum")
            / idx.shape[1]
        )

    return step_loss


@dataclass
class TrainOutcome:
    """Per-row results of :func:`train_classifier` (plus the old ``metric``/``seconds``/``steps`` summary)."""

    rows: list[RowOutcome]
    seconds: float
    steps: int  # loop steps (the longest row)
    train_metric: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    @property
    def metric(self) -> list[float]:
        return [r.metric for r in self.rows]


def train_classifier(
    model: nn.Module,
    trainable: Sequence[nn.Parameter],
    X_train: Tensor,
    y_train: Tensor,
    X_eval: Tensor,
    y_eval: Tensor,
    protocol: Protocol,
    lr: Sequence[float],
    *,
    batch_size: int,
    order_seeds: Sequence[int],
    train_scores: bool = True,
    progress: Callable[[float], None] | None = None,
    on_score: Callable[[list[float]], None] | None = None,
) -> TrainOutcome:
    """Train the rows of a batched classifier with cross-entropy to their plateaus; score them on (X_eval, y_eval)
    (and, with ``train_scores``, on the training set at the kept state). ``on_score``: see :func:`train_rows`."""
    t0 = time.perf_counter()
    model.train()
    rows = train_rows(
        trainable,
        minibatch_loss(model, X_train, y_train, batch_size, order_seeds),
        lambda: evaluate_classifier(model, X_eval, y_eval),
        lr,
        protocol,
        progress=progress,
        on_score=on_score,
    )
    model.eval()
    tm: list[float] = []
    tl: list[float] = []
    if train_scores:
        if X_train is X_eval:
            tm, tl = [r.metric for r in rows], [r.loss for r in rows]
        else:
            m_t, l_t = evaluate_classifier(model, X_train, y_train)
            tm, tl = m_t.tolist(), l_t.tolist()
    return TrainOutcome(
        rows=rows, seconds=time.perf_counter() - t0, steps=max(r.steps for r in rows), train_metric=tm, train_loss=tl
    )


def range_test(
    build: Callable[[int], tuple[Sequence[nn.Parameter], Callable[[int], Tensor], Callable[[], tuple[Tensor, Tensor]]]],
    candidates: Sequence[float],
    *,
    steps: int,
    protocol: Protocol,
    max_rows: int | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """Short lr range test: one copy of the same problem per candidate lr, ``steps`` steps each (same batches);
    returns the candidate with the lowest loss at the end and the table [{lr, loss, metric}]. Diverged candidates
    (non-finite loss) never win; ties go to the smaller lr.

    ``build(k)`` returns (trainable, step_loss, evaluate) for k identical rows, as :func:`train_rows` takes them;
    ``max_rows`` caps the rows per group (memory).
    """
    cands = [float(c) for c in candidates]
    if not cands:
        raise EstimatorError("lr range test needs at least one candidate")
    fixed = Protocol(
        optimizer=protocol.optimizer,
        weight_decay=protocol.weight_decay,
        momentum=protocol.momentum,
        max_steps=max(1, steps),
        eval_every=max(1, steps),
        stop="fixed",
    )
    table: list[dict[str, float]] = []
    size = max(1, max_rows or len(cands))
    for start in range(0, len(cands), size):
        grp = cands[start : start + size]
        trainable, step_loss, evaluate = build(len(grp))
        rows = train_rows(trainable, step_loss, evaluate, grp, fixed, keep_history=False)
        table += [{"lr": c, "loss": r.loss, "metric": r.metric} for c, r in zip(grp, rows)]
    finite = [t for t in table if math.isfinite(t["loss"])]
    if not finite:
        return min(cands), table
    best = min(finite, key=lambda t: (t["loss"], t["lr"]))
    return best["lr"], table


def lr_range_test(
    make_rows: Callable[[int], tuple[nn.Module, Sequence[nn.Parameter]]],
    X_train: Tensor,
    y_train: Tensor,
    candidates: Sequence[float],
    *,
    steps: int,
    protocol: Protocol,
    batch_size: int,
    order_seed: int,
    max_rows: int | None = None,
    score_samples: int = 2048,
) -> tuple[float, list[dict[str, float]]]:
    """:func:`range_test` for a classifier: copies from ``make_rows(k)`` → (model, trainable) train on the same
    minibatches; the score is the cross-entropy on the first ≤ ``score_samples`` training samples."""
    n_score = min(score_samples, X_train.shape[0])
    Xs, ys = X_train[:n_score], y_train[:n_score]

    def build(k: int):
        model, trainable = make_rows(k)
        model.train()
        return (
            trainable,
            minibatch_loss(model, X_train, y_train, batch_size, [order_seed] * k),
            lambda: evaluate_classifier(model, Xs, ys),
        )

    return range_test(build, candidates, steps=steps, protocol=protocol, max_rows=max_rows)
