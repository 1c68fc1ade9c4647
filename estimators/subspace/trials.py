"""The d_int90 sweep in pieces that can run anywhere (issue 17; docs/methods.md §4.2).

The ``subspace`` estimator is a loop over four pure functions, and a fanned-out analysis (``workers.fanout_subspace``)
runs the same four on many workers, so both give the same numbers:

* :func:`prepare` — the problem: subsample, split, model size D, protocol, the sweep's :class:`SweepConfig`.
* :func:`plan_round` — given the config and the trial records so far, the next round's :class:`Trial` s, or ``[]``
  when the sweep is done. The first round holds the baseline beside the first d.
* :func:`run_trial` — one trial group: the baseline (direct training of every seed), or one d with all its seeds
  (its lr range test first, when the lr rule asks for one). Returns a small JSON-safe record.
* :func:`aggregate` — d_int90, bootstrap CI, curve, bound and warnings, details, from the records.

**The sweep is a replay.** :func:`bisection_walk` is the sequential protocol (coarse log grid upward until the mean
passes the level, then geometric bisections); :func:`plan_round` replays it against the records and stops at the
first d without one. A record depends only on its trial (d, and the lr it was given or its own range test), never
on the order trials ran in, so the replay reproduces the sequential sweep exactly however the trials were run.

**Speculation.** With ``width > 1`` a round also holds trials the sequential sweep *may* need besides the one it
needs now, the likeliest first: the walk's open outcomes branch into pass and fail, each with a chance guessed
from the mean curve so far (linear in log d, with a calibrated normal error), and a trial's chance of being needed
is the product along its branch (:func:`_speculate`) — so while a bisection midpoint is in flight, its likelier
child goes next, then the other. Trials in flight (``pending``) may report what they have shown so far
(``partial``): the lr their range test chose (a midpoint beside them is then planned with its final key), and
under the plateau protocol each seed's best score so far, a lower bound of the final metric — once its mean
reaches the level the trial passes for sure, and the walk goes on past it before it ends. Trials in flight that no
outcome can bring back onto the path are listed in :attr:`SweepPath.off_path` to be stopped. A guess or a
partial report only chooses which trials run; the result is read off the sequential path's records alone
(:func:`sweep_path`), so trials off that path are simply not used, and the value, CI and curve depend on neither
``width`` nor the order trials finish in. The in-process estimator uses ``width=1`` (no extra work).

**lr of a bisection midpoint.** The sequential rule reuses the lr of the two bracketing neighbours when both chose
the same one (``subspace_lr="range_test"``). Such a trial is keyed by its lr (``"95@0.316"``); a record of the
same d from its own range test stands in for it when the test chose that same lr (the training is then the same).

Example (a step at d = 37 found by the planner alone; ``fake`` stands in for :func:`run_trial`)::

    >>> cfg = SweepConfig(d_min=4, max_d=1000, grid_factor=2, bisect_steps=10, threshold=0.9, seeds=1)
    >>> fake = lambda t: {"d": t.d, "lr": 0.1, "lr_source": "range_test", "metric": [float((t.d or 99) >= 37)]}
    >>> records = {}
    >>> while trials := plan_round(cfg, records):
    ...     records.update({t.key: fake(t) for t in trials})
    >>> sweep_path(cfg, records).crossing.value
    37.0
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from estimators.base import EstimatorError, Result, json_number
from estimators.models.builders import build_model, count_params
from estimators.models.spec import TrainSpec, parse_model_spec
from estimators.subspace.params import SubspaceParams, effective_train
from estimators.subspace.projections import make_projection, projection_bytes
from estimators.subspace.sweep import (
    Crossing,
    assess_bound,
    bisection_walk,
    bootstrap_ci,
    coarse_grid,
    crossing,
    resolve_protocol,
)
from estimators.subspace.training import Protocol, RowOutcome, lr_range_test, train_classifier
from estimators.subspace.wrapper import DirectModel, SubspaceModel
from estimators.validation import as_labelled

BASELINE = "baseline"

#: progress of one trial: (models of this trial trained so far, fractional; stage text)
TrialProgress = Callable[[float, str], None]


# ---------------------------------------------------------------------------------------------------------------
# Trials and the sweep's configuration
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One trial group: the baseline (``d is None``), or every seed at one d.

    ``lr`` is the learning rate of θ_d when the sequential rule gives it (a bisection midpoint whose neighbours
    chose the same one); ``None`` lets the params' rule choose (a range test at d, the spec's lr, or a fixed lr).
    """

    d: int | None = None
    lr: float | None = None

    @property
    def key(self) -> str:
        """``"baseline"``, ``"<d>"`` or ``"<d>@<lr>"`` (the lr as Python's shortest round-trip repr)."""
        if self.d is None:
            return BASELINE
        return str(self.d) if self.lr is None else f"{self.d}@{self.lr!r}"

    @classmethod
    def from_key(cls, key: str) -> Trial:
        if key == BASELINE:
            return cls()
        d, _, lr = key.partition("@")
        try:
            trial = cls(int(d), float(lr) if lr else None)
        except ValueError:
            raise EstimatorError(f"not a subspace trial key: {key!r}") from None
        if trial.d is not None and trial.d < 1 or (trial.lr is not None and not trial.lr > 0) or trial.key != key:
            raise EstimatorError(f"not a subspace trial key: {key!r}")
        return trial


