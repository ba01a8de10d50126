"""From the evidence to ``p_wrong``, the probability that a label is wrong, and an error rate per task.

Each task type has a few *signals* (:data:`SUSPICIONS`): a trajectory column averaged over the
epochs in which the network has learned what it can (the second half; ``log σ²`` over all of
them, its area), and read as a probability that the label is wrong in one of two ways:

- **the network's own probability** (classification): the network stands for the true label,
  and a wrong label, at a rate ``ε`` fitted by EM, is the class the true one is confused with
  (people confuse a class with a neighbour, not with every class alike). With ``q`` the
  probability the network gives the label and ``q'`` the largest it gives another class, Bayes
  gives ``p = ε q' / ((1 − ε) q + ε q')``, and since ``log(q' / q)`` is minus the margin,
  ``p = σ(logit ε − m)`` with ``m`` the mean margin over the late epochs (AUM's, there). ILT keeps
  the network from learning the labels it down-weights, so a wrong label's margin stays
  negative instead of being memorised. A label the network finds uncertain (``m`` near 0) gets
  about ``ε``, one it confidently gives to another class gets 1, and a network that has learned
  nothing leaves every ``p`` at the prior :data:`PRIOR`, not at a verdict. Multi-label tags
  are read the same way, one tag at a time: a tag the label lacks that the network gives ``p``
  (``missing_tag``, the largest such) has odds ``p / (1 − p)`` of being a true tag left out, so
  its margin is ``log((1 − p) / p)``; a tag the label has that the network gives ``p`` (its
  ``extra_tag`` is ``1 − p``, the largest such) likewise, each signal with its own ``ε``;
- **an outlier mixture** (every other signal): right labels give a normal bulk, wrong labels a
  flat spread over the values seen. The bulk's centre and spread and the wrong labels' share are
  fitted by EM (a few dozen vectorised passes), starting from the median and the median absolute
  deviation, and ``p`` is the posterior of the flat part. A one-sided signal (the share of an
  object the mask leaves out) only counts values above the bulk; a two-sided one (an offset, a
  unit error) both ways. Skewed signals are put on a cube-root scale first (a share, a squared
  residual: Wilson and Hilferty's transform), and the bulk's spread never falls below a floor
  (:data:`SHARE_FLOOR`, :data:`RESIDUAL_FLOOR`), so that a task whose right labels all agree
  almost exactly does not make the least disagreement a certainty.

``p_wrong`` is the largest of a label's signal probabilities (each kind of error shows in one
signal: an omission in ``missing``, a unit error in ``log_ratio``), and the task's estimated error
rate is the mean of ``p_wrong``, with a 95% interval from its sampling and assignment variance.
A suspect is a label with ``p_wrong`` above :data:`SUSPECT`: more likely wrong than right, with
the same meaning for every task type. Ties (labels certain either way, mostly the bulk's 0) are
ordered by the largest posterior before the cut of :data:`STANDS_OUT`.

A run trained before the evidence was recorded has only ``log σ²`` and ``loss``: its ``p_wrong``
comes from ``log σ²`` alone (from the loss, for a weighting without ``log σ²``), and
:attr:`Audit.notes` says so.

Example:
    >>> result = audit("runs/shapes")  # doctest: +SKIP
    >>> result.rates["seg"].estimate  # doctest: +SKIP
    0.098
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.run.directory import RunLike, open_run
from ilt_audit.run.trajectories import read_matrix, task_codes

Z95 = 1.959964  # the two-sided 95% normal quantile
SUSPECT = 0.5  # a label whose p_wrong is above this is a suspect: more likely wrong than right
SHARE_FLOOR = 0.05  # the least spread of a share's bulk, on its cube-root scale (0.05³: 0.01 %)
# The least spread of a residual's bulk, in the task's z units (a residual's cube-root scale for
# regression): a network that fits every right label to within a few hundredths of the labels'
# spread does not make a residual of a tenth a wrong label.
RESIDUAL_FLOOR = 0.075
EM_STEPS = 60
PRIOR = 0.05  # the share of wrong labels EM starts from
# Spreads from the bulk within which a value is never a wrong label's (a map's signals: 2). At 2,
# the tail of a clean regression task counted as wrong (penguins flipper: 2.1% estimated on
# clean labels, 0.2% at 3) and so did the coarse masks of a network that learns them late
# (shapes, a mask grown by 2 pixels at 10%: 0.80 found at 2, 0.98 at 3)
STANDS_OUT = 3.0
MAX_SHARE = 0.5  # the wrong labels are fewer than the right ones, or nothing can be told


def _late(epochs: list[int]) -> list[int]:
    """The second half of the epochs: the network has learned what it can."""
    return epochs[len(epochs) // 2 :]


def _every(epochs: list[int]) -> list[int]:
    return epochs


def _last_quarter(epochs: list[int]) -> list[int]:
    return epochs[-max(1, len(epochs) // 4) :]


def _last(epochs: list[int]) -> list[int]:
    return epochs[-1:]


def _cube_root(values: np.ndarray) -> np.ndarray:
    return np.cbrt(values)


def _same(values: np.ndarray) -> np.ndarray:
    return values


def _lack(values: np.ndarray) -> np.ndarray:
    return np.cbrt(1.0 - values)  # of a share: what is missing from it


def _margin_of(values: np.ndarray) -> np.ndarray:
    """A probability ``x`` that the label is wrong about a tag, as a margin ``log((1 − x) / x)``
    (see the module's text); clipped, so that a certain 0 or 1 stays finite."""
    x = np.clip(values, 1e-6, 1 - 1e-6)
    return np.log1p(-x) - np.log(x)


def _squared(values: np.ndarray) -> np.ndarray:
    return np.cbrt(values**2)  # a root mean square, back to its mean square, on the cube-root scale


@dataclass(frozen=True)
class Suspicion:
    """One trajectory column read as a probability that the label is wrong."""

    column: str
    epochs: Callable[[list[int]], list[int]]
    kind: str  # "probability" (a margin, by Bayes) | "upper" | "both" (mixture, sides)
    # to a scale where the bulk is normal (a mixture), or to a margin (a probability)
    turn: Callable[[np.ndarray], np.ndarray] = _same
    floor: float = 0.0  # the least spread of the bulk, on the turned scale
    why: str = ""  # what a high value means, for people
    # A bulk beyond this (its centre for "upper", its spread for "both"), on the turned scale,
    # means the network has not learned the task well enough to tell its labels apart
    unlearned: float = math.inf
    # The epochs whose values order the labels p_wrong leaves tied (None: ``epochs``). A network
    # that learns a task slowly (masks) sees it best at the end; its calibration keeps a window.
    order_epochs: Callable[[list[int]], list[int]] | None = None
    stands_out: float = STANDS_OUT  # spreads from the bulk within which a value is the bulk's


LOG_SIGMA2 = Suspicion("log_sigma2", _every, "upper", why="hard to fit (high log σ²)")
LOSS = Suspicion("loss", _late, "upper", _cube_root, why="hard to fit (high loss)")
SUSPICIONS: dict[str, tuple[Suspicion, ...]] = {
    "classification": (
        Suspicion("margin", _late, "probability", why="the network prefers another class"),
    ),
    # Masks are learned slowly: p_wrong reads the last quarter of the epochs, and the labels it
    # leaves tied are ordered by the last epoch (shapes at 10%: a mask shifted 3 pixels 0.40 by
    # the late half alone, 0.80 so). ``extra`` is recorded and shown, not used: it only ever
    # lowered the precision (the network's misses on thin objects are everyone's)
    # a missing tag (the network sees it, the label lacks it) and an extra one (the label has it,
    # the network denies it) are each a tag's own margin, so they read as classification's does
    "multi-label": (
        Suspicion(
            "missing_tag",
            _late,
            "probability",
            _margin_of,
            why="the network sees a tag the label lacks",
        ),
        Suspicion(
            "extra_tag",
            _late,
            "probability",
            _margin_of,
            why="the label has a tag the network denies",
        ),
    ),
    "segmentation": (
        Suspicion(
            "missing",
            _last_quarter,
            "upper",
            _cube_root,
            SHARE_FLOOR,
            "objects the mask leaves out",
            order_epochs=_last,
        ),
        Suspicion(
            "iou",
            _last_quarter,
            "upper",
            _lack,
            SHARE_FLOOR,
            "mask and network overlap little",
            0.91,
            order_epochs=_last,
        ),
        Suspicion(
            "loss",
            _last_quarter,
            "upper",
            _cube_root,
            why="the mask is hard to fit",
            order_epochs=_last,
        ),
    ),  # the first of equal probabilities is the one a person is shown; iou's 0.91 = ∛0.75: a
    # mean IoU below 0.25 is a network that has not learned the masks
    # regression's log_ratio is recorded, not used: a label near 0 makes any ratio large, and a
    # unit error (x10, x2.54) is far from the prediction in the residual already
    "regression": (
        Suspicion(
            "residual", _late, "upper", _squared, RESIDUAL_FLOOR, "far from the prediction", 0.63
        ),  # 0.63 = ∛0.25: a mean squared residual above a quarter of the labels' variance
    ),
    "dense-regression": (
        Suspicion(
            "residual",
            _late,
            "both",
            floor=0.05,
            why="the map is offset",
            unlearned=0.5,
            stands_out=2.0,
        ),  # maps: at 3, a map moved 3 pixels (shapes, 10%) was found 0.62 of the time, at 2 0.80
        Suspicion(
            "log_ratio",
            _late,
            "both",
            floor=0.05,
            why="a constant factor off",
            unlearned=0.5,
            stands_out=2.0,
        ),
        Suspicion(
            "loss",
            _late,
            "upper",
            _cube_root,
            why="the map is hard to fit (pixel loss)",
            stands_out=2.0,
        ),
    ),
}


@dataclass(frozen=True)
class ErrorRate:
    """A task's estimated share of wrong labels, with a 95% interval."""

    estimate: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}