@dataclass(frozen=True)
class SweepConfig:
    """What the planner needs (plain numbers: the params after :func:`prepare` resolved d_min and max_d)."""

    d_min: int
    max_d: int
    grid_factor: float = 2.0
    bisect_steps: int = 3
    threshold: float = 0.9
    baseline: str = "individual"  # or "global"
    baseline_value: float = 1.0
    lr_rule: str = "range_test"  # "range_test", "spec" or "fixed"
    seeds: int = 3

    def grid(self) -> list[int]:
        return coarse_grid(self.d_min, self.max_d, self.grid_factor)

    @property
    def expected_trials(self) -> int:
        """Trial groups of a sweep that bisects fully: baseline + the coarse grid + the bisections (an upper
        estimate, for progress)."""
        return 1 + len(self.grid()) + self.bisect_steps

    def level(self, baseline_record: Mapping[str, Any] | None) -> float | None:
        """τ = threshold × baseline; ``None`` while an individual baseline has not run."""
        if self.baseline == "global":
            return self.threshold * self.baseline_value
        if baseline_record is None:
            return None
        return self.threshold * float(np.mean(baseline_record["metric"]))


# ---------------------------------------------------------------------------------------------------------------
# The sequential protocol, and the planner that replays it
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """A d on the sequential path: its record and the lr label the sequential sweep gives it."""

    d: int
    record: Mapping[str, Any]
    lr_source: str  # "range_test", "spec", "fixed", or "neighbours d=… and d=… chose it"


@dataclass
class SweepPath:
    round: list[Trial] = field(default_factory=list)  # what to run next ([] and complete: the sweep is done)
    steps: list[Step] = field(default_factory=list)  # the sequential path so far, in evaluation order
    complete: bool = False  # the baseline and the whole path have records (none of it is only pending)
    crossing: Crossing | None = None  # of the path's curve, when complete
    off_path: list[str] = field(default_factory=list)  # pending trials the path can no longer use: stop them


def _mean(record: Mapping[str, Any]) -> float:
    return float(np.mean(record["metric"]))


def _lookup(records: Mapping[str, Mapping[str, Any]], trial: Trial) -> Mapping[str, Any] | None:
    rec = records.get(trial.key)
    if rec is None and trial.lr is not None:  # the d's own range test chose the same lr: the same training
        own = records.get(Trial(trial.d).key)
        if own is not None and own.get("lr") == trial.lr:
            rec = own
    return rec


def _guess(d: int, known: Mapping[int, float]) -> tuple[float, float] | None:
    """The mean at d guessed from the measured means (linear in log d between the neighbours, or extended from the
    two nearest on one side), and the scale of its error: a quarter of the neighbours' gap, or half the extension
    (the best-calibrated normal errors on logistic curves in log d, the shape of a d_int90 sweep's curve). With one
    d measured, its mean and NaN (see :func:`_chance`); ``None`` with none. Only ranks speculative trials."""
    below = sorted(e for e in known if e < d)
    above = sorted(e for e in known if e > d)
    if below and above:
        a, b = below[-1], above[0]
        t = (math.log(d) - math.log(a)) / (math.log(b) - math.log(a))
        return known[a] + t * (known[b] - known[a]), abs(known[b] - known[a]) / 4
    side = below[-2:] if len(below) >= 2 else above[:2] if len(above) >= 2 else None
    if side is not None:
        a, b = side
        near = b if below else a
        step = (known[b] - known[a]) / (math.log(b) - math.log(a)) * (math.log(d) - math.log(near))
        return known[near] + step, abs(step) / 2
    if known:
        (e,) = below or above
        return known[e], math.nan
    return None


def _chance(d: int, known: Mapping[int, float], level: float | None) -> float:
    """The chance that the mean at d reaches ``level``: a normal error of :func:`_guess`'s scale around its guess
    (with one d measured, reaching the level from there is a one-sigma event), kept within [1%, 99%] so that no
    branch is ruled out. 0 while the level is unknown (the walk then climbs the grid, as after a miss)."""
    if level is None:
        return 0.0
    guess = _guess(d, known)
    if guess is None:
        return 0.5
    mean, scale = guess
    if math.isnan(scale):
        scale = abs(level - mean)
    scale = max(scale, 1e-3 * max(abs(level), 1e-9))
    p = 0.5 * math.erfc((level - mean) / (scale * math.sqrt(2)))
    return min(0.99, max(0.01, p))


@dataclass(frozen=True)
class _InFlight:
    """Trials sent and not yet recorded: their keys, and what some of them have shown so far (``partial``, key →
    ``{"lr": the lr its range test chose, "best": each seed's best score so far}``; a trial with a given lr,
    ``"95@1.0"``, has its lr in its key)."""

    keys: frozenset[str] = frozenset()
    partial: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seeds: int = 1

    def lr(self, key: str) -> float | None:
        given = Trial.from_key(key).lr
        if given is not None:
            return given
        lr = self.partial.get(key, {}).get("lr")
        return None if lr is None else float(lr)

    def serving(self, trial: Trial) -> str | None:
        """The key in flight whose record will be ``trial``'s: its own, or (for a given lr) the d's own range test
        once that test chose the same lr."""
        if trial.key in self.keys:
            return trial.key
        own = Trial(trial.d).key
        if trial.lr is not None and own in self.keys and self.lr(own) == trial.lr:
            return own
        return None

    def passes(self, key: str, level: float) -> bool:
        """Will the trial ``key`` pass the level for sure? Under the plateau protocol a seed's metric is its best
        score, so the mean of every seed's best score so far is a lower bound of the trial's mean."""
        best = self.partial.get(key, {}).get("best")
        return best is not None and len(best) == self.seeds and float(np.mean(best)) >= level


@dataclass
class _Node:
    d: int
    trial: Trial
    record: Mapping[str, Any] | None
    label: str | None  # the lr label of a midpoint that takes its neighbours' lr
    flight: str | None  # the key in flight that will give its record (when it has none)
    final: bool  # its trial cannot change any more (its lr does not wait on a neighbour's)


def _replay(
    config: SweepConfig,
    records: Mapping[str, Mapping[str, Any]],
    level: float | None,
    assume: Mapping[int, bool],
    flight: _InFlight,
) -> tuple[list[_Node], _Node | None]:
    """Walk the sequential sweep: a d whose record is there passes or fails as measured (once the level is known),
    a d in flight whose best scores so far reach the level passes, a d in ``assume`` as assumed there. Returns the
    d walked, and the first d with none of these (``None``: the walk ended). A midpoint takes its neighbours' lr
    when both chose the same one (recorded, or chosen by a trial in flight: its trial is then known before its
    neighbour finishes)."""
    walked: list[_Node] = []
    lr_of: dict[int, float | None] = {}  # d walked → its lr (None: not known yet)
    walk = bisection_walk(config.grid(), config.bisect_steps)
    d: int | None = next(walk)
    while d is not None:
        trial, label, final = Trial(d), None, True
        if config.lr_rule == "range_test":
            below = [e for e in lr_of if e < d]
            above = [e for e in lr_of if e > d]
            if below and above:
                lo, hi = max(below), min(above)
                final = lr_of[lo] is not None and lr_of[hi] is not None
                if final and lr_of[lo] == lr_of[hi]:
                    trial, label = Trial(d, lr_of[lo]), f"neighbours d={lo} and d={hi} chose it"
        rec = _lookup(records, trial)
        node = _Node(d, trial, rec, label, None if rec is not None else flight.serving(trial), final)
        if rec is not None and level is not None:
            passed = _mean(rec) >= level
        elif node.flight is not None and level is not None and flight.passes(node.flight, level):
            passed = True  # in flight, and its best scores so far already reach the level
        elif d in assume:
            passed = assume[d]
        else:
            return walked, node
        walked.append(node)
        lr_of[d] = float(rec["lr"]) if rec is not None else flight.lr(node.flight) if node.flight else None
        try:
            d = walk.send(passed)
        except StopIteration:
            d = None
    return walked, None


def _useful(
    config: SweepConfig, records: Mapping[str, Mapping[str, Any]], level: float | None, flight: _InFlight, key: str
) -> bool:
    """Can the trial ``key`` in flight still give a record the sequential path uses? The walk is a search tree (a d
    that passes sends the walk below it, one that fails above), so only one set of outcomes of the open d leads
    to its d: every open d' on the way passes exactly when d < d'. There it is of use unless that d is recorded,
    or its trial is settled (its lr waits on no neighbour) and this key does not serve it: another lr, or an own
    range test whose lr is not known yet (the settled trial is then sent itself)."""
    d = Trial.from_key(key).d
    assume: dict[int, bool] = {}
    while True:
        walked, node = _replay(config, records, level, assume, flight)
        for n in [*walked, *([node] if node is not None else [])]:
            if n.d == d:  # met: open, or walked past on its early pass
                return n.record is None and (n.flight == key or not n.final)
        if node is None:
            return False
        assume[node.d] = d < node.d


#: replays of the walk the planner may spend on ranking speculative trials (each a handful of steps)
SPECULATION_BUDGET = 256