def error_rate(p: np.ndarray) -> ErrorRate:
    """The mean of ``p_wrong`` and its 95% interval: the variance of which labels are wrong
    (Σ p(1 − p)) and of the sample (a binomial's), added."""
    n = len(p)
    if n == 0:
        return ErrorRate(0.0, 0.0, 1.0, 0)
    estimate = float(np.mean(p))
    variance = float(np.sum(p * (1 - p))) / n**2 + estimate * (1 - estimate) / n
    half = Z95 * math.sqrt(variance)
    return ErrorRate(estimate, max(0.0, estimate - half), min(1.0, estimate + half), n)


@dataclass(frozen=True)
class Mixture:
    """A normal bulk of right labels and a flat spread of wrong ones, fitted by EM."""

    centre: float
    spread: float
    share: float  # of the flat part: the wrong labels
    p: np.ndarray  # (n,) each value's posterior of the flat part
    soft: np.ndarray  # (n,) the posterior without the STANDS_OUT cut: to order the bulk's values


def outlier_mixture(
    values: np.ndarray, *, sides: str, floor: float = 0.0, stands_out: float = STANDS_OUT
) -> Mixture:
    """Fit a normal bulk plus a flat part over the range of ``values`` (finite), by EM."""
    centre = float(np.median(values))
    spread = max(1.4826 * float(np.median(np.abs(values - centre))), floor)
    if not spread > 0:
        spread = float(np.std(values)) or 1.0
    low, high = float(values.min()), float(values.max())
    flat = 1.0 / max(high - low, 1e-12)
    share = 0.05
    p = np.zeros(len(values))
    for _ in range(EM_STEPS):
        z = (values - centre) / spread
        bulk = np.exp(-0.5 * z**2) / (spread * math.sqrt(2 * math.pi))
        outlying = share * flat
        with np.errstate(divide="ignore", invalid="ignore"):
            p = outlying / (outlying + (1 - share) * bulk)
        # a wrong label stands out: within STANDS_OUT spreads of the bulk (above it, for an upper
        # signal) a value is the bulk's, however the bulk's shape departs from a normal one
        p[(z if sides == "upper" else np.abs(z)) <= stands_out] = 0.0
        p = np.nan_to_num(p, nan=1.0)
        weight = 1.0 - p
        total = float(weight.sum())
        if total <= 0:
            break
        centre = float(np.dot(weight, values)) / total
        variance = float(np.dot(weight, (values - centre) ** 2)) / total
        spread = max(math.sqrt(variance), floor)
        if not spread > 0:
            spread = 1e-12
        share = min(max(float(p.mean()), 1e-6), MAX_SHARE)
    z = (values - centre) / spread
    bulk = np.exp(-0.5 * z**2) / (spread * math.sqrt(2 * math.pi))
    with np.errstate(divide="ignore", invalid="ignore"):
        soft = np.nan_to_num(share * flat / (share * flat + (1 - share) * bulk), nan=1.0)
    if sides == "upper":
        soft[values <= centre] = 0.0
    return Mixture(centre, spread, share, p, soft)


@dataclass(frozen=True, eq=False)  # eq=False: it holds arrays
class Audit:
    """``p_wrong`` for every (id, task) of a run, and each task's error rate."""

    keys: pa.Table  # id, task: R rows
    p_wrong: np.ndarray  # (R,)
    order: np.ndarray  # (R,) the largest posterior before the STANDS_OUT cut, to order ties
    signals: dict[str, np.ndarray]  # column -> (R,) that signal's probability (NaN: not its task)
    rates: dict[str, ErrorRate]
    notes: list[str] = field(default_factory=list)
    # task -> signal column -> what a typical label of the task shows in it: the median of the
    # column's mean over the signal's epochs (of its magnitude, for a two-sided signal)
    typical: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_frame(self):  # -> pd.DataFrame
        import pandas as pd

        frame = pd.DataFrame(
            {
                "id": self.keys["id"].to_pandas(),
                "task": self.keys["task"].cast(pa.string()).to_pandas(),
                "p_wrong": self.p_wrong,
            }
        )
        for column, values in self.signals.items():
            frame[f"p_{column}" if column != "p_label" else "p_label_wrong"] = values
        return frame


def _signal(
    run_path, suspicion: Suspicion, epochs: list[int], cache: dict
) -> tuple[pa.Table, np.ndarray]:
    """A column's mean over the suspicion's epochs, per (id, task): keys and (R,) values."""
    chosen = tuple(suspicion.epochs(epochs))
    key = (suspicion.column, chosen)
    if key not in cache:
        matrix = read_matrix(run_path, suspicion.column, epochs=chosen)
        present = ~np.isnan(matrix.values)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(matrix.values, axis=0, dtype=np.float64) / present.sum(axis=0)
        keys = cache.setdefault("keys", matrix.keys)  # every signal lined up on the first's rows
        if keys is not matrix.keys and not keys.equals(matrix.keys):  # files without row order
            mean = _lined_up(keys, matrix.keys, mean)
        cache[key] = (keys, mean)
    return cache[key]