def _speculate(
    config: SweepConfig,
    records: Mapping[str, Mapping[str, Any]],
    level: float | None,
    flight: _InFlight,
    want: int,
    taken: Collection[int],
) -> list[Trial]:
    """Up to ``want`` trials that the sweep may need besides the one it needs now, the likeliest first.

    Best-first over the walk's outcomes: every d without a measured outcome branches into pass (chance p from
    :func:`_chance`, on the means measured so far at any d) and fail (1 − p); a branch's chance is the product
    along it, and the first d on it with no record and none in flight is needed with that chance. Ties go to the
    branch met first. ``taken``: d not to send again (in flight, or already in the round)."""
    known: dict[int, list[float]] = {}
    if level is not None:
        for rec in records.values():
            if rec.get("d") is not None:
                known.setdefault(int(rec["d"]), []).append(_mean(rec))
    means = {d: float(np.mean(v)) for d, v in known.items()}
    out: list[Trial] = []
    seen = set(taken)
    heap: list[tuple[float, int, tuple[tuple[int, bool], ...]]] = [(-1.0, 0, ())]
    count = 1
    for _ in range(SPECULATION_BUDGET):
        if not heap or len(out) >= want:
            break
        neg, _, assumed = heapq.heappop(heap)
        _, node = _replay(config, records, level, dict(assumed), flight)
        if node is None:
            continue
        if node.record is None and node.flight is None and node.d not in seen:
            seen.add(node.d)
            out.append(node.trial)
        p = _chance(node.d, means, level)
        for passed, q in ((True, p), (False, 1.0 - p)):
            if q > 0:
                heapq.heappush(heap, (neg * q, count, (*assumed, (node.d, passed))))
                count += 1
    return out


def sweep_path(
    config: SweepConfig,
    records: Mapping[str, Mapping[str, Any]],
    *,
    width: int = 1,
    pending: Collection[str] = (),
    partial: Mapping[str, Mapping[str, Any]] | None = None,
) -> SweepPath:
    """Replay the sequential sweep against ``records`` (trial key → record): its path so far and the next round.

    ``width`` caps the trials in flight (the round plus ``pending``); the trial the sequential sweep needs next is
    always in the round unless it is in flight (so is a missing baseline). More than one adds speculative trials:
    those the sweep is likeliest to need besides it (:func:`_speculate`, the module docstring).

    ``pending``: keys of trials already sent and not yet recorded (in flight). They are never planned again and
    take their slots of ``width``, except those the path can no longer use (:func:`_useful`): these are listed in
    :attr:`SweepPath.off_path` (stop them; every pending trial once the path is complete). ``partial``: what
    trials in flight have shown so far, key → ``{"lr": chosen by its range test, "best": each seed's best score so
    far}`` (the latter only under the plateau protocol, where it bounds the final metric from below). A midpoint
    between a neighbour in flight and one of the same lr is then planned with that lr, an own-range-test trial in
    flight that chose a midpoint's lr serves it, and a trial in flight whose best scores already reach the level
    passes: the walk goes on past it. None of this enters a result, which is read off records alone. With trials
    in flight an empty round no longer means the sweep is done: see :attr:`SweepPath.complete`.
    """
    out = SweepPath()
    flight = _InFlight(frozenset(pending) - {BASELINE}, dict(partial or {}), config.seeds)
    base = records.get(BASELINE)
    level = config.level(base)
    walked, node = _replay(config, records, level, {}, flight)
    if level is not None:
        for n in walked:
            if n.record is None:  # a pass seen early: the path goes on, but has no record here yet
                break
            out.steps.append(Step(n.d, n.record, n.label or str(n.record["lr_source"])))
    if node is None and base is not None and len(out.steps) == len(walked):  # the whole path is recorded
        out.complete = True
        out.off_path = sorted(pending)
        out.crossing = crossing({s.d: s.record["metric"] for s in out.steps}, level)
        return out
    if base is None and BASELINE not in pending:
        out.round.append(Trial())
    if node is not None and node.record is None and node.flight is None:
        out.round.append(node.trial)  # the path's next trial, even when every slot is taken
    live = [k for k in pending if k == BASELINE or _useful(config, records, level, flight, k)]
    out.off_path = sorted(set(pending) - set(live))
    if node is None or (width <= 1 and not pending):
        return out
    taken = {Trial.from_key(k).d for k in live if k != BASELINE} | {t.d for t in out.round}
    want = width - len(live) - len(out.round)
    if want > 0:
        out.round += _speculate(config, records, level, flight, want, taken)
    return out


def plan_round(
    config: SweepConfig,
    records: Mapping[str, Mapping[str, Any]],
    *,
    width: int = 1,
    pending: Collection[str] = (),
    partial: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Trial]:
    """The next round's trials given the records so far (and the trials in flight, see :func:`sweep_path`); ``[]``
    when the sweep is done — or, with trials ``pending``, when nothing more is worth sending yet. Pure."""
    return sweep_path(config, records, width=width, pending=pending, partial=partial).round