def _lined_up(keys: pa.Table, found: pa.Table, values: np.ndarray) -> np.ndarray:
    """``values`` of the rows ``found`` in the order of ``keys`` (NaN where a key is missing)."""

    def joined(table: pa.Table) -> pa.Array:
        task = table["task"].cast(pa.string())
        return pc.binary_join_element_wise(table["id"], task, "\x1f").combine_chunks()

    position = pc.index_in(joined(keys), value_set=joined(found)).to_numpy(zero_copy_only=False)
    out = np.full(keys.num_rows, np.nan)
    known = ~np.isnan(position.astype(np.float64))
    out[known] = values[position[known].astype(np.int64)]
    return out


def audit(run: RunLike) -> Audit:
    """``p_wrong`` of every label of a run and an error rate per task (see the module's text)."""
    run = open_run(run)
    epochs = list(run.epochs)
    types = run.task_types
    cache: dict = {}
    # the keys, and whether the run has a log σ² for the fallback, from the last epoch alone
    keys, log_sigma2 = _signal(
        run.path, dataclasses.replace(LOG_SIGMA2, epochs=_last), epochs, cache
    )
    names, codes = task_codes(keys)
    r = keys.num_rows
    signals: dict[str, np.ndarray] = {}
    chance = np.zeros(r)
    order = np.zeros(r)
    rates: dict[str, ErrorRate] = {}
    notes: list[str] = []
    typical: dict[str, dict[str, float]] = {}
    for index, name in enumerate(names):
        rows = np.flatnonzero(codes == index)
        used = [(s, _signal(run.path, s, epochs, cache)[1][rows]) for s in SUSPICIONS[types[name]]]
        used = [(s, v) for s, v in used if not np.isnan(v).all()]
        if not used:  # a run from before the evidence: log σ², or the loss without ILT
            fallback = LOG_SIGMA2 if not np.isnan(log_sigma2[rows]).all() else LOSS
            notes.append(
                f"{name}: the run has no evidence columns (trained before they were recorded); "
                f"p_wrong comes from {'log σ²' if fallback is LOG_SIGMA2 else 'the loss'} alone"
            )
            used = [(fallback, _signal(run.path, fallback, epochs, cache)[1][rows])]
        typical[name] = {s.column: _typical(s, values) for s, values in used}
        task_p = np.zeros(len(rows))
        task_order = np.zeros(len(rows))
        unlearned = []
        for suspicion, values in used:
            p, soft, learned = _probability(suspicion, values)
            if suspicion.order_epochs is not None:
                at = dataclasses.replace(suspicion, epochs=suspicion.order_epochs)
                soft = _probability(at, _signal(run.path, at, epochs, cache)[1][rows])[1]
            signals.setdefault(suspicion.column, np.full(r, np.nan))[rows] = p
            task_p = np.maximum(task_p, p)
            task_order = np.maximum(task_order, soft)
            if not learned:
                unlearned.append(suspicion.column)
        order[rows] = task_order
        if unlearned:  # the network's view says nothing yet: no verdict, an open interval
            notes.append(
                f"{name}: the network has not learned this task well enough to judge its labels "
                f"({', '.join(unlearned)}: no bulk of right labels, as a network that guesses "
                "gives); train longer, or "
                "check that the task can be learned from the input. Its p_wrong is 0 and its "
                "error rate unknown"
            )
            rates[name] = ErrorRate(0.0, 0.0, 1.0, len(rows))
            continue
        chance[rows] = task_p
        rates[name] = error_rate(task_p)
    return Audit(keys, chance, order, signals, rates, notes, typical)


def _typical(suspicion: Suspicion, values: np.ndarray) -> float:
    """What a typical label shows in a signal: the median (of the magnitude, two-sided)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return math.nan
    return float(np.median(np.abs(finite) if suspicion.kind == "both" else finite))


def label_noise(margin: np.ndarray) -> np.ndarray:
    """Each label's posterior of being wrong, ``σ(logit ε − m)``, from its mean margin ``m``,
    with the share ``ε`` of wrong labels fitted by EM (see the module's text)."""
    odds = np.exp(np.clip(-margin.astype(np.float64), -50, 50))  # q' / q
    rate = PRIOR
    wrong = np.full(len(margin), rate)
    for _ in range(EM_STEPS):
        wrong = rate * odds / ((1 - rate) + rate * odds)
        rate = min(max(float(wrong.mean()), 1e-6), MAX_SHARE)
    return wrong


def _probability(suspicion: Suspicion, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """One signal's probability that each label is wrong, the same without the STANDS_OUT cut
    (to order the bulk), and whether the network has learned enough for the signal to tell."""
    p = np.zeros(len(values))
    soft = np.zeros(len(values))
    finite = np.isfinite(values)
    if suspicion.kind == "probability":
        p[finite] = label_noise(suspicion.turn(values[finite]))
        soft[finite] = p[finite]
        return p, soft, True
    if finite.sum() < 3:
        return p, soft, True
    fitted = outlier_mixture(
        suspicion.turn(values[finite]),
        sides=suspicion.kind,
        floor=suspicion.floor,
        stands_out=suspicion.stands_out,
    )
    p[finite] = fitted.p
    soft[finite] = fitted.soft
    bulk = fitted.centre if suspicion.kind == "upper" else fitted.spread
    # as many "wrong" as right labels: the signal has no bulk of right labels to stand out from
    split = fitted.share >= MAX_SHARE - 1e-9
    return p, soft, bulk <= suspicion.unlearned and not split