# ---------------------------------------------------------------------------------------------------------------
# The problem
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """The prepared inputs of every trial (deterministic from X, y and the params)."""

    params: SubspaceParams
    spec: Any
    train: TrainSpec
    protocol: Protocol
    device: torch.device
    X_tr: torch.Tensor
    y_tr: torch.Tensor
    X_ev: torch.Tensor
    y_ev: torch.Tensor
    input_shape: tuple[int, ...]
    n_classes: int
    D: int
    m: int
    N: int
    N_all: int
    chance: float
    range_steps: int
    config: SweepConfig
    warnings: list[str] = field(default_factory=list)

    def net(self, i: int) -> torch.nn.Module:
        return build_model(self.spec, self.input_shape, self.n_classes, seed=self.params.seed + i).to(self.device)

    def rows_per_group(self, proj_bytes_one: int, want: int) -> int:
        """How many rows (seeds, or range-test candidates) of one model train at once within the memory budget."""
        budget = self.params.memory_budget_mb * 2**20
        sample_bytes = 4 * int(math.prod(self.input_shape))
        per_row = proj_bytes_one + 32 * self.D + 64 * self.train.batch_size * sample_bytes
        if per_row > budget:
            raise EstimatorError(
                f"one model needs about {per_row / 2**20:.0f} MiB but memory_budget_mb="
                f"{self.params.memory_budget_mb}; raise memory_budget_mb, lower max_d, or use projection='fastfood' "
                "(O(D) memory)"
            )
        return max(1, min(want, budget // per_row))


def _check_inputs(X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = as_labelled(X, y, "subspace", images=True)
    if y.numel() and int(y.min()) < 0:
        raise EstimatorError("subspace: class indices in y must be ≥ 0")
    return X.to(torch.float32), y


def prepare(X: Any, y: Any, params: SubspaceParams, *, device: torch.device) -> Problem:
    """Validate, subsample (seeded), split train/validation (seeded), size the model and the sweep."""
    X, y = _check_inputs(X, y)
    spec = parse_model_spec(params.model)
    train = effective_train(params)
    warnings: list[str] = []
    N_all = X.shape[0]

    gen = torch.Generator().manual_seed(params.seed + 7_777)
    if params.max_samples is not None and params.max_samples < N_all:
        keep = torch.randperm(N_all, generator=gen)[: params.max_samples]
        X, y = X[keep], y[keep]
    N = X.shape[0]
    n_classes = int(y.max()) + 1
    if torch.unique(y).numel() < 2:
        raise EstimatorError("subspace training needs at least two classes in y")
    if params.metric == "val_accuracy":
        perm = torch.randperm(N, generator=gen)
        n_val = max(1, int(round(params.val_fraction * N)))
        if N - n_val < 2:
            raise EstimatorError(f"{N} samples leave no training set after a {params.val_fraction} validation split")
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        X_tr, y_tr, X_ev, y_ev = X[tr_idx], y[tr_idx], X[val_idx], y[val_idx]
    else:
        X_tr, y_tr, X_ev, y_ev = X, y, X, y
    X_tr, y_tr, X_ev, y_ev = (t.to(device) for t in (X_tr, y_tr, X_ev, y_ev))
    if params.metric == "train_accuracy":
        X_ev, y_ev = X_tr, y_tr  # the same tensors: train scores are the eval scores
    input_shape = tuple(X.shape[1:])
    protocol = resolve_protocol(train, int(X_tr.shape[0]), int(X_ev.shape[0]))
    range_steps = min(protocol.max_steps, params.lr_range_steps or 2 * protocol.eval_every)

    D = count_params(build_model(spec, input_shape, n_classes, seed=params.seed))
    m = sum(1 for _ in build_model(spec, input_shape, n_classes, seed=params.seed).parameters())
    max_d = min(params.max_d or D, D)
    d_min = params.d_min
    if params.said and d_min <= m:
        d_min = m + 1
        warnings.append(f"SAID needs d > m = {m} (one λ per parameter tensor); d_min raised to {d_min}")
    if d_min > max_d:
        raise EstimatorError(f"d_min={d_min} exceeds max_d={max_d} (D={D}); lower d_min or raise max_d")
    chance = float(torch.bincount(y_ev.cpu(), minlength=n_classes).max()) / y_ev.numel()
    lr_rule = params.subspace_lr if isinstance(params.subspace_lr, str) else "fixed"
    config = SweepConfig(
        d_min=d_min,
        max_d=max_d,
        grid_factor=params.grid_factor,
        bisect_steps=params.bisect_steps,
        threshold=params.threshold,
        baseline=params.baseline,
        baseline_value=params.baseline_value,
        lr_rule=lr_rule,
        seeds=params.seeds,
    )
    return Problem(
        params=params,
        spec=spec,
        train=train,
        protocol=protocol,
        device=device,
        X_tr=X_tr,
        y_tr=y_tr,
        X_ev=X_ev,
        y_ev=y_ev,
        input_shape=input_shape,
        n_classes=n_classes,
        D=D,
        m=m,
        N=N,
        N_all=N_all,
        chance=chance,
        range_steps=range_steps,
        config=config,
        warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------------------------
# One trial group
# ---------------------------------------------------------------------------------------------------------------


def _groups(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _trial_row(
    d: int | None, seed: int, row: RowOutcome, train_m: float, train_l: float, lr_source: str, seconds: float
) -> dict[str, Any]:
    return {
        "d": d,
        "seed": seed,
        "lr": row.lr,
        "lr_final": row.lr_final,
        "lr_source": lr_source,
        "steps": row.steps,
        "best_step": row.best_step,
        "stop_reason": row.stop_reason,
        "converged": row.converged,
        "metric": row.metric,
        "eval_loss": row.loss,
        "train_accuracy": train_m,
        "train_loss": train_l,
        "seconds": seconds,  # the group's wall time split evenly over the seeds trained with it
    }


def encode(obj: Any) -> Any:
    """A record as JSON: non-finite floats become "inf"/"-inf"/"nan" (:func:`estimators.base.json_number`)."""
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, float):
        return json_number(obj)
    return obj


def decode(obj: Any) -> Any:
    """The inverse of :func:`encode` (no string field of a record is ever "inf", "-inf" or "nan")."""
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, str) and obj in ("inf", "-inf", "nan"):
        return float(obj)
    return obj


def run_trial(
    problem: Problem,
    trial: Trial,
    *,
    progress: TrialProgress | None = None,
    partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one trial group and return its record (JSON-safe, see :func:`encode`).

    Baseline: every seed trained directly in all D parameters with the spec's lr. A d: the lr from ``trial.lr``
    or the params' rule (a range test at d), then every seed in θ = θ₀ + Pθ_d. Seeds train at once in groups that
    fit ``memory_budget_mb``; seed i uses init seed ``seed+i`` everywhere, so curves are paired.

    ``partial`` (a d only) hears what the trial shows before it ends, for a planner (:func:`sweep_path`'s
    ``partial``): ``{"lr": …}`` once the lr is chosen, then, under the plateau protocol, ``{"lr": …, "best": […]}``
    after every evaluation once every seed has a score — each seed's best score so far, which its final metric
    can only match or exceed.
    """
    p, train, protocol, device = problem.params, problem.train, problem.protocol, problem.device
    S = p.seeds
    report: TrialProgress = progress or (lambda k, stage: None)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    metric: list[float] = []
    seconds, steps, done = 0.0, 0, 0

    def train_group(make, seeds_idx: Sequence[int], d: int | None, label: str, lr: float, lr_source: str) -> None:
        nonlocal seconds, steps, done
        model, trainable = make(seeds_idx)
        k = len(seeds_idx)
        order = [(p.seed + i) * 7_919 + (d or 0) for i in seeds_idx]
        base = done
        on_score = None
        if partial is not None and d is not None and protocol.stop == "plateau" and len(metric) + k == S:
            on_score = lambda best: partial({"lr": lr, "best": metric + best})  # noqa: E731 - earlier groups: final
        out = train_classifier(
            model,
            trainable,
            problem.X_tr,
            problem.y_tr,
            problem.X_ev,
            problem.y_ev,
            protocol,
            [lr] * k,
            batch_size=train.batch_size,
            order_seeds=order,
            on_score=on_score,
            progress=lambda f: report(
                base + k * f,
                f"{label}: seeds {seeds_idx[0]}–{seeds_idx[-1]} step {round(f * protocol.max_steps)} "
                f"(cap {protocol.max_steps})",
            ),
        )
        done += k
        report(done, f"{label}: {done} of {S} models trained")
        for i, row, tm, tl in zip(seeds_idx, out.rows, out.train_metric, out.train_loss):
            rows.append(_trial_row(d, i, row, tm, tl, lr_source, out.seconds / k))
        metric.extend(out.metric)
        seconds += out.seconds
        steps += out.steps

    if trial.d is None:

        def make_direct(idx: Sequence[int]):
            model = DirectModel([problem.net(i) for i in idx]).to(device)
            return model, [model.theta]

        for grp in _groups(S, problem.rows_per_group(0, S)):
            train_group(make_direct, grp, None, "baseline (direct training)", train.lr, "spec")
        return encode(
            {
                "trial": trial.key,
                "d": None,
                "lr": train.lr,
                "lr_source": "spec",
                "metric": metric,
                "trials": rows,
                "seconds": seconds,
                "steps": steps,
                "wall_s": time.perf_counter() - t_start,
            }
        )

    d = trial.d
    d_proj = d - problem.m if p.said else d
    table: list[dict[str, float]] | None = None
    range_s = 0.0
    if trial.lr is not None:
        lr, source = float(trial.lr), "given"
    elif p.subspace_lr == "spec":
        lr, source = train.lr, "spec"
    elif not isinstance(p.subspace_lr, str):
        lr, source = float(p.subspace_lr), "fixed"
    else:

        def make_rows(k: int):
            P = make_projection(p.projection, problem.D, d_proj, seeds=[p.seed * 1_000_003 + d] * k, device=device)
            model = SubspaceModel([problem.net(0)] * k, P, said=p.said).to(device)
            return model, model.trainable()

        t0 = time.perf_counter()
        report(0.0, f"d={d}: lr range test ({len(p.lr_candidates)} candidates × {problem.range_steps} steps)")
        lr, table = lr_range_test(
            make_rows,
            problem.X_tr,
            problem.y_tr,
            p.lr_candidates,
            steps=problem.range_steps,
            protocol=protocol,
            batch_size=train.batch_size,
            order_seed=p.seed * 7_919 + d + 1,
            max_rows=problem.rows_per_group(projection_bytes(p.projection, problem.D, d_proj, 1), len(p.lr_candidates)),
        )
        range_s = time.perf_counter() - t0
        source = "range_test"
    if partial is not None:
        partial({"lr": lr})

    def make(idx: Sequence[int]):
        seeds = [(p.seed + i) * 1_000_003 + d for i in idx]
        P = make_projection(p.projection, problem.D, d_proj, seeds=seeds, device=device)
        model = SubspaceModel([problem.net(i) for i in idx], P, said=p.said).to(device)
        return model, model.trainable()

    for grp in _groups(S, problem.rows_per_group(projection_bytes(p.projection, problem.D, d_proj, 1), S)):
        train_group(make, grp, d, f"d={d}", lr, source)
    return encode(
        {
            "trial": trial.key,
            "d": d,
            "lr": lr,
            "lr_source": source,
            "range_test": table,
            "range_test_s": range_s,
            "metric": metric,
            "trials": rows,
            "seconds": seconds,
            "steps": steps,
            "wall_s": time.perf_counter() - t_start,
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------------------


def aggregate(problem: Problem, records: Mapping[str, Mapping[str, Any]], *, total_s: float | None = None) -> Result:
    """d_int90, its bootstrap CI, the curve, the bound and warnings, and the details, from the records of a
    finished sweep (decoded with :func:`decode`). Records off the sequential path are not used."""
    params, train, protocol, config = problem.params, problem.train, problem.protocol, problem.config
    path = sweep_path(config, records)
    if not path.complete or path.crossing is None:
        raise EstimatorError(f"the sweep is not finished: trials {[t.key for t in path.round]} still to run")
    cross = path.crossing
    warnings = list(problem.warnings)
    base_rec = records[BASELINE]
    direct = [float(v) for v in base_rec["metric"]]
    direct_rows = [dict(t) for t in base_rec["trials"]]
    direct_conv = [tr["converged"] for tr in direct_rows]
    direct_mean = float(np.mean(direct))
    base = direct_mean if params.baseline == "individual" else params.baseline_value
    level = params.threshold * base
    chance = problem.chance
    if direct_mean < chance + 0.5 * (1.0 - chance) * 0.2:
        warnings.append(
            f"the directly trained network reaches only {direct_mean:.3f} (majority class {chance:.3f}); "
            "d_int90 relative to such a baseline says little — train longer or use a better model"
        )

    curve_seeds: dict[int, list[float]] = {}
    lr_by_d: dict[int, float] = {}
    range_tests: dict[str, list[dict[str, float]]] = {}
    per_d_s: dict[int, float] = {}
    steps_by_d: dict[int, tuple[float, int]] = {}
    range_seconds = 0.0
    trials = direct_rows
    for step in path.steps:
        rec = step.record
        curve_seeds[step.d] = [float(v) for v in rec["metric"]]
        lr_by_d[step.d] = float(rec["lr"])
        if step.lr_source == "range_test":  # a bisection midpoint that reused its neighbours' lr ran no test
            range_tests[str(step.d)] = [dict(t) for t in rec["range_test"]]
            range_seconds += float(rec["range_test_s"])
        per_d_s[step.d] = float(rec["wall_s"])
        steps_by_d[step.d] = (float(rec["seconds"]), int(rec["steps"]))
        trials = trials + [{**t, "lr_source": step.lr_source} for t in rec["trials"]]

    ci = bootstrap_ci(curve_seeds, level, n_boot=params.n_bootstrap, seed=params.seed)
    d100 = crossing(curve_seeds, base)
    conv_by_d: dict[int, list[bool | None]] = {}
    for tr in trials:
        if tr["d"] is not None:
            conv_by_d.setdefault(tr["d"], []).append(tr["converged"])
    # a global baseline fixes the level whatever the direct training did: its convergence does not matter
    bound, rests_on = assess_bound(cross, conv_by_d, direct_conv if params.baseline == "individual" else [])
    value = cross.value
    n_unconv = sum(1 for tr in trials if tr["converged"] is False)
    max_d, d_min = config.max_d, config.d_min
    if cross.censored == "above":
        warnings.append(
            f"no d up to max_d={max_d} reached {params.threshold:g} × baseline = {level:.4f}; d_int90 > {max_d}. "
            "Raise max_d (up to D) or the epochs cap"
            + (
                " (some trials hit the cap unconverged, so even this is not a bound)"
                if bound in ("upper", "unknown")
                else ""
            )
        )
    elif cross.censored == "below":
        warnings.append(f"already the smallest d tried ({d_min}) reached the threshold; d_int90 ≤ {d_min}. Lower d_min")
    if bound == "upper" and value is not None:
        warnings.append(
            f"d_int90 ≤ {value:.0f} is an upper bound, not an exact value: trials at d = {rests_on} reached the cap "
            f"of {train.epochs} epochs ({protocol.max_steps} steps) without converging; more training could lower "
            "it. Raise train.epochs"
        )
    elif bound == "lower":
        warnings.append(
            f"d_int90 ≥ {value:.0f} is a lower bound: the direct baseline did not converge within {train.epochs} epochs "
            f"({protocol.max_steps} steps), so the level {level:.4f} may be too low. Raise train.epochs"
        )
    elif bound == "unknown" and value is not None:
        warnings.append(
            f"d_int90 = {value:.0f} is neither exact nor a bound: the baseline and trials at d = {rests_on} reached "
            f"the cap of {train.epochs} epochs unconverged. Raise train.epochs"
        )

    curve = []
    for d in sorted(curve_seeds):
        rows = [tr for tr in trials if tr["d"] == d]
        curve.append(
            {
                "d": d,
                "seeds": curve_seeds[d],
                "mean": float(np.mean(curve_seeds[d])),
                "std": float(np.std(curve_seeds[d], ddof=1)) if len(curve_seeds[d]) > 1 else 0.0,
                "lr": lr_by_d[d],
                "converged": all(tr["converged"] is not False for tr in rows),
                "seeds_converged": [tr["converged"] for tr in sorted(rows, key=lambda tr: tr["seed"])],
                "n_unconverged": sum(tr["converged"] is False for tr in rows),
                "train_accuracy_mean": float(np.mean([tr["train_accuracy"] for tr in rows])),
                "steps_mean": float(np.mean([tr["steps"] for tr in rows])),
            }
        )
    steps_used = sum(tr["steps"] for tr in trials)
    details = {
        "d_int90": value,
        "bound": bound,
        "d_int90_display": (
            f"≤ {value:.0f}"
            if bound == "upper" or cross.censored == "below"
            else f"≥ {value:.0f}"
            if bound == "lower"
            else f"{value:.0f}"
        )
        if value is not None
        else f"> {max_d}",
        "unconverged_d": rests_on,
        "d_int90_grid": cross.d_grid,
        "bracket": [cross.d_below, cross.d_grid],
        "censored": cross.censored,
        "d_int100_grid": d100.d_grid,
        "curve": curve,
        "trials": trials,
        "evaluation_order": [s.d for s in path.steps],
        "baseline": {
            "type": params.baseline,
            "value": base,
            "direct_seeds": direct,
            "direct_mean": direct_mean,
            "direct_std": float(np.std(direct, ddof=1)) if len(direct) > 1 else 0.0,
            "converged": all(c is not False for c in direct_conv),
            "threshold": params.threshold,
            "level": level,
        },
        "protocol": {
            "stop": protocol.stop,
            "max_steps": protocol.max_steps,
            "eval_every": protocol.eval_every,
            "patience": protocol.patience,
            "min_delta": protocol.min_delta,
            "loss_tol": protocol.loss_tol,
            "lr_drops": protocol.lr_drops,
            "lr_drop_factor": protocol.lr_drop_factor,
            "checkpoint": "best score" if protocol.stop == "plateau" else "last step",
            "subspace_lr": params.subspace_lr,
            "lr_candidates": params.lr_candidates if params.subspace_lr == "range_test" else None,
            "lr_range_steps": problem.range_steps if params.subspace_lr == "range_test" else None,
            "baseline_lr": train.lr,
        },
        "lr_range_tests": range_tests,
        # d whose range test chose the largest / smallest candidate (the best lr may lie beyond the grid)
        "lr_at_grid_edge": {
            "top": [int(d) for d in range_tests if lr_by_d[int(d)] == max(params.lr_candidates)],
            "bottom": [int(d) for d in range_tests if lr_by_d[int(d)] == min(params.lr_candidates)],
        },
        "n_unconverged": n_unconv,
        "D": problem.D,
        "n_tensors": problem.m,
        "compression": (problem.D / value) if value else None,
        "model": problem.spec.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "projection": params.projection,
        "said": params.said,
        "metric": params.metric,
        "n_samples": problem.N,
        "n_samples_given": problem.N_all,
        "n_train": int(problem.X_tr.shape[0]),
        "n_eval": int(problem.X_ev.shape[0]),
        "n_classes": problem.n_classes,
        "input_shape": list(problem.input_shape),
        "timings": {
            "total_s": total_s if total_s is not None else float(sum(float(r["wall_s"]) for r in records.values())),
            "baseline_s": float(base_rec["wall_s"]),
            "lr_range_test_s": range_seconds,
            "baseline_step_ms": 1e3 * float(base_rec["seconds"]) / max(1, int(base_rec["steps"])),
            "per_d_s": {str(d): s for d, s in per_d_s.items()},
            "per_d_step_ms": {str(d): 1e3 * s / max(1, n) for d, (s, n) in steps_by_d.items()},
            "steps_used": steps_used,
            "steps_if_fixed": len(trials) * protocol.max_steps,
        },
    }
    return Result(
        value=value,
        ci=ci,
        ci_method=f"percentile bootstrap over seeds at every d ({params.n_bootstrap} draws, 95%)",
        details=details,
        warnings=warnings,
    )
